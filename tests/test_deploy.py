"""The container image and deployment manifests, linted offline (no container engine runs here).

hadolint checks the Dockerfile, check-jsonschema checks deploy/compose.yaml against the
compose-spec schema it vendors, kubernetes-validate checks deploy/k8s/ against the Kubernetes
API schemas it ships. Any finding fails the test. Beyond the linters, the tests read the files
for what the deployment promises: migrations run once, the replicas do not migrate, probes point
at /healthz and /readyz, the image runs as a non-root user with the model built in.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a linter installed by the [test] extra; its output explains a failure."""
    path = BIN / name
    assert path.is_file(), f"{name} is missing: pip install -e '.[test]'"
    return subprocess.run([str(path), *args], capture_output=True, text=True, timeout=120)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = tool("hadolint", "--failure-threshold", "info", str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = tool("hadolint", str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout  # the linter really runs


def test_the_image_is_multi_stage_non_root_with_the_model_built_in() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert "knowbot models build --dir /opt/knowbot/models" in text
    assert "KNOWBOT_MODELS_DIR=/opt/knowbot/models" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n.*?/readyz", text, re.M)
    assert 'VOLUME ["/data"]' in text


def test_compose_file_matches_the_compose_spec() -> None:
    result = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec",
                  str(ROOT / "deploy" / "compose.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "compose.yaml").read_text().replace("depends_on:", "depend_on:", 1)
    bad = tmp_path / "compose.yaml"
    bad.write_text(text)
    result = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode != 0 and "depend_on" in result.stdout


def test_compose_migrates_once_before_two_replicas() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "qdrant", "migrate"} <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    replicas = [name for name, s in services.items() if s.get("command") == ["serve"]]
    assert len(replicas) == 2
    for name in replicas:
        service = services[name]
        assert service["environment"]["KNOWBOT_MIGRATE_ON_START"] == "false"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["environment"]["KNOWBOT_DATABASE_URL"].startswith("postgresql://")
        assert service["environment"]["KNOWBOT_REDIS_URL"].startswith("redis://")
        assert service["environment"]["KNOWBOT_QDRANT_URL"].startswith("http://qdrant")


@pytest.mark.parametrize("manifest", K8S, ids=[p.name for p in K8S])
def test_kubernetes_manifest_is_valid(manifest: Path) -> None:
    result = tool("kubernetes-validate", "--strict", "--quiet", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_catches_a_mistake(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()
    bad = tmp_path / "deployment.yaml"
    bad.write_text(text.replace("containerPort: 8080", "containerPort: eighty"))
    result = tool("kubernetes-validate", "--strict", "--quiet", str(bad))
    assert result.returncode != 0


def test_kubernetes_has_settings_probes_and_a_migration_job() -> None:
    docs = {}
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"knowbot"}
    assert docs["ConfigMap"]["data"]["KNOWBOT_MIGRATE_ON_START"] == "false"
    assert docs["Job"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
