"""The web console in a real browser: the real Knowbot app served by uvicorn on a loopback port
(in a thread with its own event loop, so a test can reach the running runtime, e.g. to mint a
one-time sign-in link the way `/console` in chat does), and Debian's Chromium driven by
Playwright (never a downloaded browser).

Used by tests/test_console_browser.py and by the screenshot command (tests/console_screens.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import httpx
import uvicorn

from bot.app import create_app
from bot.clock import ManualClock
from bot.config import Settings
from bot.runtime import Runtime

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"
# a fixed moment: nothing in these tests depends on the day they run
START = datetime(2031, 3, 9, 9, 30, tzinfo=timezone.utc)
T = TypeVar("T")
# one clock for every server in this process: APScheduler follows a single clock per process
CLOCK = ManualClock(START)


class ConsoleServer:
    """The real app (create_app, lifespan and all) on 127.0.0.1, with a ManualClock (by default
    the process's one CLOCK)."""

    def __init__(self, data_dir: Path, *, embedder: object | None = None,
                 clock: ManualClock | None = None, **settings: Any) -> None:
        self.clock = clock or CLOCK
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        values: dict[str, Any] = {"data_dir": data_dir, "console_password": PASSWORD,
                                  "host": "127.0.0.1", "port": self.port}
        values.update(settings)
        with _without_knowbot_env():
            self.settings = Settings(**values)
        embedder_ = embedder

        async def factory(s: Settings) -> Runtime:
            return await Runtime.start(s, embedder=embedder_, clock=self.clock)

        self.app = create_app(self.settings, runtime_factory=factory, channels=[])
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="console-server", daemon=True)
        self.failed: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.failed = exc

    def start(self, timeout: float = 120.0) -> ConsoleServer:
        self.thread.start()
        # time.sleep, not Event.wait(timeout): under faketime a timed wait may never time out
        for _ in range(int(timeout * 10)):
            if self.server.started:
                return self
            if self.failed is not None or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start: {self.failed!r}")
            time.sleep(0.1)
        raise RuntimeError("the server did not start in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
        """Run a coroutine on the server's own event loop and wait for its result."""
        assert self.loop is not None

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    @property
    def runtime(self) -> Runtime:
        return self.app.state.runtime

    @property
    def console(self) -> Any:
        """The console's shared parts (sessions, links, limiter) on this app."""
        for route in self.app.routes:
            if getattr(route, "path", None) == "/console":
                return route.app.state.console  # type: ignore[attr-defined]
        raise LookupError("no console mounted")

    def chat_link(self, channel: str, tenant: str, user: str, *, is_admin: bool = False) -> str:
        """The link `/console` typed in a private chat answers with (through the dispatcher,
        as any chat message): a Knowbot admin (KNOWBOT_ADMINS) or a workspace admin gets one."""
        from bot.types import ConversationKey, InboundMessage

        message = InboundMessage(key=ConversationKey(channel, tenant, user, user),
                                 message_id=f"console-{uuid.uuid4().hex}", text="/console",
                                 is_admin=is_admin)
        reply = self.call(lambda: self.runtime.dispatcher.process(message))
        assert reply is not None
        found = re.search(r"https?://\S+/console/link\?t=\S+", reply.text)
        assert found, reply.text
        assert found.group(0).startswith(self.base_url), found.group(0)
        return found.group(0)

    def link(self, grant: Any) -> str:
        """A one-time sign-in link for this grant, minted as the /console chat command does."""
        console = self.console
        token = self.call(lambda: console.links.issue(grant))
        return console.links.url(token)


@contextmanager
def _without_knowbot_env() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items()
             if (k.startswith("KNOWBOT_") and not k.startswith("KNOWBOT_TEST_"))
             or k in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


# ---- an API client with a console session (for setting up data without the browser) ----------

@contextmanager
def api_client(base_url: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """An httpx client signed in to the console with the password; `.headers` carry the CSRF."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield _signed_in(client, password)


def _signed_in(client: httpx.Client, password: str) -> httpx.Client:
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text
    res = client.post("/console/login", data={"password": password, "csrf": csrf.group(1)})
    assert res.status_code == 303, (res.status_code, res.text)
    me = client.get("/console/api/me").json()
    client.headers["X-CSRF-Token"] = me["csrf"]
    return client


def upload(client: httpx.Client, name: str, data: bytes, *, tenant: str, kb: str = "default",
           content_type: str = "application/octet-stream") -> dict[str, Any]:
    """Add a file through the console API; the last NDJSON line."""
    import json

    res = client.post("/console/api/upload", params={"tenant": tenant, "kb": kb, "name": name},
                      content=data, headers={"Content-Type": content_type})
    assert res.status_code == 200, res.text
    lines = [json.loads(line) for line in res.text.splitlines() if line.strip()]
    return lines[-1]


# ---- documents built here with the project's own libraries -------------------------------------

REFUND_TITLE = "Refund policy"
REFUND_PAGES = [
    ["Refund policy",
     ("Customers may return any item within 30 days of purchase for a full refund, provided "
      "they show the original receipt. Refunds are paid back to the card used for the purchase "
      "within five working days.")],
    ["Exceptions",
     ("Gift cards and downloadable software are never refunded. Opened cosmetics can only be "
      "exchanged, not returned.")],
]
TRAVEL_TITLE = "Travel policy"
TRAVEL_PARAGRAPHS = [
    ("Heading 1", "Travel policy"),
    ("Heading 2", "Flights"),
    (None, ("Employees book economy class for every flight shorter than six hours. Business "
            "class needs the approval of a director.")),
    ("Heading 2", "Hotels"),
    (None, ("Hotels are reimbursed up to 150 euros per night in Europe and 200 dollars per "
            "night in North America, breakfast included.")),
]


def make_pdf(pages: list[list[str]] = REFUND_PAGES, title: str = REFUND_TITLE) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for paragraphs in pages:
        pdf.add_page()
        for para in paragraphs:
            pdf.multi_cell(0, 6, para)
            pdf.ln(6)
    return bytes(pdf.output())


def make_docx(paragraphs: list[tuple[str | None, str]] = TRAVEL_PARAGRAPHS) -> bytes:
    import docx

    doc = docx.Document()
    for style, text in paragraphs:
        if style:
            doc.add_paragraph(text, style=style)
        else:
            doc.add_paragraph(text)
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


PDF_TYPE = "application/pdf"
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


# ---- the browser -------------------------------------------------------------------------------

@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, base_url: str, *, width: int = 1280, height: int = 800,
             locale: str = "en-US") -> Any:
    """A fresh browser context (its own cookies and storage) and a page in it."""
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height},
                                  locale=locale, device_scale_factor=1,
                                  is_mobile=width < 600, has_touch=width < 600)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


def sign_in(page: Any, password: str = PASSWORD) -> None:
    """Sign in through the sign-in page and wait for the app."""
    page.goto("/console/login")
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")


def drop_files(page: Any, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """Drop files onto an element the way a person does (a DataTransfer on a drop event)."""
    payload = [{"name": n, "type": t, "data": base64.b64encode(d).decode()} for n, d, t in files]
    handle = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, { type: f.type }));
        }
        return dt;
    }""", payload)
    page.dispatch_event(selector, "dragover", {"dataTransfer": handle})
    page.dispatch_event(selector, "drop", {"dataTransfer": handle})
