"""Workers: take inbox entries under a lease, answer them through their channel, send the reply.

Each replica runs one `Workers` with a bounded number of answers in flight. A worker renews its
lease while the answer is being made; the reply goes to the outbox in the transaction that
finishes the entry and is sent from there. `stop` (SIGTERM) stops taking, lets the answers in
flight finish within a bound and hands the rest back untouched, so another replica (or this
one, restarted) takes them at once instead of after the lease.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from bot.errors import KnowbotError
from bot.inbox import Inbox, Taken
from bot.logs import bound
from bot.outbox import Outbox
from bot.store import deferred_writes
from bot.types import Reply

if TYPE_CHECKING:
    from bot.channel import Channel

log = logging.getLogger(__name__)

RETRY_DELAY = timedelta(seconds=5)  # after a failure outside the answer's own error boundary
# A wake (a put on this replica, a finished answer) waits this long before taking, so that the
# puts and finishes of a busy moment share one take instead of one take each.
WAKE_COALESCE = 0.005


class Workers:
    """One replica's inbox workers."""

    def __init__(self, inbox: Inbox, outbox: Outbox, channels: Callable[[], list["Channel"]], *,
                 concurrency: int = 16, poll: float = 1.0) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self._channels = channels
        self.concurrency = concurrency
        self.poll = poll
        self.owner = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[asyncio.Task[None], Taken] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        inbox.listeners.append(self.wake)  # a message put on this replica
        outbox.freed.append(self.wake)  # a reply left and its conversation's next one waits

    @property
    def in_flight(self) -> int:
        """How many entries this replica is answering now."""
        return len(self._tasks)

    def wake(self) -> None:
        """Look for work now (a message was just put on this replica)."""
        self._wake.set()

    def start(self) -> None:
        """Begin taking entries in the background."""
        if self._loop_task is None:
            self._stopping = False
            self._loop_task = asyncio.create_task(self._loop(), name="knowbot:workers")

    def _answerers(self) -> dict[str, "Channel"]:
        return {c.name: c for c in self._channels() if hasattr(c, "work")}

    async def _loop(self) -> None:
        while not self._stopping:
            await self._slots.acquire()
            free = 1
            while free < self.concurrency and self._slots.locked() is False:
                await self._slots.acquire()  # does not wait: the semaphore had a slot free
                free += 1
            self._wake.clear()  # before looking: a message put meanwhile wakes the wait below
            try:
                batch = await self.inbox.take_many(self.owner, self._answerers(), free)
            except KnowbotError as exc:
                log.warning("could not take from the inbox: %s", exc)
                batch = []
            except Exception:  # noqa: BLE001 - the loop must outlive a database hiccup
                log.exception("taking from the inbox failed unexpectedly")
                batch = []
            for _ in range(free - len(batch)):
                self._slots.release()
            for taken in batch:
                task = asyncio.create_task(self._work(taken), context=contextvars.Context(),
                                           name=f"knowbot:work:{taken.channel}:{taken.id}")
                self._tasks[task] = taken
                task.add_done_callback(self._done)
            if len(batch) == free:
                continue  # there may be more: look again once a slot is free
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except TimeoutError:
                continue
            await asyncio.sleep(WAKE_COALESCE)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._slots.release()

    async def _work(self, taken: Taken) -> None:
        channel = self._answerers().get(taken.channel)
        if channel is None:  # it stopped since the take: someone else answers
            await self.inbox.hand_back(taken)
            return
        renewing = asyncio.create_task(self._renew(taken))
        unit = None
        try:
            # the turns the answer remembers are written with its finish (bot.store.Unit)
            with bound(request_id=taken.context.get("request_id")), deferred_writes() as unit:
                reply: Reply | None = await channel.work(taken.message, taken.context)  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            renewing.cancel()
            await asyncio.shield(self.inbox.hand_back(taken))
            raise
        except Exception as exc:  # noqa: BLE001 - counted; given up after the inbox's bound
            renewing.cancel()
            log.exception("inbox entry %s on %s failed (try %d)", taken.id, taken.channel,
                          taken.attempts)
            await self.inbox.retry_later(taken, f"{type(exc).__name__}: {exc}", RETRY_DELAY,
                                         unit)
            self.wake()
            return
        renewing.cancel()
        try:
            stored = await self.inbox.finish_for_send(taken, reply, unit)
            if stored is not None:
                # once the reply has left, the outbox wakes us if the conversation's next
                # message waits (`Outbox.freed`); a take after every answer mostly found nothing
                await self.outbox.send_stored(stored.id, stored)
                return
        except KnowbotError as exc:  # the lease lapses and the entry is answered again
            log.warning("inbox entry %s: could not finish or send: %s", taken.id, exc)
        self.wake()  # nothing to send (or it failed): the next message may be takeable now

    async def _renew(self, taken: Taken) -> None:
        every = max(0.05, self.inbox.lease.total_seconds() / 3)
        while True:
            await asyncio.sleep(every)
            try:
                if not await self.inbox.renew(taken):
                    log.warning("inbox entry %s: lease lost while answering", taken.id)
                    return
            except KnowbotError as exc:
                log.warning("could not renew the lease of inbox entry %s: %s", taken.id, exc)

    async def wait_idle(self, timeout: float = 30.0) -> int:
        """Wait until the inbox holds nothing unfinished; return how many entries still were."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            unfinished = len(self._tasks) or (await self.inbox.backlog())[0]
            if not unfinished or loop.time() >= deadline:
                return unfinished
            await asyncio.sleep(0.02)

    async def stop(self, timeout: float = 30.0) -> int:
        """Stop taking; finish what is in flight within `timeout`, hand the rest back."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        pending: set[Any] = set(self._tasks)
        if not pending:
            return 0
        log.info("finishing %d answer(s) in flight before stopping", len(pending))
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            task.cancel()  # each hands its entry back as it is cancelled
        await asyncio.gather(*still, return_exceptions=True)
        if still:
            log.warning("%d answer(s) handed back unfinished at shutdown", len(still))
        return len(still)
