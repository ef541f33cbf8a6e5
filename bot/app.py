"""The HTTP server: FastAPI with /healthz, /readyz and /metrics; each channel mounts its routes."""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

import bot
from bot.config import Settings
from bot.health import Readiness
from bot.metrics import CONTENT_TYPE
from bot.observe import ObserveMiddleware
from bot.runtime import Runtime

if TYPE_CHECKING:
    from bot.channel import Channel

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[Settings], Awaitable[Runtime]]


def enabled_channels(settings: Settings) -> list["Channel"]:
    """The channels switched on by configuration: each one whose credentials are set."""
    found: list["Channel"] = []
    if settings.telegram_token is not None:
        from channels.telegram import TelegramChannel

        found.append(TelegramChannel(settings))
    if settings.slack_bot_token is not None or settings.slack_client_id:
        from channels.slack import SlackChannel

        found.append(SlackChannel(settings))
    if settings.wechat_token is not None:
        from channels.wechat import WeChatChannel

        found.append(WeChatChannel(settings))
    return found


def create_app(
    settings: Settings,
    runtime_factory: RuntimeFactory | None = None,
    channels: list["Channel"] | None = None,
) -> FastAPI:
    """Build the app; the runtime starts and stops with the server."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        factory = runtime_factory or Runtime.start
        runtime = await factory(settings)
        app.state.runtime = runtime
        app.state.readiness = Readiness(runtime)
        if runtime.store.dialect == "postgresql" and not settings.qdrant_url:
            log.warning("the database is shared (PostgreSQL) but the knowledge base is this "
                        "replica's own Qdrant Edge folder: other replicas will not see its "
                        "documents. Set KNOWBOT_QDRANT_URL to a Qdrant server to share them.")
        runtime.channels = list(channels if channels is not None else enabled_channels(settings))
        for channel in runtime.channels:
            channel.mount(app, runtime)
            await channel.start()
            log.info("channel %s started", channel.name)
        if runtime.channels:
            runtime.outbox.start()
            runtime.workers.start()
        await runtime.start_scheduler()
        for started in getattr(app.state, "on_started", ()):
            started()
        try:
            yield
        finally:
            # stop answering first (finish or hand back), while the channels can still send
            await runtime.workers.stop()
            for channel in runtime.channels:
                await channel.stop()
            await app.state.readiness.close()
            await runtime.close()
            for stopped in getattr(app.state, "on_stopped", ()):
                stopped()

    app = FastAPI(title="Knowbot", version=bot.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    from bot.admin_api import build_admin_api

    app.mount("/api", build_admin_api(settings, lambda: app.state.runtime))
    from bot.console import build_console

    app.mount("/console", build_console(settings, lambda: app.state.runtime))

    def running() -> Runtime | None:
        return getattr(app.state, "runtime", None)

    app.add_middleware(
        ObserveMiddleware,  # type: ignore[arg-type]
        metrics=lambda: r.metrics if (r := running()) is not None else None,
        channels=lambda: tuple(c.name for c in r.channels) if (r := running()) else (),
    )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: 200 while the process answers (the database is reported, not required)."""
        runtime: Runtime = app.state.runtime
        try:
            async with asyncio.timeout(2):
                async with runtime.store.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            database = "ok"
        except Exception:  # noqa: BLE001 - health reports, never raises
            log.warning("health check: database not answering", exc_info=True)
            database = "unavailable"
        body = {
            "status": "ok" if database == "ok" else "degraded",
            "version": bot.__version__,
            "database": database,
            "llm": "configured" if runtime.llm.configured else "none",
            "channels": [c.name for c in runtime.channels],
            "in_flight": runtime.dispatcher.in_flight + runtime.workers.in_flight,
        }
        return JSONResponse(body)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 when every part answers, else 503 naming each part that does not."""
        checks = await app.state.readiness.check()
        failing = [c.name for c in checks if not c.ok]
        body = {"status": "ready" if not failing else "not ready", "failing": failing,
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
        return JSONResponse(body, status_code=503 if failing else 200)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics; with KNOWBOT_METRICS_TOKEN set, only for that bearer token."""
        expected = settings.metrics_token
        if expected is not None:
            given = request.headers.get("authorization", "")
            wanted = f"Bearer {expected.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), wanted.encode()):
                return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        runtime: Runtime = app.state.runtime
        return Response(await runtime.metrics.render(), media_type=CONTENT_TYPE)

    return app
