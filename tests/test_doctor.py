"""`knowbot doctor` and `knowbot migrate` as people run them."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from bot.db import migrate, schema_revisions
from bot.errors import StorageError
from bot.store import Store
from fake_openai import FakeOpenAI
from fake_slack import FakeSlack

KNOWBOT = str(Path(sys.executable).parent / "knowbot")


def closed_port() -> int:
    """A loopback port nothing listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def knowbot(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run the command without blocking the loop the fake servers answer on."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("KNOWBOT_", "OPENAI_"))}
    full.update(env)
    proc = await asyncio.create_subprocess_exec(KNOWBOT, *args, env=full, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def line_of(output: str, name: str) -> str:
    [found] = [line for line in output.splitlines() if line[6:].startswith(f"{name}:")]
    return found


async def test_doctor_names_a_wrong_slack_token_a_dead_database_and_a_bad_model_url(
        tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        slack.add_workspace("T1", "xoxb-the-right-token", bot_user_id="UBOT")
        with FakeOpenAI() as model:
            env = {
                "KNOWBOT_SLACK_BOT_TOKEN": "xoxb-a-wrong-token-31337",
                "KNOWBOT_SLACK_SIGNING_SECRET": "signing-secret-never-shown",
                "KNOWBOT_SLACK_API_BASE": slack.api_base,
                "KNOWBOT_DATABASE_URL":
                    f"postgresql://knowbot:db-password-never-shown@127.0.0.1:{closed_port()}/kb",
                "KNOWBOT_LLM_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1",
                "KNOWBOT_LLM_MODEL": "m", "KNOWBOT_LLM_API_KEY": "sk-never-shown",
                "KNOWBOT_LLM_PROVIDERS": '{"backup": {"base_url": "%s", "model": "m"}}'
                                         % model.base_url.removesuffix("/v1"),
                "KNOWBOT_LLM_FALLBACKS": '["backup"]',
            }
            code, out, err = await knowbot("doctor", env=env, cwd=tmp_path)
            assert model.requests == []  # the backup URL lacks /v1: nothing reached the API
    assert code == 1, out + err
    slack_line = line_of(out, "slack")
    assert slack_line.startswith("FAIL") and "invalid_auth" in slack_line
    assert "KNOWBOT_SLACK_BOT_TOKEN" in slack_line
    assert [c.token for c in slack.called("auth.test")] == ["xoxb-a-wrong-token-31337"]
    database = line_of(out, "database")
    assert database.startswith("FAIL") and "Connection refused" in database
    assert "KNOWBOT_DATABASE_URL" in database
    dead_model = line_of(out, "model default")
    assert dead_model.startswith("FAIL") and "could not connect" in dead_model
    assert "KNOWBOT_LLM_BASE_URL" in dead_model
    wrong_path = line_of(out, "model backup")
    assert wrong_path.startswith("FAIL") and "HTTP 404" in wrong_path and "/v1" in wrong_path
    assert out.strip().endswith("failed.") and "4 failed" in out
    for secret in ("xoxb-a-wrong-token-31337", "signing-secret-never-shown",
                   "db-password-never-shown", "sk-never-shown"):
        assert secret not in out + err


async def test_doctor_passes_when_everything_answers(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        slack.add_workspace("T9", "xoxb-good", bot_user_id="UBOT")
        slack.add_app_token("xapp-1-good")
        with FakeOpenAI() as model:
            env = {"KNOWBOT_SLACK_BOT_TOKEN": "xoxb-good", "KNOWBOT_SLACK_SIGNING_SECRET": "s",
                   "KNOWBOT_SLACK_APP_TOKEN": "xapp-1-good",
                   "KNOWBOT_SLACK_API_BASE": slack.api_base,
                   "KNOWBOT_LLM_BASE_URL": model.base_url, "KNOWBOT_LLM_MODEL": "m",
                   "KNOWBOT_PUBLIC_URL": "http://bot.example.com"}
            code, out, err = await knowbot("doctor", env=env, cwd=tmp_path)
            assert model.requests[0]["max_tokens"] == 1  # one tiny request
    assert code == 0, out + err  # warnings do not fail
    public = line_of(out, "public url")
    assert public.startswith("WARN") and "not HTTPS" in public
    assert line_of(out, "slack").startswith("ok") and "T9" in line_of(out, "slack")
    assert line_of(out, "slack socket mode").startswith("ok")
    assert [c.token for c in slack.called("apps.connections.open")] == ["xapp-1-good"]
    assert slack.acks == [] and not slack._sockets  # nothing connected
    assert line_of(out, "model").startswith("ok")
    assert line_of(out, "database").startswith("ok")
    assert not (tmp_path / "data" / "knowbot.db").exists()  # doctor creates nothing


async def test_migrate_runs_once_and_serving_replicas_wait_for_it(tmp_path: Path) -> None:
    env = {"KNOWBOT_MIGRATE_ON_START": "false", "KNOWBOT_MIGRATE_WAIT": "0"}
    code, _, err = await knowbot("ask", "/calculate 2+2", env=env, cwd=tmp_path)
    assert code == 2 and "run `knowbot migrate`" in err and len(err.strip().splitlines()) == 1
    code, out, err = await knowbot("migrate", env=env, cwd=tmp_path)
    assert code == 0, err
    assert "migrated from an empty database to" in out
    code, out, _ = await knowbot("ask", "/calculate 2+2", env=env, cwd=tmp_path)
    assert code == 0 and out.strip() == "2+2 = 4"
    code, out, _ = await knowbot("migrate", env=env, cwd=tmp_path)
    assert code == 0 and "already up to date" in out
    code, out, _ = await knowbot("doctor", env=env, cwd=tmp_path)
    assert line_of(out, "database").startswith("ok") and "schema at" in line_of(out, "database")


async def test_a_replica_waits_for_the_migration_on_postgresql(pg_url: str) -> None:
    with pytest.raises(StorageError, match="knowbot migrate"):
        await Store.open(pg_url, migrate=False, wait=0)
    opening = asyncio.create_task(Store.open(pg_url, migrate=False, wait=30))
    await asyncio.sleep(1.5)
    assert not opening.done()  # waiting for the one-shot migration
    await asyncio.to_thread(migrate, pg_url)
    store = await asyncio.wait_for(opening, 10)
    try:
        current, head = schema_revisions(pg_url)
        assert current == head and store.dialect == "postgresql"
    finally:
        await store.close()


async def test_doctor_checks_wechat_credentials_without_replacing_the_token(
        tmp_path: Path) -> None:
    from fake_wechat import FakeWeChatAPI, serve

    api = FakeWeChatAPI(app_id="wx-doctor", secret="the-real-app-secret")
    async with serve(api.app()) as base:
        api.valid_tokens = {"TOKEN-in-use-by-the-server"}
        env = {"KNOWBOT_WECHAT_TOKEN": "t0ken", "KNOWBOT_WECHAT_APP_ID": "wx-doctor",
               "KNOWBOT_WECHAT_API_BASE": base}
        code, out, _ = await knowbot(
            "doctor", env={**env, "KNOWBOT_WECHAT_APP_SECRET": "the-real-app-secret"},
            cwd=tmp_path)
        assert code == 0, out
        assert line_of(out, "wechat").startswith("ok")
        assert api.valid_tokens == {"TOKEN-in-use-by-the-server"}  # the server's token still works
        assert api.token_hits == 0 and api.stable_hits == 1
        code, out, _ = await knowbot(
            "doctor", env={**env, "KNOWBOT_WECHAT_APP_SECRET": "a-wrong-app-secret"}, cwd=tmp_path)
    assert code == 1
    wechat = line_of(out, "wechat")
    assert wechat.startswith("FAIL") and "40125" in wechat and "KNOWBOT_WECHAT_APP_SECRET" in wechat
    assert "a-wrong-app-secret" not in out


async def test_doctor_on_telegram_redis_and_qdrant(tmp_path: Path) -> None:
    from fake_telegram import FakeBotAPI

    telegram = await FakeBotAPI("123456789:AAH-doctor_token").start()
    try:
        telegram.webhook_url = "https://bot.example.com/telegram/webhook"
        telegram.webhook_error = "Connection timed out"
        env = {"KNOWBOT_TELEGRAM_TOKEN": "123456789:AAH-doctor_token",
               "KNOWBOT_TELEGRAM_API_BASE": telegram.base_url,
               "KNOWBOT_TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram/webhook",
               "KNOWBOT_REDIS_URL": f"redis://:redis-pass-never-shown@127.0.0.1:{closed_port()}/0",
               "KNOWBOT_QDRANT_URL": f"http://127.0.0.1:{closed_port()}",
               "KNOWBOT_QDRANT_API_KEY": "qdrant-key-never-shown"}
        code, out, err = await knowbot("doctor", env=env, cwd=tmp_path)
        assert code == 1, out + err
        assert line_of(out, "telegram").startswith("ok") and "@knowbot_test" in out
        hook = line_of(out, "telegram webhook")
        assert hook.startswith("WARN") and "Connection timed out" in hook
        assert line_of(out, "redis").startswith("FAIL") and "KNOWBOT_REDIS_URL" in out
        assert line_of(out, "vector store").startswith("FAIL") and "KNOWBOT_QDRANT_URL" in out
        assert "redis-pass-never-shown" not in out and "qdrant-key-never-shown" not in out
        wrong = {**env, "KNOWBOT_TELEGRAM_TOKEN": "123456789:AAH-not_the_token"}
        code, out, _ = await knowbot("doctor", env=wrong, cwd=tmp_path)
        line = line_of(out, "telegram")
        assert code == 1 and line.startswith("FAIL") and "refused the bot token" in line
        assert "AAH-not_the_token" not in out
    finally:
        await telegram.stop()
