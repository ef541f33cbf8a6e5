"""Loaders: real files made with the real libraries go in, located blocks (or one clear sentence) come out."""

from __future__ import annotations

import io
import time
import zipfile

import docx
import openpyxl
import pptx
import pypdf
import pytest
from fpdf import FPDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import IngestError
from knowledge.loaders import load_bytes
from knowledge.sniff import ACCEPTED, decode_text, detect_kind

MB = 1024 * 1024


# --- makers ------------------------------------------------------------------------------------


def make_docx(title_prop: str = "") -> bytes:
    doc = docx.Document()
    if title_prop:
        doc.core_properties.title = title_prop
    doc.add_heading("Travel Policy", 0)
    doc.add_heading("Flights", 1)
    doc.add_paragraph("Book economy class for flights under six hours.")
    doc.add_heading("Booking", 2)
    doc.add_paragraph("Use the travel portal to book.")
    doc.add_paragraph("Ask your manager first", style="List Bullet")
    doc.add_heading("报销", 1)
    doc.add_paragraph("住宿标准为每晚五百元。")
    table = doc.add_table(rows=3, cols=2)
    for r, (city, limit) in enumerate([("City", "Limit"), ("Paris", "150 EUR"), ("北京", "500 元")]):
        table.cell(r, 0).text, table.cell(r, 1).text = city, limit
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def make_pdf(pages: list[list[str]], title: str = "") -> bytes:
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for paragraphs in pages:
        pdf.add_page()
        for para in paragraphs:
            pdf.multi_cell(0, 6, para)
            pdf.ln(6)
    return bytes(pdf.output())


def make_pptx() -> bytes:
    prs = pptx.Presentation()
    slide = prs.slides.add_slide(prs.slide_layouts[1])
    slide.shapes.title.text = "Quarterly Review"
    body = slide.placeholders[1].text_frame
    body.text = "Revenue grew 10%"
    body.add_paragraph().text = "客户满意度提高"
    slide2 = prs.slides.add_slide(prs.slide_layouts[5])
    slide2.shapes.title.text = "Numbers"
    table = slide2.shapes.add_table(2, 2, 0, 0, 3_000_000, 1_000_000).table
    for (r, c), text in {(0, 0): "Quarter", (0, 1): "Revenue", (1, 0): "Q1", (1, 1): "5M"}.items():
        table.cell(r, c).text = text
    slide2.notes_slide.notes_text_frame.text = "Mention the new office."
    buf = io.BytesIO()
    prs.save(buf)
    return buf.getvalue()


def make_xlsx() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Prices"
    ws.append(["Item", "Price", "备注"])
    ws.append(["Laptop", 1200, None])
    ws.append([None, None, None])
    ws.append(["鼠标", 25.5, "无线"])
    staff = wb.create_sheet("Staff")
    staff.append([])
    staff.append(["Name", "Role"])
    staff.append(["Ann", "CTO"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def texts(doc) -> list[str]:
    return [b.text for b in doc.blocks]


def refused(data: bytes, filename: str = "", **kw) -> str:
    with pytest.raises(IngestError) as info:
        load_bytes(data, filename, **kw)
    message = info.value.user_message
    assert message == str(info.value) and "Traceback" not in message
    assert message.endswith(".") and "\n" not in message
    return message


# --- formats -----------------------------------------------------------------------------------


def test_pdf_keeps_page_numbers_paragraphs_and_title():
    data = make_pdf(
        [["Employees book economy class for flights under six hours. " * 3, "Hotels are paid up to 150 euros."],
         ["The VPN client is WireGuard."]],
        title="Staff Handbook",
    )
    doc = load_bytes(data, "handbook.pdf")
    assert (doc.kind, doc.title, doc.pages) == ("pdf", "Staff Handbook", 2)
    assert [(b.location, b.text[:20]) for b in doc.blocks] == [
        ("page 1", "Employees book econo"), ("page 1", "Hotels are paid up t"), ("page 2", "The VPN client is Wi"),
    ]
    assert "\n" not in doc.blocks[0].text  # wrapped lines are joined back into one paragraph


def test_pdf_without_title_is_named_after_the_file():
    doc = load_bytes(make_pdf([["Hello there."]]), "notes.pdf")
    assert doc.title == "notes.pdf" and doc.origin == "notes.pdf"


def test_docx_heading_path_tables_and_chinese():
    doc = load_bytes(make_docx(), "policy.docx")
    assert doc.kind == "docx" and doc.title == "Travel Policy"
    by_text = {b.text: b for b in doc.blocks}
    flights = by_text["Book economy class for flights under six hours."]
    assert flights.location == "Travel Policy > Flights" and flights.heading_path == ("Travel Policy", "Flights")
    assert by_text["Use the travel portal to book."].location == "Travel Policy > Flights > Booking"
    assert by_text["Ask your manager first"].kind == "list"
    assert by_text["住宿标准为每晚五百元。"].location == "Travel Policy > 报销"
    rows = [b for b in doc.blocks if b.kind == "row"]
    assert [r.text for r in rows] == ["City: Paris; Limit: 150 EUR", "City: 北京; Limit: 500 元"]
    assert rows[0].location == "Travel Policy > 报销"


def test_docx_metadata_title_wins():
    assert load_bytes(make_docx(title_prop="Reisebeleid 2024"), "p.docx").title == "Reisebeleid 2024"


def test_xlsx_rows_are_records_with_sheet_and_row():
    doc = load_bytes(make_xlsx(), "prices.xlsx")
    assert (doc.kind, doc.pages, doc.title) == ("xlsx", 2, "prices.xlsx")
    assert [(b.kind, b.location, b.text) for b in doc.blocks] == [
        ("row", "sheet Prices, row 2", "Item: Laptop; Price: 1200"),
        ("row", "sheet Prices, row 4", "Item: 鼠标; Price: 25.5; 备注: 无线"),
        ("row", "sheet Staff, row 3", "Name: Ann; Role: CTO"),
    ]
    assert doc.blocks[2].heading_path == ("Staff",)


def test_csv_semicolons_and_gb18030():
    doc = load_bytes("姓名;城市\n张三;北京\n\nBob;Paris\n".encode("gb18030"), "people.csv")
    assert doc.kind == "csv"
    assert [(b.location, b.text) for b in doc.blocks] == [("row 2", "姓名: 张三; 城市: 北京"), ("row 4", "姓名: Bob; 城市: Paris")]


def test_csv_is_recognised_without_a_name():
    assert detect_kind(b"id,name,price\n1,pen,2\n2,ink,5\n3,pad,7\n") == "csv"


def test_pptx_slide_numbers_tables_notes_and_title():
    doc = load_bytes(make_pptx(), "deck.pptx")
    assert (doc.kind, doc.title, doc.pages) == ("pptx", "Quarterly Review", 2)
    assert [(b.location, b.kind, b.text) for b in doc.blocks] == [
        ("slide 1", "heading", "Quarterly Review"),
        ("slide 1", "list", "Revenue grew 10%\n客户满意度提高"),
        ("slide 2", "heading", "Numbers"),
        ("slide 2", "row", "Quarter: Q1; Revenue: 5M"),
        ("slide 2 notes", "paragraph", "Mention the new office."),
    ]


def test_markdown_headings_front_matter_lists_code_and_tables():
    text = (
        "---\ntitle: 安装指南\nauthor: ops\n---\n# Setup\n\nIntro line one\nline two.\n\n## VPN 配置\n\n"
        "- install the client\n- import the profile\n\n```bash\nwg-quick up office\n```\n\n"
        "| Key | Value |\n|-----|-------|\n| port | 51820 |\n"
    )
    doc = load_bytes(text.encode(), "guide.md")
    assert doc.kind == "markdown" and doc.title == "安装指南"
    assert "author: ops" not in " ".join(texts(doc))
    assert [(b.kind, b.location, b.text) for b in doc.blocks] == [
        ("heading", "Setup", "Setup"),
        ("paragraph", "Setup", "Intro line one line two."),
        ("heading", "Setup > VPN 配置", "VPN 配置"),
        ("list", "Setup > VPN 配置", "- install the client\n- import the profile"),
        ("code", "Setup > VPN 配置", "wg-quick up office"),
        ("row", "Setup > VPN 配置", "Key: port; Value: 51820"),
    ]


def test_markdown_title_falls_back_to_first_heading():
    assert load_bytes(b"Some intro.\n\n# Real Title\n\nBody.\n", "x.md").title == "Real Title"


def test_html_main_content_only():
    page = """<!doctype html><html><head><title>VPN Guide - IT Wiki</title></head><body>
    <header><nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/jobs">Careers</a></nav></header>
    <main><article><h1>VPN Guide</h1>
    <p>To connect to the office network, install the WireGuard client from the software portal.</p>
    <h2>Windows</h2><p>Open the client and import the profile you received by email. 连接后请访问内网。</p>
    <table><tr><th>OS</th><th>Client</th></tr><tr><td>Windows</td><td>WireGuard 0.5</td></tr></table>
    </article></main>
    <footer><p>Copyright 2024 ACME Corp. All rights reserved. Privacy policy.</p></footer>
    <script>var tracking = "do not index me";</script></body></html>"""
    doc = load_bytes(page.encode(), "vpn.html")
    assert doc.kind == "html" and doc.title == "VPN Guide - IT Wiki"
    joined = " ".join(texts(doc))
    assert "连接后请访问内网" in joined and "WireGuard client" in joined
    for chrome in ("About us", "Careers", "Copyright", "do not index me"):
        assert chrome not in joined
    windows = next(b for b in doc.blocks if "import the profile" in b.text)
    assert windows.location == "VPN Guide > Windows"
    assert any(b.kind == "row" and b.text == "OS: Windows; Client: WireGuard 0.5" for b in doc.blocks)


def test_html_declared_gbk_charset():
    page = '<html><head><meta charset="gbk"><title>通知</title></head><body><p>明天下午三点开会。</p></body></html>'
    doc = load_bytes(page.encode("gbk"), "notice.htm")
    assert doc.title == "通知" and "明天下午三点开会。" in texts(doc)


def test_plain_text_gb18030_paragraphs():
    data = "第一章 总则\n\n本制度适用于公司全体员工。\n出差需提前审批。\n\n第二章 报销".encode("gb18030")
    assert decode_text(data).startswith("第一章")
    doc = load_bytes(data, "规定.txt")
    assert (doc.kind, doc.title) == ("text", "规定.txt")
    assert [(b.location, b.text) for b in doc.blocks] == [
        ("line 1", "第一章 总则"), ("line 3", "本制度适用于公司全体员工。\n出差需提前审批。"), ("line 6", "第二章 报销"),
    ]


def test_wechat_title_from_activity_name_without_og_title():
    page = (
        '<html><head><title></title></head><body><h1 id="activity-name"> 季度总结 </h1>'
        '<div id="js_content"><p>本季度收入增长百分之十。</p></div><div id="js_pc_qr_code">扫码关注</div></body></html>'
    )
    doc = load_bytes(page.encode(), "", url="https://mp.weixin.qq.com/s/xyz")
    assert (doc.title, texts(doc), doc.origin) == ("季度总结", ["本季度收入增长百分之十。"], "https://mp.weixin.qq.com/s/xyz")


def test_text_that_starts_like_a_magic_number_is_still_text():
    assert load_bytes(b"ID3 tags store the artist and title of an MP3 file.", "notes.txt").kind == "text"


def test_utf16_text_with_bom():
    doc = load_bytes("Hello 世界\n\nSecond".encode("utf-16"), "a.txt")
    assert texts(doc) == ["Hello 世界", "Second"]


# --- the type comes from the content -----------------------------------------------------------


def test_docx_named_pdf_is_loaded_as_docx():
    doc = load_bytes(make_docx(), "really-a-word-file.pdf")
    assert doc.kind == "docx" and doc.title == "Travel Policy"


def test_content_decides_over_name_and_mime():
    assert detect_kind(make_pdf([["x"]]), "scan.docx", "text/plain") == "pdf"
    assert detect_kind(make_xlsx(), "data.csv") == "xlsx"
    assert detect_kind(make_pptx(), "") == "pptx"
    assert detect_kind(b"<!DOCTYPE html><html><body><p>hi</p></body></html>", "page.txt") == "html"
    assert detect_kind(b"# Title\n\nSome *text*.\n", "") == "markdown"
    assert detect_kind(b"a,b\n1,2\n", "", "text/csv") == "csv"
    assert detect_kind(b"Just a note, nothing more.\n", "") == "text"


# --- bad input ---------------------------------------------------------------------------------


def test_encrypted_pdf_is_refused_as_password_protected():
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf([["Secret salaries."]]))))
    writer.encrypt(user_password="hunter2", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    assert "password-protected" in refused(buf.getvalue(), "salaries.pdf")


def test_pdf_with_only_an_owner_password_still_loads():
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf([["Open to read."]]))))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    assert texts(load_bytes(buf.getvalue(), "open.pdf")) == ["Open to read."]


def test_truncated_and_garbage_pdfs_are_damaged():
    data = make_pdf([["Some text here."]] * 3)
    message = refused(data[: len(data) // 2], "cut.pdf")
    assert message.startswith("Could not read cut.pdf: it looks damaged") and ACCEPTED in message
    assert "damaged" in refused(b"%PDF-1.7\n" + b"\x00garbage" * 200 + b"\n%%EOF\n", "junk.pdf")


def test_scanned_pdf_without_text_layer():
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 150, style="F")
    message = refused(bytes(pdf.output()), "scan.pdf")
    assert "no text layer" in message and "OCR" in message


def test_corrupt_docx_files(caplog):
    data = make_docx()
    assert "damaged" in refused(data[: len(data) // 2], "cut.docx")
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document><<< not xml")
    with caplog.at_level("WARNING"):
        message = refused(broken.getvalue(), "broken.docx")
    assert message.startswith("Could not read broken.docx: it looks damaged or is not a valid Word (.docx) file")
    assert any(r.exc_info for r in caplog.records)  # logged with its traceback, not shown to the user


@pytest.mark.parametrize("padding", ["", "<!-- " + "x" * 10_000 + " -->\n"])
def test_office_xml_with_a_dtd_is_refused(padding):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr(
            "word/document.xml",
            f'<?xml version="1.0"?>{padding}<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            "<d>&b;</d>",
        )
    assert "damaged" in refused(buf.getvalue(), "laughs.docx")


def test_xlsx_with_a_bogus_dimension_is_not_padded():
    wb = openpyxl.Workbook()
    wb.active.append(["Name", "Team"])
    wb.active.append(["Ann", "Ops"])
    buf = io.BytesIO()
    wb.save(buf)
    patched = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(patched, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            body = src.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                body = body.replace(b'<dimension ref="A1:B2"/>', b'<dimension ref="A1:XFD1048576"/>')
                assert b"XFD1048576" in body
            dst.writestr(item, body)
    start = time.perf_counter()
    doc = load_bytes(patched.getvalue(), "team.xlsx")
    assert time.perf_counter() - start < 1
    assert [b.text for b in doc.blocks] == ["Name: Ann; Team: Ops"]


@pytest.mark.parametrize("data", [b"", b"   \n\n\t  "])
def test_empty_file(data):
    assert refused(data, "empty.txt") == (
        "empty.txt is empty: it contains no text to learn from, so please send a document with text in it."
    )


def test_documents_with_no_text_are_empty():
    assert "is empty" in refused(_blank_docx(), "blank.docx")
    wb = openpyxl.Workbook()
    buf = io.BytesIO()
    wb.save(buf)
    assert "is empty" in refused(buf.getvalue(), "blank.xlsx")


def _blank_docx() -> bytes:
    buf = io.BytesIO()
    docx.Document().save(buf)
    return buf.getvalue()


def test_png_exe_and_legacy_office_are_unsupported():
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(png, format="PNG")
    assert refused(png.getvalue(), "photo.png") == (
        f"photo.png is an image, which Knowbot cannot read; accepted types are {ACCEPTED}."
    )
    assert refused(b"MZ\x90\x00\x03" + bytes(range(256)) * 4, "setup.exe").startswith("setup.exe is a program")
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1024
    assert "please save it as .docx, .xlsx or .pptx" in refused(ole, "old.doc")
    assert "a binary file of an unknown type" in refused(bytes(range(256)) * 8, "blob.bin")
    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("photos/a.txt", "hello")
    assert "a zip archive" in refused(other_zip.getvalue(), "stuff.zip")


def test_oversized_file_names_the_limit():
    message = refused(b"a" * (3 * MB // 2), "big.txt", max_bytes=1 * MB)
    assert message.startswith("big.txt is 1.5 MB, which is over the 1 MB limit")
    assert "50 MB limit" in refused(b"a" * (50 * MB + 1), "huge.txt")


@pytest.fixture(scope="module")
def zip_bomb_docx() -> bytes:
    """A .docx whose document.xml is 300 MB of zeros, compressed to about 300 KB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w", force_zip64=True) as member:
            chunk = b"\0" * MB
            for _ in range(300):
                member.write(chunk)
    return buf.getvalue()


def test_zip_bomb_docx_is_refused_before_expanding(zip_bomb_docx, monkeypatch):
    assert len(zip_bomb_docx) < 2 * MB
    monkeypatch.setattr(docx, "Document", lambda *a, **k: pytest.fail("the bomb was opened"))
    start = time.perf_counter()
    message = refused(zip_bomb_docx, "harmless.docx")
    assert time.perf_counter() - start < 1
    assert message.startswith("harmless.docx was refused because it would expand to 300")
    assert "(the limit is 200 MB)" in message


def test_zip_member_ratio_and_count_limits():
    ratio = io.BytesIO()
    with zipfile.ZipFile(ratio, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", b"\0" * (4 * MB))
    assert "compressed suspiciously well" in refused(ratio.getvalue(), "sheet.xlsx")
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(10_001):
            zf.writestr(f"ppt/slides/s{i}.xml", b"")
    assert "it has 10001 parts" in refused(many.getvalue(), "deck.pptx")


# --- whatever comes in, the user gets a sentence, not a traceback -------------------------------

_SAMPLES = {"pdf": make_pdf([["Hello world."]]), "docx": make_docx(), "xlsx": make_xlsx(), "pptx": make_pptx()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(_SAMPLES)),
    cuts=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4),
)
def test_damaged_office_and_pdf_files_never_escape_as_tracebacks(kind, cuts):
    data = bytearray(_SAMPLES[kind])
    for where, junk in cuts:
        at = int(where * (len(data) - 1))
        data[at:at + len(junk)] = junk
    try:
        doc = load_bytes(bytes(data), f"file.{kind}")
    except IngestError as exc:
        assert exc.user_message.endswith(".")
    else:
        assert doc.blocks


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2048), name=st.sampled_from(["", "a.txt", "a.csv", "a.md", "a.html", "a.pdf"]))
def test_random_bytes_load_or_give_a_sentence(data, name):
    try:
        load_bytes(data, name)
    except IngestError as exc:
        assert exc.user_message.endswith(".")
