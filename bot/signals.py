"""Wake-ups by name: within this process, and across replicas through Redis when it is there.

Something that waits for a state change another task (maybe on another replica) will make can
wait on a signal instead of polling the database often. A signal is only a hint to look again:
the state itself stays in the database, so a lost signal costs a slower poll, never an answer.

With Redis configured, `notify` publishes on one Redis channel that every replica's `Signals`
subscribes to, so a waiter anywhere wakes within a round trip. Without Redis a signal reaches
only this process; `reaches_every_replica` says whether waiters may rely on it (true as well for
the embedded default, where one process owns the store).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

CHANNEL = "knowbot:signals"
MAX_NAME = 1024
RECONNECT_CAP = 10.0  # seconds between attempts to resubscribe after Redis went away


class Signals:
    """Named wake-ups for the tasks of this process (and of other replicas, with Redis)."""

    def __init__(self, redis_url: str | None = None, *, single_process: bool = False,
                 channel: str = CHANNEL) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.single_process = single_process
        self._listeners: list[Callable[[str], None]] = []
        self._redis: Any = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def reaches_every_replica(self) -> bool:
        """True when a notify reaches every waiter of this Knowbot, wherever it runs."""
        return self.single_process or (self.redis_url is not None and self._subscribed.is_set())

    def listen(self, listener: Callable[[str], None]) -> None:
        """Call `listener(name)` for every signal, local or from another replica."""
        self._listeners.append(listener)

    async def start(self, timeout: float = 2.0) -> None:
        """Subscribe to the other replicas' signals (no-op without Redis)."""
        if self.redis_url is None or self._task is not None:
            return
        from bot.redisconn import redis_client

        self._redis = redis_client(self.redis_url)
        self._task = asyncio.create_task(self._listen_forever(), name="knowbot:signals")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            log.warning("could not subscribe to Redis signals yet; waiters poll meanwhile")

    async def notify(self, name: str) -> None:
        """Wake the waiters on `name` here and, with Redis, on every replica."""
        if len(name) > MAX_NAME:
            raise ValueError("signal name too long")
        if self._redis is None or not self._subscribed.is_set():
            self._deliver(name)  # (with Redis up, the echo of the publish wakes us too)
            return
        try:
            await self._redis.publish(self.channel, name)
        except Exception as exc:  # noqa: BLE001 - a lost signal costs a poll, not an answer
            log.warning("could not publish a signal: %s", type(exc).__name__)
            self._deliver(name)

    def _deliver(self, name: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(name)
            except Exception:  # noqa: BLE001 - one listener must not stop the others
                log.exception("a signal listener failed")

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                delay = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=30.0)
                    if message is None or message.get("type") != "message":
                        continue
                    data = message.get("data")
                    if isinstance(data, bytes) and len(data) <= MAX_NAME:
                        self._deliver(data.decode("utf-8", "replace"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: poll, then resubscribe
                self._subscribed.clear()
                log.warning("Redis signals lost (%s); resubscribing in %.1f s",
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_CAP, delay * 2)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._subscribed.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
