"""The web console, driven in a real headless Chromium (Debian's, through Playwright) against the
real app on a loopback port: sign-in, knowledge, the retrieval bench, the playground, deletion,
and one tenant's admin kept out of another tenant's knowledge base."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from bot.console.auth import Grant
from console_browser import (
    DOCX_TYPE,
    PASSWORD,
    PDF_TYPE,
    REFUND_TITLE,
    TRAVEL_TITLE,
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

STATIC = Path(__file__).resolve().parent.parent / "bot" / "console" / "static"
OTHER_TENANT = "slack:T0OTHER"
OTHER_TITLE = "Salaries 2031 (confidential)"


# ---- the static files: no build step, CSP-friendly, every string translated ---------------------

def test_the_app_has_no_inline_script_or_handler_and_never_renders_html_from_data() -> None:
    index = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", index, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", index), "inline event handler in index.html"
    assert not re.search(r"\sstyle\s*=", index)
    app = (STATIC / "app.js").read_text()
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                  "new Function"):
        assert risky not in app, risky
    urls = set(re.findall(r"https?://[^'\"\s`]*", app))
    assert urls <= {"http://www.w3.org/2000/svg", "https://"}, "nothing may load from elsewhere"
    assert not re.search(r"url\((?!\"?icon\.svg)", (STATIC / "app.css").read_text())


def test_english_and_chinese_have_the_same_strings_and_every_string_used_exists() -> None:
    en = json.loads((STATIC / "i18n" / "en.json").read_text())
    zh = json.loads((STATIC / "i18n" / "zh.json").read_text())
    assert en.keys() == zh.keys()
    assert all(isinstance(v, str) and v for v in [*en.values(), *zh.values()])
    for key in en:
        assert set(re.findall(r"\{\w+\}", en[key])) == set(re.findall(r"\{\w+\}", zh[key])), key
    app = (STATIC / "app.js").read_text()
    used = set(re.findall(r"\bt\('([a-z0-9_]+)'", app))
    used |= {k for pair in re.findall(r"pageHead\('([a-z_]+)', '([a-z_]+)'\)", app) for k in pair}
    used |= set(re.findall(r'data-i18n(?:-aria)?="([a-z_]+)"', (STATIC / "index.html").read_text()))
    missing = sorted(k for k in used if k not in en)
    assert not missing, missing
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh["nav_knowledge"])


# ---- the running console ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder: object) -> Iterator[ConsoleServer]:
    data = tmp_path_factory.mktemp("console") / "data"
    with ConsoleServer(data, embedder=embedder) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def documents(server: ConsoleServer) -> dict[str, Any]:
    """The English refund policy (PDF) and travel policy (DOCX) in the console's own tenant, and
    one document of another tenant."""
    with api_client(server.base_url) as client:
        refund = upload(client, "refunds.pdf", make_pdf(), tenant="console:local",
                        content_type=PDF_TYPE)
        travel = upload(client, "travel.docx", make_docx(), tenant="console:local",
                        content_type=DOCX_TYPE)
        other = upload(client, "salaries.md",
                       f"# {OTHER_TITLE}\n\nThe salary bands of 2031 are secret.\n".encode(),
                       tenant=OTHER_TENANT, content_type="text/markdown")
    assert refund["ok"] and travel["ok"] and other["ok"], (refund, travel, other)
    return {"refund": refund, "travel": travel, "other": other}


def test_sign_in_with_the_password_and_not_with_a_wrong_one(server: ConsoleServer,
                                                               browser: Any) -> None:
    page = new_page(browser, server.base_url)
    page.goto("/console/")
    assert page.url.endswith("/console/login")  # no session: the sign-in page
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    assert "not right" in page.inner_text("[role=alert]")
    sign_in(page)
    assert page.locator("#nav a[aria-current=page]").inner_text() == "Knowledge"
    assert "all tenants" in page.inner_text("#who")
    page.context.close()


def test_the_language_follows_the_browser_and_the_switch_is_remembered(server: ConsoleServer,
                                                                          browser: Any) -> None:
    page = new_page(browser, server.base_url, locale="zh-CN")
    sign_in(page)
    assert page.inner_text("#nav a[data-route=knowledge]") == "知识库"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.select_option("#lang", "en")
    page.wait_for_function("document.querySelector('#nav a[data-route=bench]').textContent"
                           " === 'Retrieval bench'")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#nav a[data-route=bench]") == "Retrieval bench"
    page.context.close()


def test_a_chat_link_signs_in_once_and_not_when_used_or_expired(server: ConsoleServer,
                                                                 browser: Any) -> None:
    link = server.link(Grant("telegram:4242", "all"))
    page = new_page(browser, server.base_url)
    page.goto(link)
    page.wait_for_selector("body[data-ready=true]")
    assert "telegram:4242" in page.inner_text("#who")
    page.context.close()

    again = new_page(browser, server.base_url)
    response = again.goto(link)
    assert response is not None and response.status == 403
    assert "already used" in again.inner_text("body")
    again.goto("/console/")
    assert again.url.endswith("/console/login")  # and it gave no session

    late = server.link(Grant("telegram:4242", "all"))
    server.clock.advance(server.settings.console_link_minutes * 60 + 5)
    response = again.goto(late)
    assert response is not None and response.status == 403
    assert "expired" in again.inner_text("body")
    again.goto("/console/")
    assert again.url.endswith("/console/login")
    again.context.close()
