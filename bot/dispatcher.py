"""In front of the engine: dedupe, rate limits, one error boundary per message, tracked tasks."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any, Awaitable, Callable

from bot.errors import KnowbotError, RateLimited
from bot.logs import message_context
from bot.metrics import Metrics
from bot.ratelimit import RateLimiter
from bot.store import Store
from bot.types import InboundMessage, Reply

log = logging.getLogger(__name__)

Deliver = Callable[[Reply], Awaitable[None]]
Handler = Callable[[InboundMessage], Awaitable[Reply]]

UNEXPECTED = "Sorry, something went wrong on my side while answering. Please try again."
_LIMITED = Reply(RateLimited.user_message, kind="error")


class Dispatcher:
    """Takes messages from channels and runs each through the engine exactly once."""

    def __init__(self, handler: Handler, store: Store, limiter: RateLimiter,
                 metrics: Metrics | None = None) -> None:
        self.handler = handler
        self.store = store
        self.limiter = limiter
        self.metrics = metrics or Metrics(process=False)
        self._tasks: set[asyncio.Task[Reply | None]] = set()
        self._closing = False

    @property
    def in_flight(self) -> int:
        """How many messages are being answered now."""
        return len(self._tasks)

    async def process(
        self, message: InboundMessage, handler: Handler | None = None
    ) -> Reply | None:
        """Answer a message now; None if it is a redelivery of one already taken.

        For callers that wait for the answer themselves (the terminal, WeChat's passive reply);
        channels whose platforms redeliver put messages in the inbox instead.
        """
        with message_context(message):
            return await self._process(message, handler)

    async def _process(self, message: InboundMessage, handler: Handler | None) -> Reply | None:
        key = message.key
        try:
            if message.message_id and not await self.store.claim_inbound(key, message.message_id):
                log.info("duplicate delivery %s on %s ignored", message.message_id, key.channel)
                self.metrics.message(key.channel, "duplicate")
                return None
        except KnowbotError as exc:
            log.error("could not take message %s on %s: %s", message.message_id, key.channel, exc)
            self.metrics.message(key.channel, "not_taken")
            return Reply(exc.user_message, kind="error")
        reply = await self.answer(message, handler)
        # Recording the outcome is bookkeeping: it runs after the reply is handed back.
        status = ("limited" if reply is _LIMITED else "failed" if reply.kind == "error"
                  else "done")
        self._track(self._finish(message, status))
        return reply

    async def answer(self, message: InboundMessage, handler: Handler | None = None) -> Reply:
        """Rate limit, then the handler inside the one error boundary (no dedupe: taken already)."""
        with message_context(message):
            return await self._answer(message, handler)

    async def _answer(self, message: InboundMessage, handler: Handler | None) -> Reply:
        key = message.key
        try:
            allowed = await self.limiter.allow(key.user_scope())
        except KnowbotError as exc:
            log.error("could not check the rate limit for %s: %s", key.channel, exc)
            return Reply(exc.user_message, kind="error")
        if not allowed:
            log.info("rate limit hit by %s", key.user_scope())
            self.metrics.message(key.channel, "rate_limited")
            return _LIMITED
        started = time.perf_counter()
        reply = await self._guarded(message, handler or self.handler)
        self.metrics.message(key.channel, "failed" if reply.kind == "error" else "answered",
                             time.perf_counter() - started)
        return reply

    def _track(self, coro: Any) -> None:
        task = asyncio.create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, message: InboundMessage, handler: Handler) -> Reply:
        try:
            return await handler(message)
        except KnowbotError as exc:
            log.warning("message %s on %s failed: %s", message.message_id, message.key.channel,
                        type(exc).__name__, exc_info=True)
            return Reply(exc.user_message, kind="error")
        except Exception:  # noqa: BLE001 - the one error boundary per message
            log.exception("message %s on %s failed unexpectedly", message.message_id,
                          message.key.channel)
            return Reply(UNEXPECTED, kind="error")

    async def _finish(self, message: InboundMessage, status: str) -> None:
        if not message.message_id:
            return
        try:
            await self.store.finish_inbound(message.key, message.message_id, status)
        except KnowbotError:
            log.warning("could not mark message %s as %s", message.message_id, status)

    def submit(self, message: InboundMessage, deliver: Deliver) -> asyncio.Task[Reply | None]:
        """Answer a message in a tracked background task and hand the reply to `deliver`."""
        if self._closing:
            raise KnowbotError("Knowbot is shutting down")

        async def run() -> Reply | None:
            try:
                reply = await self.process(message)
            except KnowbotError:
                log.exception("could not take message %s", message.message_id)
                reply = Reply(UNEXPECTED, kind="error")
            if reply is not None:
                try:
                    await deliver(reply)
                except Exception:  # noqa: BLE001 - a failed send must not kill the task set
                    log.exception("could not deliver the reply to %s", message.message_id)
            return reply

        task = asyncio.create_task(run(), name=f"knowbot:{message.key.channel}:{message.message_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout: float = 30.0) -> int:
        """Stop taking messages and wait for those in flight; return how many were unfinished."""
        self._closing = True
        pending = set(self._tasks)
        if not pending:
            return 0
        log.info("waiting for %d message(s) in flight", len(pending))
        done, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            task.cancel()
        return len(still)
