"""Leases among replicas: one holder at a time (the scheduler's leader, the Telegram poller).

The holder renews before the lease runs out; when it dies, the lease lapses and another replica
takes it. Kept in the database (`Lease`) or, when replicas share Redis, as a Redis key
(`RedisLease`). Times come from the state store's clock.
"""

from __future__ import annotations

from bot.kv import StateStore

LEASE_SECONDS = 45.0


class Lease:
    """A lease as a state-store entry that the holder renews with compare-and-swap."""

    def __init__(self, state: StateStore, owner: str, seconds: float = LEASE_SECONDS,
                 namespace: str = "scheduler", key: str = "leader") -> None:
        self.state = state
        self.owner = owner
        self.seconds = seconds
        self.namespace = namespace
        self.key = key

    async def acquire(self) -> bool:
        """Take or renew the lease; True while this replica holds it."""
        entry = await self.state.get(self.namespace, self.key)
        if entry is None:
            return await self.state.swap(self.namespace, self.key, {"owner": self.owner}, 0,
                                         ttl=self.seconds)
        if entry.value.get("owner") != self.owner:
            return False
        return await self.state.swap(self.namespace, self.key, {"owner": self.owner},
                                     entry.version, ttl=self.seconds)

    async def release(self) -> None:
        """Give the lease up (at shutdown) so another replica takes over at once."""
        entry = await self.state.get(self.namespace, self.key)
        if entry is not None and entry.value.get("owner") == self.owner:
            await self.state.take(self.namespace, self.key)


class RedisLease:
    """The same lease as a Redis key (SET NX PX), for replicas that share Redis."""

    _RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
              "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
    _RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                "return redis.call('del', KEYS[1]) else return 0 end")

    def __init__(self, url: str, owner: str, seconds: float = LEASE_SECONDS,
                 key: str = "knowbot:scheduler:leader") -> None:
        from bot.redisconn import redis_client

        self.redis = redis_client(url)
        self.owner = owner
        self.ms = int(seconds * 1000)
        self.key = key

    async def acquire(self) -> bool:
        """Take or renew the lease; True while this replica holds it."""
        if await self.redis.set(self.key, self.owner, nx=True, px=self.ms):
            return True
        return bool(await self.redis.eval(self._RENEW, 1, self.key, self.owner, self.ms))

    async def release(self) -> None:
        """Give the lease up and close the connection."""
        await self.redis.eval(self._RELEASE, 1, self.key, self.owner)
        await self.redis.aclose()
