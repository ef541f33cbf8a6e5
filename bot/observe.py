"""The HTTP middleware in front of every route: a request id for the logs, metrics per channel.

Each request gets a request id (the caller's X-Request-ID when it is a sane token, else a new
one), put into the log context for everything the request starts and sent back in the response's
X-Request-ID. Requests on a channel's routes (/slack/..., /telegram/..., /wechat/...) are counted
by channel and status class, and timed until the response starts: the platform's acknowledgement.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bot.logs import bound, request_id_from

if TYPE_CHECKING:
    from bot.metrics import Metrics

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KNOWN_CHANNELS = ("slack", "telegram", "wechat")
INTERNAL = ("healthz", "readyz", "metrics", "api", "console")  # probes, scrapes, admin API, console


def channel_of(path: str, running: tuple[str, ...] = ()) -> str | None:
    """The channel a request path belongs to, "other" for unknown paths, None for internal ones."""
    first = path.lstrip("/").split("/", 1)[0]
    if first in INTERNAL:
        return None
    if first in KNOWN_CHANNELS or first in running:
        return first
    return "other"


class ObserveMiddleware:
    """Pure ASGI middleware: request id and per-channel request metrics."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], "Metrics | None"],
                 channels: Callable[[], tuple[str, ...]] = tuple) -> None:
        self.app = app
        self.metrics = metrics
        self.channels = channels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request inside its log context, counting and timing it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers") or []:
            if name == b"x-request-id":
                header = value.decode("latin-1")
                break
        request_id = request_id_from(header)
        started = time.perf_counter()
        status = {"code": 500, "at": None}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                status["at"] = time.perf_counter()
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with bound(request_id=request_id):
            try:
                await self.app(scope, receive, sending)
            finally:
                self._count(scope.get("path", ""), status["code"],
                            (status["at"] or time.perf_counter()) - started)

    def _count(self, path: str, code: int, seconds: float) -> None:
        metrics = self.metrics()
        if metrics is None:
            return
        channel = channel_of(path, self.channels())
        if channel is not None:
            metrics.request(channel, code, seconds)
