"""Rate limits: the in-memory window, and the Redis one that replicas share."""

from __future__ import annotations

import os
import uuid

import pytest

from bot.ratelimit import MemoryRateLimiter, RedisRateLimiter

REDIS_URL = os.environ.get("KNOWBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def test_sliding_window_per_subject() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(limit=3, window=60, clock=lambda: now[0])
    assert [await limiter.allow("alice") for _ in range(4)] == [True, True, True, False]
    assert await limiter.allow("bob")
    now[0] = 61.0
    assert await limiter.allow("alice")


async def test_memory_is_bounded() -> None:
    limiter = MemoryRateLimiter(limit=1, max_subjects=100)
    for i in range(1000):
        await limiter.allow(f"user-{i}")
    assert len(limiter._hits) == 100


async def test_replicas_share_the_limit_through_redis() -> None:
    first = RedisRateLimiter(REDIS_URL, limit=3, window=3600)
    second = RedisRateLimiter(REDIS_URL, limit=3, window=3600)
    try:
        await first.redis.ping()
    except Exception:  # noqa: BLE001
        await first.close()
        await second.close()
        if os.environ.get("KNOWBOT_TEST_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis is required for this run but {REDIS_URL} does not answer")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    subject = f"test:{uuid.uuid4().hex}"
    try:
        results = [await first.allow(subject), await second.allow(subject),
                   await first.allow(subject), await second.allow(subject)]
    finally:
        await first.close()
        await second.close()
    assert results == [True, True, True, False]
