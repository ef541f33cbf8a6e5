"""The durable inbox: deduped at the write, one conversation at a time, leases that lapse."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from bot.clock import ManualClock
from bot.inbox import Inbox, message_from_record, message_record
from bot.models import OutboxEntry
from bot.outbox import Outbox
from bot.store import Store
from bot.types import Attachment, ConversationKey, InboundMessage, Reply

ALICE = ConversationKey("test", "team-1", "chat-a", "alice")
BOB = ConversationKey("test", "team-1", "chat-b", "bob")
_OUTBOX = OutboxEntry.__table__  # type: ignore[attr-defined]


@pytest.fixture
async def env(db_url: str):  # type: ignore[no-untyped-def]
    clock = ManualClock(datetime(2031, 3, 9, 12, 0, tzinfo=timezone.utc))
    store = await Store.open(db_url, clock=clock)
    try:
        yield Inbox(store, lease=timedelta(seconds=30), max_attempts=3), clock
    finally:
        await store.close()


def msg(key: ConversationKey, message_id: str, text: str = "hi") -> InboundMessage:
    return InboundMessage(key=key, message_id=message_id, text=text)


async def outbox_rows(inbox: Inbox) -> list:  # type: ignore[type-arg]
    return await inbox.store.read(lambda conn: conn.execute(select(_OUTBOX)).all())


def test_a_message_survives_the_round_trip_without_file_bytes() -> None:
    doc = Attachment(kind="file", name="a.pdf", mime_type="application/pdf", size=3, data=b"abc")
    original = InboundMessage(key=ALICE, message_id="m1", text="see file", attachments=(doc,),
                              is_group=True, mentions_bot=True, is_admin=True)
    back = message_from_record(json.loads(json.dumps(message_record(original))))
    assert back.key == ALICE and back.text == "see file" and back.is_group and back.is_admin
    assert back.attachments[0].name == "a.pdf" and back.attachments[0].data is None
    assert back.received_at == original.received_at


async def test_a_redelivery_is_refused_at_the_write(env) -> None:  # type: ignore[no-untyped-def]
    inbox, _ = env
    assert await inbox.put(msg(ALICE, "m1"), {"x": 1})
    assert not await inbox.put(msg(ALICE, "m1", "again"))
    # platform ids are unique per workspace: the same id in another one is another message
    assert await inbox.put(msg(ConversationKey("test", "team-2", "chat-a", "alice"), "m1"))
    assert (await inbox.backlog())[0] == 2


async def test_one_conversation_at_a_time_in_order_others_in_parallel(env) -> None:  # type: ignore[no-untyped-def]
    inbox, _ = env
    for n in range(3):
        await inbox.put(msg(ALICE, f"a{n}", f"question {n}"))
    await inbox.put(msg(BOB, "b0"))
    first = await inbox.take("replica-1", ["test"])
    second = await inbox.take("replica-2", ["test"])
    assert first is not None and first.message.text == "question 0"
    assert second is not None and second.message.key == BOB  # Alice's next one waits
    assert await inbox.take("replica-2", ["test"]) is None
    outbox_id = await inbox.finish(first, Reply("answer 0"))
    assert outbox_id is not None
    # answered but not sent yet: the conversation still waits, so answers arrive in order
    assert await inbox.take("replica-2", ["test"]) is None
    sender = Outbox(inbox.store, lambda: [Recorder()])  # type: ignore[list-item]
    freed: list[str] = []
    sender.freed.append(lambda: freed.append("woken"))
    assert await sender.send_stored(outbox_id)
    assert await inbox.status("test", "team-1", "a0") == "done"
    assert freed == ["woken"]  # the sent reply freed Alice's next message: workers are woken
    assert await outbox_rows(inbox) == []
    nxt = await inbox.take("replica-2", ["test"])
    assert nxt is not None and nxt.message.text == "question 1"
    assert await inbox.take("replica-1", ["other-channel"]) is None  # only channels run here
    bobs = await inbox.finish(second, Reply("answer to Bob"))
    assert bobs is not None and await sender.send_stored(bobs)
    assert await inbox.status("test", "team-1", "b0") == "done"
    assert freed == ["woken"]  # nothing of Bob's waits: nobody is woken


async def test_a_dead_workers_lease_lapses_and_another_answers(env) -> None:  # type: ignore[no-untyped-def]
    inbox, clock = env
    await inbox.put(msg(ALICE, "m1"))
    lost = await inbox.take("replica-1", ["test"])
    assert lost is not None
    clock.advance(20)
    assert await inbox.take("replica-2", ["test"]) is None  # the lease still holds
    assert await inbox.renew(lost)  # renewed while the answer is being made...
    clock.advance(29)
    assert await inbox.take("replica-2", ["test"]) is None
    clock.advance(2)  # ...then the replica dies: no more renewals
    again = await inbox.take("replica-2", ["test"])
    assert again is not None and again.attempts == 2
    assert not await inbox.renew(lost)
    assert await inbox.finish(lost, Reply("late answer")) is None  # the dead one can't finish
    assert await inbox.finish(again, Reply("answer")) is not None
    rows = await outbox_rows(inbox)
    assert len(rows) == 1 and json.loads(rows[0].reply)["text"] == "answer"


async def test_a_message_that_keeps_failing_is_given_up_and_the_person_told_once(env) -> None:  # type: ignore[no-untyped-def]
    inbox, clock = env
    await inbox.put(msg(ALICE, "m1"), {"send": {"reply_to": 7}})
    await inbox.put(msg(ALICE, "m2", "next question"))
    for _ in range(3):
        taken = await inbox.take("replica-1", ["test"])
        assert taken is not None and taken.message.message_id == "m1"
        clock.advance(31)  # it dies while answering, each time
    nxt = await inbox.take("replica-1", ["test"])
    assert nxt is not None and nxt.message.message_id == "m2"  # the conversation goes on
    assert await inbox.status("test", "team-1", "m1") == "dead"
    (told,) = await outbox_rows(inbox)
    assert "failed 3 times" in json.loads(told.reply)["text"]
    assert json.loads(told.context) == {"reply_to": 7}
    clock.advance(31)
    assert await inbox.take("replica-1", ["test"]) is not None  # m2 again, not m1
    assert len(await outbox_rows(inbox)) == 1


async def test_handing_back_at_shutdown_does_not_count_a_try(env) -> None:  # type: ignore[no-untyped-def]
    inbox, _ = env
    await inbox.put(msg(ALICE, "m1"))
    for _ in range(5):
        taken = await inbox.take("replica-1", ["test"])
        assert taken is not None and taken.attempts == 1
        await inbox.hand_back(taken)


async def test_finished_entries_are_pruned_after_the_dedupe_period(env) -> None:  # type: ignore[no-untyped-def]
    inbox, clock = env
    await inbox.put(msg(ALICE, "m1"))
    taken = await inbox.take("replica-1", ["test"])
    await inbox.finish(taken, None)  # type: ignore[arg-type]
    await inbox.put(msg(BOB, "m2"))  # still queued: never pruned
    clock.advance(timedelta(days=8))
    assert await inbox.prune(timedelta(days=7)) == 1
    assert await inbox.status("test", "team-1", "m1") is None
    assert await inbox.status("test", "team-1", "m2") == "queued"


class Recorder:
    """A channel that records what it is asked to send (the platform seam)."""

    name = "test"

    def __init__(self) -> None:
        self.sent: list[Reply] = []

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        self.sent.append(reply)


async def test_a_batch_take_leases_the_oldest_entry_of_each_free_conversation(env) -> None:  # type: ignore[no-untyped-def]
    inbox, _ = env
    keys = [ConversationKey("test", "team-1", f"chat-{c}", "alice") for c in "abc"]
    for n in range(2):
        for key in keys:
            assert await inbox.put(msg(key, f"{key.chat_id}-{n}", f"{key.chat_id} {n}"))
    batch = await inbox.take_many("replica-1", ["test"], 5)
    assert [t.message.text for t in batch] == ["chat-a 0", "chat-b 0", "chat-c 0"]
    assert await inbox.take_many("replica-2", ["test"], 5) == []  # each conversation is busy
    assert await inbox.finish(batch[1], Reply("b answered")) is not None
    # answered but not yet sent: the conversation's next message still waits for it
    assert await inbox.take_many("replica-2", ["test"], 2) == []
    assert await inbox.finish(batch[0], None) is None  # nothing to send: done at once
    two = await inbox.take_many("replica-2", ["test"], 2)
    assert [t.message.text for t in two] == ["chat-a 1"]
    assert [t.message.text for t in await inbox.take_many("replica-2", ["test"], 1)] == []


async def test_the_turns_an_answer_remembers_commit_with_its_finish(env) -> None:  # type: ignore[no-untyped-def]
    """Memory is written in the finish's transaction: none before it, none from a lost lease,
    so a try killed after the model answered leaves no turn for the next try to repeat."""
    from bot.memory import Memory
    from bot.store import deferred_writes

    inbox, clock = env
    memory = Memory(inbox.store, budget=10_000, spawn=lambda coro: coro.close())
    await inbox.put(msg(ALICE, "m1", "what is the VPN address?"))
    lost = await inbox.take("replica-1", ["test"])
    assert lost is not None
    with deferred_writes() as unit:
        await memory.remember(ALICE, "what is the VPN address?", "vpn.example.com")
    assert len(unit.writes) == 1
    assert (await inbox.store.recall(ALICE))[1] == []  # not yet: the reply has not been put
    clock.advance(31)  # the first worker dies; another answers the same message
    again = await inbox.take("replica-2", ["test"])
    assert again is not None
    assert await inbox.finish(lost, Reply("vpn.example.com"), unit) is None  # lease lost
    assert (await inbox.store.recall(ALICE))[1] == []  # its turns went with its reply
    with deferred_writes() as second:
        await memory.remember(ALICE, "what is the VPN address?", "It is vpn.example.com.")
    assert await inbox.finish(again, Reply("It is vpn.example.com."), second) is not None
    turns = (await inbox.store.recall(ALICE))[1]
    assert [(t.role, t.content) for t in turns] == [
        ("user", "what is the VPN address?"), ("assistant", "It is vpn.example.com.")]
    # outside a unit (the console, `knowbot ask`), and after one closed, turns go in at once
    await memory.remember(BOB, "hello", "hi")
    with deferred_writes() as closed:
        pass
    assert not closed.open
    await memory.remember(BOB, "again", "hi again")
    assert len((await inbox.store.recall(BOB))[1]) == 4


async def test_a_failed_try_keeps_its_turn_when_given_back(env) -> None:  # type: ignore[no-untyped-def]
    from bot.memory import Memory
    from bot.store import deferred_writes

    inbox, _ = env
    await inbox.put(msg(ALICE, "m1", "summarise the report"))
    taken = await inbox.take("replica-1", ["test"])
    assert taken is not None
    with deferred_writes() as unit:
        await Memory(inbox.store, budget=10_000, spawn=lambda coro: coro.close()).remember(
            ALICE, "summarise the report", "Sorry, something went wrong.", meta={"error": "boom"})
    await inbox.retry_later(taken, "RuntimeError: boom", timedelta(seconds=5), unit)
    turns = (await inbox.store.recall(ALICE))[1]
    assert [t.content for t in turns] == ["summarise the report", "Sorry, something went wrong."]
    assert await inbox.status("test", "team-1", "m1") == "queued"


async def test_takers_racing_on_two_stores_lease_each_entry_once(env, db_url) -> None:  # type: ignore[no-untyped-def]
    """Two replicas' stores, eight takers each, all after the same entry at once, round after
    round: exactly one taker leases it each time (on PostgreSQL the take is one statement whose
    compare-and-swap decides the race), and the winners come from both stores."""
    import asyncio

    inbox, clock = env
    other = await Store.open(db_url, clock=clock)
    try:
        second = Inbox(other, lease=timedelta(seconds=30), max_attempts=3)
        takers = [(f"{label}-{n}", box) for label, box in (("one", inbox), ("two", second))
                  for n in range(8)]
        winners: list[str] = []
        for round_ in range(30):
            key = ConversationKey("test", "team-1", f"chat-{round_}", "alice")
            assert await inbox.put(msg(key, f"m-{round_}", f"round {round_}"))
            # the stores in turn go first, so both get to win
            order = takers if round_ % 2 == 0 else takers[::-1]
            got = await asyncio.gather(*(box.take_many(name, ["test"], 2) for name, box in order))
            won = [(name, batch) for (name, _), batch in zip(order, got) if batch]
            assert len(won) == 1 and len(won[0][1]) == 1, won
            assert won[0][1][0].message.text == f"round {round_}"
            winners.append(won[0][0].split("-")[0])
            assert await inbox.finish(won[0][1][0], None) is None
        assert set(winners) == {"one", "two"}
    finally:
        await other.close()
