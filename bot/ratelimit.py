"""Per-user rate limits: in memory for one process, in Redis when replicas share the load."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Callable, Protocol

from bot.errors import StorageError


class RateLimiter(Protocol):
    """Decides whether one more message from a user is allowed now."""

    async def allow(self, subject: str) -> bool:
        """Count one message for the subject; False if it is over its limit."""
        ...


class MemoryRateLimiter:
    """A sliding window of `limit` messages per `window` seconds, per subject, in memory."""

    def __init__(
        self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
        max_subjects: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_subjects = max_subjects
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    async def allow(self, subject: str) -> bool:
        """Count one message for the subject; False if it is over its limit."""
        now = self.clock()
        hits = self._hits.get(subject)
        if hits is None:
            hits = self._hits[subject] = deque()
            while len(self._hits) > self.max_subjects:  # bounded memory
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(subject)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True


class RedisRateLimiter:
    """A fixed window of `limit` messages per `window` seconds, per subject, shared in Redis."""

    def __init__(self, url: str, limit: int, window: int = 60, prefix: str = "knowbot:rl:") -> None:
        from bot.redisconn import redis_client

        self.redis = redis_client(url)
        self.limit = limit
        self.window = window
        self.prefix = prefix

    async def allow(self, subject: str) -> bool:
        """Count one message for the subject; False if it is over its limit."""
        from redis.exceptions import RedisError

        bucket = int(time.time() // self.window)
        name = f"{self.prefix}{subject}:{bucket}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(name).expire(name, self.window * 2).execute()
        except RedisError as exc:
            raise StorageError(f"KNOWBOT_REDIS_URL: Redis is not answering: {exc}") from exc
        return int(count) <= self.limit

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()
