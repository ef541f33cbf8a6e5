"""The outbox: a reply a channel could not send yet is kept in the database and retried.

`Outbox.deliver` sends at once through the channel; when the send fails with a retryable
ChannelSendError the reply is stored and a background loop retries it with backoff, across
restarts and on whichever replica gets to it first (a lease on each entry stops two replicas
sending the same one).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable

from sqlalchemy import Connection, delete, insert, select, update

from bot.clock import Clock
from bot.errors import ChannelSendError, KnowbotError
from bot.models import OutboxEntry
from bot.store import Store
from bot.types import ConversationKey, Reply

if TYPE_CHECKING:
    from bot.channel import Channel

log = logging.getLogger(__name__)

_OUTBOX = OutboxEntry.__table__  # type: ignore[attr-defined]

# While the outbox retries a reply, the index of its first part not yet sent: a channel that
# splits replies into several messages skips the ones before it.
RESUME_AT: contextvars.ContextVar[int] = contextvars.ContextVar("knowbot_resume_at", default=0)

LEASE = timedelta(minutes=2)
MAX_AGE = timedelta(days=2)  # past this a reply is stale: it is dropped with a warning


def backoff(attempts: int) -> timedelta:
    """Seconds to wait before retry number `attempts` (5 s doubling, capped at 10 minutes)."""
    return timedelta(seconds=min(600, 5 * 2 ** max(0, attempts - 1)))


class Outbox:
    """Replies waiting to be sent, retried until they go out or go stale."""

    def __init__(self, store: Store, channels: Callable[[], list["Channel"]],
                 clock: Clock | None = None, interval: float = 5.0) -> None:
        self.store = store
        self._channels = channels
        self.clock = clock or store.clock
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def deliver(self, channel: "Channel", key: ConversationKey, reply: Reply) -> bool:
        """Send now; on a retryable failure keep the reply for later. True if it went out."""
        try:
            await channel.send(key, reply)
            return True
        except ChannelSendError as exc:
            if not exc.retryable:
                log.warning("reply to %s on %s dropped: %s", key.chat_id, channel.name, exc)
                return False
            await self.keep(channel.name, key, reply, str(exc), sent_parts=exc.sent_parts)
            return False

    async def keep(self, channel: str, key: ConversationKey, reply: Reply, error: str = "",
                   sent_parts: int = 0) -> str:
        """Store a reply for a later retry (from part `sent_parts` on); return its id."""
        now = self.clock.now()
        entry_id = uuid.uuid4().hex
        record = {**reply.to_record(), "sent_parts": sent_parts}
        row = dict(id=entry_id, channel=channel, key=json.dumps(key.to_record()),
                   reply=json.dumps(record, ensure_ascii=False), attempts=1,
                   next_attempt_at=now + backoff(1), created_at=now, last_error=error[:500])
        await self.store.write(lambda conn: conn.execute(insert(_OUTBOX).values(**row)))
        log.info("reply to %s on %s kept in the outbox for a retry", key.chat_id, channel)
        return entry_id

    async def pending(self) -> int:
        """How many replies wait in the outbox."""
        from sqlalchemy import func

        return await self.store.read(
            lambda conn: conn.execute(select(func.count()).select_from(_OUTBOX)).scalar_one())

    async def stats(self) -> tuple[int, datetime | None]:
        """How many replies wait, and when the oldest of them was first kept (for metrics)."""
        from sqlalchemy import func

        query = select(func.count(), func.min(_OUTBOX.c.created_at)).select_from(_OUTBOX)
        count, oldest = await self.store.read(lambda conn: conn.execute(query).one())
        return int(count), oldest

    async def _claim_due(self, limit: int = 50) -> list[tuple[str, str, str, str, int, datetime]]:
        now = self.clock.now()

        def claim(conn: Connection) -> list[tuple[str, str, str, str, int, datetime]]:
            rows = conn.execute(select(_OUTBOX).where(_OUTBOX.c.next_attempt_at <= now)
                                .order_by(_OUTBOX.c.next_attempt_at).limit(limit)).all()
            taken = []
            for row in rows:
                # The lease: only the replica whose update matches the old time takes it.
                done = conn.execute(update(_OUTBOX).where(
                    _OUTBOX.c.id == row.id, _OUTBOX.c.next_attempt_at == row.next_attempt_at)
                    .values(next_attempt_at=now + LEASE))
                if done.rowcount == 1:
                    taken.append((row.id, row.channel, row.key, row.reply, row.attempts,
                                  row.created_at))
            return taken

        return await self.store.write(claim)

    async def retry_due(self) -> int:
        """Try every reply that is due once; return how many went out."""
        channels = {c.name: c for c in self._channels()}
        sent = 0
        for entry_id, name, key_json, reply_json, attempts, created in await self._claim_due():
            channel = channels.get(name)
            created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
            if self.clock.now() - created > MAX_AGE:
                log.warning("outbox reply %s for %s dropped: not sent in %s", entry_id, name,
                            MAX_AGE)
                await self._remove(entry_id)
                continue
            if channel is None:  # not running on this replica: another one (or a restart) may
                await self._reschedule(entry_id, attempts, "channel not running here")
                continue
            key = ConversationKey.from_record(json.loads(key_json))
            record = json.loads(reply_json)
            resume = RESUME_AT.set(int(record.get("sent_parts", 0)))
            try:
                await channel.send(key, Reply.from_record(record))
            except ChannelSendError as exc:
                if not exc.retryable:
                    log.warning("outbox reply %s dropped: %s", entry_id, exc)
                    await self._remove(entry_id)
                    continue
                if exc.sent_parts > record.get("sent_parts", 0):
                    record["sent_parts"] = exc.sent_parts
                await self._reschedule(entry_id, attempts, str(exc), record)
                continue
            finally:
                RESUME_AT.reset(resume)
            await self._remove(entry_id)
            sent += 1
        return sent

    async def _reschedule(self, entry_id: str, attempts: int, error: str,
                          record: dict | None = None) -> None:
        when = self.clock.now() + backoff(attempts + 1)
        values: dict = dict(attempts=attempts + 1, next_attempt_at=when, last_error=error[:500])
        if record is not None:
            values["reply"] = json.dumps(record, ensure_ascii=False)
        stmt = update(_OUTBOX).where(_OUTBOX.c.id == entry_id).values(**values)
        await self.store.write(lambda conn: conn.execute(stmt))

    async def _remove(self, entry_id: str) -> None:
        stmt = delete(_OUTBOX).where(_OUTBOX.c.id == entry_id)
        await self.store.write(lambda conn: conn.execute(stmt))

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
