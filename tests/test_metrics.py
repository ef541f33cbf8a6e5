"""GET /metrics: the values move when messages flow, labels stay bounded, the token is checked."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.clock import ManualClock
from bot.runtime import Runtime
from bot.types import ConversationKey, InboundMessage, Reply
from channels.slack import SlackChannel
from conftest import WordKnowledge, make_settings
from fake_openai import FakeOpenAI, reply, status
from fake_slack import FakeSlack
from webapp import SLACK_SECRET, post_slack, running_app, settle, slack_mention

TOKEN = "xoxb-metrics-team"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: Any, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


@pytest.fixture
async def slack() -> Any:
    async with FakeSlack() as server:
        server.add_workspace("T1", TOKEN, bot_user_id="UBOT")
        server.add_user("T1", "U1")
        yield server


async def test_slack_messages_model_calls_and_retrieval_are_counted(tmp_path: Path,
                                                                    slack: FakeSlack) -> None:
    knowledge = WordKnowledge()
    knowledge.add("C1", "Refunds", "p1", "Refunds are issued within 30 days of purchase.")
    with FakeOpenAI() as model:
        model.script(reply("Within 30 days [1].", prompt_tokens=120, completion_tokens=7),
                     status(500), status(500), status(500))
        settings = make_settings(tmp_path, slack_bot_token=TOKEN,
                                 slack_signing_secret=SLACK_SECRET, slack_api_base=slack.api_base,
                                 llm_base_url=model.base_url, llm_model="m", llm_max_retries=2)
        channel = SlackChannel(settings)
        factory = lambda s: Runtime.start(s, knowledge=knowledge)  # noqa: E731
        async with running_app(settings, [channel], factory) as (client, runtime):
            before = await scrape(client)
            assert value(before, "knowbot_messages_total", channel="slack",
                         outcome="answered") == 0
            event = slack_mention("T1", "U1", "C1", "<@UBOT> how long do refunds take?")
            first = await post_slack(client, event)
            assert first.status_code == 200
            await slack.wait_for("chat.postMessage", 1)
            again = await post_slack(client, event, {"X-Slack-Retry-Num": "1",
                                                     "X-Slack-Retry-Reason": "http_timeout"})
            assert again.status_code == 200  # a redelivery: acked, not answered again
            await post_slack(client, slack_mention("T1", "U1", "C1", "<@UBOT> and gift cards?"))
            await slack.wait_for("chat.postMessage", 2)
            forged = await client.post("/slack/events", content="{}", headers={
                "Content-Type": "application/json", "X-Slack-Request-Timestamp": "1",
                "X-Slack-Signature": "v0=00"})
            assert forged.status_code == 401
            await settle(runtime, [channel])
            after = await scrape(client)
    assert value(after, "knowbot_http_requests_total", channel="slack", status="2xx") == 3
    assert value(after, "knowbot_http_requests_total", channel="slack", status="4xx") == 1
    assert value(after, "knowbot_http_ack_seconds_count", channel="slack") == 4
    assert value(after, "knowbot_dedupe_hits_total", channel="slack") == 1
    assert len(slack.called("chat.postMessage")) == 2
    assert value(after, "knowbot_inbox_depth") == 0
    assert value(after, "knowbot_messages_total", channel="slack", outcome="answered") == 1
    # the second question: every model attempt failed, the answer is the fallback
    assert value(after, "knowbot_model_calls_total", provider="default", outcome="ok") == 1
    assert value(after, "knowbot_model_calls_total", provider="default",
                 outcome="server_error") == 3
    assert value(after, "knowbot_model_errors_total", provider="default") == 3
    assert value(after, "knowbot_model_tokens_total", provider="default", kind="prompt") == 120
    assert value(after, "knowbot_model_tokens_total", provider="default", kind="completion") == 7
    assert value(after, "knowbot_model_call_seconds_count", provider="default") == 4
    assert value(after, "knowbot_retrieval_seconds_count") == 2
    assert value(after, "knowbot_answer_seconds_count", channel="slack") >= 1
    # probes and scrapes are not platform requests; no label names a user, chat or message
    assert not any(dict(labels).get("channel") in ("metrics", "healthz") for _, labels in after)
    every_value = {v for _, labels in after for _, v in labels}
    assert not every_value & {"U1", "C1", "T1"}


async def test_duplicates_rate_limits_and_the_outbox_are_counted(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    settings = make_settings(tmp_path, rate_limit_per_minute=2)
    factory = lambda s: Runtime.start(s, knowledge=WordKnowledge(), clock=clock)  # noqa: E731
    async with running_app(settings, [], factory) as (client, runtime):
        key = ConversationKey("test", "team-1", "chat-1", "alice")
        first = InboundMessage(key=key, message_id="m1", text="/calculate 1+1")
        assert (await runtime.dispatcher.process(first)).text == "1+1 = 2"
        assert await runtime.dispatcher.process(first) is None  # a redelivery
        await runtime.dispatcher.process(InboundMessage(key=key, message_id="m2", text="hi"))
        refused = await runtime.dispatcher.process(InboundMessage(key=key, message_id="m3",
                                                                  text="again"))
        assert refused is not None and refused.kind == "error"
        empty = await scrape(client)
        assert value(empty, "knowbot_outbox_depth") == 0
        assert value(empty, "knowbot_outbox_oldest_age_seconds") == 0
        await runtime.outbox.keep("slack", key, Reply("later"), "HTTP 503")
        # a message for a channel no replica runs here waits in the inbox
        waiting = InboundMessage(key=ConversationKey("slack", "T1", "C1", "U1"),
                                 message_id="Ev-waiting", text="hello?")
        assert await runtime.inbox.put(waiting)
        clock.advance(90)
        await runtime.outbox.keep("slack", key, Reply("later too"), "HTTP 503")
        clock.advance(30)
        found = await scrape(client)
    assert value(found, "knowbot_dedupe_hits_total", channel="test") == 1
    assert value(found, "knowbot_messages_total", channel="test", outcome="duplicate") == 1
    assert value(found, "knowbot_rate_limit_refusals_total", channel="test") == 1
    assert value(found, "knowbot_messages_total", channel="test", outcome="answered") == 2
    assert value(found, "knowbot_outbox_depth") == 2
    assert value(found, "knowbot_outbox_oldest_age_seconds") == pytest.approx(120, abs=1)
    assert value(found, "knowbot_inbox_depth") == 1
    assert value(found, "knowbot_inbox_oldest_age_seconds") == pytest.approx(120, abs=1)


async def test_jobs_run_and_failed_are_counted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    factory = lambda s: Runtime.start(s, knowledge=WordKnowledge())  # noqa: E731
    async with running_app(settings, [], factory) as (client, runtime):
        assert runtime.scheduler is not None
        key = ConversationKey("test", "team-1", "chat-1", "alice")
        await runtime.scheduler.run("remind", {"key": key.to_record(), "text": "stand-up"})
        await runtime.scheduler.run("remind", {"text": "a reminder with no conversation"})
        await runtime.scheduler.run("housekeeping", {})
        found = await scrape(client)
    assert value(found, "knowbot_jobs_total", kind="remind", outcome="ok") == 1
    assert value(found, "knowbot_jobs_total", kind="remind", outcome="failed") == 1
    assert value(found, "knowbot_jobs_total", kind="housekeeping", outcome="ok") == 1


async def test_metrics_token_is_required_when_set(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, metrics_token="scrape-me-please")
    factory = lambda s: Runtime.start(s, knowledge=WordKnowledge())  # noqa: E731
    async with running_app(settings, [], factory) as (client, _runtime):
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert wrong.status_code == 401 and "knowbot_" not in wrong.text
        found = await scrape(client, "scrape-me-please")
    assert value(found, "knowbot_build_info", version=__import__("bot").__version__) == 1


def test_label_values_are_bounded() -> None:
    from bot.metrics import MAX_LABEL_VALUES, Metrics

    metrics = Metrics(process=False)
    for n in range(MAX_LABEL_VALUES + 10):
        metrics.message(f"channel-{n}", "answered", 0.1)
    metrics.job("made-up-kind", ok=True)
    text = metrics.registry
    names = {s.labels.get("channel") for f in text.collect() for s in f.samples
             if s.name == "knowbot_messages_total"}
    assert len(names) == MAX_LABEL_VALUES + 1 and "other" in names
    assert metrics.value("knowbot_messages_total", channel="other", outcome="answered") == 10
    assert metrics.value("knowbot_jobs_total", kind="other", outcome="ok") == 1
    json.dumps(sorted(n for n in names if n))  # plain strings
