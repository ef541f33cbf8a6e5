"""Signals: a wake-up by name reaches this process's waiters, and other replicas' through Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from bot.signals import Signals

REDIS_URL = os.environ.get("KNOWBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def collector(signals: Signals) -> tuple[list[str], asyncio.Event]:
    got: list[str] = []
    arrived = asyncio.Event()

    def listener(name: str) -> None:
        got.append(name)
        arrived.set()

    signals.listen(listener)
    return got, arrived


async def redis_or_skip() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception:  # noqa: BLE001
        if os.environ.get("KNOWBOT_TEST_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis is required for this run but {REDIS_URL} does not answer")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    finally:
        await client.aclose()


async def test_without_redis_a_signal_reaches_this_process_only() -> None:
    alone = Signals(None)
    embedded = Signals(None, single_process=True)
    got, _ = collector(alone)
    await alone.start()
    await alone.notify("wechat|answer|o1:m1")
    assert got == ["wechat|answer|o1:m1"]
    # several replicas on PostgreSQL without Redis: waiters must keep polling
    assert not alone.reaches_every_replica
    assert embedded.reaches_every_replica  # one process owns the SQLite store


async def test_a_signal_from_one_replica_wakes_the_other_through_redis() -> None:
    await redis_or_skip()
    channel = f"knowbot:test-signals:{uuid.uuid4().hex}"
    first, second = Signals(REDIS_URL, channel=channel), Signals(REDIS_URL, channel=channel)
    got, arrived = collector(second)
    mine, _ = collector(first)
    await first.start()
    await second.start()
    try:
        assert first.reaches_every_replica and second.reaches_every_replica
        await first.notify("wechat|answer|openid-1:42")
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == ["wechat|answer|openid-1:42"]
        for _ in range(50):  # the publisher hears its own signal once, through Redis
            if mine:
                break
            await asyncio.sleep(0.02)
        assert mine == ["wechat|answer|openid-1:42"]
    finally:
        await first.close()
        await second.close()


async def test_with_redis_unreachable_signals_stay_local_and_waiters_keep_polling() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    signals = Signals(f"redis://127.0.0.1:{port}/0")
    got, _ = collector(signals)
    await signals.start(timeout=0.5)
    try:
        assert not signals.reaches_every_replica
        await signals.notify("wechat|taken|o:m")
        assert got == ["wechat|taken|o:m"]
    finally:
        await signals.close()
