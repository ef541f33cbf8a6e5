"""The web console at /console: knowledge, a retrieval bench, conversations, usage, a playground.

`build_console` makes the sub-application `knowbot serve` mounts at /console. It is on when a
console password (or its hash) is set or Knowbot admins are configured; otherwise every page
says how to switch it on. Sign-in is by that password or a one-time link the bot sends to an
admin who types /console in chat (bot/console/auth.py); the JSON API is in bot/console/api.py,
the single-page app in bot/console/static/.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from bot.console import pages
from bot.console.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    LinkRefused,
    Links,
    LoginLimiter,
    Session,
    Sessions,
    check_password,
    csrf_ok,
    is_loopback,
    password_configured,
)

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FORM_LIMIT = 16 * 1024  # bytes of a sign-in form


class Console:
    """The console's shared parts on one runtime: sessions, links and the login limiter."""

    def __init__(self, settings: "Settings", runtime: Callable[[], "Runtime"]) -> None:
        self.settings = settings
        self._runtime = runtime
        self._parts: tuple[int, Sessions, Links, LoginLimiter] | None = None

    @property
    def runtime(self) -> "Runtime":
        """The running Knowbot."""
        return self._runtime()

    def _build(self) -> tuple[int, Sessions, Links, LoginLimiter]:
        runtime = self.runtime
        if self._parts is None or self._parts[0] != id(runtime):
            hours = timedelta(hours=self.settings.console_session_hours)
            self._parts = (id(runtime), Sessions(runtime.state, hours),
                           Links(self.settings, runtime.state, runtime.clock),
                           LoginLimiter(runtime.state, runtime.clock))
        return self._parts

    @property
    def sessions(self) -> Sessions:
        """Console sessions."""
        return self._build()[1]

    @property
    def links(self) -> Links:
        """One-time links."""
        return self._build()[2]

    @property
    def limiter(self) -> LoginLimiter:
        """Wrong-password counts."""
        return self._build()[3]

    async def session(self, request: Request) -> Session | None:
        """The signed-in admin of this request, or None."""
        return await self.sessions.get(request.cookies.get(SESSION_COOKIE))


def root_of(request: Request) -> str:
    """Where the console is mounted ("/console", behind any outer prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def secure_cookies(request: Request) -> bool:
    """Cookies are Secure unless this is plain http to this machine's own address."""
    return not (request.url.scheme == "http" and is_loopback(request.url.hostname))


def client_address(request: Request) -> str:
    """The client's address (uvicorn applies X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client is not None else "unknown"


def _lang(request: Request) -> str:
    return pages.language(request.headers.get("accept-language"))


def build_console(settings: "Settings", runtime: Callable[[], "Runtime"]) -> FastAPI:
    """The /console sub-application (mount it on the server's app)."""
    app = FastAPI(title="Knowbot console", docs_url=None, redoc_url=None, openapi_url=None)
    console = Console(settings, runtime)
    app.state.console = console

    if not settings.console_enabled:
        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                       include_in_schema=False)
        async def off(request: Request, path: str) -> Response:
            if path.startswith("api/"):
                return JSONResponse({"error": "the console is off: "
                                     + pages.TEXTS["en"]["off"]}, status_code=404)
            lang = _lang(request)
            return HTMLResponse(pages.message_page(lang, root_of(request), "off_title",
                                                   pages.TEXTS[lang]["off"], back=False),
                                status_code=404)
        return app

    def set_session_cookie(response: Response, request: Request, session: Session) -> None:
        response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="strict",
                            secure=secure_cookies(request), path=root_of(request) or "/",
                            max_age=int(settings.console_session_hours * 3600))

    def login_form(request: Request, status: int = 200, error: str | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        lang = _lang(request)
        body = pages.login_page(lang, root_of(request), token, error=error,
                                has_password=password_configured(settings),
                                insecure=secure_cookies(request) and request.url.scheme == "http")
        response = HTMLResponse(body, status_code=status,
                                headers={"Cache-Control": "no-store"})
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=secure_cookies(request), path=root_of(request) or "/",
                            max_age=3600)
        return response

    @app.get("/login", include_in_schema=False)
    async def login_get(request: Request) -> Response:
        return login_form(request)

    @app.post("/login", include_in_schema=False)
    async def login_post(request: Request) -> Response:
        lang = _lang(request)
        root = root_of(request)
        address = client_address(request)
        wait = await console.limiter.blocked(address)
        if wait is not None:
            log.warning("console: sign-in from %s refused, too many wrong passwords", address)
            return HTMLResponse(
                pages.message_page(lang, root, "too_many_title",
                                   pages.TEXTS[lang]["too_many"].format(n=wait)),
                status_code=429, headers={"Retry-After": str(wait * 60)})
        from bot.httpbody import read_bounded
        from urllib.parse import parse_qs

        raw = await read_bounded(request, FORM_LIMIT)
        form = parse_qs(raw.decode("utf-8", "replace")) if raw is not None else {}
        given_csrf = (form.get("csrf") or [""])[0]
        if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE, ""), given_csrf):
            return login_form(request, 403, pages.TEXTS[lang]["csrf"])
        password = (form.get("password") or [""])[0]
        if not password_configured(settings) or not check_password(settings, password):
            await console.limiter.failed(address)
            log.warning("console: wrong password from %s", address)
            return login_form(request, 401, pages.TEXTS[lang]["wrong"])
        await console.limiter.succeeded(address)
        from bot.console.auth import Grant

        session = await console.sessions.create(Grant("password", "all"))
        response = RedirectResponse(f"{root}/", status_code=303)
        set_session_cookie(response, request, session)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=root or "/")
        return response

    @app.get("/link", include_in_schema=False)
    async def link(request: Request, t: str = "") -> Response:
        lang = _lang(request)
        root = root_of(request)
        try:
            grant = await console.links.redeem(t)
        except LinkRefused as refused:
            log.info("console: a sign-in link was refused (%s)", refused.reason)
            text = pages.TEXTS[lang][f"link_{refused.reason}"]
            return HTMLResponse(pages.message_page(lang, root, "link_title", text),
                                status_code=403, headers={"Cache-Control": "no-store",
                                                          "Referrer-Policy": "no-referrer"})
        session = await console.sessions.create(grant)
        headers = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
        if request.headers.get("sec-fetch-site", "none") in ("none", "same-origin"):
            response: Response = RedirectResponse(f"{root}/", status_code=303, headers=headers)
        else:
            # Opened from a chat app (another site): a browser does not send a SameSite=Strict
            # cookie along a redirect chain that began elsewhere, so this page moves on itself.
            response = HTMLResponse(pages.continue_page(lang, root), headers=headers)
        set_session_cookie(response, request, session)
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session = await console.session(request)
        root = root_of(request)
        if session is not None:
            given = request.headers.get("x-csrf-token")
            if given is None:
                from urllib.parse import parse_qs

                from bot.httpbody import read_bounded

                raw = await read_bounded(request, FORM_LIMIT)
                given = (parse_qs(raw.decode("utf-8", "replace")).get("csrf") or [""])[0] \
                    if raw else ""
            if not csrf_ok(session.csrf, given):
                return JSONResponse({"error": "a valid CSRF token is needed"}, status_code=403)
            await console.sessions.end(session.id)
        response = RedirectResponse(f"{root}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=root or "/")
        return response

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        if await console.session(request) is None:
            return RedirectResponse(f"{root_of(request)}/login", status_code=303)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    from bot.console.api import build_api

    app.mount("/api", build_api(settings, console))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable) -> Response:  # type: ignore[type-arg]
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
            "form-action 'self'; base-uri 'none'")
        return response

    return app
