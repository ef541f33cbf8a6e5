"""Small shared state in the database: tokens, pending answers, quotas, one-time links.

Every replica sees the same entries. Each entry has a version, so a writer that must not
overwrite another's change (an access-token refresh, a quota count) uses `swap`, which succeeds
only if the version it read is still current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bot.clock import Clock
from bot.db import insert_new
from bot.models import StateEntry
from bot.store import Store

_STATE = StateEntry.__table__  # type: ignore[attr-defined]

# The statements are built once, with parameters: building and cache-keying a statement per
# call cost about a third of each operation's CPU (the WeChat planner makes a dozen a message).
_KEY = (_STATE.c.namespace == bindparam("b_namespace"), _STATE.c.key == bindparam("b_key"))
_GET = select(_STATE).where(*_KEY)
_NEW_VALUES = dict(value=bindparam("b_value"), version=bindparam("b_new_version"),
                   expires_at=bindparam("b_expires_at"), updated_at=bindparam("b_updated_at"))
_SWAP = update(_STATE).where(*_KEY, _STATE.c.version == bindparam("b_version")).values(
    **_NEW_VALUES)
_TAKE = delete(_STATE).where(*_KEY, _STATE.c.version == bindparam("b_version"))
_DELETE = delete(_STATE).where(*_KEY)


def _upsert(dialect_insert: Any) -> Any:
    """One statement that stores a value whether or not the key exists, and says its version."""
    statement = dialect_insert(_STATE)
    return statement.on_conflict_do_update(
        index_elements=[_STATE.c.namespace, _STATE.c.key],
        set_=dict(value=statement.excluded.value, version=_STATE.c.version + 1,
                  expires_at=statement.excluded.expires_at,
                  updated_at=statement.excluded.updated_at),
    ).returning(_STATE.c.version)


_PUT = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}


def _key(namespace: str, key: str) -> dict[str, Any]:
    return {"b_namespace": namespace, "b_key": key}


def _new_value(namespace: str, key: str, data: str, version: int,
               expires_at: datetime | None, now: datetime) -> dict[str, Any]:
    return {"b_namespace": namespace, "b_key": key, "b_value": data, "b_new_version": version,
            "b_expires_at": expires_at, "b_updated_at": now}


@dataclass(frozen=True)
class Entry:
    """One stored value and the version it was read at."""

    value: Any
    version: int
    expires_at: datetime | None


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite hands back naive UTC
        return value.replace(tzinfo=timezone.utc)
    return value


def _expiry(ttl: float | timedelta | None, now: datetime) -> datetime | None:
    if ttl is None:
        return None
    return now + (ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl))


class StateStore:
    """Namespaced JSON values with versions and optional expiry, on Knowbot's database."""

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or store.clock

    def _live(self, row: Any, now: datetime) -> Entry | None:
        if row is None:
            return None
        expires = _aware(row.expires_at)
        if expires is not None and expires <= now:
            return None
        return Entry(json.loads(row.value), row.version, expires)

    async def get(self, namespace: str, key: str) -> Entry | None:
        """The live entry under `key`, or None when absent or expired."""
        now = self.clock.now()
        params = _key(namespace, key)
        return await self.store.read(lambda conn: self._live(conn.execute(_GET, params).first(),
                                                             now))

    async def put(self, namespace: str, key: str, value: Any,
                  ttl: float | timedelta | None = None) -> int:
        """Store `value` unconditionally; return its new version."""
        now = self.clock.now()
        data = json.dumps(value, ensure_ascii=False)

        row = dict(namespace=namespace, key=key, value=data, version=1,
                   expires_at=_expiry(ttl, now), updated_at=now)

        def write(conn: Connection) -> int:
            return int(conn.execute(_PUT[conn.dialect.name], row).scalar_one())

        return await self.store.write(write, atomic=False)

    async def swap(self, namespace: str, key: str, value: Any, expect_version: int,
                   ttl: float | timedelta | None = None) -> bool:
        """Store `value` only if the entry is still at `expect_version` (0: absent or expired)."""
        now = self.clock.now()
        data = json.dumps(value, ensure_ascii=False)

        def write(conn: Connection) -> bool:
            expires = _expiry(ttl, now)
            if expect_version == 0:  # from nothing: most often there is nothing, so try that
                if insert_new(conn, _STATE, dict(namespace=namespace, key=key, value=data,
                                                 version=1, expires_at=expires,
                                                 updated_at=now)):
                    return True
                row = conn.execute(_GET, _key(namespace, key)).first()
                if row is None or self._live(row, now) is not None:
                    return False  # someone else's value (or it went again meanwhile)
                done = conn.execute(_SWAP, {**_new_value(  # over an expired entry
                    namespace, key, data, row.version + 1, expires, now),
                    "b_version": row.version})
                return done.rowcount == 1
            done = conn.execute(_SWAP, {**_new_value(
                namespace, key, data, expect_version + 1, expires, now),
                "b_version": expect_version})
            return done.rowcount == 1

        return await self.store.write(write, atomic=False)

    async def take(self, namespace: str, key: str) -> Any | None:
        """Remove the entry and return its value, once: a second caller gets None."""
        now = self.clock.now()

        def write(conn: Connection) -> Any | None:
            params = _key(namespace, key)
            row = conn.execute(_GET, params).first()
            if row is None:
                return None
            done = conn.execute(_TAKE, {**params, "b_version": row.version})
            if done.rowcount != 1:
                return None
            entry = self._live(row, now)
            return entry.value if entry is not None else None

        return await self.store.write(write, atomic=False)

    async def delete(self, namespace: str, key: str) -> None:
        """Remove the entry if it exists."""
        params = _key(namespace, key)
        await self.store.write(lambda conn: conn.execute(_DELETE, params), atomic=False)

    async def items(self, namespace: str, prefix: str = "", limit: int = 1000
                    ) -> list[tuple[str, Entry]]:
        """Live entries of a namespace whose keys start with `prefix`, by key."""
        now = self.clock.now()
        query = (select(_STATE).where(_STATE.c.namespace == namespace,
                                      _STATE.c.key.startswith(prefix, autoescape=True))
                 .order_by(_STATE.c.key).limit(limit))

        def read(conn: Connection) -> list[tuple[str, Entry]]:
            found = []
            for row in conn.execute(query):
                entry = self._live(row, now)
                if entry is not None:
                    found.append((row.key, entry))
            return found

        return await self.store.read(read)

    async def purge_expired(self) -> int:
        """Delete expired entries; return how many."""
        stmt = delete(_STATE).where(_STATE.c.expires_at.is_not(None),
                                    _STATE.c.expires_at <= self.clock.now())
        return await self.store.write(lambda conn: conn.execute(stmt).rowcount)
