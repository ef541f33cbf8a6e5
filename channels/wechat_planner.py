"""The delivery planner: every WeChat message gets its answer, on whichever replica it lands.

WeChat waits 5 s for a passive reply and re-sends the same message (same MsgId) when it gets
none, up to `requests_per_message` requests in all; any reply, even "success", ends the retries.
The retries may reach any replica. A message that needs the engine is put in the inbox at its
first request; a worker on any replica answers it and `publish`es the answer in the shared
state (reached through the outbox). Each request, wherever it lands, looks there and:

1. answers in the passive reply if the answer is ready within `window` (a margin under 5 s);
   only one request can take an answer (compare-and-swap), so it is never given twice;
2. otherwise says nothing, so WeChat retries, and the retry looks again;
3. on the last request, if still not ready, replies that the answer is being prepared, and marks
   the message for a follow-up: when the answer is published it is pushed as customer-service
   messages (a verified account, within the allowance, with an access token to be had),
4. or held for the user's next message (with a signed link to a page showing it in full).

If no request takes a published answer by the message's last chance, the publisher follows up.
The parts of a long answer that do not fit in the passive reply go the way of steps 3 and 4.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from bot.errors import KnowbotError
from bot.kv import StateStore
from bot.signals import Signals
from bot.types import Reply
from channels import wechat_text as wt
from channels.wechat_delivery import Delivery

log = logging.getLogger(__name__)

Enqueue = Callable[[], Awaitable[bool]]
CAS_TRIES = 8


class Pages(Protocol):
    """Where full answers are kept for the signed answer page."""

    def reserve(self) -> tuple[str, str | None]:
        """A new page id and its signed URL (None when no public URL is configured)."""
        ...

    async def save(self, page_id: str, reply: Reply) -> None:
        """Keep the full answer under `page_id`."""
        ...


@dataclass(frozen=True)
class Timings:
    """The platform's timing, as constructor parameters so tests can scale the clock down."""

    window: float = 4.3  # answer a request within this many seconds of its arrival
    platform_timeout: float = 5.0  # WeChat gives up on a request after this long and retries
    requests_per_message: int = 3  # the last one must be answered, with the answer or a notice
    keep_done: float = 600.0  # how long a message is remembered (to spot late retries)
    max_messages: int = 10000  # requests waiting at once on this replica, at most
    poll: float = 0.2  # how often a waiting request looks for an answer made on another replica


SIGNALLED_POLL = 1.0  # the fallback poll when every replica hears the signals


def _promise(record: dict[str, Any]) -> bool:
    """Note that the person was told the answer will be sent as a message of its own."""
    record["promised"] = True
    return True


class Planner:
    """Decides, per WeChat request, what the passive reply says, and follows up on the rest."""

    def __init__(self, delivery: Delivery, pages: Pages, state: StateStore, account: str,
                 timings: Timings = Timings(), can_push: Callable[[], Awaitable[bool]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 signals: Signals | None = None) -> None:
        self.delivery = delivery
        self.pages = pages
        self.state = state
        self.namespace = f"wechat:msg:{account}"
        self.timings = timings
        self.clock = clock
        self._can_push = can_push
        self._events: dict[str, asyncio.Event] = {}  # requests waiting here, by message
        self._publishing: dict[str, asyncio.Event] = {}  # answers waiting to be taken, by message
        # An answer published (or taken) on any replica wakes who waits for it here; the
        # database record stays the truth, and the poll below is the fallback for a lost wake.
        self.signals = signals
        if signals is not None:
            signals.listen(self._on_signal)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def tracked(self) -> int:
        """How many requests wait on this replica now."""
        return len(self._events)

    @property
    def poll(self) -> float:
        """How often a waiter looks at the record itself (rarely when signals reach everyone)."""
        if self.signals is not None and self.signals.reaches_every_replica:
            return max(self.timings.poll, SIGNALLED_POLL)
        return self.timings.poll

    async def _notify(self, kind: str, name: str) -> None:
        if self.signals is not None:
            await self.signals.notify(f"{self.namespace}|{kind}|{name}")

    def _on_signal(self, topic: str) -> None:
        namespace, _, rest = topic.partition("|")
        kind, _, name = rest.partition("|")
        if namespace != self.namespace:
            return
        waiting = (self._events if kind == "answer" else self._publishing).get(name)
        if waiting is not None:
            waiting.set()

    # ---- the shared record of a message ----------------------------------------------

    async def _change(self, name: str, change: Callable[[dict[str, Any]], bool],
                      fresh: bool = False) -> tuple[dict[str, Any], bool]:
        """Apply `change` to the message's record (compare-and-swap); (record, whether changed).

        `fresh`: the record most likely does not exist yet (a message's first request), so the
        first try writes a new one without reading first; should one exist, the next reads it.
        """
        for attempt in range(CAS_TRIES):
            entry = None if fresh and attempt == 0 else await self.state.get(self.namespace, name)
            record = dict(entry.value) if entry is not None else {
                "requests": 0, "first": self.state.clock.time(), "answer": None, "taken": False,
                "fallback": False, "page_id": "", "page_url": None}
            if not change(record):
                return record, False
            if await self.state.swap(self.namespace, name, record,
                                     entry.version if entry is not None else 0,
                                     ttl=self.timings.keep_done):
                return record, True
        raise KnowbotError("the WeChat message's state kept changing under us")

    async def _record(self, name: str) -> dict[str, Any] | None:
        entry = await self.state.get(self.namespace, name)
        return dict(entry.value) if entry is not None else None

    async def _take(self, name: str, parts: list[str] | None = None
                    ) -> tuple[dict[str, Any], bool]:
        """Claim the published answer (for one request, or the follow-up); (record, claimed).

        `parts` republishes the answer should its record have expired meanwhile.
        """
        def take(record: dict[str, Any]) -> bool:
            if record["answer"] is None and parts is not None:
                record["answer"] = {"parts": parts}
            if record["answer"] is None or record["taken"]:
                return False
            record["taken"] = True
            return True

        return await self._change(name, take)

    def _reserve_page(self, record: dict[str, Any]) -> None:
        if not record["page_id"]:
            record["page_id"], record["page_url"] = self.pages.reserve()

    # ---- a request -------------------------------------------------------------------

    async def respond(self, openid: str, msg_id: str, arrived: float, *,
                      fixed: str | None = None, enqueue: Enqueue | None = None) -> str:
        """The passive reply text for one request ("" for a bare "success").

        `fixed` is an answer known at once (a welcome, a notice); `enqueue` puts a message
        that needs the engine in the inbox (False: it is there already).
        """
        t = self.timings
        name = f"{openid}:{msg_id}"

        def count(record: dict[str, Any]) -> bool:
            record["requests"] += 1
            return True

        record, _ = await self._change(name, count, fresh=True)
        first = record["requests"] == 1
        if fixed is not None:
            return fixed if first else ""
        busy = len(self._events) >= t.max_messages
        # Waiting starts before the message is put in the inbox, so that however soon its
        # answer is published, the publisher (or the signal from another replica) finds this
        # request's event: the first request need not look before it waits.
        mine = self._events.setdefault(name, asyncio.Event()) if not busy else None
        try:
            held = False
            if first:
                # A new message from the user: the customer-service allowance restarts, the
                # message goes in the inbox, and we look for answers held for this person, at
                # once: three independent round trips that share one database-lane group
                # instead of following each other (the passive reply waits for them).
                steps = [self.delivery.note_inbound(openid), self.delivery.has_held(openid)]
                if enqueue is not None:
                    steps.append(enqueue())
                done = await asyncio.gather(*steps)
                held = bool(done[1])
                if enqueue is not None and not done[2]:
                    return ""  # taken long ago (its record expired): a very late retry
            if mine is None:
                log.warning("too many WeChat requests waiting; answering one as busy")
                return wt.BUSY_ELSEWHERE
            last = record["requests"] >= t.requests_per_message
            taken = await self._wait_for_answer(name, mine, arrived, look_first=not first)
        finally:
            if mine is not None and self._events.get(name) is mine:
                self._events.pop(name, None)
        if taken is not None:
            if not taken["claimed"]:
                return ""  # answered already: a late retry gets no second answer
            if self.clock() - arrived >= t.platform_timeout:
                # Taken only after WeChat gave up on this request (a replica that lagged under
                # load): a reply now would be dropped, and the retry that came meanwhile found
                # the answer taken. Deliver it as the publisher would: push, or hold it.
                log.warning("a WeChat answer was taken %.1f s after its request arrived; "
                            "following up instead of replying", self.clock() - arrived)
                self._spawn(self.delivery.follow_up(
                    openid, list(taken["answer"]["parts"]), taken.get("page_url"),
                    bool(taken.get("promised"))))
                return ""
            return await self._passive_answer(openid, taken, held)
        if held:
            handed = await self._handover(openid)
            if handed:
                await self._settle_by_follow_up(name)
                note = wt.NEW_QUESTION_PUSH if await self._pushable(openid) else wt.NEW_QUESTION_LATER
                return wt.fit(wt.join(handed, note))
        if last:
            settled = await self._settle_by_follow_up(name)
            if await self._pushable(openid):
                await self._change(name, _promise)
                return wt.PREPARING_PUSH
            page = wt.PREPARING_PAGE.format(url=settled["page_url"]) if settled["page_url"] else ""
            return wt.join(wt.PREPARING_HOLD, page)
        # Say nothing: WeChat retries the message once it gives up on this request.
        await asyncio.sleep(max(0.0, arrived + t.platform_timeout + 0.2 - self.clock()))
        return ""

    async def _wait_for_answer(self, name: str, event: asyncio.Event, arrived: float,
                               look_first: bool = True) -> dict[str, Any] | None:
        """The record once this request took the answer (or found it taken); None: not ready.

        Without `look_first` it waits for the event (or the poll) before its first look.
        """
        look = look_first
        while True:
            remaining = self.timings.window - (self.clock() - arrived)
            if look or remaining <= 0:
                event.clear()  # before looking: an answer published meanwhile sets it again
                record, claimed = await self._take(name)
                if claimed:
                    await self._notify("taken", name)  # the publisher stops waiting for a taker
                if claimed or record["taken"]:
                    return {**record, "claimed": claimed}
                remaining = self.timings.window - (self.clock() - arrived)
                if remaining <= 0:
                    return None
            look = True
            try:
                await asyncio.wait_for(event.wait(), min(remaining, self.poll))
            except TimeoutError:
                pass

    async def _pushable(self, openid: str) -> bool:
        """True only if a customer-service message can really be sent now (say only that)."""
        if not self.delivery.verified or not await self.delivery.allowance_left(openid):
            return False
        return await self._can_push() if self._can_push is not None else True

    async def _settle_by_follow_up(self, name: str) -> dict[str, Any]:
        def settle(record: dict[str, Any]) -> bool:
            self._reserve_page(record)
            record["fallback"] = True
            return True

        record, _ = await self._change(name, settle)
        return record

    async def _passive_answer(self, openid: str, record: dict[str, Any], held: bool) -> str:
        parts = list(record["answer"]["parts"])
        if held:
            handed = await self._handover(openid)
            if handed:
                if len(parts) == 1 and wt.fits(wt.join(handed, parts[0])):
                    return wt.join(handed, parts[0])
                # both do not fit: hand over the held one, the new one follows
                self._spawn(self.delivery.follow_up(openid, parts, record.get("page_url")))
                note = wt.NEW_QUESTION_PUSH if await self._pushable(openid) else wt.NEW_QUESTION_LATER
                return wt.fit(wt.join(handed, note))
        head, rest = parts[0], parts[1:]
        if not rest:
            return head
        url = record.get("page_url")
        note = wt.MORE_PUSH if await self._pushable(openid) else wt.MORE_HELD
        link = wt.MORE_PAGE.format(url=url) if url else ""
        self._spawn(self.delivery.follow_up(openid, rest, url))
        return wt.fit(wt.join(head, note, link))

    async def _handover(self, openid: str) -> str:
        taken = await self.delivery.take_next(openid)
        if taken is None:
            return ""
        part, more, page, waited = taken
        if waited:  # it was promised as a message of its own, and that failed
            part = wt.join(wt.PUSH_FAILED, part)
        if not more:
            return part
        link = wt.MORE_PAGE.format(url=page) if page else ""
        return wt.join(part, wt.MORE_HELD, link)

    # ---- an answer -------------------------------------------------------------------

    async def publish(self, openid: str, msg_id: str, reply: Reply) -> None:
        """Make an answer available to the message's requests; follow up if none takes it."""
        t = self.timings
        name = f"{openid}:{msg_id}"
        parts = wt.parts_of(reply)
        needs_page = len(parts) > 1

        def put(record: dict[str, Any]) -> bool:
            if record["answer"] is not None:
                return False  # published before (an outbox retry after a restart)
            record["answer"] = {"parts": parts}
            if needs_page:
                self._reserve_page(record)
            return True

        record, _ = await self._change(name, put)
        if record["page_id"] and (needs_page or record["fallback"]):
            await self.pages.save(record["page_id"], reply)
        waiting = self._events.get(name)
        if waiting is not None:
            waiting.set()  # a request on this replica takes it at once
        last_chance = float(record["first"]) + t.requests_per_message * t.platform_timeout
        taken = self._publishing.setdefault(name, asyncio.Event())
        try:
            await self._notify("answer", name)  # a request waiting on another replica
            while not record["fallback"] and not self._closing:
                left = last_chance - self.state.clock.time()
                if record["taken"] or left <= 0:
                    break
                try:
                    await asyncio.wait_for(taken.wait(), min(left, self.poll))
                except TimeoutError:
                    pass
                else:
                    if not self._closing:  # only a request that took the answer signals this
                        record = {**record, "taken": True}
                        break
                taken.clear()  # before looking: a take signalled meanwhile sets it again
                record = await self._record(name) or {**record, "fallback": True}
        finally:
            if self._publishing.get(name) is taken:
                self._publishing.pop(name, None)
        if record["taken"]:
            return
        record, claimed = await self._take(name, parts)  # no request took it: follow up
        if claimed:
            await self.delivery.follow_up(openid, list(record["answer"]["parts"]),
                                          record.get("page_url"), bool(record.get("promised")))

    # ---- background work -------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(self._contained(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _contained(coro: Awaitable[Any]) -> None:
        try:
            await coro
        except Exception:  # noqa: BLE001 - a background delivery must not die silently
            log.exception("WeChat follow-up delivery failed")

    async def close(self, timeout: float = 10.0) -> None:
        """Stop waiting for requests (answers being published follow up at once)."""
        self._closing = True
        for event in [*self._events.values(), *self._publishing.values()]:
            event.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
