"""The web console, driven in a real headless Chromium (Debian's, through Playwright) against the
real app on a loopback port: sign-in, knowledge, the retrieval bench, the playground, deletion,
and one tenant's admin kept out of another tenant's knowledge base."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from console_browser import (
    CHROMIUM,
    DOCX_TYPE,
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
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", index, re.DOTALL)
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
    with ConsoleServer(data, embedder=embedder, admins=["telegram:4242"]) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium; skipped where it is not installed, unless the run requires it (CI)."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is not installed (Debian: apt install chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("KNOWBOT_TEST_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"the browser tests are required but {missing}")
        pytest.skip(missing)
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
    # what /console answers in a private chat with a Knowbot admin
    link = server.chat_link("telegram", "knowbot_bot", "4242")
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

    late = server.chat_link("telegram", "knowbot_bot", "4242")
    server.clock.advance(server.settings.console_link_minutes * 60 + 5)
    response = again.goto(late)
    assert response is not None and response.status == 403
    assert "expired" in again.inner_text("body")
    again.goto("/console/")
    assert again.url.endswith("/console/login")
    again.context.close()


def test_upload_a_pdf_and_a_docx_by_dropping_them_and_see_their_chunks(server: ConsoleServer,
                                                                       browser: Any) -> None:
    page = new_page(browser, server.base_url)
    sign_in(page)
    page.goto("/console/#/knowledge?tenant=console:local&kb=handbook")
    empty = page.locator("[data-testid=sources-empty]")
    assert "No documents yet: drop files here" in empty.inner_text()
    drop_files(page, "[data-testid=dropzone]", [
        ("refunds.pdf", make_pdf(), PDF_TYPE),
        ("travel.docx", make_docx(), DOCX_TYPE),
        ("broken.pdf", b"%PDF-1.4 this is not really a PDF", PDF_TYPE),
    ])
    # each file gets its own row: a receipt, or one sentence saying what was wrong
    pdf_row = page.locator('li.upload[data-file="refunds.pdf"]')
    docx_row = page.locator('li.upload[data-file="travel.docx"]')
    bad_row = page.locator('li.upload[data-file="broken.pdf"]')
    for row in (pdf_row, docx_row, bad_row):
        row.locator("xpath=self::*[contains(@class,'ok') or contains(@class,'failed')]").wait_for()
    assert "ok" in pdf_row.get_attribute("class") and "ok" in docx_row.get_attribute("class")
    assert "failed" in bad_row.get_attribute("class")
    refusal = bad_row.locator(".upload-note").inner_text()
    assert "broken.pdf" in refusal and len(refusal) > 20
    assert REFUND_TITLE in pdf_row.inner_text() or "chunk" in pdf_row.inner_text().lower()

    # the table of sources, then the PDF's chunks with their pages
    table = page.locator("table.responsive")
    table.locator("tr", has_text=TRAVEL_TITLE).wait_for()
    pdf = table.locator("tr", has_text=REFUND_TITLE)
    assert pdf.locator("td[data-label=Pages]").inner_text() == "2"
    assert pdf.locator("td[data-label=Type]").inner_text() == "pdf"
    assert int(pdf.locator("td[data-label=Chunks]").inner_text()) >= 2
    page.get_by_role("link", name=f"Show the chunks of {REFUND_TITLE}").click()
    chunks = page.locator("#chunks")
    chunks.locator("li.chunk").first.wait_for()
    first = chunks.locator("li.chunk", has_text="30 days")
    assert "page 1" in first.locator(".chunk-meta").inner_text()
    assert "page 2" in chunks.locator("li.chunk", has_text="Gift cards").locator(
        ".chunk-meta").inner_text()
    page.get_by_role("link", name=f"Show the chunks of {TRAVEL_TITLE}").click()
    page.locator("#chunks li.chunk", has_text="economy class").wait_for()
    assert "Flights" in page.locator("#chunks li.chunk", has_text="economy class").inner_text()
    page.context.close()


def run_bench(page: Any, question: str, scope: str = "kb:default") -> Any:
    page.goto("/console/#/bench?tenant=console:local")
    page.wait_for_selector("#bench-q")
    page.select_option("#bench-scope", scope)
    page.fill("#bench-q", question)
    page.get_by_role("button", name="Search").click()
    page.wait_for_selector("[data-testid=bench-answer]")
    return page.locator("table.bench tbody")


def test_the_bench_finds_the_english_passage_for_a_chinese_question(
        server: ConsoleServer, browser: Any, documents: dict[str, Any]) -> None:
    page = new_page(browser, server.base_url)
    sign_in(page)
    rows = run_bench(page, "退货全额退款的期限是多少天？")
    first = rows.locator("tr[data-rank='1']")
    assert REFUND_TITLE in first.locator(".source").inner_text()
    assert "30 days" in first.locator(".passage-text").inner_text()
    # every ranking's score is shown, and the "not in the knowledge base" line is drawn
    fused = first.locator("td[data-label=Fused]").inner_text().split()[0]
    assert float(fused) > 0
    assert first.locator("td[data-label='Cross-lingual']").inner_text() != "—"
    # the "not in the knowledge base" line: the passages the gate kept above it, the rest below
    assert rows.locator("[data-testid=gate-line]").count() == 1
    kept = rows.evaluate("""body => { const out = []; let above = true;
        for (const tr of body.rows) {
            if (tr.dataset.testid === 'gate-line') { above = false; continue; }
            out.push([above, tr.dataset.kept === 'true']);
        }
        return out; }""")
    assert kept and all(above == used for above, used in kept)
    assert kept[0] == [True, True]  # this question is answered
    assert page.locator("[data-testid=bench-answer]").inner_text().strip()
    page.context.close()


def test_the_playground_answers_with_a_citation(server: ConsoleServer, browser: Any,
                                                documents: dict[str, Any]) -> None:
    page = new_page(browser, server.base_url)
    sign_in(page)
    page.goto("/console/#/playground")
    question = "How many days do customers have to return an item for a refund?"
    page.fill("#play-q", question)
    page.keyboard.press("Enter")
    answer = page.locator("[data-testid=play-answer]")
    answer.wait_for()
    assert "30 days" in answer.locator(".msg-text").inner_text()
    assert REFUND_TITLE in answer.locator(".citation").first.inner_text()

    # the same conversation is on the conversations page (found by its text), with its citation
    page.goto("/console/#/conversations?channel=console")
    page.fill("#conv-q", "return an item")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**q=return*")
    page.locator("a.conv").first.click()
    messages = page.locator("ol.messages")
    messages.locator("li.msg.user", has_text=question).wait_for()
    messages.locator("li.msg.assistant .citation").first.wait_for()
    assert REFUND_TITLE in messages.locator("li.msg.assistant .citation").first.inner_text()
    page.context.close()


PARKING = ("# Parking rules\n\nBicycles are parked in the basement of building B, behind the "
           "blue door. Cars need a permit from the front desk.\n")


def test_a_deleted_source_is_gone_from_search(server: ConsoleServer, browser: Any) -> None:
    with api_client(server.base_url) as client:
        assert upload(client, "parking.md", PARKING.encode(), tenant="console:local",
                      kb="facilities", content_type="text/markdown")["ok"]
    page = new_page(browser, server.base_url)
    sign_in(page)
    question = "where do I park my bicycle?"
    rows = run_bench(page, question, "kb:facilities")
    assert "Parking rules" in rows.locator("tr[data-rank='1'] .source").inner_text()

    page.goto("/console/#/knowledge?tenant=console:local&kb=facilities")
    delete = page.get_by_role("button", name="Delete Parking rules")
    delete.click()
    dialog = page.locator("dialog#dialog")
    assert dialog.is_visible() and "Parking rules" in dialog.inner_text()
    # keyboard: focus stays in the dialog, Escape cancels and gives focus back
    for _ in range(4):
        page.keyboard.press("Tab")
        assert page.evaluate("document.getElementById('dialog').contains(document.activeElement)")
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == \
        "Delete Parking rules"
    assert page.locator("table.responsive tr", has_text="Parking rules").count() == 1

    delete.click()
    page.locator("#dialog-ok").click()
    page.locator("[data-testid=sources-empty]").wait_for()
    assert "Deleted" in page.locator("p.status").inner_text()

    page.goto("/console/#/bench?tenant=console:local")
    page.wait_for_selector("#bench-q")
    if page.locator("#bench-scope option[value='kb:facilities']").count():
        page.select_option("#bench-scope", "kb:facilities")
    page.fill("#bench-q", question)
    page.get_by_role("button", name="Search").click()
    page.wait_for_selector("[data-testid=bench-answer]")
    assert "Parking rules" not in page.locator("main").inner_text()
    assert "basement" not in page.locator("main").inner_text()
    page.context.close()


def test_a_tenant_admin_cannot_open_another_tenants_knowledge_by_changing_the_url(
        server: ConsoleServer, browser: Any, documents: dict[str, Any]) -> None:
    with api_client(server.base_url) as client:
        sources = client.get("/console/api/sources",
                             params={"tenant": OTHER_TENANT, "kb": "default"}).json()
    (other,) = [s for s in sources if s["title"] == OTHER_TITLE]
    target = f"/console/#/knowledge?tenant={OTHER_TENANT}&kb=default&source={other['id']}"

    # a Knowbot admin sees it at that address (so the refusal below is about who asks)
    admin = new_page(browser, server.base_url)
    sign_in(admin)
    admin.goto(target)
    admin.locator("#chunks li.chunk", has_text="secret").wait_for()
    assert OTHER_TITLE in admin.locator("table.responsive").inner_text()
    admin.context.close()

    mine = "slack:T0MINE"
    page = new_page(browser, server.base_url)
    # a Slack workspace admin types /console: a link to that workspace only
    page.goto(server.chat_link("slack", "T0MINE", "U0ADMIN", is_admin=True))
    page.wait_for_selector("body[data-ready=true]")
    assert mine in page.inner_text("#who")
    page.goto(target)
    page.locator("main .error").first.wait_for()
    text = page.locator("main").inner_text()
    assert OTHER_TITLE not in text and "secret" not in text
    assert f"no tenant “{OTHER_TENANT}” that you may see" in text
    # the bench refuses it too
    page.goto(f"/console/#/bench?tenant={OTHER_TENANT}")
    page.wait_for_selector("#bench-q")
    page.fill("#bench-q", "salary bands")
    page.get_by_role("button", name="Search").click()
    page.locator(".bench-results .error").wait_for()
    assert "secret" not in page.locator("main").inner_text()
    page.context.close()


def test_the_playground_shows_a_tool_call_as_it_happens_then_the_answer(
        tmp_path: Path, embedder: object, browser: Any) -> None:
    import asyncio
    import threading

    from fake_openai import FakeOpenAI, reply, tool_calls

    release = threading.Event()

    async def answer_when_released(request: dict[str, Any]) -> Any:
        await asyncio.to_thread(release.wait, 120)
        return reply("Customers have 30 days to return an item for a full refund [1].")

    with FakeOpenAI(default=answer_when_released) as model, ConsoleServer(
            tmp_path / "data", embedder=embedder, llm_base_url=model.base_url,
            llm_api_key="sk-test", llm_model="fake-model") as server:
        with api_client(server.base_url) as client:
            assert upload(client, "refunds.pdf", make_pdf(), tenant="console:local",
                          content_type=PDF_TYPE)["ok"]
        try:
            model.script(tool_calls(("search_knowledge", {"query": "refund period"})))
            page = new_page(browser, server.base_url)
            sign_in(page)
            page.goto("/console/#/playground")
            page.fill("#play-q", "How long do I have to return something?")
            page.get_by_role("button", name="Send").click()
            # the tool call and its result are on the page while the model is still answering
            tool = page.locator("li.tool-event[data-tool=search_knowledge].done")
            tool.wait_for()
            assert "refund period" in tool.locator("pre").first.inner_text()
            assert page.locator("[data-testid=play-answer]").count() == 0
            assert page.locator("li.msg.pending").is_visible()
            release.set()
            answer = page.locator("[data-testid=play-answer]")
            answer.wait_for()
            assert "30 days" in answer.locator(".msg-text").inner_text()
            assert "Refund policy" in answer.locator(".citation").inner_text()
            assert page.locator("li.msg.pending").count() == 0
            page.context.close()
        finally:
            release.set()  # never leave the model waiting


def test_every_page_fits_a_phone_and_is_labelled(server: ConsoleServer, browser: Any,
                                                 documents: dict[str, Any]) -> None:
    page = new_page(browser, server.base_url, width=390, height=844)
    sign_in(page)
    for route, ready in [("knowledge?tenant=console:local&kb=default", "table.responsive"),
                         ("bench?tenant=console:local", "#bench-q"),
                         ("conversations", ".conv-list h2"),
                         ("usage", ".stats"),
                         ("playground", "#play-q")]:
        page.goto(f"/console/#/{route}")
        page.wait_for_selector(ready)
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (route, overflow)
        # every form control has a name a screen reader can say
        unnamed = page.evaluate("""() => [...document.querySelectorAll(
            'main input:not([type=hidden]):not([aria-hidden=true]), main select, main textarea, main button')]
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                    && !el.textContent.trim()).map((el) => el.outerHTML.slice(0, 80))""")
        assert not unnamed, (route, unnamed)
    page.context.close()
