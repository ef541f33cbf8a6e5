"""The delivery planner: every WeChat message gets its answer, whatever the answer's timing.

WeChat waits 5 s for a passive reply and re-sends the same message (same MsgId) when it gets
none, up to `requests_per_message` requests in all; any reply, even "success", ends the retries.
For each message the planner runs ONE answer task, shared by the retries, and:

1. answers in the passive reply if the answer is ready within `window` (a margin under 5 s);
2. otherwise holds the request unanswered, so WeChat retries, and answers the retry if ready;
3. on the last request, if still not ready, replies that the answer is being prepared, and when
   it is ready pushes it as customer-service messages (verified account, within the allowance),
4. or holds it for the user's next message (with a signed link to a page showing it in full).

The parts of a long answer that do not fit in the passive reply go the way of steps 3 and 4.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from bot.errors import KnowbotError
from bot.types import Reply
from channels import wechat_text as wt
from channels.wechat_delivery import Delivery

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[Reply | None]]


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
    keep_done: float = 60.0  # how long a finished message is remembered (to spot late retries)
    max_messages: int = 10000  # messages tracked at once, at most


@dataclass
class _Message:
    openid: str
    msg_id: str
    arrived: float
    requests: int = 0
    parts: list[str] | None = None
    reply: Reply | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    taken: bool = False  # a passive reply carried the answer, or it went the follow-up way
    fallback: bool = False  # no passive reply will carry it: follow up as soon as it is ready
    foreign: bool = False  # another replica (or an earlier run) owns this message
    page_id: str = ""
    page_url: str | None = None


class Planner:
    """Decides, per WeChat request, what the passive reply says, and follows up on the rest."""

    def __init__(self, delivery: Delivery, pages: Pages, timings: Timings = Timings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.delivery = delivery
        self.pages = pages
        self.timings = timings
        self.clock = clock
        self._messages: dict[tuple[str, str], _Message] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def tracked(self) -> int:
        """How many messages the planner remembers now."""
        return len(self._messages)

    async def respond(self, openid: str, msg_id: str, work: Work, arrived: float) -> str:
        """The passive reply text for one request ("" for a bare "success")."""
        t = self.timings
        key = (openid, msg_id)
        msg = self._messages.get(key)
        first = msg is None
        if msg is None:
            if len(self._messages) >= t.max_messages:
                log.warning("too many WeChat messages in flight; answering one as busy")
                return wt.BUSY_ELSEWHERE
            msg = _Message(openid, msg_id, arrived)
            self._messages[key] = msg
            self._spawn(self._run(msg, work))
        msg.requests += 1
        if first:  # a new message from the user: the customer-service allowance starts again
            await self.delivery.note_inbound(openid)
        last = msg.requests >= t.requests_per_message
        held = first and await self.delivery.has_held(openid)
        remaining = t.window - (self.clock() - arrived)
        if not msg.ready.is_set() and remaining > 0:
            try:
                await asyncio.wait_for(asyncio.shield(msg.ready.wait()), remaining)
            except TimeoutError:
                pass
        if msg.ready.is_set():
            if msg.taken:
                return ""  # answered already: a late retry gets no second answer
            msg.taken = True
            msg.settled.set()
            return await self._passive_answer(msg, held)
        if held:
            handed = await self._handover(msg.openid)
            if handed:
                self._settle_by_follow_up(msg)
                note = wt.NEW_QUESTION_PUSH if self.delivery.verified else wt.NEW_QUESTION_LATER
                return wt.fit(wt.join(handed, note))
        if last:
            if msg.foreign:
                return wt.BUSY_ELSEWHERE
            self._settle_by_follow_up(msg)
            if self.delivery.verified and await self.delivery.allowance_left(openid):
                return wt.PREPARING_PUSH
            page = wt.PREPARING_PAGE.format(url=msg.page_url) if msg.page_url else ""
            return wt.join(wt.PREPARING_HOLD, page)
        # Say nothing: WeChat retries the message once it gives up on this request.
        await asyncio.sleep(max(0.0, arrived + t.platform_timeout + 0.2 - self.clock()))
        return ""

    def _settle_by_follow_up(self, msg: _Message) -> None:
        msg.fallback = True
        if not msg.page_id:
            msg.page_id, msg.page_url = self.pages.reserve()
        msg.settled.set()

    async def _passive_answer(self, msg: _Message, held: bool) -> str:
        assert msg.parts is not None
        parts = list(msg.parts)
        if held:
            handed = await self._handover(msg.openid)
            if handed:
                if len(parts) == 1 and wt.fits(wt.join(handed, parts[0])):
                    return wt.join(handed, parts[0])
                # both do not fit: hand over the held one, the new one follows
                self._spawn(self._follow_up(msg, parts))
                note = wt.NEW_QUESTION_PUSH if self.delivery.verified else wt.NEW_QUESTION_LATER
                return wt.fit(wt.join(handed, note))
        head, rest = parts[0], parts[1:]
        if not rest:
            return head
        await self._ensure_page(msg)
        if self.delivery.verified and await self.delivery.allowance_left(msg.openid):
            note = wt.MORE_PUSH
        else:
            note = wt.MORE_HELD
        link = wt.MORE_PAGE.format(url=msg.page_url) if msg.page_url else ""
        self._spawn(self._follow_up(msg, rest))
        return wt.fit(wt.join(head, note, link))

    async def _handover(self, openid: str) -> str:
        taken = await self.delivery.take_next(openid)
        if taken is None:
            return ""
        part, more, page = taken
        if not more:
            return part
        link = wt.MORE_PAGE.format(url=page) if page else ""
        return wt.join(part, wt.MORE_HELD, link)

    async def _ensure_page(self, msg: _Message) -> None:
        if not msg.page_id:
            msg.page_id, msg.page_url = self.pages.reserve()
            if msg.reply is not None:
                await self.pages.save(msg.page_id, msg.reply)

    async def _follow_up(self, msg: _Message, parts: list[str]) -> None:
        await self.delivery.follow_up(msg.openid, parts, msg.page_url)

    async def _run(self, msg: _Message, work: Work) -> None:
        t = self.timings
        try:
            try:
                reply = await work()
            except KnowbotError as exc:
                log.warning("WeChat message %s could not be answered: %s", msg.msg_id, exc)
                reply = Reply(exc.user_message, kind="error")
            if reply is None:
                msg.foreign = True  # taken before: another replica or an earlier run answers it
                return
            msg.reply = reply
            msg.parts = wt.parts_of(reply)
            if msg.page_id:
                await self.pages.save(msg.page_id, reply)
            msg.ready.set()
            last_chance = (msg.arrived + (t.requests_per_message - 1) * t.platform_timeout
                           + t.platform_timeout)
            if not msg.settled.is_set() and not self._closing:
                try:
                    await asyncio.wait_for(msg.settled.wait(),
                                           max(0.0, last_chance - self.clock()))
                except TimeoutError:
                    pass
            if not msg.taken:  # no request carried it: follow up now
                msg.taken = True
                await self._ensure_page(msg)
                await self.delivery.follow_up(msg.openid, msg.parts, msg.page_url)
        finally:
            loop = asyncio.get_running_loop()
            loop.call_later(t.keep_done, self._messages.pop, (msg.openid, msg.msg_id), None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._contained(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _contained(coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception:  # noqa: BLE001 - a background delivery must not die silently
            log.exception("WeChat follow-up delivery failed")

    async def close(self, timeout: float = 10.0) -> None:
        """Follow up on every answer still waiting for a request, then wait for the work."""
        self._closing = True
        for msg in self._messages.values():
            msg.settled.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
