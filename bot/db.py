"""Database engines and start-up migrations (SQLite by default, PostgreSQL to scale out)."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event, literal_column
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


def one_of(column: Any, values: tuple[str, ...]) -> Any:
    """`column IN ('a', 'b')` with the values written into the SQL. A plain `in_` of a list is
    an "expanding" parameter that SQLAlchemy renders again at every execution; on statements
    run for every message (the inbox's take, the outbox's remove) that was most of their cost
    on the client. For fixed identifiers only (statuses), never for what a user sent."""
    assert all(v.isidentifier() for v in values)
    return column.in_([literal_column(f"'{v}'") for v in values])


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


def name_os_thread(name: str) -> None:
    """Give the running thread its name in the operating system too (Linux), so `top -H` and
    /proc/PID/task/*/comm tell the database threads from the event loop's."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15] + b"\0", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class DatabaseLane:
    """Blocking SQLAlchemy Core work on dedicated threads, in groups.

    The event loop puts an operation on a queue (no executor, no thread hop of its own); a lane
    thread takes what is queued, runs it as one group and hands every result back with one wake
    of the loop. Under load a group holds many operations, so their BEGIN/COMMIT, their pool
    checkout and their wakes are shared; alone, an operation runs as it would by itself.

    Writes commit in groups: the operations queued while a thread was busy run in one
    transaction, and only then are their results handed back. If one fails, the group is rolled
    back and every operation runs again apart, so each gets the outcome it would have had alone:
    an operation must be plain database work that is safe to run again after a rollback (every
    one in Knowbot is).

    - SQLite: one thread owns one connection and runs reads and writes alike; apart means each
      operation in its own savepoint.
    - PostgreSQL: `WRITERS` threads take groups of writes, `READERS` threads groups of reads in
      autocommit. A group of several writes waits at most `GROUP_LOCK_TIMEOUT_MS` for a row
      another transaction holds (another replica's group may hold it and wait for one of ours:
      without the bound that is a deadlock PostgreSQL breaks only after a second); then it runs
      apart, each operation in a transaction of its own without that bound.
    """

    MAX_GROUP = 256
    WRITERS = 2
    READERS = 2
    GROUP_LOCK_TIMEOUT_MS = 200

    def __init__(self, url: str) -> None:
        _ensure_sqlite_dir(url)
        self.url = sync_url(url)
        self.is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
        self._writes: "queue.SimpleQueue[tuple | None]" = queue.SimpleQueue()
        if self.is_sqlite:
            self.engine = create_engine(self.url, pool_size=1, max_overflow=0)
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self._reads = self._writes  # the one connection does both, in one group
            serve = [(self._writes, self._run_group)]
        else:
            self.engine = create_engine(self.url, pool_size=self.WRITERS + self.READERS,
                                        max_overflow=0)
            ping_when_idle(self.engine)
            # Reads run without BEGIN ... ROLLBACK around them (one round trip, not three):
            # each statement sees what was committed when it started.
            self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            self._reads = queue.SimpleQueue()
            serve = ([(self._writes, self._run_group)] * self.WRITERS
                     + [(self._reads, self._run_reads)] * self.READERS)
        self._threads = [threading.Thread(target=self._serve, args=pair, daemon=True,
                                          name=f"knowbot-db-{n}")
                         for n, pair in enumerate(serve)]
        for thread in self._threads:
            thread.start()

    async def _run(self, fn: "Callable[[Connection], T]", write: bool, atomic: bool = True
                   ) -> "T":
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        (self._writes if write else self._reads).put((fn, future, loop, atomic))
        return await future

    def _serve(self, source: "queue.SimpleQueue[tuple | None]",
               run: "Callable[[list[tuple]], list[tuple[bool, object]]]") -> None:
        """A lane thread: take what is queued, run it as one group, hand the results back."""
        name_os_thread(threading.current_thread().name)
        while True:
            first = source.get()
            if first is None:
                return
            group = [first]
            while len(group) < self.MAX_GROUP:
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    source.put(None)  # finish this group, then stop
                    break
                group.append(item)
            try:
                outcomes = run(group)
            except Exception as exc:  # noqa: BLE001 - never lose a caller's wait
                outcomes = [(False, exc)] * len(group)
            _hand_back(group, outcomes)

    def _run_group(self, group: list[tuple]) -> list[tuple[bool, object]]:
        """Run a group of writes under one commit; if any operation fails, run them apart."""
        if len(group) == 1 and not self.is_sqlite:
            return [self._alone(group[0][0], group[0][3])]
        try:
            with self.engine.begin() as conn:
                if not self.is_sqlite:
                    conn.exec_driver_sql(
                        f"SET LOCAL lock_timeout = '{int(self.GROUP_LOCK_TIMEOUT_MS)}ms'")
                return [(True, item[0](conn)) for item in group]
        except Exception:  # noqa: BLE001 - sorted out one by one below
            if not self.is_sqlite:
                return [self._alone(item[0], item[3]) for item in group]
            return self._run_apart(group)

    def _alone(self, fn: "Callable[[Connection], T]", atomic: bool = True
               ) -> tuple[bool, object]:
        """One PostgreSQL write by itself: in a transaction of its own, or in autocommit
        when the operation said it needs none (one round trip instead of three)."""
        try:
            with (self.engine.begin() if atomic else self._reader.connect()) as conn:
                outcome = _attempt(fn, conn)
                if not outcome[0] and conn.in_transaction():
                    conn.rollback()  # not committed on the way out
                return outcome
        except SQLAlchemyError as exc:  # the connection or the commit failed
            return False, storage_error(exc)

    def _run_apart(self, group: list[tuple]) -> list[tuple[bool, object]]:
        """SQLite: the group again, each operation in its own savepoint."""
        outcomes: list[tuple[bool, object]] = []
        try:
            with self.engine.begin() as conn:
                for fn, *_ in group:
                    savepoint = conn.begin_nested()
                    outcome = _attempt(fn, conn)
                    (savepoint.commit if outcome[0] else savepoint.rollback)()
                    outcomes.append(outcome)
        except SQLAlchemyError as exc:  # the commit itself failed: every operation failed
            error = storage_error(exc)
            outcomes = [(False, error)] * len(group)
        return outcomes

    def _run_reads(self, group: list[tuple]) -> list[tuple[bool, object]]:
        """PostgreSQL: a group of reads one after another on one autocommit connection."""
        outcomes: list[tuple[bool, object]] = []
        try:
            with self._reader.connect() as conn:
                outcomes.extend(_attempt(fn, conn) for fn, *_ in group)
        except SQLAlchemyError as exc:  # no connection to be had
            error = storage_error(exc)
            outcomes += [(False, error)] * (len(group) - len(outcomes))
        return outcomes

    async def read(self, fn: "Callable[[Connection], T]") -> "T":
        """Run a read on the lane.

        On PostgreSQL a read runs in autocommit: each of its statements sees what was committed
        when that statement began. A read that needs one snapshot over several statements
        belongs in `write`.
        """
        return await self._run(fn, write=False)

    async def write(self, fn: "Callable[[Connection], T]", *, atomic: bool = True) -> "T":
        """Run a write in one transaction on the lane (shared with the writes queued beside it).

        `atomic=False` says the operation needs no transaction of its own: it makes one
        change at most (any reads before it see what they would in a READ COMMITTED
        transaction). On PostgreSQL such an operation, when nothing is queued beside it, runs
        in autocommit: its change commits as it is made, without the BEGIN and COMMIT round
        trips. Not for several changes: each would be a commit, and a WAL flush, of its own.
        """
        return await self._run(fn, write=True, atomic=atomic)

    def close(self) -> None:
        """Stop the threads and close the connections."""
        for _ in range(self.WRITERS if not self.is_sqlite else 1):
            self._writes.put(None)
        if not self.is_sqlite:
            for _ in range(self.READERS):
                self._reads.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self.engine.dispose()


def _attempt(fn: "Callable[[Connection], T]", conn: Connection) -> tuple[bool, object]:
    """Run one operation: (True, its result), or (False, the error to hand its caller)."""
    try:
        return True, fn(conn)
    except SQLAlchemyError as exc:
        return False, storage_error(exc)
    except Exception as exc:  # noqa: BLE001 - handed back to its caller
        return False, exc


def _hand_back(group: list[tuple], outcomes: list[tuple[bool, object]]) -> None:
    """Settle a group's futures with one wake of each event loop they wait on."""
    by_loop: dict[Any, list[tuple[Any, bool, object]]] = {}
    for (_fn, future, loop, _atomic), (ok, value) in zip(group, outcomes):
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, settled)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


def _settle_all(settled: list[tuple[Any, bool, object]]) -> None:
    for future, ok, value in settled:
        _settle(future, ok, value)


def _settle(future: "asyncio.Future[object]", ok: bool, value: object) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)  # type: ignore[arg-type]
