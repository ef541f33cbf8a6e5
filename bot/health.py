"""Readiness: does each part Knowbot needs answer? Cheap enough for a probe every 10 seconds.

The database runs `SELECT 1`, Redis (when set) answers PING, a Qdrant server answers for the
collection, the embedded Qdrant Edge folder is usable, and the embedding model is loaded: the
first probe starts loading it in the background and reports "loading" until it is in memory, so
a replica is ready only once it can answer a question at full speed. Each check has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable

from sqlalchemy import text

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

DEADLINE = 3.0  # seconds one check may take


@dataclass(frozen=True)
class Check:
    """One part's answer: ok or not, and a short detail (never a secret)."""

    name: str
    ok: bool
    detail: str


def _reason(exc: BaseException) -> str:
    """A one-line reason (driver messages name hosts and ports, not passwords)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"{type(cause).__name__}: {first}"[:200]


class Readiness:
    """The /readyz checks of one runtime (holds a Redis client and the model warm-up)."""

    def __init__(self, runtime: "Runtime", deadline: float = DEADLINE) -> None:
        self.runtime = runtime
        self.deadline = deadline
        self._redis: Any = None
        self._warming: asyncio.Task[Any] | None = None

    async def check(self) -> list[Check]:
        """Run every check at once, each within the deadline."""
        checks: list[tuple[str, Awaitable[str]]] = [("database", self._database())]
        if self.runtime.settings.redis_url:
            checks.append(("redis", self._ping_redis()))
        checks.append(("vector_store", self._vectors()))
        checks.append(("embedding_model", self._model()))
        results = await asyncio.gather(*(self._bounded(n, c) for n, c in checks))
        return list(results)

    async def _bounded(self, name: str, check: Awaitable[str]) -> Check:
        try:
            detail = await asyncio.wait_for(check, self.deadline)
            return Check(name, True, detail)
        except asyncio.TimeoutError:
            return Check(name, False, f"no answer within {self.deadline:g} s")
        except _NotReady as exc:
            return Check(name, False, str(exc))
        except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
            log.warning("readiness: %s is not answering: %s", name, _reason(exc))
            return Check(name, False, _reason(exc))

    async def _database(self) -> str:
        async with self.runtime.store.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return self.runtime.store.dialect

    async def _ping_redis(self) -> str:
        client = getattr(self.runtime.limiter, "redis", None)
        if client is None:
            if self._redis is None:
                from bot.redisconn import redis_client

                self._redis = redis_client(self.runtime.settings.redis_url or "",
                                           socket_connect_timeout=self.deadline)
            client = self._redis
        await client.ping()
        return "PONG"

    async def _vectors(self) -> str:
        service = self.runtime.knowledge
        if not hasattr(service, "vectors"):
            return "not used"
        settings = self.runtime.settings
        if settings.qdrant_url:
            store = await service.vectors()  # type: ignore[attr-defined]
            exists = await asyncio.to_thread(store.client.collection_exists, store.collection)
            return f"qdrant server, collection {store.collection} " + (
                "ready" if exists else "missing")
        if getattr(service, "_vectors", None) is not None:
            return "qdrant edge, open"
        folder = Path(settings.data_dir) / "qdrant"
        where = folder if folder.exists() else folder.parent
        if not os.access(where, os.R_OK | os.W_OK):
            raise _NotReady(f"cannot write {where}")
        return "qdrant edge, opens on first use"

    async def _model(self) -> str:
        service = self.runtime.knowledge
        if not hasattr(service, "embedder"):
            return "not used"
        if getattr(service, "_embedder", None) is not None:
            return "loaded"
        if self._warming is None or (self._warming.done() and self._warming.exception()):
            failed = self._warming.exception() if self._warming is not None else None
            self._warming = asyncio.create_task(service.embedder(), name="knowbot:warm-model")
            if failed is not None:
                raise _NotReady(f"could not load: {_reason(failed)}; trying again")
        await asyncio.wait({self._warming}, timeout=min(0.5, self.deadline / 2))
        if self._warming.done() and self._warming.exception() is None:
            return "loaded"
        if self._warming.done():
            raise _NotReady(f"could not load: {_reason(self._warming.exception())}")
        raise _NotReady("loading")

    async def close(self) -> None:
        """Stop the warm-up and close the Redis client this check opened."""
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class _NotReady(Exception):
    """Internal: a part answered, but is not ready yet (the message says why)."""
