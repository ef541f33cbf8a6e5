"""The inbox: every message a platform hands over waits here until its answer has left.

A channel calls `put` before it tells the platform the message arrived (the webhook's 2xx,
Socket Mode's ack, the Telegram offset). The platform's id is unique here, so a redelivery is
refused at that write: never answered twice, never lost. Workers (`bot/workers.py`) on any
replica `take` entries under a lease, and only the oldest unfinished entry of a conversation
can be taken, so a conversation is answered one message at a time and in order while
different conversations run in parallel. `finish` writes the reply to the outbox in the same
transaction that marks the entry answered; the outbox marks it done once the reply has left,
and until then the conversation's next message waits. A worker that dies leaves a lease that
lapses; the next taker answers the message. An entry taken `max_attempts` times without being
finished is given up, and the person is told so, once.

Taking is a compare-and-swap on the entry's attempt count (the equivalent of `FOR UPDATE SKIP
LOCKED`): of two replicas that pick the same entry, one update matches and the other moves on.
On SQLite the look and the updates run in one transaction; on PostgreSQL they are one
statement (`_take_in_one`), whose update re-checks each row a concurrent taker changed.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from sqlalchemy import (Connection, and_, bindparam, exists, false, func, insert, literal,
                        literal_column, null, or_, select, union_all, update)

from bot.clock import Clock
from bot.db import insert_new, one_of
from bot.logs import current as log_context, new_request_id
from bot.models import InboxEntry, OutboxEntry
from bot.outbox import LEASE as SEND_LEASE  # the finishing worker sends first; others after it
from bot.outbox import StoredReply
from bot.store import Store, Unit
from bot.types import Attachment, ConversationKey, InboundMessage, Reply

log = logging.getLogger(__name__)

_INBOX = InboxEntry.__table__  # type: ignore[attr-defined]
_OUTBOX = OutboxEntry.__table__  # type: ignore[attr-defined]

OPEN = ("queued", "running", "answered")  # an entry in one of these holds its conversation
TAKEABLE = ("queued", "running")  # running ones only once their lease has lapsed
LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 3


# The take's statements, built once (each call binds now and the entry; `_candidates` is
# built once per set of channel names).
_EARLIER = _INBOX.alias("earlier")
_LAPSED = or_(_INBOX.c.lease_until.is_(None), _INBOX.c.lease_until <= bindparam("now"))
_TAKEABLE_NOW = and_(one_of(_INBOX.c.status, TAKEABLE), _LAPSED)  # binds now


@functools.lru_cache(maxsize=32)
def _candidates(names: tuple[str, ...]) -> Any:
    return (
        select(_INBOX.c.id, _INBOX.c.attempts)
        .where(_TAKEABLE_NOW, _INBOX.c.channel.in_([literal(name) for name in names]),
               ~exists().where(_EARLIER.c.conversation_id == _INBOX.c.conversation_id,
                               _EARLIER.c.id < _INBOX.c.id, one_of(_EARLIER.c.status, OPEN)))
        .order_by(_INBOX.c.id).limit(bindparam("limit"))
    )


_STILL_TAKEABLE = and_(_INBOX.c.id == bindparam("e_id"),
                       _INBOX.c.attempts == bindparam("e_attempts"), _TAKEABLE_NOW)
_TAKE = (update(_INBOX).where(_STILL_TAKEABLE)
         .values(status="running", attempts=bindparam("new_attempts"),
                 lease_owner=bindparam("owner"), lease_until=bindparam("until"))
         .returning(_INBOX.c.channel, _INBOX.c.message, _INBOX.c.context))


@functools.lru_cache(maxsize=32)
def _take_in_one(names: tuple[str, ...]) -> Any:
    """PostgreSQL: the whole take as one statement (autocommit, one round trip where the
    transaction took four: BEGIN, the look, the update, COMMIT). The candidates as
    `_candidates` finds them; of those tried fewer than `max` times, the first `room` are
    leased by the same compare-and-swap as `_TAKE` (a concurrent taker's update makes the row
    fail it on re-check); the rows come back marked taken, and the candidates tried too often
    come back untaken, for the caller to give up apart."""
    found = _candidates(names).cte("found")
    chosen = (select(found.c.id, found.c.attempts).where(found.c.attempts < bindparam("max"))
              .order_by(found.c.id).limit(bindparam("room")).cte("chosen"))
    leased = (update(_INBOX)
              .where(_INBOX.c.id == chosen.c.id, _INBOX.c.attempts == chosen.c.attempts,
                     _TAKEABLE_NOW)
              .values(status="running", attempts=_INBOX.c.attempts + 1,
                      lease_owner=bindparam("owner"), lease_until=bindparam("until"))
              .returning(_INBOX.c.id, _INBOX.c.attempts, _INBOX.c.channel, _INBOX.c.message,
                         _INBOX.c.context)
              .cte("leased"))
    return union_all(
        select(literal_column("true").label("taken"), leased.c.id, leased.c.attempts,
               leased.c.channel, leased.c.message, leased.c.context),
        select(literal_column("false"), found.c.id, found.c.attempts, null(), null(), null())
        .where(found.c.attempts >= bindparam("max")))


_GIVE_UP = (update(_INBOX).where(_STILL_TAKEABLE)
            .values(status="dead", finished_at=bindparam("now"), lease_until=None,
                    last_error=bindparam("error"))
            .returning(_INBOX.c.channel, _INBOX.c.message, _INBOX.c.context))

# The statements of one answer's own entry, also built once (`_HELD` binds the taken entry).
_HELD = and_(_INBOX.c.id == bindparam("h_id"), _INBOX.c.lease_owner == bindparam("h_owner"),
             _INBOX.c.attempts == bindparam("h_attempts"), _INBOX.c.status == "running")
_RENEW = update(_INBOX).where(_HELD).values(lease_until=bindparam("until"))
_FINISH = update(_INBOX).where(_HELD).values(status=bindparam("status"),
                                              finished_at=bindparam("now"), lease_until=None)
_PUT_REPLY = insert(_OUTBOX)

GAVE_UP = ("Sorry, I could not answer your message: it failed {n} times on my side. "
           "Please send it again, or ask an admin to look at the logs.")


def message_record(message: InboundMessage) -> dict[str, Any]:
    """A message as JSON-ready data (attachments without their bytes: the channel refetches)."""
    return {
        "key": message.key.to_record(), "message_id": message.message_id, "text": message.text,
        "attachments": [{"kind": a.kind, "name": a.name, "url": a.url, "mime_type": a.mime_type,
                         "size": a.size} for a in message.attachments],
        "is_group": message.is_group, "mentions_bot": message.mentions_bot,
        "is_admin": message.is_admin, "received_at": message.received_at.isoformat(),
    }


def message_from_record(record: dict[str, Any]) -> InboundMessage:
    """Rebuild a message saved with `message_record`."""
    received = datetime.fromisoformat(record["received_at"])
    return InboundMessage(
        key=ConversationKey.from_record(record["key"]), message_id=record["message_id"],
        text=record["text"],
        attachments=tuple(Attachment(**a) for a in record.get("attachments", ())),
        is_group=bool(record.get("is_group")), mentions_bot=bool(record.get("mentions_bot")),
        is_admin=bool(record.get("is_admin")),
        received_at=received if received.tzinfo else received.replace(tzinfo=timezone.utc))


@dataclass(frozen=True)
class Taken:
    """An entry a worker holds under a lease."""

    id: int
    channel: str
    message: InboundMessage
    context: dict[str, Any]
    attempts: int  # this take included
    owner: str


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite hands back naive UTC
        return value.replace(tzinfo=timezone.utc)
    return value


class Inbox:
    """Durable intake of platform messages, taken by workers under leases."""

    def __init__(self, store: Store, clock: Clock | None = None, *, lease: timedelta = LEASE,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.store = store
        self.clock = clock or store.clock
        self.lease = lease
        self.max_attempts = max_attempts
        self.listeners: list[Callable[[], None]] = []  # told after each put (local workers)
        self.duplicates: list[Callable[[str], None]] = []  # told the channel of each redelivery

    # ---- in -------------------------------------------------------------------------------

    async def put(self, message: InboundMessage, context: dict[str, Any] | None = None) -> bool:
        """Keep a message for the workers; False if its platform id is already here."""
        key = message.key
        # the request id travels with the entry, so the worker's log lines carry it too
        context = {"request_id": log_context().get("request_id") or new_request_id(),
                   **(context or {})}
        row = dict(channel=key.channel, tenant=key.tenant, message_id=message.message_id,
                   conversation_id=key.conversation_id(),
                   message=json.dumps(message_record(message), ensure_ascii=False),
                   context=json.dumps(context or {}, ensure_ascii=False), status="queued",
                   attempts=0, lease_owner="", created_at=self.clock.now(), last_error="")

        added = await self.store.write(lambda conn: insert_new(conn, _INBOX, row), atomic=False)
        for listener in (self.listeners if added else ()):
            listener()
        for counter in (self.duplicates if not added else ()):
            counter(key.channel)
        return added

    # ---- taking ---------------------------------------------------------------------------

    async def take(self, owner: str, channels: Iterable[str], limit: int = 20) -> Taken | None:
        """Lease the oldest takeable entry of a free conversation on one of `channels`."""
        taken = await self.take_many(owner, channels, 1, limit)
        return taken[0] if taken else None

    async def take_many(self, owner: str, channels: Iterable[str], want: int,
                        limit: int = 20) -> list[Taken]:
        """Lease up to `want` entries, oldest first, at most one per free conversation.

        One look at the candidates, whatever `want` is: a busy replica takes a batch at once.
        """
        names = tuple(sorted(set(channels)))
        if not names or want < 1:
            return []
        now = self.clock.now()
        candidates = _candidates(names)
        params = {"now": now, "limit": max(limit, want)}

        def claim(conn: Connection, room: int) -> tuple[list[Taken], list[tuple[int, int]]]:
            got: list[Taken] = []
            spent: list[tuple[int, int]] = []  # taken too often: given up below, apart
            for entry_id, attempts in conn.execute(candidates, params).all():
                if attempts >= self.max_attempts:
                    spent.append((entry_id, attempts))
                    continue
                row = conn.execute(_TAKE, {
                    "e_id": entry_id, "e_attempts": attempts, "now": now,
                    "new_attempts": attempts + 1, "owner": owner,
                    "until": now + self.lease}).first()
                if row is None:
                    continue  # another worker took it first
                got.append(Taken(entry_id, row.channel,
                                 message_from_record(json.loads(row.message)),
                                 json.loads(row.context), attempts + 1, owner))
                if len(got) >= room:
                    break
            return got, spent

        def claim_in_one(conn: Connection, room: int
                         ) -> tuple[list[Taken], list[tuple[int, int]]]:
            rows = conn.execute(_take_in_one(names), {
                **params, "max": self.max_attempts, "room": room, "owner": owner,
                "until": now + self.lease}).all()
            got = [Taken(row.id, row.channel, message_from_record(json.loads(row.message)),
                         json.loads(row.context), row.attempts, owner)
                   for row in sorted(rows, key=lambda r: r.id) if row.taken]
            return got, [(row.id, row.attempts) for row in rows if not row.taken]

        in_one = self.store.dialect == "postgresql"
        taken: list[Taken] = []
        for _ in range(limit):  # a given-up entry frees its conversation's next one: look again
            # one transaction: one commit (on PostgreSQL one WAL flush) for the whole batch;
            # on PostgreSQL one statement in autocommit
            room = want - len(taken)
            got, spent = await (
                self.store.write(lambda conn, room=room: claim_in_one(conn, room), atomic=False)
                if in_one else
                self.store.write(lambda conn, room=room: claim(conn, room)))
            taken += got
            gave_up = False
            for entry_id, attempts in spent:
                if await self.store.write(
                        lambda conn, e=entry_id, a=attempts: self._give_up(conn, e, a, now)):
                    log.error("inbox entry %s failed %d times: given up", entry_id, attempts)
                    gave_up = True
            if not gave_up or len(taken) >= want:
                break
            params["limit"] = max(limit, want - len(taken))
        return taken

    def _give_up(self, conn: Connection, entry_id: int, attempts: int, now: datetime) -> bool:
        """Mark an entry dead and queue one message telling the person (one transaction)."""
        row = conn.execute(_GIVE_UP, {"e_id": entry_id, "e_attempts": attempts, "now": now,
                                      "error": f"given up after {attempts} attempts"}).first()
        if row is None:
            return False
        record = json.loads(row.message)
        context = json.loads(row.context).get("send", {})
        reply = Reply(GAVE_UP.format(n=attempts), kind="error")
        conn.execute(_PUT_REPLY, dict(
            id=uuid.uuid4().hex, channel=row.channel, key=json.dumps(record["key"]),
            reply=json.dumps({**reply.to_record(), "sent_parts": 0}, ensure_ascii=False),
            attempts=0, next_attempt_at=now, created_at=now, last_error="",
            context=json.dumps(context, ensure_ascii=False), inbox_id=None))
        return True

    @staticmethod
    def _held_params(taken: Taken) -> dict[str, Any]:
        return {"h_id": taken.id, "h_owner": taken.owner, "h_attempts": taken.attempts}

    async def renew(self, taken: Taken) -> bool:
        """Extend the lease while the answer is being made; False if it was lost."""
        params = {**self._held_params(taken), "until": self.clock.now() + self.lease}
        return await self.store.write(lambda conn: conn.execute(_RENEW, params).rowcount == 1,
                                      atomic=False)

    # ---- out ------------------------------------------------------------------------------

    async def finish(self, taken: Taken, reply: Reply | None, unit: Unit | None = None
                     ) -> str | None:
        """Mark the entry answered and put its reply in the outbox, in one transaction, with
        the answer's deferred writes (`unit`: the turns it remembers).

        Returns the outbox entry's id for the caller to send now; None when there is nothing
        to send or the lease was lost (then whoever holds it now answers, and this try's
        deferred writes are dropped with its reply).
        """
        row = await self.finish_for_send(taken, reply, unit)
        return row.id if row is not None else None

    async def finish_for_send(self, taken: Taken, reply: Reply | None,
                              unit: Unit | None = None) -> "StoredReply | None":
        """`finish`, handing back the outbox row as written (to send without reading it again)."""
        now = self.clock.now()
        mark = {**self._held_params(taken), "now": now,
                "status": "answered" if reply is not None else "done"}
        key = taken.message.key
        row = StoredReply(
            id=uuid.uuid4().hex, channel=taken.channel, key=json.dumps(key.to_record()),
            reply=json.dumps({**reply.to_record(), "sent_parts": 0}, ensure_ascii=False)
            if reply is not None else "",
            attempts=0, next_attempt_at=now + SEND_LEASE, created_at=now, last_error="",
            context=json.dumps(taken.context.get("send", {}), ensure_ascii=False),
            inbox_id=taken.id)

        def write(conn: Connection) -> StoredReply | None:
            if conn.execute(_FINISH, mark).rowcount != 1:
                return None
            if unit is not None:
                unit.run(conn)
            if reply is None:
                return None
            conn.execute(_PUT_REPLY, asdict(row))
            return row

        result = await self.store.write(write)
        if result is None and reply is not None:
            log.warning("inbox entry %s: lease lost before finishing; not sending", taken.id)
        return result

    async def retry_later(self, taken: Taken, error: str, delay: timedelta,
                          unit: Unit | None = None) -> None:
        """Give an entry back after a failure outside the answer's own error boundary (with
        the failed try's deferred writes: the conversation keeps what went wrong)."""
        stmt = update(_INBOX).where(_HELD).values(
            status="queued", lease_owner="", lease_until=self.clock.now() + delay,
            last_error=error[:500])
        params = self._held_params(taken)

        def write(conn: Connection) -> None:
            if conn.execute(stmt, params).rowcount == 1 and unit is not None:
                unit.run(conn)

        await self.store.write(write)

    async def hand_back(self, taken: Taken) -> None:
        """Return an entry untouched (a graceful stop): the try does not count."""
        stmt = update(_INBOX).where(_HELD).values(
            status="queued", lease_owner="", lease_until=None, attempts=taken.attempts - 1)
        params = self._held_params(taken)
        await self.store.write(lambda conn: conn.execute(stmt, params))

    # ---- looking --------------------------------------------------------------------------

    async def status(self, channel: str, tenant: str, message_id: str) -> str | None:
        """An entry's status, or None if no such message was ever put."""
        query = select(_INBOX.c.status).where(_INBOX.c.channel == channel,
                                              _INBOX.c.tenant == tenant,
                                              _INBOX.c.message_id == message_id)
        return await self.store.read(lambda conn: conn.execute(query).scalar_one_or_none())

    async def backlog(self) -> tuple[int, float]:
        """How many entries are unfinished, and the oldest one's age in seconds (0 if none)."""
        query = select(func.count(), func.min(_INBOX.c.created_at)).where(
            one_of(_INBOX.c.status, OPEN))
        count, oldest = await self.store.read(lambda conn: conn.execute(query).one())
        oldest = _aware(oldest)
        age = (self.clock.now() - oldest).total_seconds() if oldest is not None else 0.0
        return int(count), max(0.0, age)

    async def counts(self, tenants: list[str] | None = None) -> dict[str, int]:
        """How many entries are queued, running (or answered, sending) and dead; of some
        tenants (CHANNEL:TENANT) only, when given."""
        query = select(_INBOX.c.status, func.count()).group_by(_INBOX.c.status)
        if tenants is not None:
            query = query.where(or_(false(), *[
                and_(_INBOX.c.channel == c, _INBOX.c.tenant == t)
                for c, _, t in (x.partition(":") for x in tenants)]))
        rows = await self.store.read(lambda conn: conn.execute(query).all())
        found = {status: int(n) for status, n in rows}
        return {"queued": found.get("queued", 0),
                "running": found.get("running", 0) + found.get("answered", 0),
                "dead": found.get("dead", 0)}

    async def forget_user(self, conversation_ids: Iterable[str], user_id: str) -> int:
        """Delete the finished entries a user sent in these conversations; return how many."""
        ids = sorted(set(conversation_ids))
        if not ids:
            return 0
        query = (select(_INBOX.c.id, _INBOX.c.message)
                 .where(_INBOX.c.conversation_id.in_(ids),
                        _INBOX.c.status.in_(("done", "dead"))).limit(100_000))

        def write(conn: Connection) -> int:
            gone = []
            for entry_id, message in conn.execute(query).all():
                try:
                    sender = json.loads(message).get("key", {}).get("user_id")
                except (ValueError, AttributeError):
                    continue
                if sender == user_id:
                    gone.append(entry_id)
            for start in range(0, len(gone), 500):
                conn.execute(_INBOX.delete().where(_INBOX.c.id.in_(gone[start:start + 500])))
            return len(gone)

        return await self.store.write(write)

    async def prune(self, older_than: timedelta) -> int:
        """Drop finished entries older than a bound (they served as dedupe records until then)."""
        cutoff = self.clock.now() - older_than
        stmt = (_INBOX.delete().where(_INBOX.c.status.in_(("done", "dead")),
                                      _INBOX.c.created_at < cutoff))
        return await self.store.write(lambda conn: int(conn.execute(stmt).rowcount or 0))
