"""Daily quotas on model use: requests and tokens per user, per chat and per tenant.

Limits come from settings (0 means none). Before a question goes to the model, `admit` checks
every limited scope of the conversation for today (the day of KNOWBOT_TIMEZONE) and counts the
request; over a limit the person is told which one and when it resets, and the model is not
called. The model's tokens are added as its usage events arrive (the scopes of the question
being answered ride along in a context variable). Counts live in the shared state store, so
every replica sees the same ones.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from bot.kv import StateStore
from bot.types import ConversationKey, Reply

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

NAMESPACE = "quota"
KEEP = timedelta(days=3)  # counts outlive their day a little, for the admin's look back
_ANSWERING: contextvars.ContextVar[ConversationKey | None] = contextvars.ContextVar(
    "knowbot_quota_key", default=None)
WHO = {"user": "you", "chat": "this chat", "tenant": "this workspace"}


@dataclass(frozen=True)
class Limit:
    """One scope's daily limits (0: none)."""

    scope: str  # user | chat | tenant
    requests: int
    tokens: int


def scope_id(scope: str, key: ConversationKey) -> str:
    """The id a scope counts under for a conversation."""
    if scope == "user":
        return key.user_scope()
    if scope == "chat":
        return f"{key.channel}:{key.tenant}:{key.chat_id}"
    return f"{key.channel}:{key.tenant}"


class Quotas:
    """Counts requests and tokens per scope and day; refuses past a limit."""

    def __init__(self, state: StateStore, settings: "Settings") -> None:
        self.state = state
        self.zone = ZoneInfo(settings.timezone)
        limits = [Limit("user", settings.quota_user_requests, settings.quota_user_tokens),
                  Limit("chat", settings.quota_chat_requests, settings.quota_chat_tokens),
                  Limit("tenant", settings.quota_tenant_requests, settings.quota_tenant_tokens)]
        self.limits = [limit for limit in limits if limit.requests or limit.tokens]

    @property
    def active(self) -> bool:
        """True when any limit is set."""
        return bool(self.limits)

    def _today(self) -> tuple[str, datetime]:
        now = self.state.clock.now().astimezone(self.zone)
        reset = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return now.date().isoformat(), reset

    async def _counts(self, day: str, scope: str, key: ConversationKey) -> dict[str, int]:
        entry = await self.state.get(NAMESPACE, f"{day}|{scope}|{scope_id(scope, key)}")
        return dict(entry.value) if entry is not None else {"requests": 0, "tokens": 0}

    async def _add(self, day: str, scope: str, key: ConversationKey, requests: int,
                   tokens: int) -> None:
        name = f"{day}|{scope}|{scope_id(scope, key)}"
        for _ in range(8):  # compare-and-swap, bounded: replicas count into the same entry
            entry = await self.state.get(NAMESPACE, name)
            value = dict(entry.value) if entry is not None else {"requests": 0, "tokens": 0}
            value["requests"] += requests
            value["tokens"] += tokens
            if await self.state.swap(NAMESPACE, name, value, entry.version if entry else 0,
                                     ttl=KEEP):
                return
        log.warning("quota count for %s %s lost under contention", scope, day)

    async def admit(self, key: ConversationKey) -> Reply | None:
        """Count a request for the model; a Reply saying why not when a limit is reached."""
        if not self.limits:
            return None
        day, reset = self._today()
        for limit in self.limits:
            counts = await self._counts(day, limit.scope, key)
            over = ("questions", limit.requests) if (
                limit.requests and counts["requests"] >= limit.requests) else (
                ("model tokens", limit.tokens) if limit.tokens and counts["tokens"] >= limit.tokens
                else None)
            if over is not None:
                log.info("quota: %s limit of %s reached", limit.scope, over[0])
                return Reply(self._refusal(limit.scope, over, reset), kind="notice")
        for limit in self.limits:
            await self._add(day, limit.scope, key, 1, 0)
        _ANSWERING.set(key)
        return None

    def _refusal(self, scope: str, over: tuple[str, int], reset: datetime) -> str:
        left = reset - self.state.clock.now()
        hours, minutes = divmod(max(1, int(left.total_seconds() // 60)), 60)
        wait = f"{hours} h {minutes} min" if hours else f"{minutes} min"
        return (f"{WHO[scope].capitalize()} reached today's limit of {over[1]:,} {over[0]}. It "
                f"resets at {reset:%H:%M} ({self.zone.key}), in {wait}. Commands such as /help "
                "and /kb search still work.")

    async def on_usage(self, event: Any) -> None:
        """A usage sink: add a model call's tokens to the scopes of the question it answers."""
        key = _ANSWERING.get()
        tokens = int(event.prompt_tokens or 0) + int(event.completion_tokens or 0)
        if key is None or not tokens or not self.limits:
            return
        day, _ = self._today()
        for limit in self.limits:
            await self._add(day, limit.scope, key, 0, tokens)

    async def describe(self, key: ConversationKey) -> str:
        """Where this conversation stands today, for /quota."""
        if not self.limits:
            return "No quotas are set here: ask as much as you like."
        day, reset = self._today()
        lines = [f"Today's use (resets at {reset:%H:%M} {self.zone.key}):"]
        for limit in self.limits:
            counts = await self._counts(day, limit.scope, key)
            parts = []
            if limit.requests:
                parts.append(f"{counts['requests']:,} of {limit.requests:,} questions")
            if limit.tokens:
                parts.append(f"{counts['tokens']:,} of {limit.tokens:,} model tokens")
            lines.append(f"- {WHO[limit.scope]}: " + ", ".join(parts))
        return "\n".join(lines)

    async def today(self) -> list[dict[str, Any]]:
        """Every scope's counts today, for admins."""
        day, _ = self._today()
        return [{"day": day, "scope": name.split("|", 2)[1], "id": name.split("|", 2)[2],
                 **entry.value}
                for name, entry in await self.state.items(NAMESPACE, prefix=f"{day}|")]
