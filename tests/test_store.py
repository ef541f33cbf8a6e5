"""Storage on SQLite and on PostgreSQL: migrations, messages, summaries, dedupe, usage."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine, inspect

from bot.db import migrate, sync_url
from bot.llm import UsageEvent
from bot.store import Store
from bot.types import ConversationKey

KEY = ConversationKey("test", "team-1", "chat-1", "alice")
OTHER = ConversationKey("test", "team-1", "chat-2", "bob")


@pytest.fixture
async def store(db_url: str):
    s = await Store.open(db_url)
    try:
        yield s
    finally:
        await s.close()


async def test_migrations_create_every_table_and_are_idempotent(db_url: str) -> None:
    migrate(db_url)
    migrate(db_url)  # a second start-up changes nothing
    engine = create_engine(sync_url(db_url))
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    finally:
        engine.dispose()
    from alembic.script import ScriptDirectory

    from bot.db import alembic_config

    assert {"conversation", "message", "processed_inbound", "usage_record", "knowledge_base",
            "source"} <= tables
    assert version == ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()


async def test_messages_are_kept_per_conversation_in_order(store: Store) -> None:
    assert not await store.has_messages(KEY)
    await store.add_messages(KEY, [("user", "hello", 5), ("assistant", "hi there", 6)])
    assert await store.has_messages(KEY) and not await store.has_messages(OTHER)
    await store.add_messages(OTHER, [("user", "someone else", 7)])
    await store.add_messages(KEY, [("user", "second", 5)])
    _, turns = await store.recall(KEY)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "hello"), ("assistant", "hi there"), ("user", "second")]
    assert await store.count_messages(OTHER) == 1
    _, newest = await store.recall(KEY, limit=2)
    assert [t.content for t in newest] == ["hi there", "second"]


async def test_summary_state_and_reset(store: Store) -> None:
    ids = await store.add_messages(KEY, [("user", "a", 5), ("assistant", "b", 5)])
    await store.set_summary(KEY, "they said a and b", 6, ids[-1])
    state, unsummarised = await store.recall(KEY)
    assert (state.summary, state.summarized_upto) == ("they said a and b", ids[-1])
    assert unsummarised == []
    assert await store.reset(KEY) == 2
    state, _ = await store.recall(KEY)
    assert (state.summary, state.summarized_upto) == ("", 0)
    assert await store.count_messages(KEY) == 0
    assert not await store.has_messages(KEY)


async def test_an_inbound_id_is_claimed_once_even_concurrently(store: Store) -> None:
    results = await asyncio.gather(*(store.claim_inbound(KEY, "evt-1") for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    # the same id on another tenant is a different message
    assert await store.claim_inbound(ConversationKey("test", "team-2", "c", "u"), "evt-1")
    await store.finish_inbound(KEY, "evt-1", "done")
    assert await store.inbound_status(KEY, "evt-1") == "done"
    assert await store.inbound_status(KEY, "never") is None


async def test_dedupe_survives_a_restart(db_url: str) -> None:
    first = await Store.open(db_url)
    assert await first.claim_inbound(KEY, "update-42")
    await first.close()
    second = await Store.open(db_url)
    try:
        assert not await second.claim_inbound(KEY, "update-42")
    finally:
        await second.close()


async def test_usage_records_are_stored(store: Store) -> None:
    await store.record_usage_many([
        UsageEvent(provider="default", model="m1", prompt_tokens=12, completion_tokens=3,
                   latency_ms=4.5, outcome="ok", conversation_id="c1", error=""),
        UsageEvent(provider="backup", model="m2", prompt_tokens=0, completion_tokens=0,
                   latency_ms=1.0, outcome="rate_limited", conversation_id="c1", error="429"),
    ])
    rows = await store.usage()
    assert [(r.provider, r.outcome, r.prompt_tokens) for r in rows] == [
        ("default", "ok", 12), ("backup", "rate_limited", 0)]


async def test_chinese_text_round_trips(store: Store) -> None:
    await store.add_messages(KEY, [("user", "报销流程是什么？", 9)])
    _, (turn,) = await store.recall(KEY)
    assert turn.content == "报销流程是什么？"


def test_the_migrations_build_exactly_the_tables_the_models_declare(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlmodel import SQLModel

    import bot.models  # noqa: F401  (the tables)
    from bot.db import migrate, sync_url

    migrate(db_url)
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True,
                "include_object": lambda obj, name, kind, reflected, other:
                    not (kind == "table" and name == "scheduled_job")})
            assert compare_metadata(context, SQLModel.metadata) == []
    finally:
        engine.dispose()


async def test_writes_grouped_under_one_commit_keep_their_own_outcomes(store: Store) -> None:
    """Many writes at once (on SQLite they share commits): one failing undoes only itself."""
    from sqlalchemy import insert, select

    from bot.models import StateEntry

    table = StateEntry.__table__  # type: ignore[attr-defined]
    now = store.clock.now()

    def write(i: int):  # type: ignore[no-untyped-def]
        def run(conn):  # type: ignore[no-untyped-def]
            conn.execute(insert(table).values(namespace="t", key=f"k{i}", value="{}",
                                              updated_at=now))
            if i % 7 == 3:
                raise ValueError(f"op {i} fails after writing")
            if i % 7 == 5:  # a database error: the same key again
                conn.execute(insert(table).values(namespace="t", key=f"k{i}", value="{}",
                                                  updated_at=now))
            return i
        return run

    outcomes = await asyncio.gather(*(store.write(write(i)) for i in range(60)),
                                    return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        if i % 7 == 3:
            assert isinstance(outcome, ValueError) and str(outcome) == f"op {i} fails after writing"
        elif i % 7 == 5:
            assert isinstance(outcome, Exception) and "Integrity" in str(outcome)
        else:
            assert outcome == i
    kept = await store.read(lambda conn: {r[0] for r in conn.execute(
        select(table.c.key).where(table.c.namespace == "t")).all()})
    assert kept == {f"k{i}" for i in range(60) if i % 7 not in (3, 5)}


async def test_the_database_lane_replaces_connections_that_died_while_idle(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server restart kills pooled connections; the next operation must not fail for it."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has no server connections to lose")
    import bot.db

    import uuid

    name = f"knowbot-test-{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in db_url else "?"
    store = await Store.open(f"{db_url}{sep}application_name={name}")
    try:
        await asyncio.gather(*(store.add_messages(KEY, [("user", "before", 1)]) for _ in range(4)))
        killer = create_engine(sync_url(db_url))
        with killer.connect() as conn:  # every connection of this store, as a restart would
            killed = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE application_name = '{name}'").scalar_one()
        killer.dispose()
        assert killed >= 1
        monkeypatch.setattr(bot.db, "IDLE_PING_SECONDS", 0.0)  # they have all been idle "long"
        await store.add_messages(KEY, [("user", "after", 1)])
        _, turns = await store.recall(KEY)
        assert [t.content for t in turns][-2:] == ["before", "after"]
    finally:
        await store.close()


async def test_a_burst_of_writes_shares_commits_and_lone_changes_skip_the_transaction(
        store: Store) -> None:
    """Writes queued together commit together (on both databases); an operation that says it
    needs no transaction runs in autocommit on PostgreSQL when it is alone."""
    from sqlalchemy import event

    commits: list[int] = []
    event.listen(store._lane.engine, "commit", lambda conn: commits.append(1))
    await asyncio.gather(*(store.add_messages(KEY, [("user", f"m{i}", 1)]) for i in range(200)))
    assert len((await store.recall(KEY))[1]) == 200
    assert 1 <= len(commits) < 100  # 200 writes, far fewer commits

    inside = await store.write(lambda conn: conn.in_transaction(), atomic=False)
    assert inside is (store._lane.is_sqlite)  # SQLite's one connection always groups
    assert await store.write(lambda conn: conn.in_transaction()) is True


async def test_a_group_that_meets_a_locked_row_runs_apart_instead_of_failing(
        db_url: str) -> None:
    """Another transaction (another replica's group) holds a row: the group gives up waiting
    after its bound and every operation runs alone, each getting its own outcome."""
    if not db_url.startswith("postgresql"):
        pytest.skip("one SQLite connection: no other transaction to meet")
    import threading
    import time

    import psycopg
    from sqlalchemy import insert, select, update

    from bot.models import StateEntry

    table = StateEntry.__table__  # type: ignore[attr-defined]
    store = await Store.open(db_url)
    try:
        now = store.clock.now()
        await store.write(lambda conn: conn.execute(insert(table).values(
            namespace="t", key="held", value="0", updated_at=now)))
        holder = psycopg.connect(db_url)
        holder.execute("UPDATE state_entry SET value = 'holder' WHERE key = 'held'")  # locked

        def other(conn):  # type: ignore[no-untyped-def]
            conn.execute(insert(table).values(namespace="t", key="free", value="1",
                                              updated_at=now))
            return "free"

        def blocked(conn):  # type: ignore[no-untyped-def]
            conn.execute(update(table).where(table.c.key == "held").values(value="lane"))
            return "held"

        def commit_later() -> None:
            # time.sleep, not threading.Timer: under faketime a timed wait may never time out
            time.sleep(1.0)
            holder.commit()

        release = threading.Thread(target=commit_later, daemon=True)
        release.start()
        started = time.monotonic()
        outcomes = await asyncio.to_thread(store._lane._run_group,
                                           [(other, None, None, True), (blocked, None, None, True)])
        waited = time.monotonic() - started
        release.join()
        holder.close()
        assert outcomes == [(True, "free"), (True, "held")]
        assert waited >= 0.9  # the lone run of `blocked` waited for the holder, as it should
        values = await store.read(lambda conn: dict(conn.execute(
            select(table.c.key, table.c.value).where(table.c.namespace == "t")).all()))
        assert values == {"held": "lane", "free": "1"}
    finally:
        await store.close()
