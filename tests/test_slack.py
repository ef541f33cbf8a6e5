"""The Slack channel end to end: signed requests into the running app, slack-bolt and slack_sdk
talking to a local Slack Web API (tests/fake_slack.py), the real knowledge base underneath."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from slack_sdk.oauth.installation_store.models.installation import Installation

from bot.app import create_app
from bot.errors import ChannelSendError
from bot.runtime import Runtime
from bot.types import Citation, ConversationKey, Reply
from channels.slack import SlackChannel, plain_text
from channels.slack_format import SECTION_LIMIT, render, to_mrkdwn
from conftest import make_settings
from fake_openai import FakeOpenAI
from fake_slack import FakeSlack

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-team-one"
POLICY = (b"# Refund policy\n\nRefunds are issued within 30 days of purchase when the receipt "
          b"is shown. Gift cards are never refunded.\n\n## Shipping\n\nOrders ship on "
          b"Tuesdays from the Leeds warehouse.\n")
_ids = itertools.count(1)


def sign(body: str, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """Slack's request signature: v0= HMAC-SHA256 of "v0:{timestamp}:{body}" (written here)."""
    ts = int(time.time()) if ts is None else ts
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


class SlackBot:
    """A running Knowbot app with the Slack channel, spoken to the way Slack does."""

    def __init__(self, client: httpx.AsyncClient, runtime: Runtime, channel: SlackChannel,
                 slack: FakeSlack) -> None:
        self.client = client
        self.runtime = runtime
        self.channel = channel
        self.slack = slack

    def envelope(self, team: str, event: dict[str, Any], event_id: str | None = None,
                 bot_user: str = "UBOT") -> dict[str, Any]:
        """An Events API event_callback envelope."""
        event.setdefault("ts", f"{int(time.time())}.{next(_ids):06d}")
        event.setdefault("event_ts", event["ts"])
        return {"token": "legacy", "team_id": team, "api_app_id": "A0KNOWBOT", "event": event,
                "type": "event_callback", "event_id": event_id or f"Ev{next(_ids):08d}",
                "event_time": int(time.time()), "is_ext_shared_channel": False,
                "authorizations": [{"enterprise_id": None, "team_id": team, "user_id": bot_user,
                                    "is_bot": True, "is_enterprise_install": False}]}

    async def post_event(self, body: dict[str, Any], retry: int | None = None,
                         ts: int | None = None, secret: str = SECRET) -> httpx.Response:
        """POST a signed event to /slack/events."""
        raw = json.dumps(body)
        headers = {"Content-Type": "application/json", **sign(raw, ts, secret)}
        if retry is not None:
            headers.update({"X-Slack-Retry-Num": str(retry),
                            "X-Slack-Retry-Reason": "http_timeout"})
        return await self.client.post("/slack/events", content=raw, headers=headers)

    async def command(self, team: str, name: str, text: str, *, channel: str = "C1",
                      user: str = "U1", response: str = "r1") -> httpx.Response:
        """POST a signed slash command (form-encoded, like Slack)."""
        raw = urlencode({"token": "legacy", "team_id": team, "team_domain": "acme",
                         "channel_id": channel, "channel_name": "general", "user_id": user,
                         "user_name": "alice", "command": name, "text": text,
                         "api_app_id": "A0KNOWBOT", "is_enterprise_install": "false",
                         "response_url": self.slack.response_url(response),
                         "trigger_id": f"13345224609.738474920.{next(_ids)}"})
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(raw)}
        return await self.client.post("/slack/events", content=raw, headers=headers)

    async def settle(self) -> None:
        """Wait until every answer in flight is finished."""
        assert await self.runtime.workers.wait_idle(60) == 0
        await self.runtime.engine.drain()


@asynccontextmanager
async def running(settings: Any, embedder: object, slack: FakeSlack,
                  channel: SlackChannel | None = None) -> AsyncIterator[SlackBot]:
    """The real app (lifespan and all) on an in-process ASGI transport."""
    channel = channel or SlackChannel(settings)
    app = create_app(settings, runtime_factory=lambda s: Runtime.start(s, embedder=embedder),
                     channels=[channel])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://knowbot") as client:
            bot = SlackBot(client, app.state.runtime, channel, slack)
            yield bot
            await bot.settle()


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_workspace("T1", TOKEN, bot_user_id="UBOT")
        server.add_user("T1", "U1")
        yield server


def settings_for(tmp_path: Path, slack: FakeSlack, **extra: Any) -> Any:
    values: dict[str, Any] = dict(slack_bot_token=TOKEN, slack_signing_secret=SECRET,
                                  slack_api_base=slack.api_base)
    values.update(extra)
    return make_settings(tmp_path, **values)


def all_text(call: Any) -> str:
    """Everything a chat.postMessage showed: its sections and context blocks."""
    parts = []
    for block in call.params.get("blocks") or []:
        if block["type"] == "section":
            parts.append(block["text"]["text"])
        elif block["type"] == "context":
            parts += [e["text"] for e in block["elements"]]
    return "\n".join(parts)


# ---- conversations ---------------------------------------------------------------------------


async def test_mention_answered_in_thread_with_citations(tmp_path: Path, embedder: object,
                                                          slack: FakeSlack) -> None:
    async with running(settings_for(tmp_path, slack), embedder, slack) as bot:
        await bot.runtime.knowledge.ingest_bytes("slack:T1", "chat-C1", POLICY, "policy.md")
        event = {"type": "app_mention", "user": "U1", "channel": "C1",
                 "text": "<@UBOT> how long do refunds take?"}
        started = time.monotonic()
        resp = await bot.post_event(bot.envelope("T1", event))
        assert resp.status_code == 200 and time.monotonic() - started < 3
        [post] = await slack.wait_for("chat.postMessage")
        assert post.token == TOKEN
        assert post.params["channel"] == "C1" and post.params["thread_ts"] == event["ts"]
        shown = all_text(post)
        assert "30 days" in shown
        context = [b for b in post.params["blocks"] if b["type"] == "context"]
        assert context and context[0]["elements"][0]["text"].startswith("[1] Refund policy")
        assert "<@UBOT>" not in shown
        # the conversation is the thread: its memory is kept under the thread's key
        await bot.settle()
        thread = ConversationKey("slack", "T1", "C1", "U1", event["ts"])
        assert await bot.runtime.store.count_messages(thread) == 2
        assert await bot.runtime.store.count_messages(
            ConversationKey("slack", "T1", "C1", "U1")) == 0


async def test_mention_in_a_thread_reads_the_thread_first(tmp_path: Path, embedder: object,
                                                          slack: FakeSlack) -> None:
    async with FakeOpenAI() as model:
        settings = settings_for(tmp_path, slack, llm_base_url=model.base_url, llm_model="m")
        async with running(settings, embedder, slack) as bot:
            parent = "1700000000.000100"
            slack.add_thread("T1", "C1", parent, [
                {"type": "message", "user": "U2", "ts": parent,
                 "text": "The Leeds printer jams on duplex jobs"},
                {"type": "message", "user": "U3", "ts": "1700000000.000200",
                 "text": "Only since the firmware update &amp; only on A3"},
            ])
            event = {"type": "app_mention", "user": "U1", "channel": "C1", "thread_ts": parent,
                     "ts": "1700000000.000300", "text": "<@UBOT> what should we try?"}
            await bot.post_event(bot.envelope("T1", event))
            [post] = await slack.wait_for("chat.postMessage")
            assert post.params["thread_ts"] == parent
            [call] = slack.called("conversations.replies")
            assert call.params["ts"] == parent and call.token == TOKEN
            prompt = json.dumps(model.requests[0]["messages"], ensure_ascii=False)
            assert "duplex jobs" in prompt and "firmware update & only on A3" in prompt
            assert "what should we try?" in prompt
            # the next mention in the same thread uses the memory, not another read
            later = dict(event, ts="1700000000.000400", text="<@UBOT> and then?")
            await bot.post_event(bot.envelope("T1", later))
            await slack.wait_for("chat.postMessage", 2)
            assert len(slack.called("conversations.replies")) == 1
            # every Web API call went over one kept-alive connection, not one each
            assert len(slack.calls) >= 4
            assert len({call.peer for call in slack.calls}) == 1, [c.peer for c in slack.calls]


async def test_dm_answered_in_thread_and_noise_ignored(tmp_path: Path, embedder: object,
                                                       slack: FakeSlack) -> None:
    async with running(settings_for(tmp_path, slack), embedder, slack) as bot:
        await bot.runtime.knowledge.ingest_bytes("slack:T1", "chat-D1", POLICY, "policy.md")
        noise = [
            {"type": "message", "subtype": "message_changed", "channel": "D1", "channel_type": "im",
             "message": {"user": "U1", "text": "edited"}},
            {"type": "message", "subtype": "bot_message", "bot_id": "B9", "channel": "D1",
             "channel_type": "im", "text": "I am a bot"},
            {"type": "message", "user": "UBOT", "bot_id": "BBOT", "channel": "D1",
             "channel_type": "im", "text": "my own answer"},
            {"type": "message", "user": "U1", "channel": "C1", "channel_type": "channel",
             "text": "channel chatter without a mention"},
        ]
        for event in noise:
            assert (await bot.post_event(bot.envelope("T1", event))).status_code == 200
        event = {"type": "message", "user": "U1", "channel": "D1", "channel_type": "im",
                 "text": "When do orders ship?"}
        await bot.post_event(bot.envelope("T1", event))
        [post] = await slack.wait_for("chat.postMessage")
        await bot.settle()
        assert len(slack.called("chat.postMessage")) == 1
        assert post.params["channel"] == "D1" and post.params["thread_ts"] == event["ts"]
        assert "Tuesdays" in all_text(post)


async def test_a_tool_waiting_for_confirmation_gets_a_button_that_runs_it(
        tmp_path: Path, embedder: object, slack: FakeSlack) -> None:
    settings = settings_for(tmp_path, slack,
                            tool_policy=[{"match": "*", "confirm": ["calculate"]}])
    async with running(settings, embedder, slack) as bot:
        event = {"type": "message", "user": "U1", "channel": "D1", "channel_type": "im",
                 "text": "/calculate 6*7"}
        await bot.post_event(bot.envelope("T1", event))
        [asked] = await slack.wait_for("chat.postMessage")
        await bot.settle()
        assert "Not run yet" in all_text(asked)
        [actions] = [b for b in asked.params["blocks"] if b["type"] == "actions"]
        [button] = actions["elements"]
        code = button["value"]
        assert f"/confirm {code}" in all_text(asked)

        def click(user: str, trigger: str) -> str:
            """A block_actions payload as Slack posts it for a button click (form-encoded)."""
            payload = {
                "type": "block_actions", "trigger_id": trigger, "api_app_id": "A0KNOWBOT",
                "team": {"id": "T1", "domain": "acme"}, "user": {"id": user, "team_id": "T1"},
                "channel": {"id": "D1", "name": "directmessage"},
                "container": {"type": "message", "message_ts": "1700000001.000200",
                              "channel_id": "D1", "is_ephemeral": False},
                "message": {"type": "message", "user": "UBOT", "ts": "1700000001.000200",
                            "thread_ts": event["ts"], "text": "Not run yet"},
                "response_url": slack.response_url("act"),
                "actions": [{"type": "button", "action_id": button["action_id"],
                             "block_id": "b1", "value": code, "action_ts": "1700000002.1"}],
            }
            return urlencode({"payload": json.dumps(payload)})

        # someone else clicking runs nothing: the code belongs to U1's conversation
        raw = click("U2", "111.222.1")
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(raw)}
        assert (await bot.client.post("/slack/events", content=raw, headers=headers)).status_code == 200
        await bot.settle()
        [_, refused] = slack.called("chat.postMessage")
        assert "unknown or has expired" in all_text(refused)
        raw = click("U1", "111.222.2")
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(raw)}
        assert (await bot.client.post("/slack/events", content=raw, headers=headers)).status_code == 200
        await bot.settle()
        done = slack.called("chat.postMessage")[-1]
        assert "6*7 = 42" in all_text(done) and done.params["thread_ts"] == event["ts"]


async def test_slash_command_acked_fast_and_answered_on_response_url(
        tmp_path: Path, embedder: object, slack: FakeSlack) -> None:
    async with running(settings_for(tmp_path, slack), embedder, slack) as bot:
        await bot.runtime.knowledge.ingest_bytes("slack:T1", "chat-C1", POLICY, "policy.md")
        started = time.monotonic()
        resp = await bot.command("T1", "/ask", "are gift cards refunded?", response="private")
        assert resp.status_code == 200 and time.monotonic() - started < 3
        assert "Working on it" in resp.json()["text"]
        [answer] = await slack.wait_responses(1)
        assert answer["_name"] == "private" and answer["response_type"] == "ephemeral"
        assert "never refunded" in answer["text"] and "Refund policy" in answer["text"]
        # the command went through the inbox (kept before the ack) and is done now
        assert await bot.runtime.workers.wait_idle(5) == 0
        assert await bot.runtime.store.read(lambda conn: conn.exec_driver_sql(
            "SELECT count(*) FROM inbox_entry WHERE channel = 'slack' AND status = 'done' "
            "AND message LIKE '%gift cards%'").scalar_one()) == 1

        resp = await bot.command("T1", "/ask", "public when do orders ship?", response="shared")
        assert resp.status_code == 200
        answers = await slack.wait_responses(2)
        assert answers[1]["response_type"] == "in_channel" and "Tuesdays" in answers[1]["text"]

        await bot.command("T1", "/kb", "", response="kb")
        listing = (await slack.wait_responses(3))[2]
        assert "Refund policy" in listing["text"]
        assert not slack.called("chat.postMessage")


async def test_response_url_uses_are_bounded(tmp_path: Path, embedder: object,
                                             slack: FakeSlack) -> None:
    async with running(settings_for(tmp_path, slack), embedder, slack) as bot:
        commands = bot.channel.commands
        issued = time.time()
        url = slack.response_url("bounded")
        assert [await commands.take_use(url, issued) for _ in range(6)] == [True] * 5 + [False]
        assert not await commands.take_use(slack.response_url("old"), issued - 30 * 60)
        # past the uses, an answer goes out as an ephemeral message through the Web API
        key = ConversationKey("slack", "T1", "C1", "U1")
        await commands.respond(url, Reply("late answer"), False, key, TOKEN, issued)
        [post] = slack.called("chat.postEphemeral")
        assert post.params["user"] == "U1" and "late answer" in post.params["text"]


# ---- files ------------------------------------------------------------------------------------


async def test_file_shared_in_dm_then_asked_about(tmp_path: Path, embedder: object,
                                                  slack: FakeSlack) -> None:
    async with running(settings_for(tmp_path, slack), embedder, slack) as bot:
        file_id = slack.add_file("T1", "policy.md", POLICY, "text/markdown")
        share = {"type": "message", "subtype": "file_share", "user": "U1", "channel": "D1",
                 "channel_type": "im", "text": "", "files": [{"id": file_id}]}
        await bot.post_event(bot.envelope("T1", share))
        [receipt] = await slack.wait_for("chat.postMessage")
        assert slack.called("files.info")[0].params["file"] == file_id
        assert slack.downloads == [(file_id, TOKEN)]
        assert receipt.params["thread_ts"] == share["ts"]
        assert re.search(r"Added “.*” in the knowledge base: .*\d+ chunks", all_text(receipt))

        ask = {"type": "message", "user": "U1", "channel": "D1", "channel_type": "im",
               "text": "Which warehouse do orders ship from?"}
        await bot.post_event(bot.envelope("T1", ask))
        answer = (await slack.wait_for("chat.postMessage", 2))[1]
        assert "Leeds" in all_text(answer) and "Refund policy" in all_text(answer)

        again = dict(share, ts=None, files=[{"id": file_id}])
        again.pop("ts")
        await bot.post_event(bot.envelope("T1", again))
        unchanged = (await slack.wait_for("chat.postMessage", 3))[2]
        assert "unchanged" in all_text(unchanged)


async def test_too_large_and_broken_files_get_a_clear_reply(tmp_path: Path, embedder: object,
                                                            slack: FakeSlack) -> None:
    settings = settings_for(tmp_path, slack, ingest_max_bytes=4096)
    async with running(settings, embedder, slack) as bot:
        big = slack.add_file("T1", "huge.pdf", b"%PDF-1.4 tiny", "application/pdf",
                             size=50 * 1024 * 1024)
        event = {"type": "message", "subtype": "file_share", "user": "U1", "channel": "D1",
                 "channel_type": "im", "text": "", "files": [{"id": big}]}
        await bot.post_event(bot.envelope("T1", event))
        [reply] = await slack.wait_for("chat.postMessage")
        assert "over the" in all_text(reply) and "limit" in all_text(reply)
        assert slack.downloads == []  # the size was checked before downloading

        broken = slack.add_file("T1", "report.pdf", b"%PDF-1.4 this is not a real pdf",
                                "application/pdf")
        event = {"type": "message", "subtype": "file_share", "user": "U1", "channel": "D1",
                 "channel_type": "im", "text": "", "files": [{"id": broken}]}
        await bot.post_event(bot.envelope("T1", event))
        reply = (await slack.wait_for("chat.postMessage", 2))[1]
        await bot.settle()
        assert "Added" not in all_text(reply)
        assert await bot.runtime.knowledge.registry.sources("slack:T1", "chat-D1") == []


async def test_file_in_channel_needs_an_admin(tmp_path: Path, embedder: object,
                                              slack: FakeSlack) -> None:
    async with running(settings_for(tmp_path, slack), embedder, slack) as bot:
        slack.add_user("T1", "U1")
        slack.add_user("T1", "UADMIN", is_admin=True)
        file_id = slack.add_file("T1", "policy.md", POLICY, "text/markdown")
        for user in ("U1", "UADMIN"):
            event = {"type": "app_mention", "user": user, "channel": "C1", "text": "<@UBOT> keep",
                     "files": [{"id": file_id}]}
            await bot.post_event(bot.envelope("T1", event))
            await bot.settle()
        refused, added = slack.called("chat.postMessage")
        assert "Only the admins" in all_text(refused)
        assert "Added" in all_text(added)
        assert [d[0] for d in slack.downloads] == [file_id]  # never downloaded for the refusal


# ---- retries and signatures --------------------------------------------------------------------


async def test_retried_event_answered_once_even_after_restart(tmp_path: Path, embedder: object,
                                                              slack: FakeSlack) -> None:
    settings = settings_for(tmp_path, slack)
    event = {"type": "app_mention", "user": "U1", "channel": "C1", "text": "<@UBOT> hello"}
    async with running(settings, embedder, slack) as bot:
        body = bot.envelope("T1", event, event_id="Ev0RETRY01")
        first, retry = await asyncio.gather(bot.post_event(body), bot.post_event(body, retry=1))
        assert first.status_code == retry.status_code == 200
        await bot.settle()
        assert len(slack.called("chat.postMessage")) == 1
    async with running(settings, embedder, slack) as bot:  # a restart on the same database
        assert (await bot.post_event(body, retry=2)).status_code == 200
        await bot.settle()
        assert len(slack.called("chat.postMessage")) == 1


async def test_forged_or_stale_signature_refused(tmp_path: Path, embedder: object,
                                                 slack: FakeSlack) -> None:
    async with running(settings_for(tmp_path, slack), embedder, slack) as bot:
        event = {"type": "app_mention", "user": "U1", "channel": "C1", "text": "<@UBOT> hi"}
        body = bot.envelope("T1", event, event_id="Ev0FORGED1")
        assert (await bot.post_event(body, secret="not-the-secret")).status_code == 401
        stale = int(time.time()) - 5 * 60 - 5
        assert (await bot.post_event(body, ts=stale)).status_code == 401
        raw = json.dumps(body)
        unsigned = await bot.client.post("/slack/events", content=raw,
                                         headers={"Content-Type": "application/json"})
        assert unsigned.status_code == 401
        await bot.settle()
        assert slack.calls == []
        assert await bot.runtime.inbox.status("slack", "T1", "Ev0FORGED1") is None
        # an oversized body is refused before it is read whole, with or without a length
        async def chunks():  # no Content-Length: sent chunked
            for _ in range(40):
                yield b"x" * 65536

        big = await bot.client.post("/slack/events", content=chunks(),
                                    headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        # the same event correctly signed is taken
        assert (await bot.post_event(body)).status_code == 200
        await slack.wait_for("chat.postMessage")


# ---- sending ------------------------------------------------------------------------------------


async def test_rate_limit_retry_after_honoured(tmp_path: Path, embedder: object,
                                               slack: FakeSlack) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    settings = settings_for(tmp_path, slack)
    channel = SlackChannel(settings, sleep=sleep, max_rate_limit_wait=30)
    async with running(settings, embedder, slack, channel) as bot:
        key = ConversationKey("slack", "T1", "C1", "U1", "1700000000.000100")
        slack.rate_limit("chat.postMessage", retry_after=7)
        assert await bot.runtime.outbox.deliver(channel, key, Reply("after the wait"))
        assert waits == [7.0]
        first, second = slack.called("chat.postMessage")
        assert second.params["thread_ts"] == "1700000000.000100"

        # a wait longer than the bound is not slept through: the outbox keeps the reply
        slack.rate_limit("chat.postMessage", retry_after=120)
        assert not await bot.runtime.outbox.deliver(channel, key, Reply("later"))
        assert waits == [7.0] and await bot.runtime.outbox.pending() == 1

        with pytest.raises(ChannelSendError) as failed:
            await channel.send(ConversationKey("slack", "T1", "", "U1"), Reply("nowhere"))
        assert failed.value.retryable is False


# ---- workspaces ---------------------------------------------------------------------------------


async def test_two_workspaces_cannot_see_each_other(tmp_path: Path, embedder: object,
                                                    slack: FakeSlack) -> None:
    slack.add_workspace("TA", "xoxb-alpha", bot_user_id="UBOTA")
    slack.add_workspace("TB", "xoxb-beta", bot_user_id="UBOTB")
    settings = settings_for(tmp_path, slack, slack_bot_token=None, slack_client_id=slack.client_id,
                            slack_client_secret=slack.client_secret)
    async with running(settings, embedder, slack) as bot:
        store = bot.channel.installations
        assert store is not None
        for team, token, user in (("TA", "xoxb-alpha", "UBOTA"), ("TB", "xoxb-beta", "UBOTB")):
            await store.async_save(Installation(app_id="A0KNOWBOT", team_id=team, user_id="UI",
                                                bot_token=token, bot_id="B" + team,
                                                bot_user_id=user, bot_scopes=["chat:write"]))
        file_id = slack.add_file("TA", "policy.md", POLICY, "text/markdown")
        share = {"type": "message", "subtype": "file_share", "user": "U1", "channel": "D1",
                 "channel_type": "im", "text": "", "files": [{"id": file_id}]}
        await bot.post_event(bot.envelope("TA", share, bot_user="UBOTA"))
        await slack.wait_for("chat.postMessage")
        await bot.settle()
        question = "Which warehouse do orders ship from?"
        for team, bot_user in (("TA", "UBOTA"), ("TB", "UBOTB")):
            event = {"type": "message", "user": "U1", "channel": "D1", "channel_type": "im",
                     "text": question}
            await bot.post_event(bot.envelope(team, event, bot_user=bot_user))
            await bot.settle()
        _, in_a, in_b = slack.called("chat.postMessage")
        assert in_a.token == "xoxb-alpha" and "Leeds" in all_text(in_a)
        assert in_b.token == "xoxb-beta" and "Leeds" not in all_text(in_b)
        assert "could not find anything" in all_text(in_b)


async def test_oauth_install_stores_the_workspace(tmp_path: Path, embedder: object,
                                                  slack: FakeSlack) -> None:
    settings = settings_for(tmp_path, slack, slack_bot_token=None, slack_client_id=slack.client_id,
                            slack_client_secret=slack.client_secret,
                            public_url="https://knowbot.example.com")
    async with running(settings, embedder, slack) as bot:
        page = await bot.client.get("/slack/install")
        assert page.status_code == 200
        link = re.search(r'href="([^"]*oauth/v2/authorize[^"]*)"', page.text)
        assert link is not None and link.group(1).startswith(slack.base_url)
        query = parse_qs(urlsplit(link.group(1).replace("&amp;", "&")).query)
        assert query["client_id"] == [slack.client_id] and "files:read" in query["scope"][0]
        slack.add_oauth_code("code-9", "T9", "xoxb-nine", "UBOT9")
        done = await bot.client.get("/slack/oauth_redirect",
                                    params={"code": "code-9", "state": query["state"][0]})
        assert done.status_code == 200
        assert await bot.channel.token_for("T9") == "xoxb-nine"
        # a state is good once only
        again = await bot.client.get("/slack/oauth_redirect",
                                     params={"code": "code-9", "state": query["state"][0]})
        assert again.status_code == 400


# ---- rendering ----------------------------------------------------------------------------------


def test_markdown_becomes_slack_mrkdwn() -> None:
    text = to_mrkdwn("# Plan\n**Bold** and *soft* [docs](https://ex.com/a?b=1&c=2) "
                     "a < b & c > d\n- one\n- two\n> quoted [1]\n```py\nif a < b:\n```\n`x**y**`")
    assert text.splitlines()[0] == "*Plan*"
    assert "*Bold* and _soft_ <https://ex.com/a?b=1&amp;c=2|docs>" in text
    assert "a &lt; b &amp; c &gt; d" in text
    assert "• one\n• two" in text and "> quoted [1]" in text
    assert "```\nif a &lt; b:\n```" in text and "`x**y**`" in text


def test_long_replies_split_to_slack_limits() -> None:
    paragraph = "Refunds are issued within thirty days. " * 40  # ~1,600 characters
    reply = Reply("\n\n".join([paragraph] * 120),
                  tuple(Citation(f"doc{n}.md", f"page {n}") for n in range(1, 13)))
    messages = render(reply)
    assert len(messages) > 1
    for message in messages:
        assert len(message.blocks) <= 50 and len(message.text) <= 40000
        for block in message.blocks:
            if block["type"] == "section":
                assert len(block["text"]["text"]) <= SECTION_LIMIT
    context = messages[-1].blocks[-1]
    assert context["type"] == "context" and len(context["elements"]) <= 10
    assert "doc12.md" in context["elements"][-1]["text"]
    shown = "".join(b["text"]["text"] for m in messages for b in m.blocks if b["type"] == "section")
    assert shown.count("Refunds") == 40 * 120


def test_slack_text_becomes_plain_words() -> None:
    text = plain_text("<@UBOT> see <https://ex.com/a|the page> &amp; ask <@U2|bob> "
                      "in <#C1|general>", "UBOT")
    assert text == "see https://ex.com/a & ask @bob in #general"


# ---- Socket Mode --------------------------------------------------------------------------------


async def test_socket_mode_needs_no_public_url(tmp_path: Path, embedder: object,
                                               slack: FakeSlack) -> None:
    slack.add_app_token("xapp-1-socket")
    settings = settings_for(tmp_path, slack, slack_signing_secret=None,
                            slack_app_token="xapp-1-socket")
    async with running(settings, embedder, slack) as bot:
        await slack.wait_connected()
        await bot.runtime.knowledge.ingest_bytes("slack:T1", "chat-C1", POLICY, "policy.md")
        # with no signing secret there is no HTTP endpoint to forge requests against
        assert (await bot.post_event(bot.envelope("T1", {"type": "app_mention"}))).status_code \
            == 404
        event = {"type": "app_mention", "user": "U1", "channel": "C1",
                 "text": "<@UBOT> how long do refunds take?"}
        body = bot.envelope("T1", event, event_id="Ev0SOCKET1")
        for attempt in (0, 1):  # Slack redelivers an envelope it thinks was lost
            await slack.push({"envelope_id": f"env-{attempt}", "type": "events_api",
                              "accepts_response_payload": False, "retry_attempt": attempt,
                              "retry_reason": "timeout" if attempt else "", "payload": body})
        acks = await slack.wait_acks(2)
        assert {a["envelope_id"] for a in acks} == {"env-0", "env-1"}
        [post] = await slack.wait_for("chat.postMessage")
        await bot.settle()
        assert len(slack.called("chat.postMessage")) == 1
        assert post.params["thread_ts"] == event["ts"] and "30 days" in all_text(post)


async def test_socket_mode_keeps_trying_when_slack_is_unreachable_at_start(
        tmp_path: Path, embedder: object, slack: FakeSlack) -> None:
    settings = make_settings(tmp_path, slack_bot_token=TOKEN, slack_app_token="xapp-1-down",
                             slack_api_base="http://127.0.0.1:9/api/")
    started = time.monotonic()
    async with running(settings, embedder, slack) as bot:  # the server starts all the same
        for _ in range(100):
            if bot.channel._connecting is not None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert bot.channel._connecting is not None and not bot.channel._connecting.done()
        health = await bot.client.get("/healthz")
        assert health.status_code == 200 and health.json()["channels"] == ["slack"]
    assert time.monotonic() - started < 10  # and stops without waiting for the retries
