"""The outbox: a reply a channel could not send yet is kept in the database and retried.

An answer to an inbox entry is written here by `Inbox.finish` (in the transaction that
finishes the entry) and sent from here with `send_stored`; a job's reply goes through `deliver`,
which sends at once and keeps the reply only when the send fails. A reply that fails with a
retryable ChannelSendError is retried by a background loop with backoff, across restarts and on
whichever replica gets to it first (a lease on each entry stops two replicas sending the same
one). A channel reports each part it has sent (`part_sent`), so a send interrupted mid-way, even
by a killed process, resumes after the parts already out; only a part sent in the instant
before its report was written can go out twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy import Connection, bindparam, delete, exists, insert, select, update

from bot.clock import Clock
from bot.db import one_of
from bot.errors import ChannelSendError, KnowbotError
from bot.models import InboxEntry, OutboxEntry
from bot.store import Store
from bot.types import ConversationKey, Reply

if TYPE_CHECKING:
    from bot.channel import Channel

log = logging.getLogger(__name__)

_OUTBOX = OutboxEntry.__table__  # type: ignore[attr-defined]
_INBOX = InboxEntry.__table__  # type: ignore[attr-defined]
# Forgetting a sent reply, built once: it runs for every answer.
_REMOVE = delete(_OUTBOX).where(_OUTBOX.c.id == bindparam("r_id"))
_ANSWER_DONE = (update(_INBOX).where(_INBOX.c.id == bindparam("r_inbox"),
                                     _INBOX.c.status == "answered").values(status="done")
                .returning(_INBOX.c.conversation_id))
# The conversation's next message, if one waits for this answer to leave (it is taken then).
_WAITING = ("queued", "running")  # the inbox's TAKEABLE (bot.inbox imports this module)
_NEXT_WAITING = (select(_INBOX.c.id)
                 .where(_INBOX.c.conversation_id == bindparam("n_conversation"),
                        _INBOX.c.id > bindparam("r_inbox"), one_of(_INBOX.c.status, _WAITING))
                 .limit(1))
# On PostgreSQL all of it in one statement, run in autocommit: one round trip, not five
# (BEGIN, the delete, the update, the look, COMMIT). A data-modifying WITH runs whether or not
# the statement reads it.
_LATER = _INBOX.alias("later")
_REMOVE_AND_DONE = (
    update(_INBOX).add_cte(_REMOVE.cte("gone"))
    .where(_INBOX.c.id == bindparam("r_inbox"), _INBOX.c.status == "answered")
    .values(status="done")
    .returning(exists().where(_LATER.c.conversation_id == _INBOX.c.conversation_id,
                              _LATER.c.id > _INBOX.c.id, one_of(_LATER.c.status, _WAITING)))
)

# While the outbox retries a reply, the index of its first part not yet sent: a channel that
# splits replies into several messages skips the ones before it.
RESUME_AT: contextvars.ContextVar[int] = contextvars.ContextVar("knowbot_resume_at", default=0)
# What the channel asked to keep with the reply for sending it (e.g. the message it answers).
SEND_CONTEXT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("knowbot_send_context")
# Told how many parts have gone out after each part, so a send killed mid-way resumes there.
PART_SENT: contextvars.ContextVar[Callable[[int], Awaitable[None]] | None] = contextvars.ContextVar(
    "knowbot_part_sent", default=None)

LEASE = timedelta(seconds=30)  # a replica sending a reply holds it this long, renewed while sending
MAX_AGE = timedelta(days=2)  # past this a reply is stale: it is dropped with a warning


def send_context() -> dict[str, Any]:
    """What the reply being sent was stored with ({} when sent straight away)."""
    return SEND_CONTEXT.get({})


async def part_sent(parts: int) -> None:
    """A channel calls this after each part of a reply has gone out (`parts` sent so far)."""
    report = PART_SENT.get()
    if report is not None:
        await report(parts)


def backoff(attempts: int) -> timedelta:
    """Seconds to wait before retry number `attempts` (5 s doubling, capped at 10 minutes)."""
    return timedelta(seconds=min(600, 5 * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class StoredReply:
    """An outbox row as written (its columns), to send without reading it back."""

    id: str
    channel: str
    key: str
    reply: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str
    context: str
    inbox_id: int | None


class Outbox:
    """Replies waiting to be sent, retried until they go out or go stale."""

    def __init__(self, store: Store, channels: Callable[[], list["Channel"]],
                 clock: Clock | None = None, interval: float = 5.0) -> None:
        self.store = store
        self._channels = channels
        self.clock = clock or store.clock
        self.interval = interval
        # told when a reply has left and its conversation's next message waits to be taken
        self.freed: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    async def deliver(self, channel: "Channel", key: ConversationKey, reply: Reply) -> bool:
        """Keep the reply, then send it now; a retryable failure leaves it for a retry.

        Written first, so a process that dies during the send leaves the reply for another
        (or for itself, restarted) once the send lease lapses. True if it went out.
        """
        row = await self.keep(channel.name, key, reply, attempts=0, due=LEASE)
        return bool(await self._send_row(channel, row))

    async def keep(self, channel: str, key: ConversationKey, reply: Reply, error: str = "",
                   sent_parts: int = 0, *, attempts: int = 1, due: timedelta | None = None
                   ) -> Any:
        """Store a reply for a later retry (from part `sent_parts` on); return its row.

        `due` is when it may be tried (by default the backoff after one failed try).
        """
        now = self.clock.now()
        record = {**reply.to_record(), "sent_parts": sent_parts}
        row = StoredReply(id=uuid.uuid4().hex, channel=channel, key=json.dumps(key.to_record()),
                          reply=json.dumps(record, ensure_ascii=False), attempts=attempts,
                          next_attempt_at=now + (due if due is not None else backoff(1)),
                          created_at=now, last_error=error[:500], context="{}", inbox_id=None)
        await self.store.write(lambda conn: conn.execute(insert(_OUTBOX).values(**asdict(row))))
        if attempts:
            log.info("reply to %s on %s kept in the outbox for a retry", key.chat_id, channel)
        return row

    async def pending(self, tenants: list[str] | None = None) -> int:
        """How many replies wait in the outbox (for some tenants, CHANNEL:TENANT, only)."""
        from sqlalchemy import func

        if tenants is None:
            return await self.store.read(
                lambda conn: conn.execute(select(func.count()).select_from(_OUTBOX)).scalar_one())
        wanted = set(tenants)
        channels = sorted({t.partition(":")[0] for t in wanted})
        query = select(_OUTBOX.c.key).where(_OUTBOX.c.channel.in_(channels)).limit(100_000)

        def count(conn: Connection) -> int:
            n = 0
            for (key,) in conn.execute(query):
                try:
                    record = json.loads(key)
                    n += f"{record['channel']}:{record['tenant']}" in wanted
                except (ValueError, KeyError, TypeError):
                    continue
            return n

        return await self.store.read(count)

    async def stats(self) -> tuple[int, datetime | None]:
        """How many replies wait, and when the oldest of them was first kept (for metrics)."""
        from sqlalchemy import func

        query = select(func.count(), func.min(_OUTBOX.c.created_at)).select_from(_OUTBOX)
        count, oldest = await self.store.read(lambda conn: conn.execute(query).one())
        return int(count), oldest

    async def _claim_due(self, limit: int = 50) -> list[Any]:
        now = self.clock.now()

        def claim(conn: Connection) -> list[Any]:
            rows = conn.execute(select(_OUTBOX).where(_OUTBOX.c.next_attempt_at <= now)
                                .order_by(_OUTBOX.c.next_attempt_at).limit(limit)).all()
            taken = []
            for row in rows:
                # The lease: only the replica whose update matches the old time takes it.
                done = conn.execute(update(_OUTBOX).where(
                    _OUTBOX.c.id == row.id, _OUTBOX.c.next_attempt_at == row.next_attempt_at)
                    .values(next_attempt_at=now + LEASE))
                if done.rowcount == 1:
                    taken.append(row)
            return taken

        return await self.store.write(claim)

    async def retry_due(self) -> int:
        """Try every reply that is due once; return how many went out."""
        channels = {c.name: c for c in self._channels()}
        sent = 0
        for row in await self._claim_due():
            sent += await self._send_row(channels.get(row.channel), row)
        return sent

    async def send_stored(self, entry_id: str, row: Any = None) -> bool:
        """Send a reply just written to the outbox (by the inbox's finish); True if it went out.

        `row` is the entry as written, when the caller has it (no need to read it back).
        """
        if row is None:
            query = select(_OUTBOX).where(_OUTBOX.c.id == entry_id)
            row = await self.store.read(lambda conn: conn.execute(query).first())
        if row is None:
            return False
        channel = next((c for c in self._channels() if c.name == row.channel), None)
        return bool(await self._send_row(channel, row))

    async def _send_row(self, channel: "Channel | None", row: Any) -> int:
        """One try of one stored reply: 1 if it went out, else 0 (kept, rescheduled or dropped)."""
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(
            tzinfo=timezone.utc)
        if self.clock.now() - created > MAX_AGE:
            log.warning("outbox reply %s for %s dropped: not sent in %s", row.id, row.channel,
                        MAX_AGE)
            await self._remove(row.id, row.inbox_id)
            return 0
        if channel is None:  # not running on this replica: another one (or a restart) may
            await self._reschedule(row.id, row.attempts, "channel not running here")
            return 0
        key = ConversationKey.from_record(json.loads(row.key))
        record = json.loads(row.reply)

        async def progress(parts: int) -> None:
            record["sent_parts"] = parts
            stmt = update(_OUTBOX).where(_OUTBOX.c.id == row.id).values(
                reply=json.dumps(record, ensure_ascii=False))
            await self.store.write(lambda conn: conn.execute(stmt))

        tokens = (RESUME_AT.set(int(record.get("sent_parts", 0))),
                  SEND_CONTEXT.set(json.loads(row.context or "{}")), PART_SENT.set(progress))
        renewing = asyncio.create_task(self._hold(row.id))
        try:
            await channel.send(key, Reply.from_record(record))
        except ChannelSendError as exc:
            if not exc.retryable:
                log.warning("outbox reply %s dropped: %s", row.id, exc)
                await self._remove(row.id, row.inbox_id)
                return 0
            if exc.sent_parts > record.get("sent_parts", 0):
                record["sent_parts"] = exc.sent_parts
            await self._reschedule(row.id, row.attempts, str(exc), record)
            return 0
        finally:
            renewing.cancel()
            PART_SENT.reset(tokens[2])
            SEND_CONTEXT.reset(tokens[1])
            RESUME_AT.reset(tokens[0])
        await self._remove(row.id, row.inbox_id)
        return 1

    async def _hold(self, entry_id: str) -> None:
        """Keep the lease on a reply while it is being sent (a long, paced send outlives it)."""
        while True:
            await asyncio.sleep(LEASE.total_seconds() / 3)
            stmt = update(_OUTBOX).where(_OUTBOX.c.id == entry_id).values(
                next_attempt_at=self.clock.now() + LEASE)
            try:
                await self.store.write(lambda conn: conn.execute(stmt))
            except KnowbotError as exc:
                log.warning("could not renew the lease of outbox reply %s: %s", entry_id, exc)

    async def _reschedule(self, entry_id: str, attempts: int, error: str,
                          record: dict | None = None) -> None:
        when = self.clock.now() + backoff(attempts + 1)
        values: dict = dict(attempts=attempts + 1, next_attempt_at=when, last_error=error[:500])
        if record is not None:
            values["reply"] = json.dumps(record, ensure_ascii=False)
        stmt = update(_OUTBOX).where(_OUTBOX.c.id == entry_id).values(**values)
        await self.store.write(lambda conn: conn.execute(stmt))

    async def _remove(self, entry_id: str, inbox_id: int | None = None) -> None:
        """Forget a sent (or dropped) reply; the inbox entry it answers is done with it."""
        def write(conn: Connection) -> bool:
            if inbox_id is None:
                conn.execute(_REMOVE, {"r_id": entry_id})
                return False
            if conn.dialect.name == "postgresql":
                return bool(conn.execute(_REMOVE_AND_DONE, {
                    "r_id": entry_id, "r_inbox": inbox_id}).scalar())
            conn.execute(_REMOVE, {"r_id": entry_id})
            conversation = conn.execute(_ANSWER_DONE, {"r_inbox": inbox_id}).scalar()
            return conversation is not None and conn.execute(_NEXT_WAITING, {
                "n_conversation": conversation, "r_inbox": inbox_id}).first() is not None

        # one statement on PostgreSQL (see `_REMOVE_AND_DONE`); SQLite runs the three in the
        # lane's transaction
        if await self.store.write(write, atomic=not self.store.dialect == "postgresql"):
            for listener in self.freed:
                listener()

    def start(self) -> None:
        """Run the retry loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="knowbot:outbox")

    async def _loop(self) -> None:
        while True:
            try:
                await self.retry_due()
            except KnowbotError:
                log.warning("outbox retry failed; trying again later", exc_info=True)
            except Exception:  # noqa: BLE001 - the loop must outlive one bad entry
                log.exception("outbox retry failed unexpectedly")
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Stop the retry loop (kept replies stay in the database)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
