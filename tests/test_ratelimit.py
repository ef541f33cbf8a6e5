"""Rate limits: the in-memory window, and the Redis one that replicas share."""

from __future__ import annotations

import asyncio
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


async def test_hundreds_of_checks_at_once_wait_for_a_connection_instead_of_failing() -> None:
    """A replica with hundreds of answers in flight checks their limits at the same moment:
    more than the pool's connections; every check waits its turn and none fails (redis-py's
    own pool refused the 101st with "Too many connections", which reached people as an error)."""
    from bot.redisconn import POOL_SIZE

    limiter = RedisRateLimiter(REDIS_URL, limit=10_000, window=3600)
    try:
        await limiter.redis.ping()
    except Exception:  # noqa: BLE001
        await limiter.close()
        if os.environ.get("KNOWBOT_TEST_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis is required for this run but {REDIS_URL} does not answer")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    subjects = [f"test:{uuid.uuid4().hex}" for _ in range(400)]
    try:
        results = await asyncio.gather(*(limiter.allow(s) for s in subjects),
                                       return_exceptions=True)
        pool = limiter.redis.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)
    finally:
        await limiter.close()
    assert results == [True] * len(subjects), [r for r in results if r is not True][:3]
    assert opened <= POOL_SIZE
