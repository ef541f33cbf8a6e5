"""The console's JSON API (mounted at /console/api): every call needs a session, every
non-GET call its CSRF token in X-CSRF-Token; a scoped admin sees only their tenant (404 for
anything else, so nothing says another tenant's data exists)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from bot.admin import CONSOLE_TENANT, LocalAdmin
from bot.console.auth import Session, csrf_ok
from bot.errors import KnowbotError

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.console import Console

log = logging.getLogger(__name__)


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

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @api.exception_handler(KnowbotError)
    async def knowbot_error(request: Request, exc: KnowbotError) -> JSONResponse:
        from bot.admin_api import error_text

        return JSONResponse({"error": error_text(exc)}, status_code=400)

    @api.get("/me")
    async def me(s: Session = Depends(signed_in)) -> Any:
        tenants = list(s.tenants)
        if s.scope == "all":
            tenants = await LocalAdmin(console.runtime).tenants()
        return {"admin": s.admin, "scope": s.scope, "tenants": tenants, "chats": s.chats,
                "csrf": s.csrf, "console_tenant": CONSOLE_TENANT}

    return api
