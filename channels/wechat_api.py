"""WeChat Official Account API: the shared access token and customer-service messages.

One `TokenManager` owns the access token. It keeps the token in the database (`runtime.state`)
and refreshes it ahead of expiry under a compare-and-swap claim, so when several replicas run
only one asks WeChat for a new token (asking again invalidates the old one) and the others wait
and read it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

import httpx

from bot.errors import ChannelSendError
from bot.kv import StateStore

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.weixin.qq.com"
TOKEN_NS = "wechat:token"

TOKEN_INVALID = {40001, 40014, 42001}  # invalid credential, invalid token, token expired
OUT_OF_WINDOW = 45015  # the user has not written in the last 48 hours
OUT_OF_ALLOWANCE = 45047  # too many customer-service messages since the user's last message
RETRYABLE_CODES = {-1, 45009, 45011}  # system busy, API frequency limits


class TokenManager:
    """The access token of one account, kept in the database and refreshed by one replica."""

    def __init__(self, state: StateStore, http: httpx.AsyncClient, app_id: str, app_secret: str,
                 *, api_base: str = DEFAULT_API_BASE, refresh_ahead: float = 300.0,
                 claim_seconds: float = 15.0, poll: float = 0.05,
                 clock: Callable[[], float] | None = None) -> None:
        self.state = state
        self.http = http
        self.app_id = app_id
        self._secret = app_secret
        self.api_base = api_base.rstrip("/")
        self.refresh_ahead = refresh_ahead
        self.claim_seconds = claim_seconds
        self.poll = poll
        self.clock = clock or state.clock.time  # Unix seconds on the runtime's clock
        self._lock = asyncio.Lock()
        # The token as last read or fetched here, with its expiry: every answer that may be
        # pushed asks for it, and one database read each, one caller at a time behind the
        # lock, made hundreds of callers at once wait seconds for what they all share.
        self._known: tuple[str, float] | None = None

    def _still_good(self) -> str | None:
        if self._known is not None and self._known[1] - self.refresh_ahead > self.clock():
            return self._known[0]
        return None

    async def token(self) -> str:
        """A valid access token: the one known here or stored, or a fresh one if it is near
        expiry (another replica's refresh is seen here when this one's copy nears expiry, or
        when WeChat refuses it: `invalidate`)."""
        known = self._still_good()
        if known is not None:
            return known
        async with self._lock:
            deadline = time.monotonic() + self.claim_seconds + 5
            while time.monotonic() < deadline:
                known = self._still_good()  # read or refreshed by the caller before this one
                if known is not None:
                    return known
                entry = await self.state.get(TOKEN_NS, self.app_id)
                value: dict[str, Any] = entry.value if entry is not None else {}
                now = self.clock()
                if value.get("token") and value.get("expires_at", 0) - self.refresh_ahead > now:
                    self._known = (str(value["token"]), float(value["expires_at"]))
                    return str(value["token"])
                if value.get("claimed_until", 0) > now:  # another replica is refreshing
                    await asyncio.sleep(self.poll)
                    continue
                claim = {**value, "claimed_until": now + self.claim_seconds}
                if not await self.state.swap(TOKEN_NS, self.app_id, claim,
                                             entry.version if entry is not None else 0):
                    await asyncio.sleep(self.poll)
                    continue
                return await self._refresh(value)
            raise ChannelSendError("timed out waiting for the WeChat access token", retryable=True)

    async def _refresh(self, previous: dict[str, Any]) -> str:
        try:
            token, expires_in = await self._fetch()
        except ChannelSendError:
            await self.state.put(TOKEN_NS, self.app_id,
                                 {k: v for k, v in previous.items() if k != "claimed_until"})
            raise
        expires_at = self.clock() + expires_in
        await self.state.put(TOKEN_NS, self.app_id, {"token": token, "expires_at": expires_at})
        self._known = (token, expires_at)
        log.info("WeChat access token refreshed for %s (valid %d s)", self.app_id, expires_in)
        return token

    async def _fetch(self) -> tuple[str, int]:
        params = {"grant_type": "client_credential", "appid": self.app_id, "secret": self._secret}
        try:
            resp = await self.http.get(f"{self.api_base}/cgi-bin/token", params=params)
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChannelSendError("could not reach WeChat for an access token",
                                   retryable=True) from exc
        if not isinstance(data, dict) or not data.get("access_token"):
            code = data.get("errcode") if isinstance(data, dict) else None
            # a wrong AppSecret or an IP not on the whitelist will not fix itself
            raise ChannelSendError(f"WeChat refused the access-token request (errcode {code})",
                                   retryable=code in RETRYABLE_CODES)
        return str(data["access_token"]), int(data.get("expires_in", 7200))

    async def invalidate(self, token: str) -> None:
        """Mark `token` as no longer good (WeChat said so), unless it was replaced already."""
        if self._known is not None and self._known[0] == token:
            self._known = None
        entry = await self.state.get(TOKEN_NS, self.app_id)
        if entry is not None and entry.value.get("token") == token:
            await self.state.swap(TOKEN_NS, self.app_id, {"token": None, "expires_at": 0},
                                  entry.version)


class WeChatAPI:
    """The few WeChat API calls Knowbot makes, async over httpx."""

    def __init__(self, tokens: TokenManager) -> None:
        self.tokens = tokens
        self.http = tokens.http
        self.api_base = tokens.api_base

    async def send_text(self, openid: str, content: str) -> None:
        """Send one customer-service text message; ChannelSendError says why it failed."""
        body = json.dumps({"touser": openid, "msgtype": "text", "text": {"content": content}},
                          ensure_ascii=False).encode()  # WeChat shows \\u escapes literally
        for attempt in range(2):
            token = await self.tokens.token()
            try:
                resp = await self.http.post(
                    f"{self.api_base}/cgi-bin/message/custom/send",
                    params={"access_token": token}, content=body,
                    headers={"Content-Type": "application/json; charset=utf-8"})
                data = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise ChannelSendError("could not reach the WeChat API", retryable=True) from exc
            code = data.get("errcode", 0) if isinstance(data, dict) else None
            if code == 0:
                return
            if code in TOKEN_INVALID and attempt == 0:
                log.info("WeChat said the access token is no longer valid (%s); refreshing", code)
                await self.tokens.invalidate(token)
                continue
            if code == OUT_OF_WINDOW:
                raise ChannelSendError("the user has not written to the account in 48 hours",
                                       retryable=False)
            if code == OUT_OF_ALLOWANCE:
                raise ChannelSendError("no customer-service messages left for this user",
                                       retryable=False)
            raise ChannelSendError(f"WeChat refused the customer-service message (errcode {code})",
                                   retryable=code in RETRYABLE_CODES or code in TOKEN_INVALID)
        raise ChannelSendError("WeChat kept refusing the access token", retryable=True)

