"""The WeChat channel end to end: the tests play the WeChat platform against the running app.

Timings are scaled down (WeChat's 5 s becomes 1 s, the reply window 0.8 s) except in one
real-time test of an answer that takes 7 s.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from bot.app import create_app
from bot.runtime import Runtime
from channels.text import utf8_len
from channels.wechat import WeChatChannel
from channels.wechat_planner import Timings
from channels.wechat_text import parts_of
from bot.types import Reply
from conftest import WordKnowledge, make_settings
from fake_openai import FakeOpenAI, delay, reply
from fake_wechat import FakeWeChatAPI, WeChatServer, bound_socket, serve

TOKEN = "knowbot-test-token"
APP_ID = "wx-test-app"
AES_KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")
FAST = Timings(window=0.8, platform_timeout=1.0, requests_per_message=3, keep_done=30)
USER, ADMIN = "o-user-1", "o-admin-1"
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/wechat/answer/\S+)")


@dataclass
class Harness:
    """A running Knowbot with its WeChat channel, the platform calling it, and its API."""

    wx: WeChatServer
    api: FakeWeChatAPI
    channel: WeChatChannel
    url: str
    knowledge: WordKnowledge | None

    @property
    def runtime(self) -> Runtime:
        """The running app's runtime."""
        assert self.channel.runtime is not None
        return self.channel.runtime


@asynccontextmanager
async def wechat_bot(tmp_path: Path, *, verified: bool = False, mode: str = "plain",
                     timings: Timings = FAST, model: FakeOpenAI | None = None,
                     embedder: Any = None, **overrides: Any) -> AsyncIterator[Harness]:
    """Start the API fake and the app; yield a harness."""
    api = FakeWeChatAPI(app_id=APP_ID)
    async with serve(api.app()) as api_url:
        sock, url = bound_socket()
        values: dict[str, Any] = dict(
            wechat_token=TOKEN, wechat_app_id=APP_ID, wechat_app_secret=api.secret,
            wechat_api_base=api_url, wechat_verified=verified, public_url=url,
            secret_key="s" * 32, admins=[f"wechat:{ADMIN}"], rate_limit_per_minute=100)
        if mode != "plain":
            values["wechat_aes_key"] = AES_KEY
        if model is not None:
            values.update(llm_base_url=model.base_url, llm_model="m", llm_max_retries=0,
                          llm_timeout=60)
        values.update(overrides)
        settings = make_settings(tmp_path, **values)
        knowledge = None if embedder is not None else WordKnowledge()

        async def factory(s: Any) -> Runtime:
            if embedder is not None:
                return await Runtime.start(s, embedder=embedder)
            return await Runtime.start(s, knowledge=knowledge)

        channel = WeChatChannel(settings, timings=timings)
        app = create_app(settings, runtime_factory=factory, channels=[channel])
        async with serve(app, sock) as url:
            wx = WeChatServer(url, TOKEN, app_id=APP_ID, aes_key=AES_KEY, mode=mode,
                              timeout=timings.platform_timeout, api=api)
            harness = Harness(wx, api, channel, url, knowledge)
            if model is not None:  # the first model call is slow (imports, clients): warm up
                from bot.types import ConversationKey, InboundMessage

                warm = ConversationKey("wechat", APP_ID, "o-warm", "o-warm")
                await harness.runtime.dispatcher.process(InboundMessage(warm, "warm-1", "warm"))
                model.reset()
            try:
                yield harness
            finally:
                await wx.close()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    """A local model server."""
    async with FakeOpenAI() as server:
        yield server


# ---- security --------------------------------------------------------------------------


async def test_handshake_echoes_only_with_a_good_signature(tmp_path: Path) -> None:
    from fake_wechat import sign

    async with wechat_bot(tmp_path) as bot, httpx.AsyncClient() as http:
        good = {"signature": sign(TOKEN, "1700000000", "n1"), "timestamp": "1700000000",
                "nonce": "n1", "echostr": "echo-123"}
        resp = await http.get(f"{bot.url}/wechat", params=good)
        assert resp.status_code == 200 and resp.text == "echo-123"
        forged = {**good, "signature": sign("wrong-token", "1700000000", "n1")}
        resp = await http.get(f"{bot.url}/wechat", params=forged)
        assert resp.status_code == 403 and "echo-123" not in resp.text


@pytest.mark.parametrize("mode", ["plain", "safe"])
async def test_forged_signature_is_refused_and_nothing_processed(tmp_path: Path, mode: str,
                                                                 model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, mode=mode, model=model) as bot:
        params, body = bot.wx.envelope(bot.wx.xml(USER, "text", {"Content": "hi"}), USER)
        forged = {**params, "signature": "0" * 40}
        assert (await bot.wx.post(forged, body)).statuses == [403]
        if mode == "safe":  # the outer signature is right but the message signature is not
            bad_msg = {**params, "msg_signature": "0" * 40}
            assert (await bot.wx.post(bad_msg, body)).statuses == [403]
            tampered = body.replace(b"<Encrypt><![CDATA[", b"<Encrypt><![CDATA[AAAA")
            assert (await bot.wx.post(params, tampered)).statuses == [403]
        assert model.requests == []
        assert bot.channel.planner is not None and bot.channel.planner.tracked == 0


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<xml><ToUserName>gh_test</ToUserName><FromUserName>o-user-1</FromUserName>
<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&d;</Content><MsgId>9</MsgId></xml>"""
EXTERNAL = """<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>gh_test</ToUserName><FromUserName>o-user-1</FromUserName>
<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&x;</Content><MsgId>8</MsgId></xml>"""


@pytest.mark.parametrize("mode", ["plain", "safe"])
async def test_entity_attacks_are_refused(tmp_path: Path, mode: str, model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, mode=mode, model=model) as bot:
        for evil in (BILLION_LAUGHS, EXTERNAL):
            params, body = bot.wx.envelope(evil, USER)  # signed and (safe mode) encrypted
            exchange = await bot.wx.post(params, body)
            assert exchange.statuses == [400]
            assert "root:" not in exchange.raw and "haha" not in exchange.raw
        big = bot.wx.xml(USER, "text", {"Content": "x" * 70_000})
        assert (await bot.wx.post(*bot.wx.envelope(big, USER))).statuses == [413]
        assert model.requests == []


# ---- the delivery planner ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
async def test_quick_answer_comes_in_the_passive_reply(tmp_path: Path, mode: str) -> None:
    async with wechat_bot(tmp_path, mode=mode) as bot:
        assert bot.knowledge is not None
        bot.knowledge.add(USER, "Handbook", "p. 3", "Refunds are paid within **14 days** of "
                          "the request.")
        exchange = await bot.wx.text(USER, "how fast are refunds paid?")
        assert exchange.statuses == [200]
        assert exchange.content is not None
        assert "Refunds are paid within 14 days" in exchange.content  # markdown stripped
        assert "Sources:\n[1] Handbook, p. 3" in exchange.content
        assert bot.api.sent == []


async def test_slow_answer_is_delivered_on_the_retry(tmp_path: Path, model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, model=model) as bot:
        model.script(delay(1.4, reply("The office opens at 9.")))  # WeChat's 7 s, scaled
        exchange = await bot.wx.text(USER, "when does the office open?")
        assert exchange.statuses == [None, 200]
        assert exchange.content == "The office opens at 9."
        assert len(model.requests) == 1  # the retry did not start a second answer
        assert bot.api.sent == []


async def test_an_answer_taken_after_wechat_gave_up_is_held_not_lost(tmp_path: Path,
                                                                     model: FakeOpenAI) -> None:
    """A replica that lags under load takes the answer for a request only after WeChat's
    timeout: that reply would be dropped, and the retry meanwhile found the answer taken. The
    answer is held for the person's next message instead of lost."""
    async with wechat_bot(tmp_path, model=model) as bot:
        model.script(reply("Lagged answer."), reply("Second answer."))
        planner = bot.channel.planner
        take = planner._take
        lagged: list[bool] = []

        async def lagging_take(*args: Any, **kwargs: Any) -> Any:
            found = await take(*args, **kwargs)
            if found[1] and not lagged:  # the first claim comes back after WeChat's timeout
                lagged.append(True)
                await asyncio.sleep(FAST.platform_timeout + 0.2)
            return found

        planner._take = lagging_take  # type: ignore[method-assign]
        exchange = await bot.wx.text(USER, "a question")
        assert exchange.statuses == [None, 200] and not exchange.content  # "success"
        assert lagged
        for _ in range(100):
            if await planner.delivery.has_held(USER):
                break
            await asyncio.sleep(0.05)
        nxt = await bot.wx.text(USER, "and another")
        assert nxt.content is not None and nxt.content.startswith("Lagged answer.")
        assert "Second answer." in nxt.content


async def test_seven_second_answer_on_the_retry_in_real_time(tmp_path: Path,
                                                             model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, model=model, timings=Timings()) as bot:
        model.script(delay(7.0, reply("Real time answer.")))
        exchange = await bot.wx.text(USER, "a slow question")
        assert exchange.statuses == [None, 200]
        assert exchange.content == "Real time answer."
        assert len(model.requests) == 1


async def test_slower_answer_is_pushed_when_verified(tmp_path: Path, model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, model=model, verified=True) as bot:
        model.script(delay(4.0, reply("Here is the slow answer.")))  # WeChat's 20 s, scaled
        exchange = await bot.wx.text(USER, "a hard question")
        assert exchange.statuses == [None, None, 200]
        assert exchange.content is not None and "being prepared" in exchange.content
        assert await bot.api.wait_sent(1) == ["Here is the slow answer."]
        assert bot.api.sent[0]["touser"] == USER
        assert bot.api.token_hits == 1 and bot.api.refused == []
        assert len(model.requests) == 1


async def test_no_push_is_promised_when_no_access_token_can_be_had(tmp_path: Path,
                                                                  model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, model=model, verified=True,
                          wechat_app_secret="not-the-app-secret") as bot:
        model.script(delay(4.0, reply("Here is the slow answer.")), reply("Second answer."))
        exchange = await bot.wx.text(USER, "a hard question")
        assert exchange.statuses == [None, None, 200]
        assert exchange.content is not None
        assert "I will send it to you here" not in exchange.content  # it could not be pushed
        assert "Send me any message" in exchange.content
        await asyncio.sleep(1.5)  # the answer is ready at about 4 s, and held
        nxt = await bot.wx.text(USER, "thanks")
        assert nxt.content is not None and nxt.content.startswith("Here is the slow answer.")
        assert bot.api.sent == []


async def test_a_promised_push_that_fails_is_handed_over_saying_it_waited(
        tmp_path: Path, model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, model=model, verified=True) as bot:
        model.script(delay(4.0, reply("Here is the slow answer.")), reply("Second answer."))
        asking = asyncio.create_task(bot.wx.text(USER, "a hard question"))
        await asyncio.sleep(0.3)
        bot.api.used[USER] = 5  # WeChat will refuse the push: the user's allowance is used up
        exchange = await asking
        assert exchange.content is not None and "I will send it to you here" in exchange.content
        await asyncio.sleep(1.5)  # the answer is ready at about 4 s; the push is refused
        assert bot.api.refused == [45047] and bot.api.sent == []
        nxt = await bot.wx.text(USER, "did it come?")
        assert nxt.content is not None
        assert nxt.content.startswith("I could not send you this answer earlier")
        assert "Here is the slow answer." in nxt.content


async def test_slower_answer_is_held_for_the_next_message_when_unverified(
        tmp_path: Path, model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, model=model) as bot:
        model.script(delay(4.0, reply("The **held** answer <b>.")), reply("Second answer."))
        exchange = await bot.wx.text(USER, "a hard question")
        assert exchange.statuses == [None, None, 200]
        assert exchange.content is not None and "Send me any message" in exchange.content
        link = LINK.search(exchange.content)
        assert link is not None
        async with httpx.AsyncClient() as http:
            page = await http.get(link.group(1))
            assert "still being prepared" in page.text
            for _ in range(100):  # the answer is ready at about 4 s
                page = await http.get(link.group(1))
                if "still being prepared" not in page.text:
                    break
                await asyncio.sleep(0.1)
            assert "The held answer &lt;b&gt;." in page.text  # escaped, markup stripped
            forged = await http.get(link.group(1)[:-3] + "abc")
            assert forged.status_code == 404
        nxt = await bot.wx.text(USER, "thanks")
        assert nxt.statuses == [200]
        assert nxt.content is not None
        assert nxt.content.startswith("The held answer <b>.")
        assert "Second answer." in nxt.content  # both fit in one passive reply
        assert bot.api.sent == []


async def test_retries_and_duplicates_are_answered_once(tmp_path: Path,
                                                        model: FakeOpenAI) -> None:
    async with wechat_bot(tmp_path, model=model) as bot:
        model.script(reply("Only once."))
        first = await bot.wx.text(USER, "question", msg_id="777")
        assert first.content == "Only once."
        again = await bot.wx.text(USER, "question", msg_id="777")  # a late duplicate delivery
        assert again.statuses == [200] and again.content == ""  # "success", no second answer
        assert len(model.requests) == 1


async def test_customer_service_allowance_of_five(tmp_path: Path, model: FakeOpenAI) -> None:
    paragraphs = [f"Paragraph {n}: " + "word " * 300 for n in range(1, 9)]  # about 8 parts
    async with wechat_bot(tmp_path, model=model, verified=True) as bot:
        model.script(reply("\n\n".join(paragraphs)))
        exchange = await bot.wx.text(USER, "tell me everything")
        assert exchange.content is not None and exchange.content.startswith("Paragraph 1:")
        assert "continued in the next message" in exchange.content
        texts = await bot.api.wait_sent(5)
        assert [t.split(":")[0] for t in texts] == [f"Paragraph {n}" for n in range(2, 7)]
        await asyncio.sleep(0.3)
        assert len(bot.api.sent) == 5 and bot.api.refused == []  # never over the allowance
        nxt = await bot.wx.text(USER, "more please")  # the held rest is handed over
        assert nxt.content is not None and nxt.content.startswith("Paragraph 7:")


@pytest.mark.parametrize("verified", [False, True])
async def test_six_thousand_byte_answer_is_split(tmp_path: Path, model: FakeOpenAI,
                                                 verified: bool) -> None:
    sentences = [f"第{n}条：退款在十四个工作日内完成，请保留好收据。" for n in range(1, 100)]
    answer = "".join(sentences)
    assert utf8_len(answer) > 6000
    async with wechat_bot(tmp_path, model=model, verified=verified) as bot:
        model.script(reply(answer))
        exchange = await bot.wx.text(USER, "退款规则是什么？")
        assert exchange.content is not None
        assert utf8_len(exchange.content) <= 2048
        received = [exchange.content]
        if verified:
            expected = len(parts_of(Reply(answer))) - 1
            assert expected >= 3
            received += await bot.api.wait_sent(expected)
            assert len(received) == expected + 1
        else:
            assert LINK.search(exchange.content)
            for _ in range(6):
                nxt = await bot.wx.text(USER, "继续")
                assert nxt.content is not None and utf8_len(nxt.content) <= 2048
                received.append(nxt.content)
                if "send any message for the next part" not in nxt.content:
                    break
        joined = "".join(received)
        for sentence in sentences:
            assert sentence in joined


# ---- messages and events ---------------------------------------------------------------


async def test_events_voice_and_media(tmp_path: Path) -> None:
    async with wechat_bot(tmp_path) as bot:
        welcome = await bot.wx.send(USER, "event", Event="subscribe")
        assert welcome.content is not None and "Welcome" in welcome.content
        menu = await bot.wx.send(USER, "event", Event="CLICK", EventKey="help")
        assert menu.content is not None and "/upload" in menu.content
        voice = await bot.wx.send(USER, "voice", MediaId="m1", Format="amr",
                                  Recognition="/help")
        assert voice.content is not None and "/ask" in voice.content
        image = await bot.wx.send(USER, "image", PicUrl="http://x/p.jpg", MediaId="m2")
        assert image.content is not None and "can't read images" in image.content
        link = await bot.wx.send(USER, "link", Title="t", Description="d",
                                 Url="http://127.0.0.1:1/a")
        assert link.content is not None and "Only the account's admins" in link.content
        upload = await bot.wx.text(USER, "/upload")
        assert upload.content == "Only admins can use /upload."


async def test_send_pushes_when_verified_and_holds_otherwise(tmp_path: Path) -> None:
    from bot.types import ConversationKey, Reply

    for verified in (True, False):
        async with wechat_bot(tmp_path / str(verified), verified=verified) as bot:
            await bot.wx.text(USER, "hello")
            key = ConversationKey("wechat", APP_ID, USER, USER)
            assert await bot.runtime.outbox.deliver(bot.channel, key, Reply("Reminder: standup"))
            if verified:
                assert await bot.api.wait_sent(1) == ["Reminder: standup"]
            else:
                assert bot.api.sent == []
                nxt = await bot.wx.text(USER, "hi again")
                assert nxt.content is not None and nxt.content.startswith("Reminder: standup")
