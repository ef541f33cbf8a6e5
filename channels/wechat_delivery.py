"""Getting answer parts to a WeChat user outside a passive reply.

Customer-service messages (verified accounts only) are limited to 5 per user since that user's
last message, within 48 hours of it; the count is kept in the database with compare-and-swap so
replicas share it. What cannot be pushed is held, per user, and handed over in the passive reply
to the user's next message.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from bot.errors import ChannelSendError
from bot.kv import StateStore
from channels.wechat_api import WeChatAPI

log = logging.getLogger(__name__)

WINDOW = 48 * 3600.0  # seconds after the user's last message that pushes are allowed
ALLOWANCE = 5  # customer-service messages per user message
HELD_TTL = 7 * 24 * 3600.0
MAX_HELD_ITEMS = 10
CAS_TRIES = 8


class Delivery:
    """Pushes parts as customer-service messages within the allowance, and holds the rest."""

    def __init__(self, state: StateStore, account: str, api: WeChatAPI | None, verified: bool,
                 clock: Callable[[], float] | None = None) -> None:
        self.state = state
        self.account = account
        self.api = api
        self.verified = verified and api is not None
        self.clock = clock or state.clock.time  # Unix seconds on the runtime's clock
        self.quota_ns = f"wechat:quota:{account}"
        self.held_ns = f"wechat:held:{account}"

    # ---- the allowance --------------------------------------------------------------

    async def note_inbound(self, openid: str) -> None:
        """The user wrote: the 48-hour window and the allowance of 5 start again."""
        await self.state.put(self.quota_ns, openid, {"since": self.clock(), "used": 0}, ttl=WINDOW)

    async def take_allowance(self, openid: str) -> bool:
        """Use one customer-service message of this user's allowance; False if none is left."""
        for _ in range(CAS_TRIES):
            entry = await self.state.get(self.quota_ns, openid)
            if entry is None:
                return False  # no message from this user in the last 48 hours
            since, used = float(entry.value.get("since", 0)), int(entry.value.get("used", 0))
            if used >= ALLOWANCE or self.clock() - since >= WINDOW:
                return False
            remaining = max(1.0, WINDOW - (self.clock() - since))
            if await self.state.swap(self.quota_ns, openid, {"since": since, "used": used + 1},
                                     entry.version, ttl=remaining):
                return True
        return False

    async def allowance_left(self, openid: str) -> int:
        """How many customer-service messages this user may still get now."""
        entry = await self.state.get(self.quota_ns, openid)
        if entry is None or self.clock() - float(entry.value.get("since", 0)) >= WINDOW:
            return 0
        return max(0, ALLOWANCE - int(entry.value.get("used", 0)))

    # ---- pushing and holding --------------------------------------------------------

    async def push(self, openid: str, parts: list[str]) -> list[str]:
        """Send parts as customer-service messages while allowed; return the parts not sent."""
        remaining = list(parts)
        if not self.verified or self.api is None:
            return remaining
        while remaining:
            if not await self.take_allowance(openid):
                break
            try:
                await self.api.send_text(openid, remaining[0])
            except ChannelSendError as exc:
                log.warning("customer-service message to a user failed: %s", exc)
                if not exc.retryable:  # out of window or allowance on WeChat's side
                    await self._exhaust(openid)
                break
            remaining.pop(0)
        return remaining

    async def _exhaust(self, openid: str) -> None:
        entry = await self.state.get(self.quota_ns, openid)
        if entry is not None:
            value = {**entry.value, "used": ALLOWANCE}
            await self.state.swap(self.quota_ns, openid, value, entry.version, ttl=WINDOW)

    async def follow_up(self, openid: str, parts: list[str], page: str | None,
                        promised: bool = False) -> bool:
        """Push what the allowance permits and hold the rest; True if everything was pushed.

        `promised`: the person was told the answer would be sent; if it is held instead, the
        hand-over says so.
        """
        remaining = await self.push(openid, parts)
        if remaining:
            await self.hold(openid, remaining, page, waited=promised)
            return False
        return True

    async def hold(self, openid: str, parts: list[str], page: str | None,
                   waited: bool = False) -> None:
        """Keep parts for the user's next message (`waited`: a push of them failed)."""
        item = {"parts": list(parts), "page": page, "waited": waited}
        for _ in range(CAS_TRIES):
            entry = await self.state.get(self.held_ns, openid)
            items: list[dict[str, Any]] = list(entry.value) if entry is not None else []
            items.append(item)
            if len(items) > MAX_HELD_ITEMS:
                log.warning("too many answers held for one user; the oldest is dropped")
                items = items[-MAX_HELD_ITEMS:]
            if await self.state.swap(self.held_ns, openid, items,
                                     entry.version if entry is not None else 0, ttl=HELD_TTL):
                log.info("answer held for the user's next message (%d part(s))", len(parts))
                return
        raise ChannelSendError("could not keep the answer for the user", retryable=True)

    async def has_held(self, openid: str) -> bool:
        """True if answers wait for this user."""
        entry = await self.state.get(self.held_ns, openid)
        return entry is not None and bool(entry.value)

    async def take_next(self, openid: str) -> tuple[str, bool, str | None, bool] | None:
        """The next held part, whether more is held, its answer's page, and whether a push of
        it failed (the person was told it would come); None if nothing is held."""
        for _ in range(CAS_TRIES):
            entry = await self.state.get(self.held_ns, openid)
            if entry is None:
                return None
            items = [dict(i) for i in entry.value if i.get("parts")]
            if not items:
                return None
            first = items[0]
            waited = bool(first.get("waited"))
            first["waited"] = False  # said once, with the first part handed over
            part = first["parts"].pop(0)
            if not first["parts"]:
                items.pop(0)
            # an empty list rather than a delete: a concurrent hold must not be lost
            if await self.state.swap(self.held_ns, openid, items, entry.version, ttl=HELD_TTL):
                return part, bool(items), first.get("page"), waited
        return None
