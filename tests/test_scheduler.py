"""Scheduled jobs on a clock the test controls: reminders fire on time, once, across restarts."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import AsyncIterator
from zoneinfo import ZoneInfo

import pytest

from bot.clock import ManualClock
from bot.errors import CommandError
from bot.jobs import JobCommands
from bot.kv import StateStore
from bot.scheduler import Scheduler
from bot.store import Store
from bot.types import ConversationKey, InboundMessage, Reply
from bot.when import parse_when

SHANGHAI = ZoneInfo("Asia/Shanghai")
KEY = ConversationKey("test", "team-1", "chat-1", "alice")
OTHER = ConversationKey("test", "team-1", "chat-2", "bob")


@pytest.fixture
def clock() -> ManualClock:
    """Knowbot's one clock, stopped at Wed 2026-11-25 20:30 in Shanghai: only the test moves it.

    Every part takes "now" from it (APScheduler too), so the pinned day never meets today's.
    """
    return ManualClock(datetime(2026, 11, 25, 20, 30, tzinfo=SHANGHAI))


class Inbox:
    """Where delivered replies land."""

    def __init__(self) -> None:
        self.items: list[tuple[ConversationKey, Reply]] = []
        self.changed = asyncio.Event()

    async def deliver(self, key: ConversationKey, reply: Reply) -> bool:
        self.items.append((key, reply))
        self.changed.set()
        return True

    async def wait(self, count: int, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(until(), timeout)


async def open_scheduler(url: str, clock: ManualClock, inbox: Inbox, **kwargs: object
                         ) -> tuple[Scheduler, Store]:
    store = await Store.open(url, clock=clock)
    sched = Scheduler(url, StateStore(store), inbox.deliver,
                      timezone_name="Asia/Shanghai", renew_seconds=3600, **kwargs)  # type: ignore[arg-type]
    await sched.start()
    return sched, store


async def fire_due(*schedulers: Scheduler) -> None:
    """Let each scheduler look for due jobs now (what its timer would do) and run them."""
    for sched in schedulers:
        await sched.tick()
        sched.aps.wakeup()
    for _ in range(20):
        await asyncio.sleep(0.01)


@pytest.fixture
async def env(db_url: str, clock: ManualClock) -> AsyncIterator[tuple[Scheduler, JobCommands, Inbox]]:
    inbox = Inbox()
    sched, store = await open_scheduler(db_url, clock, inbox)
    commands = JobCommands(sched, StateStore(store), "Asia/Shanghai", lambda name: None)
    try:
        yield sched, commands, inbox
    finally:
        await sched.close()
        await store.close()


def msg(text: str, key: ConversationKey = KEY) -> InboundMessage:
    return InboundMessage(key=key, message_id="", text=text)


async def run(commands: JobCommands, name: str, args: str, key: ConversationKey = KEY) -> Reply:
    command = next(c for c in commands.commands() if c.name == name)
    return await command.handler(args, msg(f"/{name} {args}", key))


async def test_a_reminder_fires_at_its_local_time_not_before(env, clock: ManualClock) -> None:
    sched, commands, inbox = env
    reply = await run(commands, "remind", "tomorrow 9:00 send the report")
    assert "Thu 2026-11-26 at 09:00 (Asia/Shanghai)" in reply.text
    clock.set(datetime(2026, 11, 26, 8, 59, tzinfo=SHANGHAI))
    await fire_due(sched)
    assert inbox.items == []
    clock.set(datetime(2026, 11, 26, 9, 0, 1, tzinfo=SHANGHAI))
    await fire_due(sched)
    await inbox.wait(1)
    key, sent = inbox.items[0]
    assert key == KEY and sent.text == "⏰ Reminder: send the report"
    assert await sched.jobs(KEY) == []  # a one-off job is gone once it fired


async def test_the_users_own_time_zone_is_used(env, clock: ManualClock) -> None:
    sched, commands, inbox = env
    assert "Europe/Berlin" in (await run(commands, "timezone", "Europe/Berlin")).text
    reply = await run(commands, "remind", "tomorrow 9:00 stand-up")
    assert "(Europe/Berlin)" in reply.text
    (job,) = await sched.jobs(KEY)
    assert job.next_run == datetime(2026, 11, 26, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert "not a time zone" not in (await run(commands, "timezone", "Mars/Olympus")).text
    assert "don't know" in (await run(commands, "timezone", "Mars/Olympus")).text


async def test_a_reminder_survives_a_restart(db_url: str, clock: ManualClock) -> None:
    inbox = Inbox()
    sched, store = await open_scheduler(db_url, clock, inbox)
    when, what = parse_when("in 10m check the oven", clock.now().astimezone(SHANGHAI))
    await sched.add(KEY, "remind", when, what)
    await sched.close()
    await store.close()

    sched, store = await open_scheduler(db_url, clock, inbox)
    try:
        assert [j.text for j in await sched.jobs(KEY)] == ["check the oven"]
        clock.set(clock.now() + timedelta(minutes=11))
        await fire_due(sched)
        await inbox.wait(1)
        assert inbox.items[0][1].text == "⏰ Reminder: check the oven"
    finally:
        await sched.close()
        await store.close()


async def test_a_job_missed_during_downtime_fires_once(db_url: str, clock: ManualClock) -> None:
    inbox = Inbox()
    sched, store = await open_scheduler(db_url, clock, inbox)
    when, what = parse_when("every day 9:00 water the plants", clock.now().astimezone(SHANGHAI))
    await sched.add(KEY, "remind", when, what)
    await sched.close()
    await store.close()

    clock.set(clock.now() + timedelta(days=3, hours=1))  # three 9:00s pass while it is down
    sched, store = await open_scheduler(db_url, clock, inbox)
    try:
        await fire_due(sched)
        await inbox.wait(1)
        await fire_due(sched)
        assert len(inbox.items) == 1
        (job,) = await sched.jobs(KEY)
        assert job.next_run == datetime(2026, 11, 29, 9, 0, tzinfo=SHANGHAI)  # the next one
    finally:
        await sched.close()
        await store.close()


async def test_two_replicas_run_a_job_once(db_url: str, clock: ManualClock) -> None:
    inbox = Inbox()
    first, store1 = await open_scheduler(db_url, clock, inbox)
    second, store2 = await open_scheduler(db_url, clock, inbox)
    try:
        assert [first.leader, second.leader].count(True) == 1
        when, what = parse_when("in 5m deploy", clock.now().astimezone(SHANGHAI))
        await second.add(KEY, "remind", when, what)  # made on either replica
        clock.set(clock.now() + timedelta(minutes=6))
        await fire_due(first, second)
        await inbox.wait(1)
        await fire_due(first, second)
        assert len(inbox.items) == 1
    finally:
        await first.close()
        await second.close()
        await store1.close()
        await store2.close()


async def test_another_replica_takes_over_when_the_leader_dies(db_url: str, clock: ManualClock) -> None:
    inbox = Inbox()
    first, store1 = await open_scheduler(db_url, clock, inbox, lease_seconds=45)
    second, store2 = await open_scheduler(db_url, clock, inbox, lease_seconds=45)
    try:
        leader, follower = (first, second) if first.leader else (second, first)
        leader.aps.pause()  # it dies: no renewals, no release
        leader._task.cancel()  # type: ignore[union-attr]
        clock.set(clock.now() + timedelta(seconds=30))
        await follower.tick()
        assert not follower.leader  # the lease is still held
        clock.set(clock.now() + timedelta(seconds=20))
        await follower.tick()
        assert follower.leader  # taken over within a minute
    finally:
        await first.close()
        await second.close()
        await store1.close()
        await store2.close()


async def test_jobs_lists_and_cancels_only_this_chats_jobs(env, clock: ManualClock) -> None:
    sched, commands, inbox = env
    await run(commands, "remind", "in 1h first")
    await run(commands, "remind", "every monday 9:00 weekly report")
    await run(commands, "remind", "in 2h not yours", key=OTHER)
    listing = (await run(commands, "jobs", "")).text
    assert "first" in listing and "weekly report" in listing and "not yours" not in listing
    other_id = (await sched.jobs(OTHER))[0].id
    assert "no job" in (await run(commands, "jobs", f"cancel {other_id}")).text
    mine = (await sched.jobs(KEY))[0].id
    assert "Cancelled" in (await run(commands, "jobs", f"cancel {mine}")).text
    assert [j.text for j in await sched.jobs(KEY)] == ["weekly report"]
    clock.set(clock.now() + timedelta(hours=1, minutes=1))
    await fire_due(sched)
    assert inbox.items == []  # the cancelled one never fires


async def test_bad_times_get_a_clear_answer(env) -> None:
    _, commands, _ = env
    with pytest.raises(CommandError, match="couldn't tell when"):
        await run(commands, "remind", "whenever you like do it")
    with pytest.raises(CommandError, match="already passed"):
        await run(commands, "remind", "2020-01-01 9:00 too late")
    with pytest.raises(CommandError, match="What should I remind"):
        await run(commands, "remind", "in 10m")
    assert "Usage" in (await run(commands, "remind", "")).text


@pytest.mark.parametrize("phrase, expected", [
    ("in 10m x", datetime(2026, 11, 25, 20, 40, tzinfo=SHANGHAI)),
    ("tomorrow 9:00 x", datetime(2026, 11, 26, 9, 0, tzinfo=SHANGHAI)),
    ("2026-12-01 14:00 x", datetime(2026, 12, 1, 14, 0, tzinfo=SHANGHAI)),
    ("friday 2pm x", datetime(2026, 11, 27, 14, 0, tzinfo=SHANGHAI)),
    ("at 17:30 x", datetime(2026, 11, 26, 17, 30, tzinfo=SHANGHAI)),  # passed today: tomorrow
    ("21:00 x", datetime(2026, 11, 25, 21, 0, tzinfo=SHANGHAI)),
])
def test_when_phrases(phrase: str, expected: datetime) -> None:
    now = datetime(2026, 11, 25, 20, 30, tzinfo=SHANGHAI)
    when, what = parse_when(phrase, now)
    assert when.at == expected and what == "x"


def test_repeating_phrases() -> None:
    now = datetime(2026, 11, 25, 20, 30, tzinfo=SHANGHAI)
    when, what = parse_when("every weekday at 8:30 stand-up", now)
    assert (when.days, when.hour, when.minute, what) == ((0, 1, 2, 3, 4), 8, 30, "stand-up")
    when, _ = parse_when("every mon, wed 9am gym", now)
    assert when.cron_days() == "mon,wed" and when.hour == 9
    assert parse_when("every 2h drink water", now)[0].every_seconds == 7200
    with pytest.raises(CommandError, match="once a minute"):
        parse_when("every 10s spam", now)


# ---- through a running Knowbot -----------------------------------------------------------------


class RecordingChannel:
    """A channel that records what it is asked to send (the platform seam)."""

    name = "test"

    def __init__(self) -> None:
        self.inbox = Inbox()

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        await self.inbox.deliver(key, reply)


async def knowbot(tmp_path, clock: ManualClock, **overrides):  # type: ignore[no-untyped-def]
    from bot.runtime import Runtime
    from conftest import make_settings

    runtime = await Runtime.start(make_settings(tmp_path, timezone="Asia/Shanghai", **overrides),
                                  knowledge=WordlessKnowledge(), clock=clock)
    channel = RecordingChannel()
    runtime.channels = [channel]  # type: ignore[list-item]
    await runtime.start_scheduler()
    return runtime, channel


class WordlessKnowledge:
    """No documents: these tests are about jobs."""

    async def search(self, key, query, top_k=5, kb=None):  # type: ignore[no-untyped-def]
        return []


async def test_a_reminder_asked_for_in_plain_language_fires_after_a_restart(
        tmp_path, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    from fake_openai import FakeOpenAI, reply, tool_calls

    from conftest import ChatBot

    async with FakeOpenAI() as server:
        server.script(
            tool_calls(("remind", {"when": "every monday 9:00", "what": "大家交周报"})),
            reply("好的，每周一早上九点提醒大家交周报。"),
        )
        llm = dict(llm_base_url=server.base_url, llm_api_key="k", llm_model="m")
        runtime, channel = await knowbot(tmp_path, clock, **llm)
        try:
            answer = await ChatBot(runtime).say("每周一早上九点提醒大家交周报")
            assert "周报" in answer.text
            tool_result = server.requests[1]["messages"][-1]["content"]
            assert "every Mon at 09:00 (Asia/Shanghai)" in tool_result
        finally:
            await runtime.close()

    clock.set(datetime(2026, 11, 30, 9, 0, 5, tzinfo=SHANGHAI))  # Monday, while it was down
    runtime, channel = await knowbot(tmp_path, clock)
    try:
        await fire_due(runtime.scheduler)  # type: ignore[arg-type]
        await channel.inbox.wait(1)
        key, sent = channel.inbox.items[0]
        assert sent.text == "⏰ Reminder: 大家交周报" and key.chat_id == "chat-1"
    finally:
        await runtime.close()


async def test_remind_by_command_through_the_engine(tmp_path, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    from conftest import ChatBot

    runtime, channel = await knowbot(tmp_path, clock)
    try:
        bot = ChatBot(runtime)
        answer = await bot.say("/remind in 10m check the oven")
        assert "20:40" in answer.text and "check the oven" in answer.text
        assert "check the oven" in (await bot.say("/jobs")).text
        clock.set(clock.now() + timedelta(minutes=10, seconds=1))
        await fire_due(runtime.scheduler)  # type: ignore[arg-type]
        await channel.inbox.wait(1)
        assert channel.inbox.items[0][1].text == "⏰ Reminder: check the oven"
        assert "No scheduled jobs" in (await bot.say("/jobs")).text
    finally:
        await runtime.close()


async def test_the_creator_is_told_when_wechat_cannot_push(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from channels.wechat import WeChatChannel
    from conftest import make_settings

    _, commands, _ = env
    key = ConversationKey("wechat", "wx1", "openid-1", "openid-1")
    base = dict(wechat_token="t", wechat_app_id="wx1", wechat_app_secret="s")
    unverified = WeChatChannel(make_settings(tmp_path, **base))
    commands.channel_for = lambda name: unverified
    assert "not verified" in (await run(commands, "remind", "in 10m call back", key=key)).text
    verified = WeChatChannel(make_settings(tmp_path, wechat_verified=True, **base))
    commands.channel_for = lambda name: verified
    assert "Note" not in (await run(commands, "remind", "in 10m call back", key=key)).text
    assert "48 hours" in (await run(commands, "remind", "in 3 days call back", key=key)).text
    commands.channel_for = lambda name: None
    assert "not running" in (await run(commands, "remind", "in 10m call back", key=key)).text


async def test_a_digest_of_what_was_added_to_the_knowledge_base(
        tmp_path, clock: ManualClock, embedder) -> None:  # type: ignore[no-untyped-def]
    from bot.types import Attachment
    from conftest import ChatBot, start_knowledge_bot

    runtime = await start_knowledge_bot(tmp_path, embedder, clock=clock, timezone="Asia/Shanghai")
    channel = RecordingChannel()
    runtime.channels = [channel]  # type: ignore[list-item]
    await runtime.start_scheduler()
    try:
        bot = ChatBot(runtime)
        assert "every 2 hours" in (await bot.say("/digest every 2h new documents")).text
        clock.advance(60)  # the document comes a minute after the digest was made
        doc = Attachment(kind="file", name="refunds.md",
                         data=b"# Refunds\n\nRefunds are paid within 14 days.")
        await runtime.dispatcher.process(InboundMessage(
            key=bot.key(), message_id="upload-1", text="", attachments=(doc,)))
        clock.set(clock.now() + timedelta(hours=2, minutes=1))
        await fire_due(runtime.scheduler)  # type: ignore[arg-type]
        await channel.inbox.wait(1)
        first = channel.inbox.items[0][1].text
        assert "Scheduled digest" in first and "Refunds (added" in first and "this chat" in first
        clock.set(clock.now() + timedelta(hours=2))
        await fire_due(runtime.scheduler)  # type: ignore[arg-type]
        await channel.inbox.wait(2)
        assert "Nothing was added" in channel.inbox.items[1][1].text
    finally:
        await runtime.close()


async def test_the_redis_lease_has_one_holder_and_is_handed_over() -> None:
    import os
    import uuid as _uuid

    from bot.lease import RedisLease

    url = os.environ.get("KNOWBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"knowbot:test:leader:{_uuid.uuid4().hex}"
    first = RedisLease(url, "replica-a", seconds=30, key=name)
    second = RedisLease(url, "replica-b", seconds=30, key=name)
    try:
        await first.redis.ping()
    except Exception:  # noqa: BLE001 - no Redis here
        await first.redis.aclose()
        await second.redis.aclose()
        if os.environ.get("KNOWBOT_TEST_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis is required for this run but {url} does not answer")
        pytest.skip(f"Redis not reachable at {url}")
    assert await first.acquire()
    assert not await second.acquire()
    assert await first.acquire()  # renewing its own lease
    ttl = await first.redis.pttl(name)
    assert 0 < ttl <= 30_000
    await first.release()  # a clean shutdown hands it over at once
    assert await second.acquire()
    await second.redis.delete(name)
    await second.release()


async def test_the_terminal_gets_its_reminders(tmp_path, clock: ManualClock, capsys) -> None:  # type: ignore[no-untyped-def]
    from bot.runtime import Runtime
    from channels.console import ConsoleChannel
    from conftest import make_settings

    runtime = await Runtime.start(make_settings(tmp_path), knowledge=WordlessKnowledge(),
                                  clock=clock)
    console = ConsoleChannel(runtime, key=ConversationKey("console", "local", "me", "me"))
    runtime.channels = [console]  # type: ignore[list-item]
    await runtime.start_scheduler()
    try:
        made = await console.say("/remind in 10m stretch")
        assert made is not None and "stretch" in made.text and "not running" not in made.text
        clock.set(clock.now() + timedelta(minutes=10, seconds=1))
        await fire_due(runtime.scheduler)  # type: ignore[arg-type]
        for _ in range(50):
            out = capsys.readouterr().out
            if out:
                break
            await asyncio.sleep(0.02)
        assert "⏰ Reminder: stretch" in out
    finally:
        await runtime.close()


async def test_one_clock_reaches_every_part_and_apscheduler_gets_the_real_one_back(
        tmp_path, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    import apscheduler.executors.base as aps_executors
    import apscheduler.schedulers.base as aps_base

    runtime, _ = await knowbot(tmp_path, clock)
    try:
        parts = [runtime.clock, runtime.store.clock, runtime.state.clock, runtime.outbox.clock,
                 runtime.scheduler.clock, runtime.engine.jobs.clock,  # type: ignore[union-attr]
                 runtime.engine.deps.clock]
        assert all(part is clock for part in parts)
        clock.advance(timedelta(days=30))
        assert aps_base.datetime.now(SHANGHAI) == clock.now()
        assert aps_executors.datetime.now(SHANGHAI) == clock.now()
    finally:
        await runtime.close()
    assert aps_base.datetime is datetime and aps_executors.datetime is datetime
