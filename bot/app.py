"""The HTTP server: FastAPI with /healthz, on which each channel mounts its routes."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

import bot
from bot.config import Settings
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
        try:
            yield
        finally:
            # stop answering first (finish or hand back), while the channels can still send
            await runtime.workers.stop()
            for channel in runtime.channels:
                await channel.stop()
            await runtime.close()
            for stopped in getattr(app.state, "on_stopped", ()):
                stopped()

    app = FastAPI(title="Knowbot", version=bot.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    from bot.admin_api import build_admin_api

    app.mount("/api", build_admin_api(settings, lambda: app.state.runtime))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        runtime: Runtime = app.state.runtime
        try:
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
        return JSONResponse(body, status_code=200 if database == "ok" else 503)

    return app
