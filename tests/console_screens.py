"""Screenshots of the web console for the README, taken with the browser tests' own setup.

    HF_HUB_OFFLINE=1 .venv/bin/python -m tests.console_screens [--out docs/console]

Starts the real app on a loopback port (tests/console_browser.py) with a scripted
OpenAI-compatible model (tests/fake_openai.py), fills it with a few documents and two weeks of
conversations on a ManualClock, then drives Debian's Chromium through every main page at
1280x800 and 390x844 and saves PNGs (palette-reduced when that keeps them readable and small).
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import io
import sys
import tempfile
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.types import ConversationKey, InboundMessage
from tests.console_browser import (
    DOCX_TYPE,
    PDF_TYPE,
    START,
    ConsoleServer,
    api_client,
    chromium,
    drop_files,
    make_docx,
    make_pdf,
    new_page,
    sign_in,
    upload,
)
from tests.fake_openai import FakeOpenAI, last_user_text, reply, tool_calls

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TELEGRAM = ("telegram", "8123456789")  # the Telegram tenant is the bot
SLACK = ("slack", "T04ACME")
EXPENSES_ZH = ("# 报销制度\n\n员工出差的餐费每天最多报销 300 元，需要在出差结束后 14 天内提交发票。"
               "\n\n## 交通\n\n市内交通优先乘坐地铁或公交；晚上十点以后可以报销出租车费用。\n")
FAQ_HTML = ("<html><head><title>Support FAQ</title></head><body><main><h1>Support FAQ</h1>"
            "<h2>Opening hours</h2><p>The support desk answers from 8:00 to 18:00, Monday to "
            "Friday, by chat and by phone.</p><h2>Passwords</h2><p>Reset a forgotten password "
            "at the sign-in page; the link in the e-mail works for one hour.</p></main></body>"
            "</html>")
ONBOARDING = ("# Onboarding checklist\n\nNew colleagues get a laptop on their first day. "
              "Accounts for e-mail, chat and the wiki are created by IT before the start date.\n")

# question -> (tool, its arguments, the answer after the tool's result)
QUESTIONS = {
    "How long do refunds take?": ("search_knowledge", {"query": "refund time"},
                                  "Refunds are paid back within five working days [1]."),
    "Can I fly business class to Boston?": (
        "search_knowledge", {"query": "business class flights"},
        "Only with a director's approval: flights under six hours are economy [1]."),
    "What is the hotel limit in Europe?": ("search_knowledge", {"query": "hotel limit Europe"},
                                           "Up to 150 euros per night in Europe [1]."),
    "What time is it in Shanghai?": ("current_time", {"timezone": "Asia/Shanghai"},
                                     "It is 17:30 in Shanghai."),
    "Are gift cards refundable?": ("search_knowledge", {"query": "gift cards refund"},
                                   "No, gift cards are never refunded [1]."),
    "How long do customers have to return something?": (
        "search_knowledge", {"query": "refund period"},
        "Customers have 30 days to return an item for a full refund, and the money is back on "
        "their card within five working days [1]."),
}


TRANSLATIONS = {"礼品卡可以退款吗？": "Can gift cards be refunded?"}


def respond(request: dict[str, Any]) -> Any:
    """The scripted model: a tool call for a known question, then the answer after its result
    (decided from the request alone, so summaries or retries never shift a script)."""
    messages = request.get("messages") or []
    asked = last_user_text(request)
    system = str((messages[0].get("content") if messages else "") or "")
    if system.startswith("Translate"):
        return reply(TRANSLATIONS.get(asked.strip(), asked))
    known = next((q for q in QUESTIONS if q in asked), None)
    if known is None:
        return reply("The conversation so far: questions about refunds, travel and hotels.")
    tool, arguments, answer = QUESTIONS[known]
    if messages and messages[-1].get("role") == "tool":
        return reply(answer)
    if request.get("tools"):
        return tool_calls((tool, arguments))
    return reply(answer)
PER_DAY = [3, 5, 2, 6, 8, 4, 1, 0, 7, 9, 5, 6, 10, 4]


class _FAQ(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        body = FAQ_HTML.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def seed(server: ConsoleServer, faq_url: str) -> None:
    """Documents in three tenants, then two weeks of chat on Telegram and Slack."""
    server.clock.set(START - timedelta(days=len(PER_DAY)))
    with api_client(server.base_url) as client:
        for name, data, kind in [("refunds.pdf", make_pdf(), PDF_TYPE),
                                 ("travel.docx", make_docx(), DOCX_TYPE),
                                 ("报销制度.md", EXPENSES_ZH.encode(), "text/markdown")]:
            assert upload(client, name, data, tenant="console:local", content_type=kind)["ok"]
        import json

        res = client.post("/console/api/link", params={"tenant": "console:local", "kb": "default"},
                          json={"url": faq_url})
        last = json.loads(res.text.strip().splitlines()[-1])
        assert last.get("ok"), last
        tg = f"{TELEGRAM[0]}:{TELEGRAM[1]}"
        assert upload(client, "refunds.pdf", make_pdf(), tenant=tg, content_type=PDF_TYPE)["ok"]
        assert upload(client, "travel.docx", make_docx(), tenant=tg, content_type=DOCX_TYPE)["ok"]
        assert upload(client, "onboarding.md", ONBOARDING.encode(), tenant=f"{SLACK[0]}:{SLACK[1]}",
                      content_type="text/markdown")["ok"]

    chats = [(TELEGRAM, "-1001234567", "5550101"), (TELEGRAM, "-1009876543", "5550202"),
             (SLACK, "C02GENERAL", "U03ALICE")]
    n = 0
    for day, count in enumerate(PER_DAY):
        # each day from 01:30: ten questions 37 minutes apart end before START's 09:30
        server.clock.set(START - timedelta(days=len(PER_DAY) - 1 - day, hours=8))
        for i in range(count):
            (channel, tenant), chat, user = chats[(day + i) % len(chats)]
            question = list(QUESTIONS)[(day * 3 + i) % (len(QUESTIONS) - 1)]
            n += 1
            message = InboundMessage(key=ConversationKey(channel, tenant, chat, user),
                                     message_id=f"seed-{n}-{uuid.uuid4().hex[:6]}", text=question)
            server.call(lambda m=message: server.runtime.dispatcher.process(m))
            server.clock.advance(timedelta(minutes=37))
    server.clock.set(START)
    server.call(lambda: asyncio.sleep(1.5))  # the usage recorder writes in batches


def save(page: Any, path: Path) -> None:
    png = page.screenshot(full_page=False)
    try:
        from PIL import Image

        image = Image.open(io.BytesIO(png)).convert("RGB")
        small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out = io.BytesIO()
        small.save(out, format="PNG", optimize=True)
        if len(out.getvalue()) < len(png):
            png = out.getvalue()
    except ImportError:
        pass
    path.write_bytes(png)
    print(f"{path}  {len(png) / 1024:.0f} KB")


def shoot(browser: Any, server: ConsoleServer, out: Path, size: str) -> None:
    width, height = SIZES[size]
    page = new_page(browser, server.base_url, width=width, height=height)
    page.goto("/console/login")
    save(page, out / f"login-{size}.png")

    sign_in(page)
    page.goto("/console/#/knowledge?tenant=console:local&kb=default")
    page.wait_for_selector("table.responsive")
    drop_files(page, "[data-testid=dropzone]", [
        ("travel.docx", make_docx(), DOCX_TYPE),
        ("scan.pdf", b"%PDF-1.4 not a real PDF", PDF_TYPE)])
    for name in ("travel.docx", "scan.pdf"):
        page.wait_for_selector(f'li.upload[data-file="{name}"]:is(.ok, .failed)')
    page.wait_for_timeout(300)
    if size == "desktop":  # the uploads and the documents below them
        page.locator("#sources-h").evaluate("el => el.scrollIntoView()")
    save(page, out / f"knowledge-{size}.png")
    page.get_by_role("link", name="Show the chunks of Refund policy").click()
    page.wait_for_selector("#chunks li.chunk")
    page.wait_for_timeout(300)
    save(page, out / f"chunks-{size}.png")

    page.goto("/console/#/bench?tenant=console:local")
    page.wait_for_selector("#bench-q")
    page.fill("#bench-q", "礼品卡可以退款吗？")
    page.get_by_role("button", name="Search").click()
    page.wait_for_selector("table.bench")
    # the passages with their scores and the gate line (the answer is just above)
    page.locator("table.bench").first.evaluate(
        "el => { const card = el.closest('.card'); card.style.scrollMarginTop = '4.5rem';"
        " card.scrollIntoView(); }")
    save(page, out / f"bench-{size}.png")

    page.goto(f"/console/#/conversations?channel=telegram&tenant={TELEGRAM[0]}:{TELEGRAM[1]}")
    page.wait_for_selector("a.conv")
    page.locator("a.conv").first.click()
    page.wait_for_selector("ol.messages li.msg")
    first_tool = page.locator("ol.messages details.tool").first
    if first_tool.count():
        first_tool.locator("summary").click()
    if size == "phone":
        page.locator(".conv-detail").evaluate("el => el.scrollIntoView()")
    save(page, out / f"conversations-{size}.png")

    page.goto("/console/#/usage?days=30")
    page.wait_for_selector("figure.chart")
    save(page, out / f"usage-{size}.png")

    page.goto("/console/#/playground")
    page.fill("#play-q", "How long do customers have to return something?")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=play-answer]")
    page.locator("li.tool-event details summary").first.click()
    page.wait_for_timeout(200)
    save(page, out / f"playground-{size}.png")

    # a tenant admin's view (a Slack workspace's admin, signed in by a chat link)
    admin = new_page(browser, server.base_url, width=width, height=height, locale="zh-CN")
    admin.goto(server.chat_link(SLACK[0], SLACK[1], "U09ADMIN", is_admin=True))
    admin.wait_for_selector("body[data-ready=true]")
    admin.wait_for_selector("table.responsive")
    save(admin, out / f"knowledge-zh-{size}.png")
    admin.context.close()
    page.context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from knowledge.embedder import Embedder

    faq = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FAQ)
    threading.Thread(target=faq.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        embedder = Embedder.default(Path(tmp) / "models")
        with FakeOpenAI(default=respond) as model, ConsoleServer(
                Path(tmp) / "data", embedder=embedder, llm_base_url=model.base_url,
                llm_api_key="sk-screens", llm_model="gpt-4o-mini",
                ingest_allow_hosts=["127.0.0.1"], quota_user_requests=12,
                quota_tenant_tokens=20000) as server:
            seed(server, f"http://127.0.0.1:{faq.server_address[1]}/faq")
            with chromium() as browser:
                for size in SIZES:
                    shoot(browser, server, args.out, size)
    faq.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
