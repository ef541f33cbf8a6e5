"""Inbox workers: order within a conversation, parallel across them, a graceful stop."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.inbox import Inbox
from bot.outbox import Outbox, part_sent, send_context
from bot.store import Store
from bot.types import ConversationKey, InboundMessage, Reply
from bot.workers import Workers

ALICE = ConversationKey("chat", "t", "alice-chat", "alice")
BOB = ConversationKey("chat", "t", "bob-chat", "bob")


class SlowChannel:
    """Answers after a delay; records the order of starts, answers and sends (the seam)."""

    name = "chat"

    def __init__(self, delay: float = 0.2) -> None:
        self.delay = delay
        self.started: list[str] = []
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def work(self, message: InboundMessage, context: dict[str, Any]) -> Reply:
        self.started.append(message.text)
        await self.release.wait()
        await asyncio.sleep(self.delay)
        return Reply(f"answer to {message.text}")

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        for n, part in enumerate(("part one", "part two")):
            self.sent.append((key.chat_id, f"{reply.text} / {part}", dict(send_context())))
            if n == 0:
                await part_sent(1)


async def _workers(tmp_path, channel: SlowChannel, poll: float = 0.05  # type: ignore[no-untyped-def]
                   ) -> tuple[Workers, Inbox, Store]:
    store = await Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    inbox = Inbox(store)
    workers = Workers(inbox, Outbox(store, lambda: [channel]), lambda: [channel],  # type: ignore[list-item]
                      concurrency=4, poll=poll)
    return workers, inbox, store


async def test_the_next_message_is_taken_when_the_reply_before_it_leaves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No poll to fall back on: the sent reply itself wakes the workers for the conversation's
    next message, and an answer with no message after it does not look again."""
    channel = SlowChannel(delay=0.05)
    workers, inbox, store = await _workers(tmp_path, channel, poll=60.0)
    takes: list[int] = []
    take_many = inbox.take_many

    async def counted(*args: Any, **kwargs: Any) -> Any:
        found = await take_many(*args, **kwargs)
        takes.append(len(found))
        return found

    inbox.take_many = counted  # type: ignore[method-assign]
    try:
        workers.start()
        for n in range(3):
            await inbox.put(InboundMessage(key=ALICE, message_id=f"a{n}", text=f"alice {n}"))
        assert await workers.wait_idle(10) == 0  # 60 s of poll would not have made it
        assert channel.started == ["alice 0", "alice 1", "alice 2"]
        assert sum(takes) == 3
        looks = len(takes)
        await inbox.put(InboundMessage(key=BOB, message_id="b0", text="bob 0"))
        assert await workers.wait_idle(10) == 0
        await asyncio.sleep(0.1)
        assert len(takes) == looks + 1  # one take for Bob's put; his answer woke nobody
    finally:
        await workers.stop()
        await store.close()


async def test_a_conversation_is_answered_in_order_while_others_run_beside_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    channel = SlowChannel(delay=0.3)
    workers, inbox, store = await _workers(tmp_path, channel)
    try:
        for n in range(3):
            await inbox.put(InboundMessage(key=ALICE, message_id=f"a{n}", text=f"alice {n}"),
                            {"send": {"reply_to": n}})
        await inbox.put(InboundMessage(key=BOB, message_id="b0", text="bob 0"))
        workers.start()
        await asyncio.sleep(0.15)
        assert sorted(channel.started) == ["alice 0", "bob 0"]  # Bob does not wait for Alice
        assert await workers.wait_idle(10) == 0
        alice = [text for chat, text, _ in channel.sent if chat == "alice-chat"]
        assert alice == [f"answer to alice {n} / part {p}" for n in range(3)
                         for p in ("one", "two")]
        contexts = [ctx for chat, _, ctx in channel.sent if chat == "alice-chat"]
        assert contexts[::2] == [{"reply_to": n} for n in range(3)]  # kept for the send
        assert await inbox.status("chat", "t", "a2") == "done"
    finally:
        await workers.stop()
        await store.close()


async def test_a_stop_hands_unfinished_answers_back_untouched(tmp_path) -> None:  # type: ignore[no-untyped-def]
    channel = SlowChannel()
    channel.release.clear()  # the answer never comes before the stop
    workers, inbox, store = await _workers(tmp_path, channel)
    try:
        await inbox.put(InboundMessage(key=ALICE, message_id="a0", text="alice 0"))
        workers.start()
        for _ in range(100):
            if channel.started:
                break
            await asyncio.sleep(0.02)
        assert workers.in_flight == 1
        assert await workers.stop(timeout=0.1) == 1
        assert await inbox.status("chat", "t", "a0") == "queued"
        again = await inbox.take("next-replica", ["chat"])  # taken at once, not after the lease
        assert again is not None and again.attempts == 1
    finally:
        await store.close()
