"""Knowbot's persistent state: conversations, messages, dedupe and usage (SQLModel)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.db import DatabaseLane, insert_new, open_engine, storage_error
from bot.models import Conversation, Message, ProcessedInbound, UsageRecord
from bot.clock import SYSTEM_CLOCK, Clock
from bot.types import ConversationKey

log = logging.getLogger(__name__)

T = TypeVar("T")

_INBOUND = ProcessedInbound.__table__  # type: ignore[attr-defined]
_CONVERSATION = Conversation.__table__  # type: ignore[attr-defined]
_MESSAGE = Message.__table__  # type: ignore[attr-defined]

# Hot-path statements built once; each call only binds its values.
_FINISH = (
    update(_INBOUND)
    .where(_INBOUND.c.channel == bindparam("k_channel"), _INBOUND.c.tenant == bindparam("k_tenant"),
           _INBOUND.c.message_id == bindparam("k_message_id"))
    .values(status=bindparam("status"))
)


def _upsert(dialect_insert: Any) -> Any:
    statement = dialect_insert(_CONVERSATION)
    return statement.on_conflict_do_update(index_elements=["id"],
                                           set_={"updated_at": statement.excluded.updated_at})


# A conversation row is made by its first message and touched by every later one.
_UPSERT_CONVERSATION = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}
_ADD_MESSAGES = insert(_MESSAGE).returning(_MESSAGE.c.id, sort_by_parameter_order=True)
_RECALL_HEAD = select(_CONVERSATION.c.summary, _CONVERSATION.c.summary_tokens,
                      _CONVERSATION.c.summarized_upto).where(_CONVERSATION.c.id == bindparam("conv"))
_RECALL_TURNS = (
    select(_MESSAGE.c.id, _MESSAGE.c.role, _MESSAGE.c.content, _MESSAGE.c.token_count,
           _MESSAGE.c.created_at)
    .where(_MESSAGE.c.conversation_id == bindparam("conv"), _MESSAGE.c.id > bindparam("after"))
    .order_by(_MESSAGE.c.id.desc()).limit(bindparam("limit"))
)
_COUNT_MESSAGES = select(func.count()).where(_MESSAGE.c.conversation_id == bindparam("conv"))
_ANY_MESSAGE = select(_MESSAGE.c.id).where(_MESSAGE.c.conversation_id == bindparam("conv")).limit(1)


@dataclass(frozen=True)
class StoredMessage:
    """One remembered turn."""

    id: int
    role: str
    content: str
    token_count: int
    created_at: datetime


@dataclass(frozen=True)
class ConversationState:
    """A conversation's running summary and where it ends."""

    id: str
    summary: str
    summary_tokens: int
    summarized_upto: int


class Unit:
    """The writes of one answer that commit with the answer itself.

    A worker opens one around an inbox entry's answer (`deferred_writes`); the turns the answer
    remembers are then written in the transaction that finishes the entry and puts its reply in
    the outbox, not in one of their own. So the conversation keeps the exchange exactly when
    its reply is on its way: a worker killed after the model answered but before finishing
    leaves no turn behind for the next try to write a second time, and a lease lost to another
    worker discards this try's turns with its reply.
    """

    def __init__(self) -> None:
        self.writes: list[Callable[[Connection], Any]] = []
        self.open = True

    def run(self, conn: Connection) -> None:
        """Apply the deferred writes in the caller's transaction."""
        for write in self.writes:
            write(conn)


_UNIT: ContextVar[Unit | None] = ContextVar("knowbot_unit", default=None)


@contextmanager
def deferred_writes() -> Iterator[Unit]:
    """Defer the deferrable writes made in this context (and the tasks it starts) to a Unit;
    one made after the block ends, by a task that outlived it, is written at once."""
    unit = Unit()
    token = _UNIT.set(unit)
    try:
        yield unit
    finally:
        unit.open = False
        _UNIT.reset(token)


class Store:
    """Async access to Knowbot's database."""

    def __init__(self, engine: AsyncEngine, url: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.engine = engine
        self.clock = clock  # the runtime's one clock: stamps and cutoffs, and others' default
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        # The per-message hot path (dedupe, memory, usage) runs as plain blocking SQLAlchemy Core
        # on dedicated threads: one thread hop per operation instead of one per driver call,
        # which on SQLite is several times cheaper than the asyncio adapter.
        self._lane = DatabaseLane(url or engine.url.render_as_string(hide_password=False))

    @classmethod
    async def open(cls, url: str, clock: Clock = SYSTEM_CLOCK, *, migrate: bool = True,
                   wait: float = 60.0) -> "Store":
        """Migrate the database at `url` (or wait for `knowbot migrate`) and open it."""
        return cls(await open_engine(url, migrate, wait), url, clock)

    async def close(self) -> None:
        """Release every connection."""
        await self.engine.dispose()
        self._lane.close()

    @property
    def url(self) -> str:
        """The database URL with its synchronous driver (for libraries with their own engine)."""
        return self._lane.url

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run a blocking Core read on the database lane (for hot read paths elsewhere)."""
        return await self._lane.read(fn)

    async def write(self, fn: Callable[[Connection], T], *, atomic: bool = True) -> T:
        """Run a blocking Core write in one transaction on the database lane (`atomic=False`:
        its statements may each commit alone; see `DatabaseLane.write`)."""
        return await self._lane.write(fn, atomic=atomic)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose database errors become StorageError."""
        try:
            async with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            raise storage_error(exc) from exc

    # ---- dedupe ---------------------------------------------------------

    async def claim_inbound(self, key: ConversationKey, message_id: str) -> bool:
        """Record a platform message id; False if it was already taken (a redelivery)."""
        row = dict(channel=key.channel, tenant=key.tenant, message_id=message_id,
                   conversation_id=key.conversation_id(), status="processing",
                   received_at=self.clock.now())

        return await self._lane.write(lambda conn: insert_new(conn, _INBOUND, row),
                                      atomic=False)

    async def finish_inbound(self, key: ConversationKey, message_id: str, status: str) -> None:
        """Mark a claimed message as done or failed."""
        params = dict(k_channel=key.channel, k_tenant=key.tenant, k_message_id=message_id,
                      status=status)
        await self._lane.write(lambda conn: conn.execute(_FINISH, params), atomic=False)

    async def inbound_status(self, key: ConversationKey, message_id: str) -> str | None:
        """The status of a claimed message id, or None if it was never seen."""
        async with self.session() as session:
            result = await session.exec(  # type: ignore[call-overload]
                select(ProcessedInbound.status)
                .where(ProcessedInbound.channel == key.channel)  # type: ignore[arg-type]
                .where(ProcessedInbound.tenant == key.tenant)  # type: ignore[arg-type]
                .where(ProcessedInbound.message_id == message_id)  # type: ignore[arg-type]
            )
            return result.scalar_one_or_none()

    # ---- conversations and messages --------------------------------------

    def _upsert_conversation(self, key: ConversationKey, now: datetime) -> dict[str, Any]:
        """The parameters of `_UPSERT_CONVERSATION[dialect]` for this conversation."""
        return dict(id=key.conversation_id(), channel=key.channel, tenant=key.tenant,
                    chat_id=key.chat_id, thread_id=key.thread_id, summary="", summary_tokens=0,
                    summarized_upto=0, created_at=now, updated_at=now)

    async def add_messages(
        self, key: ConversationKey, turns: list[tuple[str, str, int]], user_id: str = "",
        meta: list[dict[str, Any] | None] | None = None, *, defer: bool = False,
    ) -> list[int]:
        """Append (role, content, token_count) turns to the conversation; return their ids.

        `meta`, one per turn, is what an answer used and did (citations, tool calls, an error).
        With `defer`, inside `deferred_writes`, the turns are written with the answer's finish
        instead, and no ids are returned.
        """
        now = self.clock.now()
        conv_id = key.conversation_id()
        metas = list(meta or []) + [None] * (len(turns) - len(meta or []))
        rows = [dict(conversation_id=conv_id, role=role, content=content, token_count=tokens,
                     user_id=user_id, created_at=now,
                     meta=json.dumps(m, ensure_ascii=False) if m else "")
                for (role, content, tokens), m in zip(turns, metas)]
        upsert = self._upsert_conversation(key, now)

        def write(conn: Connection) -> list[int]:
            conn.execute(_UPSERT_CONVERSATION[conn.dialect.name], upsert)
            return [int(row[0]) for row in conn.execute(_ADD_MESSAGES, rows).all()]

        unit = _UNIT.get() if defer else None
        if unit is not None and unit.open:
            unit.writes.append(write)
            return []
        return await self._lane.write(write)

    async def recall(self, key: ConversationKey, limit: int = 200
                     ) -> tuple[ConversationState, list[StoredMessage]]:
        """The summary state and the newest `limit` unsummarised messages, oldest first."""
        conv_id = key.conversation_id()

        def read(conn: Connection) -> tuple[ConversationState, list[StoredMessage]]:
            row = conn.execute(_RECALL_HEAD, {"conv": conv_id}).first()
            if row is None:
                return ConversationState(conv_id, "", 0, 0), []
            state = ConversationState(conv_id, row[0], row[1], row[2])
            result = conn.execute(_RECALL_TURNS, {"conv": conv_id, "after": state.summarized_upto,
                                                  "limit": limit})
            turns = [StoredMessage(*r) for r in result.all()]
            turns.reverse()
            return state, turns

        return await self._lane.read(read)

    async def set_summary(
        self, key: ConversationKey, summary: str, tokens: int, upto_id: int
    ) -> None:
        """Store a new running summary covering every message up to `upto_id`."""
        now = self.clock.now()
        upsert = self._upsert_conversation(key, now)
        change = (
            update(_CONVERSATION).where(_CONVERSATION.c.id == key.conversation_id())
            .values(summary=summary, summary_tokens=tokens, summarized_upto=upto_id,
                    updated_at=now)
        )

        def write(conn: Connection) -> None:
            conn.execute(_UPSERT_CONVERSATION[conn.dialect.name], upsert)
            conn.execute(change)

        await self._lane.write(write)

    async def reset(self, key: ConversationKey) -> int:
        """Forget the conversation: its messages and summary. Returns the messages removed."""
        conv_id = key.conversation_id()
        async with self.session() as session:
            result = await session.exec(  # type: ignore[call-overload]
                delete(Message).where(Message.conversation_id == conv_id)  # type: ignore[arg-type]
            )
            await session.exec(  # type: ignore[call-overload]
                delete(Conversation).where(Conversation.id == conv_id)  # type: ignore[arg-type]
            )
            await session.commit()
            return int(result.rowcount or 0)

    async def count_messages(self, key: ConversationKey) -> int:
        """How many messages the conversation has stored."""
        params = {"conv": key.conversation_id()}
        return int(await self._lane.read(
            lambda conn: conn.execute(_COUNT_MESSAGES, params).scalar_one()))

    async def has_messages(self, key: ConversationKey) -> bool:
        """Whether the conversation has any message stored (one index probe, not a count)."""
        params = {"conv": key.conversation_id()}
        return await self._lane.read(
            lambda conn: conn.execute(_ANY_MESSAGE, params).first() is not None)

    # ---- the console: conversations by channel and chat, and a user's data -------------

    async def conversations(self, *, channel: str | None = None, tenant: str | None = None,
                            tenants: list[str] | None = None, chats: list[str] | None = None,
                            text: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Conversations, newest first, with their message count and last message.

        `tenant` is CHANNEL:TENANT; `tenants` and `chats` bound what a scoped admin sees;
        `text` keeps conversations with a message containing it.
        """
        conv, msg = _CONVERSATION, _MESSAGE
        query = select(conv).order_by(conv.c.updated_at.desc(), conv.c.id).limit(
            max(1, min(limit, 500)))
        if channel:
            query = query.where(conv.c.channel == channel)
        if tenant:
            ch, _, ten = tenant.partition(":")
            query = query.where(conv.c.channel == ch, conv.c.tenant == ten)
        if tenants is not None:
            pairs = [t.partition(":") for t in tenants]
            from sqlalchemy import and_, false, or_

            query = query.where(or_(false(), *[and_(conv.c.channel == c, conv.c.tenant == t)
                                               for c, _, t in pairs]))
        if chats is not None:
            query = query.where(conv.c.chat_id.in_(chats))
        if text:
            hit = select(msg.c.conversation_id).where(
                msg.c.content.icontains(text[:200], autoescape=True))
            query = query.where(conv.c.id.in_(hit))
        count = (select(func.count(), func.max(msg.c.id)).where(
            msg.c.conversation_id == bindparam("conv")))
        last = select(msg.c.content).where(msg.c.id == bindparam("last"))

        def read(conn: Connection) -> list[dict[str, Any]]:
            found = []
            for row in conn.execute(query).all():
                n, last_id = conn.execute(count, {"conv": row.id}).one()
                content = conn.execute(last, {"last": last_id}).scalar() if last_id else ""
                found.append({"id": row.id, "channel": row.channel,
                              "tenant": f"{row.channel}:{row.tenant}", "chat_id": row.chat_id,
                              "thread_id": row.thread_id, "updated_at": _iso(row.updated_at),
                              "messages": int(n), "last": (content or "")[:300]})
            return found

        return await self._lane.read(read)

    async def chats(self, tenant: str | None = None, limit: int = 5000) -> dict[str, list[str]]:
        """The chats Knowbot has talked in, per tenant (CHANNEL:TENANT), most recent first."""
        conv = _CONVERSATION
        query = (select(conv.c.channel, conv.c.tenant, conv.c.chat_id,
                        func.max(conv.c.updated_at).label("last"))
                 .group_by(conv.c.channel, conv.c.tenant, conv.c.chat_id)
                 .order_by(func.max(conv.c.updated_at).desc()).limit(limit))
        if tenant:
            ch, _, ten = tenant.partition(":")
            query = query.where(conv.c.channel == ch, conv.c.tenant == ten)

        def read(conn: Connection) -> dict[str, list[str]]:
            found: dict[str, list[str]] = {}
            for row in conn.execute(query):
                found.setdefault(f"{row.channel}:{row.tenant}", []).append(row.chat_id)
            return found

        return await self._lane.read(read)

    async def conversation(self, conversation_id: str, limit: int = 1000
                           ) -> dict[str, Any] | None:
        """One conversation with its messages (oldest first) and each answer's meta."""
        conv, msg = _CONVERSATION, _MESSAGE
        head = select(conv).where(conv.c.id == conversation_id)
        turns = (select(msg).where(msg.c.conversation_id == conversation_id)
                 .order_by(msg.c.id.desc()).limit(max(1, min(limit, 5000))))

        def read(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(head).first()
            if row is None:
                return None
            messages = []
            for m in reversed(conn.execute(turns).all()):
                try:
                    meta = json.loads(m.meta) if m.meta else {}
                except ValueError:
                    meta = {}
                messages.append({"id": m.id, "role": m.role, "content": m.content,
                                 "user_id": m.user_id, "created_at": _iso(m.created_at),
                                 "citations": meta.get("citations", []),
                                 "tools": meta.get("tools", []), "error": meta.get("error")})
            return {"id": row.id, "channel": row.channel, "tenant": f"{row.channel}:{row.tenant}",
                    "chat_id": row.chat_id, "thread_id": row.thread_id,
                    "updated_at": _iso(row.updated_at), "summary": row.summary,
                    "messages": messages}

        return await self._lane.read(read)

    async def forget_user(self, channel: str, tenant: str, user_id: str,
                          chats: list[str] | None = None) -> dict[str, int]:
        """Delete a user's messages in a tenant (in some chats only, when given).

        A conversation left with no message is deleted; one that still holds others' messages
        loses its running summary (it may repeat what the user said), which is rebuilt from
        what is left. Returns {"messages": n, "conversations": n, "affected": [ids]}.
        """
        conv, msg = _CONVERSATION, _MESSAGE
        mine = select(conv.c.id).where(conv.c.channel == channel, conv.c.tenant == tenant)
        if chats is not None:
            mine = mine.where(conv.c.chat_id.in_(chats))
        where = (msg.c.user_id == user_id, msg.c.conversation_id.in_(mine))

        def write(conn: Connection) -> dict[str, Any]:
            affected = sorted({r[0] for r in conn.execute(
                select(msg.c.conversation_id).where(*where).distinct())})
            removed = int(conn.execute(delete(msg).where(*where)).rowcount or 0)
            emptied = 0
            for conv_id in affected:
                left = conn.execute(select(func.count()).where(
                    msg.c.conversation_id == conv_id)).scalar_one()
                if left:
                    conn.execute(update(conv).where(conv.c.id == conv_id).values(
                        summary="", summary_tokens=0, summarized_upto=0))
                else:
                    emptied += int(conn.execute(delete(conv).where(conv.c.id == conv_id))
                                   .rowcount or 0)
            return {"messages": removed, "conversations": emptied, "affected": affected}

        return await self._lane.write(write)

    # ---- usage ----------------------------------------------------------

    async def record_usage_many(self, events: list[Any]) -> None:
        """Store many model calls' usage in one transaction."""
        if not events:
            return
        now = self.clock.now()
        rows = [dict(created_at=now, provider=e.provider, model=e.model,
                     prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens,
                     latency_ms=e.latency_ms, outcome=e.outcome,
                     conversation_id=e.conversation_id, error=e.error[:2000]) for e in events]
        statement = insert(UsageRecord.__table__)  # type: ignore[attr-defined]
        await self._lane.write(lambda conn: conn.execute(statement, rows))

    async def usage(self, since: datetime | None = None) -> list[UsageRecord]:
        """Usage records, oldest first, optionally since a time."""
        async with self.session() as session:
            query = select(UsageRecord).order_by(UsageRecord.id)  # type: ignore[arg-type]
            if since is not None:
                query = query.where(UsageRecord.created_at >= since)  # type: ignore[arg-type]
            result = await session.exec(query)  # type: ignore[call-overload]
            return list(result.scalars().all())

    async def prune_inbound(self, older_than: timedelta) -> int:
        """Drop dedupe records older than a bound (platform retries end within minutes)."""
        cutoff = self.clock.now() - older_than
        async with self.session() as session:
            result = await session.exec(  # type: ignore[call-overload]
                delete(ProcessedInbound).where(ProcessedInbound.received_at < cutoff)  # type: ignore[arg-type]
            )
            await session.commit()
            return int(result.rowcount or 0)


def _iso(value: datetime | None) -> str | None:
    """An aware ISO time (SQLite hands back naive UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        from datetime import timezone

        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()
