"""Database engines and start-up migrations (SQLite by default, PostgreSQL to scale out)."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def sync_url(url: str) -> str:
    """The URL with a synchronous driver (for migrations)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def async_url(url: str) -> str:
    """The URL with an asyncio driver (aiosqlite or psycopg)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise StorageError(
        f"KNOWBOT_DATABASE_URL: unsupported database {backend!r}; use sqlite or postgresql"
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _cannot_open(url: str, exc: SQLAlchemyError) -> StorageError:
    """One line naming the database (password hidden) and why it could not be opened."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    where = make_url(url).render_as_string(hide_password=True)
    return StorageError(f"KNOWBOT_DATABASE_URL: could not open the database {where}: {reason}")


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at Knowbot's migrations and this database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the database schema up to date (blocking; run it in a thread)."""
    _ensure_sqlite_dir(url)
    engine = create_engine(sync_url(url))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.begin() as connection:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise _cannot_open(url, exc) from exc
    finally:
        engine.dispose()


def schema_revisions(url: str, connect_timeout: float | None = None
                     ) -> tuple[str | None, str | None]:
    """The database's current migration revision and the newest one Knowbot has (blocking)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    _ensure_sqlite_dir(url)
    args = {}
    if connect_timeout and make_url(url).get_backend_name() == "postgresql":
        args["connect_timeout"] = max(1, int(connect_timeout))
    engine = create_engine(sync_url(url), connect_args=args)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise _cannot_open(url, exc) from exc
    finally:
        engine.dispose()
    return current, head


async def wait_for_schema(url: str, timeout: float, interval: float = 1.0) -> None:
    """Wait (bounded) until `knowbot migrate` has brought the schema up to date."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        current, head = await asyncio.to_thread(schema_revisions, url)
        if current == head:
            return
        if loop.time() >= deadline:
            raise StorageError(
                f"KNOWBOT_DATABASE_URL: the database schema is at revision {current or 'none'} "
                f"but this Knowbot needs {head}: run `knowbot migrate` (or set "
                "KNOWBOT_MIGRATE_ON_START=true)"
            )
        log.info("waiting for `knowbot migrate`: schema at %s, need %s", current or "none", head)
        await asyncio.sleep(interval)


def make_engine(url: str) -> AsyncEngine:
    """An async engine for the URL, tuned for the embedded default on SQLite."""
    _ensure_sqlite_dir(url)
    aurl = async_url(url)
    if make_url(aurl).get_backend_name() == "sqlite":
        engine = create_async_engine(aurl, pool_size=4, max_overflow=0, pool_timeout=120)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(aurl, pool_size=10, max_overflow=20, pool_pre_ping=True)


async def open_engine(url: str, migrate_now: bool = True, wait: float = 60.0) -> AsyncEngine:
    """Migrate the database (or wait up to `wait` s for it to be migrated), return an engine."""
    if migrate_now:
        await asyncio.to_thread(migrate, url)
    else:
        await wait_for_schema(url, wait)
    return make_engine(url)


@functools.lru_cache(maxsize=64)
def _insert_new_statement(table: Table, dialect: str) -> Any:
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    # RETURNING says whether the row went in (the drivers' rowcount is not reliable here)
    return dialect_insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def insert_new(conn: Connection, table: Table, row: dict[str, Any]) -> bool:
    """Insert a row unless it collides with a unique key; True if it was inserted.

    `INSERT ... ON CONFLICT DO NOTHING` on both databases: no savepoint, and on PostgreSQL a
    concurrent insert of the same key waits for the other transaction instead of failing it.
    """
    return conn.execute(_insert_new_statement(table, conn.dialect.name), row).first() is not None


def storage_error(exc: SQLAlchemyError) -> StorageError:
    """A one-line StorageError from a database error (the driver's message, no SQL)."""
    reason = str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()
    return StorageError(f"database error: {type(exc).__name__}: {reason[0] if reason else ''}"[:300])


IDLE_PING_SECONDS = 10.0  # a pooled connection unused this long is checked before use


def ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use, but only when it sat idle for a while.

    `pool_pre_ping` costs one more round trip on every operation; a connection in steady use
    is known to be alive. One that sat in the pool for `IDLE_PING_SECONDS` (the server may have
    restarted, a proxy may have dropped it) is pinged, and a dead one is replaced at once.
    """

    @event.listens_for(engine.pool, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()
        except Exception as exc:  # noqa: BLE001 - any failure means: use another connection
            raise DisconnectionError("a pooled connection was dead") from exc


class DatabaseLane:
    """Blocking SQLAlchemy Core work on dedicated threads, one thread hop per operation.

    On SQLite one thread owns one connection and commits in groups: the operations queued while
    it was busy run together under a single commit, and only then are their results handed back
    (if one fails, the group runs again with each operation in its own savepoint, so one failing
    does not undo another). On PostgreSQL a small
    pool of threads runs one transaction per operation.
    """

    MAX_GROUP = 256

    def __init__(self, url: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        _ensure_sqlite_dir(url)
        self.url = sync_url(url)
        self.is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine = create_engine(self.url, pool_size=1, max_overflow=0)
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self._queue: "queue.SimpleQueue[tuple | None]" = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, name="knowbot-db", daemon=True)
            self._thread.start()
        else:
            self.engine = create_engine(self.url, pool_size=8, max_overflow=0)
            ping_when_idle(self.engine)
            # Reads run without BEGIN ... ROLLBACK around them (one round trip, not three):
            # each statement sees what was committed when it started.
            self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="knowbot-db")

    async def _run(self, fn: "Callable[[Connection], T]", write: bool) -> "T":
        loop = asyncio.get_running_loop()
        if not self.is_sqlite:
            return await loop.run_in_executor(self._executor, self._call, fn, write)
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, future, loop))
        return await future

    def _call(self, fn: "Callable[[Connection], T]", write: bool) -> "T":
        try:
            with (self.engine.begin() if write else self._reader.connect()) as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise storage_error(exc) from exc

    def _serve(self) -> None:
        """The SQLite thread: take what is queued, run it as one group, commit once."""
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self.MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this group, then stop
                    break
                group.append(item)
            self._run_group(group)

    def _run_group(self, group: list[tuple]) -> None:
        """Run a group under one commit; if any operation fails, run them apart instead.

        The common case (nothing fails) costs no savepoints. When one operation raises, the
        whole transaction is rolled back and every operation runs again in its own savepoint,
        so each gets the outcome it would have had alone: an operation must be plain database
        work that is safe to run again after a rollback (every one in Knowbot is).
        """
        try:
            with self.engine.begin() as conn:
                outcomes: list[tuple[bool, object]] = [(True, fn(conn)) for fn, _, _ in group]
        except Exception:  # noqa: BLE001 - sorted out one by one below
            outcomes = self._run_apart(group)
        for (_fn, future, loop), (ok, value) in zip(group, outcomes):
            loop.call_soon_threadsafe(_settle, future, ok, value)

    def _run_apart(self, group: list[tuple]) -> list[tuple[bool, object]]:
        outcomes: list[tuple[bool, object]] = []
        try:
            with self.engine.begin() as conn:
                for fn, _future, _loop in group:
                    try:
                        with conn.begin_nested():
                            outcomes.append((True, fn(conn)))
                    except SQLAlchemyError as exc:
                        outcomes.append((False, storage_error(exc)))
                    except Exception as exc:  # noqa: BLE001 - handed back to its caller
                        outcomes.append((False, exc))
        except SQLAlchemyError as exc:  # the commit itself failed: every operation failed
            error = storage_error(exc)
            outcomes = [(False, error)] * len(group)
        return outcomes

    async def read(self, fn: "Callable[[Connection], T]") -> "T":
        """Run a read on the lane.

        On PostgreSQL a read runs in autocommit: each of its statements sees what was committed
        when that statement began. A read that needs one snapshot over several statements
        belongs in `write`.
        """
        return await self._run(fn, write=False)

    async def write(self, fn: "Callable[[Connection], T]") -> "T":
        """Run a write in one transaction on the lane."""
        return await self._run(fn, write=True)

    def close(self) -> None:
        """Stop the threads and close the connections."""
        if self.is_sqlite:
            self._queue.put(None)
            self._thread.join(timeout=30)
        else:
            self._executor.shutdown(wait=True)
        self.engine.dispose()


def _settle(future: "asyncio.Future[object]", ok: bool, value: object) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)  # type: ignore[arg-type]
