"""Settings: environment, knowbot.toml, providers, and one clear line for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.errors import ConfigError


def test_defaults_need_nothing(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == Path("data")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'knowbot.db'}"
    assert settings.providers() == {} and settings.provider_order() == []


def test_environment_overrides_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "knowbot.toml").write_text(
        'port = 9000\nmemory_token_budget = 999\nadmins = ["slack:U1"]\n'
        '[llm_providers.deepseek]\nbase_url = "http://127.0.0.1:1/v1"\nmodel = "deepseek-chat"\n'
        'api_key = "sk-toml"\n'
    )
    monkeypatch.setenv("KNOWBOT_PORT", "9100")
    monkeypatch.setenv("KNOWBOT_LLM_MODEL", "gpt-x")
    monkeypatch.setenv("KNOWBOT_LLM_API_KEY", "sk-env")
    monkeypatch.setenv("KNOWBOT_LLM_FALLBACKS", '["deepseek"]')
    settings = load_settings()
    assert settings.port == 9100
    assert settings.memory_token_budget == 999
    assert settings.is_admin("slack", "U1") and not settings.is_admin("slack", "U2")
    assert settings.provider_order() == ["default", "deepseek"]
    assert settings.providers()["deepseek"].api_key.get_secret_value() == "sk-toml"
    assert "sk-env" not in repr(settings)  # secrets never print


def test_openai_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    provider = load_settings().providers()["default"]
    assert provider.api_key.get_secret_value() == "sk-openai"
    assert provider.base_url == "http://127.0.0.1:9/v1"
    assert provider.model == "gpt-4o-mini"


@pytest.mark.parametrize("env, expected", [
    ({"KNOWBOT_PORT": "eighty"}, "KNOWBOT_PORT: Input should be a valid integer"),
    ({"KNOWBOT_TIMEZONE": "Mars/Base"}, "KNOWBOT_TIMEZONE: Value error, unknown time zone 'Mars/Base'"),
    ({"KNOWBOT_LLM_BASE_URL": "http://127.0.0.1:11434/v1"}, "KNOWBOT_LLM_MODEL: required when KNOWBOT_LLM_BASE_URL is set"),
    ({"KNOWBOT_LLM_MODEL": "m", "KNOWBOT_LLM_FALLBACKS": '["nope"]'}, "KNOWBOT_LLM_FALLBACKS: no provider named 'nope'"),
    ({"KNOWBOT_CONFIG_FILE": "/nonexistent/knowbot.toml"}, "KNOWBOT_CONFIG_FILE: no such file"),
    ({"KNOWBOT_LLM_MAX_STEPS": "0"}, "KNOWBOT_LLM_MAX_STEPS: Input should be greater than or equal to 1"),
])
def test_a_bad_setting_is_named_in_one_line(env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)


def test_a_broken_toml_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "knowbot.toml").write_text("port = = 3\n")
    with pytest.raises(ConfigError, match="knowbot.toml"):
        load_settings()


def test_the_readme_documents_every_setting() -> None:
    from bot.config import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [f"KNOWBOT_{name.upper()}" for name in Settings.model_fields
               if f"`KNOWBOT_{name.upper()}`" not in readme]
    assert missing == []
