"""The admin API on `knowbot serve`: what the command line does, over HTTP, behind a token.

Mounted at /api with its own OpenAPI document at /api/openapi.json. Every operation needs
`Authorization: Bearer TOKEN`: `KNOWBOT_ADMIN_TOKEN`, or else a random token the server keeps in
`DATA_DIR/admin.token` (readable by its owner only), which `knowbot` commands on the same machine
read to reach the server. Ingest takes the file's bytes as the request body (bounded by
`KNOWBOT_INGEST_MAX_BYTES`) and answers with newline-delimited JSON: progress lines, then the
receipt, so a long upload shows its progress.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from bot.admin import CONSOLE_TENANT, LocalAdmin, Progress
from bot.errors import CommandError, IngestError, KnowbotError
from bot.httpbody import read_bounded

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

TOKEN_FILE = "admin.token"
SERVER_FILE = "server.json"


def admin_token(settings: "Settings", create: bool = False) -> str | None:
    """The admin token: the configured one, or the data dir's own (made if `create`)."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = Path(settings.data_dir) / TOKEN_FILE
    if path.is_file():
        return path.read_text().strip() or None
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token


def error_text(exc: KnowbotError) -> str:
    """What to tell the admin about an error (the user-facing text where there is one)."""
    if isinstance(exc, (IngestError, CommandError)) or not str(exc):
        return exc.user_message
    return str(exc)


class SearchBody(BaseModel):
    """A retrieval test."""

    query: str = Field(min_length=1, max_length=4000)
    tenant: str = CONSOLE_TENANT
    kb: str | None = None
    top_k: int = Field(5, ge=1, le=50)


class BenchBody(SearchBody):
    """A retrieval test with the scores behind it."""

    chat: str | None = Field(None, max_length=256)


class AskBody(BaseModel):
    """One question, answered as in the terminal."""

    question: str = Field(min_length=1, max_length=8000)
    kb: str | None = None
    user: str = Field("admin", min_length=1, max_length=128)


class UrlBody(BaseModel):
    """A web page to add."""

    url: str = Field(min_length=8, max_length=4000)


def build_admin_api(settings: "Settings", runtime: Callable[[], "Runtime"]) -> FastAPI:
    """The /api sub-application (mount it on the server's app)."""
    api = FastAPI(title="Knowbot admin API", openapi_url="/openapi.json", docs_url=None,
                  redoc_url=None)

    def admin(request: Request) -> LocalAdmin:
        expected = admin_token(settings)
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), expected.encode()):
            raise HTTPException(401, "a valid admin token is needed (Authorization: Bearer ...)")
        return LocalAdmin(runtime())

    @api.exception_handler(KnowbotError)
    async def knowbot_error(request: Request, exc: KnowbotError) -> JSONResponse:
        return JSONResponse({"error": error_text(exc)}, status_code=400)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @api.get("/kbs", summary="Knowledge bases and their source counts")
    async def list_kbs(tenant: str | None = None, a: LocalAdmin = Depends(admin)) -> Any:
        return await a.list_kbs(tenant)

    @api.get("/kbs/{kb}/sources", summary="The sources of a knowledge base")
    async def sources(kb: str, tenant: str = CONSOLE_TENANT, a: LocalAdmin = Depends(admin)) -> Any:
        return await a.sources(tenant, kb)

    @api.delete("/kbs/{kb}", summary="Delete a whole knowledge base")
    async def delete_kb(kb: str, tenant: str = CONSOLE_TENANT, a: LocalAdmin = Depends(admin)) -> Any:
        return await a.delete_kb(tenant, kb)

    @api.delete("/kbs/{kb}/sources/{source}", summary="Delete a source (id, title or origin)")
    async def delete_source(kb: str, source: str, tenant: str = CONSOLE_TENANT,
                            a: LocalAdmin = Depends(admin)) -> Any:
        return await a.delete_source(tenant, kb, source)

    @api.post("/search", summary="The passages a question retrieves, with scores")
    async def search(body: SearchBody, a: LocalAdmin = Depends(admin)) -> Any:
        return await a.search(body.tenant, body.kb, body.query, body.top_k)

    @api.post("/ask", summary="Answer a question with citations")
    async def ask(body: AskBody, a: LocalAdmin = Depends(admin)) -> Any:
        return await a.ask(body.question, body.kb, body.user)

    @api.get("/usage", summary="Model calls and tokens per day, tenant, provider and model")
    async def usage(days: int = Query(30, ge=1, le=400), a: LocalAdmin = Depends(admin)) -> Any:
        return await a.usage(days)

    @api.get("/quotas", summary="Today's quota counts per user, chat and tenant")
    async def quotas(a: LocalAdmin = Depends(admin)) -> Any:
        return await a.quotas()

    @api.get("/jobs", summary="Scheduled jobs")
    async def jobs(tenant: str | None = None, a: LocalAdmin = Depends(admin)) -> Any:
        return await a.jobs(tenant)

    @api.get("/sources/{source}/chunks", summary="A source's chunks with their locations")
    async def chunks(source: str, tenant: str = CONSOLE_TENANT,
                     a: LocalAdmin = Depends(admin)) -> Any:
        found = await a.source_chunks(tenant, source)
        if found is None:
            raise HTTPException(404, f"there is no source {source!r} in {tenant}")
        return found[1]

    @api.post("/bench", summary="A retrieval test: every ranking's score and the gate's decision")
    async def bench(body: BenchBody, a: LocalAdmin = Depends(admin)) -> Any:
        return await a.bench(body.tenant, body.kb, body.chat, body.query, body.top_k)

    @api.get("/conversations", summary="Conversations by channel, tenant and text")
    async def conversations(channel: str | None = None, tenant: str | None = None,
                            q: str | None = Query(None, max_length=200),
                            limit: int = Query(50, ge=1, le=500),
                            a: LocalAdmin = Depends(admin)) -> Any:
        return await a.conversations(channel=channel, tenant=tenant, text=q, limit=limit)

    @api.get("/conversations/{conversation:path}",
             summary="A conversation's messages with citations, tool calls and errors")
    async def conversation(conversation: str, a: LocalAdmin = Depends(admin)) -> Any:
        found = await a.conversation(conversation)
        if found is None:
            raise HTTPException(404, "no such conversation")
        return found

    @api.delete("/users", summary="Delete a user's messages, summaries they are in, and jobs")
    async def forget_user(tenant: str, user: str = Query(..., min_length=1, max_length=256),
                          a: LocalAdmin = Depends(admin)) -> Any:
        return await a.forget_user(tenant, user)

    @api.get("/backlog", summary="Inbox entries by state and replies waiting in the outbox")
    async def backlog(a: LocalAdmin = Depends(admin)) -> Any:
        return await a.backlog()

    @api.post("/ingest/file", summary="Add a file (its bytes are the body); NDJSON progress")
    async def ingest_file(request: Request, name: str = Query(..., min_length=1, max_length=255),
                          tenant: str = CONSOLE_TENANT, kb: str = "default",
                          origin: str = "", a: LocalAdmin = Depends(admin)) -> Any:
        body = await read_upload(request, name, settings.ingest_max_bytes)
        if isinstance(body, JSONResponse):
            return body
        data, mime = body
        return _stream(lambda progress: a.ingest_file(tenant, kb, data, name, mime,
                                                      origin or name, progress))

    @api.post("/ingest/url", summary="Fetch and add a web page; NDJSON progress")
    async def ingest_url(body: UrlBody, tenant: str = CONSOLE_TENANT, kb: str = "default",
                         a: LocalAdmin = Depends(admin)) -> Any:
        return _stream(lambda progress: a.ingest_url(tenant, kb, body.url, progress))

    return api


def _stream(work: Callable[[Progress], Awaitable[dict[str, Any]]]) -> StreamingResponse:
    """Run an ingest, streaming {"progress": [done, total]} lines and then the outcome."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(events.put_nowait, {"progress": [done, total]})

    async def run() -> None:
        try:
            events.put_nowait({"ok": True, "receipt": await work(progress)})
        except KnowbotError as exc:
            events.put_nowait({"ok": False, "error": error_text(exc)})
        except Exception:  # noqa: BLE001 - reported to the caller, logged here
            log.exception("admin ingest failed")
            events.put_nowait({"ok": False, "error": "the ingest failed unexpectedly; see the "
                                                     "server's log"})
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    return ndjson_response(events, loop.create_task(run()))


async def read_upload(request: Request, name: str, limit: int
                      ) -> "tuple[bytes, str] | JSONResponse":
    """A file sent as the request body, bounded: (its bytes, its type or ""), or the 413."""
    data = await read_bounded(request, limit)
    if data is None:
        return JSONResponse({"error": f"{name} is over the {limit / 2**20:.0f} MB limit "
                                      "(KNOWBOT_INGEST_MAX_BYTES)"}, status_code=413)
    mime = request.headers.get("content-type", "").split(";")[0].strip()
    if mime in ("application/octet-stream", "application/x-www-form-urlencoded"):
        mime = ""
    return data, mime


def ndjson_response(events: "asyncio.Queue[dict[str, Any] | None]", task: "asyncio.Task[None]"
                    ) -> StreamingResponse:
    """Stream the queue's events as NDJSON lines until None; the task always finishes."""
    async def lines() -> AsyncIterator[bytes]:
        try:
            while (event := await events.get()) is not None:
                yield (json.dumps(event, ensure_ascii=False) + "\n").encode()
        finally:
            if not task.done():
                await task  # the client left: the work still finishes, nothing half-written

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def write_server_file(settings: "Settings", url: str) -> Path:
    """Tell `knowbot` commands on this data dir where the server listens."""
    path = Path(settings.data_dir) / SERVER_FILE
    path.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    return path
