"""Pacing of Telegram sends: about one message a second per chat, 20 a minute per group.

Telegram's limits (Bots FAQ): no more than one message per second in a chat, 20 messages per
minute in a group, about 30 messages per second overall. `Pacer.wait` reserves the next free
slot for a chat before it awaits, so concurrent sends to one chat queue up in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable


class Pacer:
    """Spaces sends per chat and overall; the clock and sleep are passed in for tests."""

    def __init__(self, per_chat: float = 1.0, group_window: float = 60.0, group_max: int = 20,
                 overall: float = 1 / 30, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 max_chats: int = 10_000) -> None:
        self.per_chat = per_chat
        self.group_window = group_window
        self.group_max = group_max
        self.overall = overall
        self.clock = clock
        self.sleep = sleep
        self.max_chats = max_chats
        self._next: dict[int, float] = {}
        self._recent: dict[int, deque[float]] = {}
        self._next_any = 0.0

    def slot(self, chat_id: int) -> float:
        """Reserve the next time a message may go to this chat; return it (clock time)."""
        now = self.clock()
        if len(self._next) > self.max_chats:
            self._prune(now)
        at = max(now, self._next.get(chat_id, 0.0), self._next_any)
        if chat_id < 0:  # groups and supergroups have negative ids
            recent = self._recent.setdefault(chat_id, deque())
            while recent and recent[0] <= now - self.group_window:
                recent.popleft()
            if len(recent) >= self.group_max:
                at = max(at, recent[-self.group_max] + self.group_window)
            recent.append(at)
        self._next[chat_id] = at + self.per_chat
        self._next_any = at + self.overall
        return at

    async def wait(self, chat_id: int) -> None:
        """Wait until a message may go to this chat."""
        delay = self.slot(chat_id) - self.clock()
        if delay > 0:
            await self.sleep(delay)

    def hold(self, chat_id: int, seconds: float) -> None:
        """Keep this chat quiet for `seconds` (after a 429's retry_after)."""
        self._next[chat_id] = max(self._next.get(chat_id, 0.0), self.clock() + seconds)

    def _prune(self, now: float) -> None:
        self._next = {c: t for c, t in self._next.items() if t > now}
        self._recent = {c: d for c, d in self._recent.items()
                        if d and d[-1] > now - self.group_window}
