"""Redis clients for a replica: a bounded pool that waits for a free connection.

redis-py's default pool holds at most 100 connections and fails the call that would need a
101st ("Too many connections"). A replica answers hundreds of messages at once (each checks
its rate limit in Redis), so under load that failure reached people as an error reply. Here the
pool is smaller still and a call waits, up to `POOL_WAIT` seconds, for a connection to come
back: a Redis round trip takes well under a millisecond, so the wait is short even at the bound.
"""

from __future__ import annotations

from typing import Any

POOL_SIZE = 64  # connections one client of one replica opens at most
POOL_WAIT = 10.0  # seconds a call waits for one of them before it fails


def redis_client(url: str, **options: Any) -> Any:
    """An asyncio Redis client for `url` on a blocking pool of `POOL_SIZE` connections
    (`options`: the connection's, such as socket_connect_timeout); `aclose` closes its pool."""
    from redis.asyncio import BlockingConnectionPool, Redis

    pool = BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_WAIT,
                                           **options)
    return Redis.from_pool(pool)
