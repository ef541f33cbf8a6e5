"""Logs: JSON lines carry the request id from a platform's webhook to the model call, and no
configured secret is ever written (a full Slack and Telegram run with every secret set)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy.engine import make_url

from bot.logs import ContextFilter, JsonFormatter, bound, configure, secret_values
from bot.runtime import Runtime
from channels.slack import SlackChannel
from channels.telegram import TelegramChannel
from conftest import WordKnowledge, make_settings
from fake_openai import FakeOpenAI
from fake_slack import FakeSlack
from fake_telegram import FakeBotAPI, private_chat, user
from webapp import SLACK_SECRET, post_slack, running_app, settle, slack_mention

TELEGRAM_TOKEN = "987654321:AAF-secret_telegram_token_for_logs"
SLACK_TOKEN = "xoxb-secret-slack-bot-token-4711"
QUESTION_SLACK = "what does the zebra-quartz policy say?"
QUESTION_TELEGRAM = "where is the okapi-vermilion form?"
OURS = ("bot", "channels", "knowledge", "plugins")


class Raw(logging.Handler):
    """Keeps every record as it was logged (before any formatting or masking)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, Raw]]:
    root = logging.getLogger()
    level, raw, stream = root.level, Raw(), io.StringIO()
    root.addHandler(raw)
    yield stream, raw
    root.removeHandler(raw)
    for handler in [h for h in root.handlers if getattr(h, "_knowbot_handler", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def database(request: pytest.FixtureRequest, pg_available: bool, tmp_path: Path) -> str:
    """PostgreSQL with a password in its URL (the test server trusts any), else SQLite."""
    if not pg_available:
        return f"sqlite:///{tmp_path / 'knowbot.db'}"
    url = make_url(request.getfixturevalue("pg_url"))
    return url.set(password="pg-password-never-logged-31337").render_as_string(
        hide_password=False)


def every_secret(tmp_path: Path, database: str, model: FakeOpenAI, slack: FakeSlack,
                 telegram: FakeBotAPI) -> Any:
    """Settings with every secret setting given a distinct value."""
    return make_settings(
        tmp_path, log_format="json", database_url=database,
        llm_base_url=model.base_url, llm_model="m", llm_api_key="sk-default-key-never-logged",
        llm_providers={"backup": {"base_url": model.base_url, "model": "m",
                                  "api_key": "sk-backup-key-never-logged"}},
        llm_fallbacks=["backup"],
        qdrant_api_key="qdrant-key-never-logged", secret_key="signing-key-never-logged",
        metrics_token="metrics-token-never-logged",
        telegram_token=TELEGRAM_TOKEN, telegram_api_base=telegram.base_url,
        telegram_webhook_url="https://knowbot.example.com/telegram/webhook",
        telegram_webhook_secret="tg-webhook-secret-never-logged",
        slack_bot_token=SLACK_TOKEN, slack_signing_secret=SLACK_SECRET,
        slack_api_base=slack.api_base, slack_app_token="xapp-1-app-token-never-logged",
        slack_client_secret="slack-oauth-secret-never-logged",
        wechat_token="wechat-token-never-logged", wechat_app_id="wx0123456789",
        wechat_app_secret="wechat-app-secret-never-logged",
        wechat_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    )


async def test_request_id_reaches_the_model_call_and_no_secret_is_logged(
        tmp_path: Path, database: str, captured: tuple[io.StringIO, Raw]) -> None:
    stream, raw = captured
    telegram = await FakeBotAPI(TELEGRAM_TOKEN).start()
    try:
        await _full_run(tmp_path, database, stream, raw, telegram)
    finally:
        await telegram.stop()


async def _full_run(tmp_path: Path, database: str, stream: io.StringIO, raw: Raw,
                    telegram: FakeBotAPI) -> None:
    knowledge = WordKnowledge()
    async with FakeSlack() as slack:
        slack.add_workspace("T1", SLACK_TOKEN, bot_user_id="UBOT")
        slack.add_user("T1", "U1")
        with FakeOpenAI() as model:
            settings = every_secret(tmp_path, database, model, slack, telegram)
            secrets = secret_values(settings)
            # every SecretStr setting, the backup provider's key, and the database password
            assert len(secrets) == 14 + (":pg-password" in database)
            configure(settings, "DEBUG", stream)
            # Slack over HTTP (the app token would switch it to Socket Mode) and Telegram's webhook
            slack_channel = SlackChannel(settings.model_copy(update={"slack_app_token": None}))
            telegram_channel = TelegramChannel(settings)
            channels = [slack_channel, telegram_channel]
            factory = lambda s: Runtime.start(s, knowledge=knowledge)  # noqa: E731
            async with running_app(settings, channels, factory) as (client, runtime):
                slack_ack = await post_slack(client, slack_mention(
                    "T1", "U1", "C1", f"<@UBOT> {QUESTION_SLACK}"))
                assert slack_ack.status_code == 200
                await slack.wait_for("chat.postMessage", 1)
                update = telegram.text_update(private_chat(1001), user(1001), QUESTION_TELEGRAM)
                telegram_ack = await client.post(
                    "/telegram/webhook", content=json.dumps(update),
                    headers={"content-type": "application/json",
                             "X-Telegram-Bot-Api-Secret-Token": "tg-webhook-secret-never-logged",
                             "X-Request-ID": "tg-req-0001"})
                assert telegram_ack.status_code == 200
                await telegram.wait_for(lambda: telegram.sent(1001))
                await settle(runtime, channels)
                metrics = await client.get(
                    "/metrics", headers={"Authorization": "Bearer metrics-token-never-logged"})
                assert metrics.status_code == 200
            assert len(model.requests) == 2
            assert model.request_headers[0]["authorization"] == "Bearer sk-default-key-never-logged"

    output = stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    # the request id of each webhook call is on its model call's log line, with the message
    slack_id = slack_ack.headers["x-request-id"]
    for request_id, channel in ((slack_id, "slack"), ("tg-req-0001", "telegram")):
        calls = [line for line in lines
                 if line["logger"] == "bot.llm" and line.get("request_id") == request_id]
        assert calls, f"no model-call log line carries the {channel} request id"
        assert calls[0]["channel"] == channel
        assert calls[0]["conversation"].startswith(f"{channel}:")
        assert calls[0]["message_id"]
    # no secret anywhere in what was written, at any level, by any library
    for secret in secrets:
        assert secret not in output, f"a secret was logged: {secret[:4]}..."
    # Knowbot's own code never puts one into a log call (so nothing relies on the masking)
    for record in raw.records:
        if record.name.split(".")[0] in OURS:
            text = record.getMessage() + (logging.Formatter().formatException(record.exc_info)
                                          if record.exc_info else "")
            for secret in secrets:
                assert secret not in text, f"{record.name} logged a secret: {record.msg!r}"
    # message bodies stay below INFO
    for line in lines:
        if line["level"] != "DEBUG":
            assert QUESTION_SLACK not in line["message"] and QUESTION_TELEGRAM not in line["message"]


def test_json_formatter_masks_secrets_and_keeps_context() -> None:
    formatter = JsonFormatter(["hunter2-secret"])
    logger = logging.getLogger("tests.logs")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger.addHandler(handler)
    try:
        with bound(request_id="r-1", channel="slack"):
            logger.warning("connecting with %s", "postgresql://u:hunter2-secret@db/x")
        try:
            raise ValueError("token hunter2-secret refused")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "connecting with postgresql://u:***@db/x"
    assert first["request_id"] == "r-1" and first["channel"] == "slack"
    assert "request_id" not in second and "hunter2" not in second["exception"]
    assert "ValueError" in second["exception"]
