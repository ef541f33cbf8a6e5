"""The console's JSON API (mounted at /console/api).

Every call needs a session; every non-GET call its CSRF token in X-CSRF-Token. A scoped admin
sees only their tenant (and, for a group's admin, only that group's chats): anything else is a
404, so nothing says another tenant's data exists. The operations are bot.admin.LocalAdmin's,
shared with the admin API; long ones (ingest, re-crawl, the playground) answer with
newline-delimited JSON as they go.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from bot.admin import CONSOLE_TENANT, LocalAdmin
from bot.admin_api import _stream, error_text, ndjson_response, read_upload
from bot.console.auth import Session, csrf_ok
from bot.errors import KnowbotError

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.console import Console

log = logging.getLogger(__name__)

NOT_FOUND = "not found"


class BenchBody(BaseModel):
    """A retrieval test."""

    query: str = Field(min_length=1, max_length=4000)
    tenant: str = Field(CONSOLE_TENANT, min_length=1, max_length=300)
    kb: str | None = Field(None, max_length=200)
    chat: str | None = Field(None, max_length=256)
    top_k: int = Field(8, ge=1, le=50)


class LinkBody(BaseModel):
    """A web page to add."""

    url: str = Field(min_length=8, max_length=4000)


class PlaygroundBody(BaseModel):
    """One message to the engine."""

    message: str = Field(min_length=1, max_length=8000)
    kb: str | None = Field(None, max_length=200)


def _missing() -> HTTPException:
    return HTTPException(404, NOT_FOUND)


def build_api(settings: "Settings", console: "Console") -> FastAPI:
    """The /console/api sub-application."""
    api = FastAPI(title="Knowbot console API", docs_url=None, redoc_url=None, openapi_url=None)

    async def signed_in(request: Request) -> Session:
        session = await console.session(request)
        if session is None:
            raise HTTPException(401, "sign in first")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok(
                session.csrf, request.headers.get("x-csrf-token")):
            raise HTTPException(403, "a valid CSRF token is needed (X-CSRF-Token)")
        return session

    def admin() -> LocalAdmin:
        return LocalAdmin(console.runtime)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers={"Cache-Control": "no-store"})

    @api.exception_handler(KnowbotError)
    async def knowbot_error(request: Request, exc: KnowbotError) -> JSONResponse:
        return JSONResponse({"error": error_text(exc)}, status_code=400)

    @api.middleware("http")
    async def no_store(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ---- reach ------------------------------------------------------------------------------

    def tenant_reach(s: Session, tenant: str) -> None:
        if not s.may_see(tenant):
            raise _missing()

    def chats_of(s: Session, tenant: str) -> list[str] | None:
        """The chats a group admin is limited to in this tenant (None: all of it)."""
        return None if s.whole_tenant else list(s.chats or [])

    async def kb_reach(s: Session, tenant: str, kb: str, *, create: bool = False
                       ) -> dict[str, Any]:
        """The knowledge base if this admin may use it (404 otherwise); with `create`, one
        that does not exist yet may be named (it is made by the first upload)."""
        tenant_reach(s, tenant)
        info = await admin().kb_info(tenant, kb)
        chats = chats_of(s, tenant)
        if info is None:
            if not create:
                raise _missing()
            if chats is None:
                return {"tenant": tenant, "name": kb, "chat_id": None, "new": True}
            from knowledge.registry import chat_kb_name
            from bot.types import ConversationKey

            mine = next((c for c in chats
                         if chat_kb_name(ConversationKey("", "", c, "")) == kb), None)
            if mine is None:
                raise _missing()
            return {"tenant": tenant, "name": kb, "chat_id": mine, "new": True}
        if chats is not None and (info["shared"] or info["chat_id"] not in chats):
            raise _missing()
        return info

    # ---- who --------------------------------------------------------------------------------

    @api.get("/me")
    async def me(s: Session = Depends(signed_in)) -> Any:
        tenants = list(s.tenants)
        if s.scope == "all":
            tenants = await admin().tenants()
        return {"admin": s.admin, "scope": s.scope, "tenants": tenants, "chats": s.chats,
                "csrf": s.csrf, "console_tenant": CONSOLE_TENANT}

    # ---- knowledge ----------------------------------------------------------------------------

    @api.get("/kbs")
    async def kbs(tenant: str | None = None, s: Session = Depends(signed_in)) -> Any:
        if tenant:
            tenant_reach(s, tenant)
            return await admin().kbs_with_chats(tenant, chats_of(s, tenant))
        if s.scope == "all":
            return await admin().kbs_with_chats(None)
        found: list[dict[str, Any]] = []
        for t in s.tenants:
            found += await admin().kbs_with_chats(t, chats_of(s, t))
        return found

    @api.get("/sources")
    async def sources(tenant: str, kb: str, s: Session = Depends(signed_in)) -> Any:
        await kb_reach(s, tenant, kb)
        return await admin().source_details(tenant, kb)

    @api.get("/sources/{source_id}/chunks")
    async def chunks(source_id: str, tenant: str, s: Session = Depends(signed_in)) -> Any:
        tenant_reach(s, tenant)
        found = await admin().source_chunks(tenant, source_id)
        if found is None:
            raise _missing()
        source, rows = found
        chats = chats_of(s, tenant)
        if chats is not None and source["chat_id"] not in chats:
            raise _missing()
        return rows

    async def source_in(tenant: str, kb: str, source_id: str) -> None:
        service = console.runtime.knowledge
        found = await service.registry.find_source(tenant, kb, source_id=source_id)  # type: ignore[attr-defined]
        if found is None:
            raise _missing()

    @api.delete("/sources/{source_id}")
    async def delete_source(source_id: str, tenant: str, kb: str,
                            s: Session = Depends(signed_in)) -> Any:
        await kb_reach(s, tenant, kb)
        await source_in(tenant, kb, source_id)
        done = await admin().delete_source(tenant, kb, source_id)
        log.info("console: %s deleted source %s from %s/%s", s.admin, source_id, tenant, kb)
        return done

    @api.post("/sources/{source_id}/recrawl")
    async def recrawl(source_id: str, tenant: str, kb: str,
                      s: Session = Depends(signed_in)) -> Any:
        await kb_reach(s, tenant, kb)
        await source_in(tenant, kb, source_id)
        a = admin()
        return _stream(lambda progress: a.recrawl_source(tenant, kb, source_id, progress))

    @api.post("/upload")
    async def upload(request: Request, tenant: str, kb: str = "default",
                     name: str = Query(..., min_length=1, max_length=255),
                     s: Session = Depends(signed_in)) -> Any:
        info = await kb_reach(s, tenant, kb, create=True)
        body = await read_upload(request, name, settings.ingest_max_bytes)
        if isinstance(body, JSONResponse):
            return body
        data, mime = body
        a = admin()
        chat_id = info.get("chat_id") or ""
        return _stream(lambda progress: a.ingest_file(
            tenant, kb, data, name, mime, name, progress, added_by=f"console:{s.admin}",
            chat_id=chat_id))

    @api.post("/link")
    async def link(body: LinkBody, tenant: str, kb: str = "default",
                   s: Session = Depends(signed_in)) -> Any:
        info = await kb_reach(s, tenant, kb, create=True)
        a = admin()
        chat_id = info.get("chat_id") or ""
        return _stream(lambda progress: a.ingest_url(tenant, kb, body.url, progress,
                                                     added_by=f"console:{s.admin}",
                                                     chat_id=chat_id))

    # ---- the retrieval bench ------------------------------------------------------------------

    @api.post("/bench")
    async def bench(body: BenchBody, s: Session = Depends(signed_in)) -> Any:
        tenant_reach(s, body.tenant)
        chats = chats_of(s, body.tenant)
        chat = body.chat
        if body.kb:
            await kb_reach(s, body.tenant, body.kb)
        elif chats is not None:
            if chat is None:
                chat = chats[0] if chats else None
            if chat not in chats:
                raise _missing()
        return await admin().bench(body.tenant, body.kb, chat, body.query, body.top_k)

    # ---- conversations ------------------------------------------------------------------------

    @api.get("/conversations")
    async def conversations(channel: str | None = None, tenant: str | None = None,
                            chat: str | None = Query(None, max_length=256),
                            q: str | None = Query(None, max_length=200),
                            limit: int = Query(50, ge=1, le=500),
                            s: Session = Depends(signed_in)) -> Any:
        query: dict[str, Any] = {"channel": channel or None, "tenant": tenant or None,
                                 "text": q or None, "limit": limit}
        if tenant:
            tenant_reach(s, tenant)
        if chat:
            query["chats"] = [chat]
        if s.scope != "all":
            query["tenants"] = list(s.tenants)
            if not s.whole_tenant:
                query["chats"] = [c for c in s.chats or [] if not chat or c == chat]
        return await admin().conversations(**query)

    @api.get("/conversations/{conversation_id:path}")
    async def conversation(conversation_id: str, s: Session = Depends(signed_in)) -> Any:
        found = await admin().conversation(conversation_id)
        if found is None or not s.may_see(found["tenant"], found["chat_id"]):
            raise _missing()
        return found

    @api.delete("/users")
    async def forget_user(tenant: str, user: str = Query(..., min_length=1, max_length=256),
                          channel: str | None = None, s: Session = Depends(signed_in)) -> Any:
        tenant_reach(s, tenant)
        if channel and tenant.partition(":")[0] != channel:
            raise HTTPException(400, f"the tenant {tenant} is not on the channel {channel}")
        done = await admin().forget_user(tenant, user, chats_of(s, tenant))
        log.info("console: %s deleted the data of a user of %s: %s", s.admin, tenant, done)
        return done

    # ---- usage --------------------------------------------------------------------------------

    @api.get("/usage")
    async def usage(days: int = Query(30, ge=1, le=400), tenant: str | None = None,
                    s: Session = Depends(signed_in)) -> Any:
        if tenant:
            tenant_reach(s, tenant)

        def may_see(t: str, chat: str | None) -> bool:
            if tenant and t != tenant:
                return False
            if not s.whole_tenant:  # a group's admin: that group's rows only
                return chat is not None and s.may_see(t, chat)
            return s.may_see(t)

        a = admin()
        return {"rows": await a.usage_rows(days, may_see),
                "quotas": await a.quota_state(may_see),
                "backlog": await a.backlog(None if s.scope == "all" and not tenant
                                           else [tenant] if tenant else list(s.tenants))}

    # ---- the playground -----------------------------------------------------------------------

    @api.post("/playground")
    async def playground(body: PlaygroundBody, s: Session = Depends(signed_in)) -> Any:
        if s.scope != "all":
            raise HTTPException(403, "the playground answers in the console's own tenant, "
                                     "for Knowbot admins only")
        a = admin()
        return _events(lambda: a.playground(body.message, body.kb, s.admin))

    return api


def _events(work: Any) -> StreamingResponse:
    """Run one answer, streaming its tool calls as they happen and then the answer."""
    from bot.toolloop import TOOL_EVENTS

    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def tell(event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    async def run() -> None:
        TOOL_EVENTS.set(tell)  # this task's own context: only this answer's calls are told
        try:
            done = await work()
            if done.get("kind") == "error":
                tell({"error": done["answer"], "citations": done["citations"]})
            else:
                tell({"answer": done["answer"], "citations": done["citations"],
                      "conversation": done["conversation"]})
        except KnowbotError as exc:
            tell({"error": error_text(exc)})
        except Exception:  # noqa: BLE001 - reported to the page, logged here
            log.exception("console playground failed")
            tell({"error": "the answer failed unexpectedly; see the server's log"})
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    return ndjson_response(events, loop.create_task(run()))
