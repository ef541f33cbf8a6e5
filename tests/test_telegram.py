"""The Telegram channel end to end: real aiogram against a local Bot API server on loopback."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
from conftest import make_settings
from fake_openai import FakeOpenAI, reply
from fake_telegram import FakeBotAPI, group_chat, parse_telegram_html, private_chat, user

from bot.app import create_app
from bot.runtime import Runtime
from bot.types import Citation, Reply
from channels.telegram import TelegramChannel, derive_webhook_secret
from channels.telegram_pacing import Pacer
from channels.telegram_render import markdown_to_html, render_reply, utf16_len

TOKEN = "123456789:AAH-test_token_for_knowbot"
WEBHOOK = "https://knowbot.example.com/telegram/webhook"
ALICE, BOB = 1001, 1002
TEAM = -1009876543210

REFUNDS = """# Refund policy

Customers can ask for a refund within 30 days of purchase. Refunds are paid back to the
original card within 5 business days.

# Shipping

Orders ship from the Berlin warehouse every weekday; express delivery costs 12 euros.
"""


class Clock:
    """A controllable monotonic clock whose sleep records the wait and moves time on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Running:
    """A started Knowbot app with its Telegram channel."""

    app: Any
    channel: TelegramChannel
    client: httpx.AsyncClient
    clock: Clock

    @property
    def runtime(self) -> Runtime:
        return self.app.state.runtime

    async def post_update(self, update: dict[str, Any], secret: str | None = None) -> int:
        """Deliver an update to the webhook the way Telegram does."""
        headers = {"content-type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        response = await self.client.post("/telegram/webhook", content=json.dumps(update),
                                          headers=headers)
        return response.status_code


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotAPI]:
    server = await FakeBotAPI(TOKEN).start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def knowbot(tmp_path: Path, embedder: object, fake: FakeBotAPI, *, webhook: bool = False,
                  default_channel: bool = False, **overrides: object) -> AsyncIterator[Running]:
    """Run the real app (lifespan and all) with the Telegram channel pointed at the fake."""
    settings = make_settings(tmp_path, telegram_token=TOKEN, telegram_api_base=fake.base_url,
                             telegram_webhook_url=WEBHOOK if webhook else None, **overrides)
    clock = Clock()
    channels = None
    channel: TelegramChannel | None = None
    if not default_channel:
        channel = TelegramChannel(settings, poll_timeout=2,
                                  pacer=Pacer(clock=clock, sleep=clock.sleep))
        channels = [channel]

    async def runtime_factory(s: Any) -> Runtime:
        return await Runtime.start(s, embedder=embedder)

    app = create_app(settings, runtime_factory=runtime_factory, channels=channels)
    async with app.router.lifespan_context(app):
        running = app.state.runtime.channel("telegram")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://knowbot") as client:
            yield Running(app, channel or running, client, clock)


def plain(call: Any) -> str:
    """The text a sendMessage call shows, markup removed."""
    return parse_telegram_html(call.params["text"])


# ---- end to end ---------------------------------------------------------------------------


async def test_private_upload_then_question_answered_with_citations(tmp_path: Path, embedder,
                                                                     fake: FakeBotAPI) -> None:
    chat, alice = private_chat(ALICE), user(ALICE)
    async with knowbot(tmp_path, embedder, fake):
        await fake.wait_for(lambda: fake.calls_of("getUpdates"))
        names = [c["command"] for c in fake.calls_of("setMyCommands")[0].json("commands")]
        assert {"start", "help", "ask", "reset", "memory", "kb"} <= set(names)
        assert fake.calls_of("deleteWebhook"), "polling must clear a webhook first"

        doc = fake.add_document("refunds.md", REFUNDS.encode(), mime="text/markdown")
        fake.push(fake.message_update(chat, alice, document=doc))
        receipt = await fake.wait_for(lambda: fake.sent(ALICE))
        assert "Added “Refund policy”" in plain(receipt[0]) and "chunk" in plain(receipt[0])
        assert fake.downloads == ["documents/file_1.md"]

        fake.push(fake.text_update(chat, alice, "How many days do customers have for a refund?"))
        answers = await fake.wait_for(lambda: fake.sent(ALICE)[1:])
        html = answers[0].params["text"]
        assert "30 days" in plain(answers[0])
        assert "<b>Sources</b>\n[1] Refund policy" in html
        assert answers[0].params["parse_mode"] == "HTML"
        assert "reply_parameters" not in answers[0].params  # private chats: no reply quote
        assert any(c.params.get("action") == "typing" and c.params["chat_id"] == str(ALICE)
                   for c in fake.calls_of("sendChatAction"))

        fake.push(fake.message_update(chat, alice, document=doc))  # the same file again
        again = await fake.wait_for(lambda: fake.sent(ALICE)[2:])
        assert "unchanged" in plain(again[0])

        fake.push(fake.text_update(chat, alice, "/start"))
        welcome = await fake.wait_for(lambda: fake.sent(ALICE)[3:])
        assert "I know 1 document here: “Refund policy”" in plain(welcome[0])
        assert "send it to me as a file" in plain(welcome[0])
        offsets = [int(c.params.get("offset") or 0) for c in fake.calls_of("getUpdates")]
        assert offsets == sorted(offsets) and max(offsets) > 5000  # updates were confirmed


async def test_group_answers_only_mentions_commands_and_replies(tmp_path: Path, embedder,
                                                                fake: FakeBotAPI) -> None:
    chat = group_chat(TEAM)
    alice, bob = user(ALICE), user(BOB, "Bob")
    async with knowbot(tmp_path, embedder, fake):
        await fake.wait_for(lambda: fake.calls_of("setMyCommands"))
        ignored = fake.text_update(chat, alice, "lunch at noon anyone?")
        asked = fake.text_update(chat, alice, "what do you know?", mention=True)
        other_bot = fake.text_update(chat, bob, "/help@some_other_bot")
        replied = fake.text_update(chat, bob, "and /memory please",
                                   reply_to=fake.bot_message(chat, "earlier answer"))
        command = fake.text_update(chat, bob, "/memory@knowbot_test")
        for update in (ignored, asked, other_bot, replied, command):
            fake.push(update)
        await fake.wait_for(lambda: len(fake.sent(TEAM)) >= 3)
        fake.push(fake.text_update(chat, alice, "/reset"))  # a marker: updates go in order
        await fake.wait_for(lambda: len(fake.sent(TEAM)) >= 4)
        sent = fake.sent(TEAM)[:3]
        assert plain(fake.sent(TEAM)[3]).startswith("Done: I forgot")
        assert len(fake.sent(TEAM)) == 4
        assert len(sent) == 3
        reply_to = [json.loads(c.params["reply_parameters"])["message_id"] for c in sent]
        assert reply_to == [asked["message"]["message_id"], replied["message"]["message_id"],
                            command["message"]["message_id"]]
        assert "could not find anything" in plain(sent[0]).lower()
        # the group is one conversation: Bob's /memory sees what Alice asked (mention removed)
        memory = plain(sent[2])
        assert "user: what do you know?" in memory and "user: and /memory please" in memory
        assert "@knowbot_test" not in memory and "lunch" not in memory


async def test_group_upload_needs_a_chat_admin(tmp_path: Path, embedder, fake: FakeBotAPI) -> None:
    chat = group_chat(TEAM)
    async with knowbot(tmp_path, embedder, fake):
        doc = fake.add_document("refunds.md", REFUNDS.encode(), mime="text/markdown")
        mention = [{"type": "mention", "offset": 0, "length": 13}]
        fake.push(fake.message_update(chat, user(BOB, "Bob"), caption="@knowbot_test",
                                      entities=mention, document=doc))
        refused = await fake.wait_for(lambda: fake.sent(TEAM))
        assert plain(refused[0]) == "Only the admins of this chat can add documents to its knowledge base."
        assert fake.downloads == [] and not fake.calls_of("getFile")  # nothing fetched

        fake.members[(TEAM, ALICE)] = "administrator"
        fake.push(fake.message_update(chat, user(ALICE), caption="@knowbot_test please add",
                                      entities=mention, document=doc))
        added = await fake.wait_for(lambda: fake.sent(TEAM)[1:])
        assert plain(added[0]).startswith("Added “Refund policy”")
        member_calls = fake.calls_of("getChatMember")
        assert [(c.params["chat_id"], c.params["user_id"]) for c in member_calls] == [
            (str(TEAM), str(BOB)), (str(TEAM), str(ALICE))]


async def test_oversized_documents_refused_before_download(tmp_path: Path, embedder,
                                                           fake: FakeBotAPI) -> None:
    chat, alice = private_chat(ALICE), user(ALICE)
    async with knowbot(tmp_path, embedder, fake, ingest_max_bytes=5 * 1024 * 1024):
        # over the configured ingest limit: refused from the Document's file_size alone
        big = fake.add_document("handbook.pdf", size=8 * 1024 * 1024, mime="application/pdf")
        fake.push(fake.message_update(chat, alice, document=big))
        first = await fake.wait_for(lambda: fake.sent(ALICE))
        assert "“handbook.pdf” is 8.0 MB, over the 5 MB limit" in plain(first[0])
        assert not fake.calls_of("getFile")
    async with knowbot(tmp_path / "b", embedder, fake):
        # 25 MB: this Bot API server (like Telegram's) refuses getFile over 20 MB
        huge = fake.add_document("scans.pdf", size=25 * 1024 * 1024, mime="application/pdf")
        fake.push(fake.message_update(chat, alice, document=huge))
        second = await fake.wait_for(lambda: fake.sent(ALICE)[1:])
        text = plain(second[0])
        assert "“scans.pdf” is 25.0 MB" in text and "up to 20 MB" in text
        assert fake.downloads == []


async def test_corrupt_pdf_and_unsupported_file_get_clear_messages(tmp_path: Path, embedder,
                                                                  fake: FakeBotAPI) -> None:
    chat, alice = private_chat(ALICE), user(ALICE)
    async with knowbot(tmp_path, embedder, fake) as bot:
        broken = fake.add_document("report.pdf", b"%PDF-1.7\n1 0 obj << /Type /Cat" + b"\x00" * 200,
                                   mime="application/pdf")
        fake.push(fake.message_update(chat, alice, document=broken))
        reply_ = await fake.wait_for(lambda: fake.sent(ALICE))
        text = plain(reply_[0])
        assert "Could not read report.pdf: it looks damaged" in text and "accepted types" in text
        video = fake.add_document("demo.mp4", size=1000, mime="video/mp4")
        fake.push(fake.message_update(chat, alice, document=video))
        second = await fake.wait_for(lambda: fake.sent(ALICE)[1:])
        assert "accepted types are PDF, Word" in plain(second[0])
        assert fake.downloads == ["documents/file_1.pdf"]  # the video was never fetched
        fake.push(fake.text_update(chat, alice, "/kb"))
        kb = await fake.wait_for(lambda: fake.sent(ALICE)[2:])
        assert "knowledge base is empty" in plain(kb[0])  # nothing half-ingested
        registry = bot.runtime.knowledge.registry  # type: ignore[attr-defined]
        assert await registry.list_kbs("telegram:123456789") == []


async def test_long_model_answer_split_into_valid_html_messages(tmp_path: Path, embedder,
                                                               fake: FakeBotAPI) -> None:
    paragraphs = [f"**Step {n}.** Compare a < b && c > d in `x<{n}>` then read "
                  f"[the guide](https://example.com/g?a={n}&b=2). " + "More detail here. " * 20
                  for n in range(1, 40)]
    long_answer = "\n\n".join(paragraphs)
    assert len(long_answer) >= 10_000
    chat, alice = private_chat(ALICE), user(ALICE)
    async with FakeOpenAI() as llm:
        llm.script(reply(long_answer))
        async with knowbot(tmp_path, embedder, fake, llm_base_url=llm.base_url,
                           llm_model="fake-model", llm_api_key="sk-test") as bot:
            fake.push(fake.text_update(chat, alice, "explain every step"))
            await fake.wait_for(lambda: fake.sent(ALICE))
            assert await bot.channel.wait_idle(10) == 0
            parts = fake.sent(ALICE)
    assert all(c.status == 200 for c in fake.calls_of("sendMessage"))  # valid HTML, each one
    sizes = [utf16_len(p.params["text"]) for p in parts]
    # the markup itself stays within 4096 (stricter than Telegram's count after parsing),
    # and the parts are full: no more messages than needed
    assert len(parts) >= 3 and max(sizes) <= 4096 and min(sizes[:-1]) > 3500
    for part in parts:
        assert "&lt;" in part.params["text"] and "<b>Step" in part.params["text"]
    shown = "\n\n".join(plain(p) for p in parts)
    assert shown.count("Compare a < b && c > d") == 39
    assert "Step 1." in plain(parts[0]) and "Step 39." in plain(parts[-1])
    # cut on paragraph boundaries: each message ends a paragraph
    assert all(plain(p).rstrip().endswith("More detail here.") for p in parts)
    # paced: about one message a second in a chat (on the test's clock)
    assert bot.clock.sleeps == [pytest.approx(1.0)] * (len(parts) - 1)


async def test_rate_limit_retry_after_is_honoured(tmp_path: Path, embedder,
                                                  fake: FakeBotAPI) -> None:
    chat, alice = private_chat(ALICE), user(ALICE)
    fake.fail("sendMessage", 429, "Too Many Requests: retry after 7", retry_after=7)
    async with knowbot(tmp_path, embedder, fake) as bot:
        fake.push(fake.text_update(chat, alice, "/help"))
        sent = await fake.wait_for(lambda: fake.sent(ALICE))
        attempts = fake.calls_of("sendMessage")
        assert [c.status for c in attempts] == [429, 200]
        assert attempts[0].params["text"] == attempts[1].params["text"]
        assert 7 in bot.clock.sleeps  # waited retry_after before trying again
        assert "/ask" in plain(sent[0])
        assert await bot.runtime.outbox.pending() == 0


async def test_webhook_refuses_a_forged_secret(tmp_path: Path, embedder, fake: FakeBotAPI) -> None:
    chat, alice = private_chat(ALICE), user(ALICE)
    async with knowbot(tmp_path, embedder, fake, webhook=True, default_channel=True) as bot:
        hooks = await fake.wait_for(lambda: fake.calls_of("setWebhook"))
        secret = hooks[0].params["secret_token"]
        assert secret == derive_webhook_secret(TOKEN) and hooks[0].params["url"] == WEBHOOK
        assert json.loads(hooks[0].params["allowed_updates"]) == ["message"]
        assert not fake.calls_of("getUpdates")  # no polling in webhook mode

        forged = fake.text_update(chat, alice, "/help")
        assert await bot.post_update(forged, secret="not-the-secret") == 403
        assert await bot.post_update(forged) == 403
        assert await bot.post_update(forged, secret=secret[:-1]) == 403
        genuine = fake.text_update(chat, alice, "/memory")
        assert await bot.post_update(genuine, secret=secret) == 200
        first = await fake.wait_for(lambda: fake.sent(ALICE))
        assert len(first) == 1 and "remember" in plain(first[0])
        # the forged update was never taken: delivered for real, it is answered
        assert await bot.post_update(forged, secret=secret) == 200
        second = await fake.wait_for(lambda: fake.sent(ALICE)[1:])
        assert "/ask" in plain(second[0])
        assert await bot.post_update({"update_id": "x"}, secret=secret) == 400


async def test_same_update_answered_once_also_after_restart(tmp_path: Path, embedder,
                                                            fake: FakeBotAPI) -> None:
    chat, alice = private_chat(ALICE), user(ALICE)
    secret = derive_webhook_secret(TOKEN)
    update = fake.text_update(chat, alice, "/help")
    async with knowbot(tmp_path, embedder, fake, webhook=True) as bot:
        assert await bot.post_update(update, secret=secret) == 200
        await fake.wait_for(lambda: fake.sent(ALICE))
        assert await bot.post_update(update, secret=secret) == 200  # Telegram retries
        assert await bot.channel.wait_idle(10) == 0
    async with knowbot(tmp_path, embedder, fake) as bot:  # restarted, now polling
        fake.push(update)  # Telegram delivers it once more after the restart
        fake.push(fake.text_update(chat, alice, "/reset"))
        await fake.wait_for(lambda: fake.sent(ALICE)[1:])
        assert await bot.channel.wait_idle(10) == 0
    texts = [plain(c) for c in fake.sent(ALICE)]
    assert len(texts) == 2 and "/ask" in texts[0] and texts[1].startswith("Done: I forgot")


# ---- rendering and pacing -------------------------------------------------------------------


def test_markdown_renders_to_escaped_telegram_html() -> None:
    html = markdown_to_html("## Plan & <goals>\n**bold _it_** and snake_case_name, `a<b>`\n"
                            "- [docs](https://x.example/?q=\"1\"&r=2)\n[js](javascript:alert(1))")
    assert html == ("<b>Plan &amp; &lt;goals&gt;</b>\n<b>bold <i>it</i></b> and snake_case_name, "
                    "<code>a&lt;b&gt;</code>\n• <a href=\"https://x.example/?q=&quot;1&quot;&amp;r=2\">"
                    "docs</a>\njs (javascript:alert(1))")
    parse_telegram_html(html)  # valid for Telegram


def test_code_block_cut_between_messages_is_closed_and_reopened() -> None:
    code = "\n".join(f"print({n} < {n + 1})  # line {n}" for n in range(400))
    parts = render_reply(Reply(f"Intro.\n\n```python\n{code}\n```\n\nDone."))
    assert len(parts) >= 3
    for part in parts:
        assert utf16_len(part) <= 4096
        parse_telegram_html(part)  # balanced in every message
    assert all('<pre><code class="language-python">' in p for p in parts[1:-1])
    assert "".join(parse_telegram_html(p) for p in parts).count("print(") == 400


def test_citations_are_a_numbered_list_under_the_answer() -> None:
    reply_ = Reply("Refunds take 5 days [1][2].", (
        Citation("Refund <policy>", "page 2"), Citation("FAQ", "", url="https://x.example/faq?a=1&b=2")))
    (only,) = render_reply(reply_)
    assert only == ("Refunds take 5 days [1][2].\n\n<b>Sources</b>\n[1] Refund &lt;policy&gt;, page 2\n"
                    "[2] <a href=\"https://x.example/faq?a=1&amp;b=2\">FAQ</a>")


async def test_pacer_spaces_messages_per_chat_and_per_group_minute() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep, overall=0.0)
    start = clock.now
    for _ in range(3):
        await pacer.wait(42)  # a private chat: one a second
    assert clock.now - start == pytest.approx(2.0)
    start = clock.now
    for _ in range(21):
        await pacer.wait(-100)  # a group: 20 a minute
    assert clock.now - start == pytest.approx(60.0)
    pacer.hold(42, 30)  # after a 429 with retry_after 30
    start = clock.now
    await pacer.wait(42)
    assert clock.now - start == pytest.approx(30.0)


async def test_forum_topics_are_separate_conversations(tmp_path: Path, embedder,
                                                       fake: FakeBotAPI) -> None:
    chat = {**group_chat(TEAM), "is_forum": True}
    async with knowbot(tmp_path, embedder, fake):
        await fake.wait_for(lambda: fake.calls_of("setMyCommands"))

        def in_topic(topic: int, text: str) -> dict[str, Any]:
            update = fake.text_update(chat, user(ALICE), text, mention=True)
            update["message"].update(message_thread_id=topic, is_topic_message=True)
            return update

        fake.push(in_topic(77, "first topic question"))
        await fake.wait_for(lambda: len(fake.sent(TEAM)) >= 1)
        fake.push(in_topic(88, "/memory"))
        await fake.wait_for(lambda: len(fake.sent(TEAM)) >= 2)
        first, memory = fake.sent(TEAM)
        assert int(first.params["message_thread_id"]) == 77
        assert int(memory.params["message_thread_id"]) == 88
        assert "first topic question" not in plain(memory)  # topic 88 has its own memory


async def test_a_group_that_became_a_supergroup_is_followed(tmp_path: Path, embedder,
                                                            fake: FakeBotAPI) -> None:
    old = {"id": -4001, "type": "group", "title": "Team"}
    new_id = -1004001
    async with knowbot(tmp_path, embedder, fake):
        await fake.wait_for(lambda: fake.calls_of("setMyCommands"))
        fake.fail("sendMessage", 400, "Bad Request: group chat was upgraded to a supergroup chat",
                  migrate_to_chat_id=new_id)
        fake.push(fake.text_update(old, user(ALICE), "/help"))
        delivered = await fake.wait_for(lambda: fake.sent(new_id))
        assert "/remind" in plain(delivered[0])
        assert fake.sent(-4001) == []


async def test_one_replica_polls_and_another_takes_over_when_it_stops(
        tmp_path: Path, pg_url: str, fake: FakeBotAPI) -> None:
    from conftest import WordKnowledge

    chat, alice = private_chat(ALICE), user(ALICE)
    running: list[tuple[Any, Any, TelegramChannel]] = []
    for n in range(2):  # two replicas on one database, both configured for long polling
        settings = make_settings(tmp_path / f"replica-{n}", telegram_token=TOKEN,
                                 telegram_api_base=fake.base_url, database_url=pg_url)
        channel = TelegramChannel(settings, poll_timeout=1, lease_check=0.1)

        async def factory(s: Any) -> Runtime:
            return await Runtime.start(s, knowledge=WordKnowledge())

        app = create_app(settings, runtime_factory=factory, channels=[channel])
        life = app.router.lifespan_context(app)
        await life.__aenter__()
        running.append((app, life, channel))
    try:
        await fake.wait_for(lambda: any(c.polling for _, _, c in running))
        await asyncio.sleep(0.5)
        assert [c.polling for _, _, c in running].count(True) == 1  # never both: no 409s
        fake.push(fake.text_update(chat, alice, "/help"))
        await fake.wait_for(lambda: fake.sent(ALICE))
        owner = next(r for r in running if r[2].polling)
        other = next(r for r in running if r is not owner)
        await owner[1].__aexit__(None, None, None)  # SIGTERM: it stops and gives the lease up
        running.remove(owner)
        await fake.wait_for(lambda: other[2].polling, timeout=10)
        fake.push(fake.text_update(chat, alice, "/memory"))
        await fake.wait_for(lambda: fake.sent(ALICE)[1:])
        await asyncio.sleep(0.5)
        texts = [plain(c) for c in fake.sent(ALICE)]
        assert len(texts) == 2 and "/ask" in texts[0] and "remember" in texts[1]
    finally:
        for _, life, _ in running:
            await life.__aexit__(None, None, None)


def test_the_bot_api_answer_models_survive_garbage_collection() -> None:
    """aiogram's Response[...] models are cached weakly by pydantic; rebuilding costs ms a call."""
    import gc

    from aiogram.methods import SendChatAction, SendMessage
    from aiogram.methods.base import Response as TelegramResponse

    import channels.telegram  # noqa: F401 - it keeps them

    before = [TelegramResponse[m.__returning__] for m in (SendMessage, SendChatAction)]
    ids = [id(t) for t in before]
    del before
    gc.collect()
    assert [id(TelegramResponse[m.__returning__]) for m in (SendMessage, SendChatAction)] == ids
