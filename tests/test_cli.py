"""The `knowbot` command as a user runs it: ask, chat from a pipe, serve, bad settings."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fake_openai import FakeOpenAI, reply

KNOWBOT = str(Path(sys.executable).parent / "knowbot")


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KNOWBOT_", "OPENAI_"))}
    full_env.update(env or {})
    return subprocess.run([KNOWBOT, *args], env=full_env, input=stdin, capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("knowbot 0.")


def test_ask_with_no_model_prints_json(tmp_path: Path) -> None:
    result = run("ask", "what is the refund policy?", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"answer", "citations"}
    assert "could not find anything" in body["answer"]
    assert body["citations"] == []
    assert (tmp_path / "data" / "knowbot.db").is_file()  # the embedded default lives in ./data


def test_ask_through_a_model(tmp_path: Path) -> None:
    with FakeOpenAI() as model:
        model.script(reply("Hello from the model."))
        result = run("ask", "hello", env={"KNOWBOT_LLM_BASE_URL": model.base_url,
                                          "KNOWBOT_LLM_MODEL": "m"}, cwd=tmp_path)
        assert model.requests[0]["messages"][-1]["content"] == "hello"
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello from the model."


def test_openai_environment_variables_are_honoured(tmp_path: Path) -> None:
    with FakeOpenAI() as model:
        model.script(reply("via OPENAI_BASE_URL"))
        result = run("ask", "hi", env={"OPENAI_BASE_URL": model.base_url,
                                       "OPENAI_API_KEY": "sk-test-123"}, cwd=tmp_path)
        headers = model.request_headers[0]
    assert result.stdout.strip() == "via OPENAI_BASE_URL"
    assert headers.get("authorization") == "Bearer sk-test-123"
    assert "sk-test-123" not in result.stderr


def test_chat_reads_lines_from_a_pipe(tmp_path: Path) -> None:
    result = run("chat", stdin="/calculate 6*7\n\n/calculate 2**8\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answers = [a for a in result.stdout.split("\n\n") if a.strip()]
    assert answers == ["6*7 = 42", "2**8 = 256\n"] or [a.strip() for a in answers] == ["6*7 = 42", "2**8 = 256"]


def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = run("ask", "hi", env={"KNOWBOT_MEMORY_TOKEN_BUDGET": "lots"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "knowbot: KNOWBOT_MEMORY_TOKEN_BUDGET: Input should be a valid integer, unable to parse "
        "string as an integer"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url, reason", [
    ("mysql://nobody@127.0.0.1:1/x", "unsupported database 'mysql'"),
    ("postgresql://nobody:hunter2@127.0.0.1:1/x", "could not open the database"),
])
def test_a_bad_database_is_one_line(tmp_path: Path, url: str, reason: str) -> None:
    result = run("ask", "hi", env={"KNOWBOT_DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("knowbot: KNOWBOT_DATABASE_URL: ")
    assert reason in lines[0]
    assert "hunter2" not in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("env, named", [
    ({"KNOWBOT_SLACK_BOT_TOKEN": "xoxb-1"}, "KNOWBOT_SLACK_SIGNING_SECRET"),
    ({"KNOWBOT_WECHAT_TOKEN": "t", "KNOWBOT_WECHAT_AES_KEY": "k" * 43}, "KNOWBOT_WECHAT_APP_ID"),
])
def test_a_channel_missing_a_setting_stops_serve_with_one_line(
        tmp_path: Path, env: dict[str, str], named: str) -> None:
    result = run("serve", "--port", "1", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_serve_answers_healthz_and_shuts_down_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KNOWBOT_", "OPENAI_"))}
    proc = subprocess.Popen([KNOWBOT, "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                body = response.json()
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(proc.stderr.read())
                time.sleep(0.2)
        assert body is not None, "the server did not come up"
        assert response.status_code == 200
        assert body["status"] == "ok" and body["database"] == "ok" and body["llm"] == "none"
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, as a server should
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.stderr.read()
        assert "Knowbot stopped" in log
        # once started, what it loaded is kept out of garbage collection (bot/heap.py)
        frozen = re.search(r"start-up heap frozen: (\d+) objects", log)
        assert frozen is not None and int(frozen.group(1)) > 50_000, log[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ingest_a_folder_then_ask_and_manage_it(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "it").mkdir(parents=True)
    (docs / "it" / "vpn.md").write_text(
        "# VPN\n\n## Reset\n\nTo reset your VPN password, open the self-service portal and enter "
        "your staff number. The new password arrives by SMS.\n")
    (docs / "报销.txt").write_text("报销流程：员工在每月二十五日前提交发票，财务部在十个工作日内完成审核并打款。\n")
    (docs / ".hidden.md").write_text("# secret\n\nnot for ingest\n")
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)

    first = run("ingest", str(docs), "--json", cwd=tmp_path)
    assert first.returncode == 1  # the PNG is refused, the rest goes in
    results = {Path(r["item"]).name: r for r in json.loads(first.stdout)}
    assert set(results) == {"vpn.md", "报销.txt", "logo.png"}
    assert results["vpn.md"]["ok"] and results["vpn.md"]["status"] == "added"
    assert results["报销.txt"]["ok"] and results["报销.txt"]["chunks"] == 1
    assert not results["logo.png"]["ok"] and "PDF, Word" in results["logo.png"]["message"]

    again = run("ingest", str(docs / "it"), cwd=tmp_path)
    assert again.returncode == 0 and "unchanged" in again.stdout

    answer = run("ask", "How do I reset my VPN password?", "--json", cwd=tmp_path)
    body = json.loads(answer.stdout)
    assert "self-service portal" in body["answer"]
    assert body["citations"][0]["source"] == "VPN"
    assert body["citations"][0]["location"] == "VPN > Reset"
    chinese = json.loads(run("ask", "报销多久能到账？", "--json", cwd=tmp_path).stdout)
    assert chinese["citations"][0]["source"] == "报销.txt"

    listing = run("kb", "list", cwd=tmp_path)
    assert "default" in listing.stdout and "2" in listing.stdout
    deleted = run("kb", "delete", "default", "VPN", "--yes", cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    gone = json.loads(run("ask", "How do I reset my VPN password?", "--json", cwd=tmp_path).stdout)
    assert gone["citations"] == []


def test_kb_reindex_fills_a_store_made_without_the_cross_lingual_vector(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "expenses.md").write_text(
        "# Expenses\n\nSubmit travel expenses within fifteen working days of your return, with "
        "the original receipts. Claims over 5,000 need a director's approval.\n")
    (docs / "canteen.md").write_text(
        "# Canteen\n\nThe staff canteen on the third floor serves lunch from 11:30 to 13:30; pay "
        "with your badge.\n")
    old = {"KNOWBOT_KNOWLEDGE_CROSSLINGUAL_MODEL": "off"}  # as Knowbot stored before the change
    assert run("ingest", str(docs), env=old, cwd=tmp_path).returncode == 0
    no_start = {"KNOWBOT_KNOWLEDGE_REINDEX_ON_START": "false"}

    filled = run("kb", "reindex", env=no_start, cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    assert "Filled the cross-lingual vector of 2 chunks" in filled.stdout
    again = run("kb", "reindex", env=no_start, cwd=tmp_path)
    assert "already has its cross-lingual vector" in again.stdout
    answer = json.loads(run("ask", "出差回来后多久内必须提交报销？", "--json", cwd=tmp_path).stdout)
    assert answer["citations"][0]["source"] == "Expenses"
    off = run("kb", "reindex", env=old, cwd=tmp_path)
    assert "model is off" in off.stdout
