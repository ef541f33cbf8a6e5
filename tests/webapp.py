"""The real Knowbot app on an in-process ASGI transport, and signed Slack requests to it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx

from bot.app import create_app
from bot.config import Settings
from bot.runtime import Runtime

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
_ids = itertools.count(1)


def slack_signature(body: str, secret: str = SLACK_SECRET) -> dict[str, str]:
    """Slack's v0 request signature headers for `body` (HMAC-SHA256 of v0:ts:body)."""
    ts = int(time.time())
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def slack_mention(team: str, user: str, channel: str, text: str) -> dict[str, Any]:
    """An Events API app_mention envelope."""
    ts = f"{int(time.time())}.{next(_ids):06d}"
    event = {"type": "app_mention", "user": user, "channel": channel, "text": text, "ts": ts,
             "event_ts": ts}
    return {"token": "legacy", "team_id": team, "api_app_id": "A0KNOWBOT", "event": event,
            "type": "event_callback", "event_id": f"Ev{next(_ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": team, "user_id": "UBOT",
                                "is_bot": True, "is_enterprise_install": False}]}


async def post_slack(client: httpx.AsyncClient, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> httpx.Response:
    """POST a signed Slack event to /slack/events."""
    raw = json.dumps(body)
    return await client.post("/slack/events", content=raw, headers={
        "Content-Type": "application/json", **slack_signature(raw), **(headers or {})})


@asynccontextmanager
async def running_app(settings: Settings, channels: list[Any] | None = None,
                      factory: Callable[[Settings], Awaitable[Runtime]] | None = None,
                      ) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The app with its lifespan, and a client that talks to it in process."""
    app = create_app(settings, runtime_factory=factory, channels=channels or [])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://knowbot") as client:
            yield client, app.state.runtime


async def settle(runtime: Runtime, channels: list[Any]) -> None:
    """Wait until the channels' answers in flight are finished."""
    workers = getattr(runtime, "workers", None)
    if workers is not None:
        await workers.wait_idle(60)
    for channel in channels:
        tasks = getattr(channel, "_tasks", None)
        while tasks:
            await asyncio.wait(set(tasks), timeout=60)
    await runtime.engine.drain()
