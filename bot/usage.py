"""Usage accounting off the reply path: model-call records are queued and written in batches."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.errors import KnowbotError
from bot.store import Store

log = logging.getLogger(__name__)


class UsageRecorder:
    """Collects bot.llm.UsageEvents and writes them in the background, a batch at a time."""

    def __init__(self, store: Store, interval: float = 0.5, max_batch: int = 500,
                 max_pending: int = 20_000, metrics: Any = None) -> None:
        self.store = store
        self.metrics = metrics  # a bot.metrics.Metrics counts each call as it happens
        self.interval = interval
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: list[Any] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    async def __call__(self, event: Any) -> None:
        """Queue one usage event (never waits for the database)."""
        if self.metrics is not None:
            self.metrics.model_call(event)
        if len(self._pending) >= self.max_pending:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log.warning("usage records are piling up; %d dropped so far", self._dropped)
            return
        self._pending.append(event)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="knowbot:usage")
        if len(self._pending) >= self.max_batch:
            self._wake.set()

    async def _run(self) -> None:
        while self._pending:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self._write()

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                await self.store.record_usage_many(batch)
            except KnowbotError:
                log.warning("could not write %d usage records", len(batch), exc_info=True)

    async def flush(self) -> None:
        """Write everything queued now."""
        await self._write()

    async def close(self) -> None:
        """Write what is queued and stop the background writer."""
        await self.flush()
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
