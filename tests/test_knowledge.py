"""The knowledge base end to end: real files in, cited answers out, bad input refused, scopes kept.

Runs on the real offline embedding models (e5 and the cross-lingual USE beside it) and on both
vector-store backends (Qdrant Edge, and a Qdrant server through qdrant-client's local mode).
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import docx
import openpyxl
import pptx
import pytest
from fpdf import FPDF
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from bot.errors import IngestError
from bot.store import Store
from bot.types import Attachment, ConversationKey, InboundMessage
from conftest import make_settings
from knowledge.crosslingual import USE_MODEL, load_crosslingual
from knowledge.embedder import Embedder
from knowledge.registry import chat_kb_name, tenant_of
from knowledge.service import KnowledgeService

ALICE = ConversationKey("telegram", "bot1", "chat-alice", "alice")
TEAM = ConversationKey("telegram", "bot1", "group-team", "bob")
OTHER_TENANT = ConversationKey("slack", "T999", "chat-alice", "alice")


def _vectors(backend: str, path: Path):
    def factory(dim: int):
        if backend == "edge":
            from knowledge.edge_store import EdgeStore

            return EdgeStore(path / "qdrant", dim)
        from qdrant_client import QdrantClient

        from knowledge.qdrant_store import QdrantServerStore

        return QdrantServerStore(QdrantClient(path=str(path / "qdrant-local")), dim)

    return factory


@pytest.fixture(params=["edge", "server"])
async def kb(request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder):
    settings = make_settings(tmp_path, knowledge_min_score=0.80)
    store = await Store.open(settings.resolved_database_url)
    service = KnowledgeService(settings, store, _vectors(request.param, tmp_path),
                               lambda: embedder, dim=embedder.dim,
                               crosslingual_factory=lambda: load_crosslingual(USE_MODEL, tmp_path))
    try:
        yield service
    finally:
        await service.close()
        await store.close()


# ---- files made with the real libraries ------------------------------------------------------


def make_docx() -> bytes:
    doc = docx.Document()
    doc.add_heading("Travel Policy", 0)
    doc.add_heading("Flights", 1)
    doc.add_paragraph("Book economy class for flights under six hours; business class is allowed "
                      "for longer flights with a director's approval.")
    doc.add_heading("住宿", 1)
    doc.add_paragraph("出差住宿标准为一线城市每晚不超过六百元，其他城市每晚不超过四百元。")
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def make_pdf() -> bytes:
    pdf = FPDF()
    pdf.set_title("Employee Handbook")
    pdf.set_font("Helvetica", size=12)
    pages = [
        ["Welcome to the company. This handbook explains how we work."],
        ["Refunds: customers receive their refund within 14 days after we receive the returned item."],
        ["Security: laptops must use full-disk encryption and lock after five minutes idle."],
    ]
    for paragraphs in pages:
        pdf.add_page()
        for para in paragraphs:
            pdf.multi_cell(0, 6, para)
    return bytes(pdf.output())


def make_xlsx() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Contacts"
    ws.append(["Team", "On-call engineer", "Phone"])
    ws.append(["Payments", "Maria Lopez", "555-0101"])
    ws.append(["Search", "Chen Wei", "555-0199"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def make_pptx() -> bytes:
    prs = pptx.Presentation()
    first = prs.slides.add_slide(prs.slide_layouts[1])
    first.shapes.title.text = "Quarterly Review"
    first.placeholders[1].text_frame.text = "We opened an office in Lisbon."
    second = prs.slides.add_slide(prs.slide_layouts[1])
    second.shapes.title.text = "客户"
    second.placeholders[1].text_frame.text = "本季度客户满意度提高到百分之九十二。"
    buf = io.BytesIO()
    prs.save(buf)
    return buf.getvalue()


def make_csv() -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["Product", "Warranty"])
    writer.writerow(["Standing desk", "5 years"])
    writer.writerow(["Office chair", "3 years"])
    return buf.getvalue().encode()


MARKDOWN = ("# VPN\n\n## Reset\n\nTo reset your VPN password, open the self-service portal and "
            "enter your staff number. The new password arrives by SMS.\n").encode()
HTML = ("<html><head><title>Parking</title></head><body><nav>Home | About | Contact</nav>"
        "<main><h1>Parking</h1><p>Staff park in garage B. Visitors get a day pass from "
        "reception on the ground floor.</p></main><footer>© Example</footer></body></html>").encode()
TEXT = "报销流程：员工在每月二十五日前提交发票，财务部在十个工作日内完成审核并打款。".encode("gb18030")

FILES = {
    "travel.docx": make_docx, "handbook.pdf": make_pdf, "oncall.xlsx": make_xlsx,
    "review.pptx": make_pptx, "warranty.csv": make_csv,
    "vpn.md": lambda: MARKDOWN, "parking.html": lambda: HTML, "expenses.txt": lambda: TEXT,
}

QUESTIONS = [
    ("How long does a refund take?", "Employee Handbook", "page 2"),
    ("Can I fly business class?", "Travel Policy", "Flights"),
    ("出差住宿标准是多少？", "Travel Policy", "住宿"),
    ("Who is on call for payments?", "oncall.xlsx", "sheet Contacts, row"),
    ("Where did we open a new office?", "Quarterly Review", "slide 1"),
    ("客户满意度是多少？", "Quarterly Review", "slide 2"),
    ("What is the warranty of the standing desk?", "warranty.csv", "row"),
    ("How do I reset my VPN password?", "VPN", "Reset"),
    ("Where can visitors park?", "Parking", ""),
    ("报销多久能到账？", "expenses.txt", ""),
]


async def _ingest_all(kb: KnowledgeService) -> None:
    tenant, name = tenant_of(ALICE), chat_kb_name(ALICE)
    for filename, make in FILES.items():
        receipt = await kb.ingest_bytes(tenant, name, make(), filename, added_by="alice",
                                        chat_id=ALICE.chat_id)
        assert receipt.status == "added" and receipt.chunks >= 1, filename


async def test_every_file_type_answers_with_the_right_source_and_location(kb: KnowledgeService) -> None:
    await _ingest_all(kb)
    for question, source, location in QUESTIONS:
        passages = await kb.search(ALICE, question, top_k=3)
        assert passages, question
        top = passages[0]
        assert top.source == source, (question, [(p.source, p.location) for p in passages])
        assert location in top.location, (question, top.location)


async def test_unrelated_questions_find_nothing(kb: KnowledgeService) -> None:
    await _ingest_all(kb)
    assert await kb.search(ALICE, "What is the capital of Mongolia?") == []
    assert await kb.search(ALICE, "今天天气怎么样？") == []


async def test_unchanged_and_changed_sources(kb: KnowledgeService) -> None:
    tenant, name = tenant_of(ALICE), chat_kb_name(ALICE)
    first = await kb.ingest_bytes(tenant, name, MARKDOWN, "vpn.md")
    again = await kb.ingest_bytes(tenant, name, MARKDOWN, "vpn.md")
    assert (first.status, again.status) == ("added", "unchanged")
    assert "unchanged" in again.text()
    changed = MARKDOWN.replace(b"arrives by SMS", b"arrives by e-mail within an hour")
    updated = await kb.ingest_bytes(tenant, name, changed, "vpn.md")
    assert updated.status == "updated" and updated.source_id == first.source_id
    (passage,) = await kb.search(ALICE, "How do I reset my VPN password?", top_k=5)
    assert "e-mail" in passage.text  # the old version's chunks are gone
    vectors = await kb.vectors()
    assert vectors.count(tenant=tenant, kb=name) == updated.chunks
    assert len(await kb.registry.sources(tenant, name)) == 1


@pytest.mark.parametrize("data, filename, message", [
    (b"", "empty.txt", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "photo.png", "PDF, Word (.docx)"),
    (b"%PDF-1.7\n1 0 obj garbage", "broken.pdf", "damaged"),
    (b"PK\x03\x04 not really a zip", "broken.docx", ""),
])
async def test_bad_files_get_a_clear_sentence_and_leave_nothing(kb: KnowledgeService, data: bytes,
                                                                 filename: str, message: str) -> None:
    tenant, name = tenant_of(ALICE), chat_kb_name(ALICE)
    with pytest.raises(IngestError) as caught:
        await kb.ingest_bytes(tenant, name, data, filename)
    assert message in caught.value.user_message
    assert caught.value.user_message.endswith(".")
    assert await kb.registry.sources(tenant, name) == []
    assert (await kb.vectors()).count(tenant=tenant, ready_only=False) == 0


async def test_an_oversized_file_is_refused(kb: KnowledgeService) -> None:
    kb.settings.ingest_max_bytes = 2048
    with pytest.raises(IngestError, match="limit"):
        await kb.ingest_bytes(tenant_of(ALICE), chat_kb_name(ALICE), b"a" * 4096, "big.txt")


async def test_a_failure_mid_ingest_keeps_the_old_version_whole(kb: KnowledgeService, monkeypatch) -> None:
    tenant, name = tenant_of(ALICE), chat_kb_name(ALICE)
    await kb.ingest_bytes(tenant, name, MARKDOWN, "vpn.md")
    vectors = await kb.vectors()
    before = vectors.count(tenant=tenant, kb=name)
    real_upsert = vectors.upsert
    calls = []

    def failing_upsert(points):
        calls.append(len(points))
        if len(calls) == 2:
            raise OSError("disk full")
        real_upsert(points)

    monkeypatch.setattr(vectors, "upsert", failing_upsert)
    monkeypatch.setattr("knowledge.service.EMBED_BATCH", 1)
    monkeypatch.setattr("knowledge.service.EMBED_GROUP", 1)
    long_doc = MARKDOWN + b"\n\n## More\n\n" + b"\n\n".join(
        f"Paragraph {i} about printers and toner cartridges.".encode() for i in range(5))
    with pytest.raises(OSError):
        await kb.ingest_bytes(tenant, name, long_doc, "vpn.md")
    assert vectors.count(tenant=tenant, kb=name, ready_only=False) == before
    (source,) = await kb.registry.sources(tenant, name)
    assert source.chunk_count == before
    passages = await kb.search(ALICE, "How do I reset my VPN password?")
    assert passages and "SMS" in passages[0].text


async def test_scopes_chat_shared_and_tenant(kb: KnowledgeService) -> None:
    tenant = tenant_of(ALICE)
    await kb.ingest_bytes(tenant, chat_kb_name(ALICE), MARKDOWN, "vpn.md", chat_id=ALICE.chat_id)
    # another chat of the same tenant cannot read Alice's chat knowledge ...
    assert await kb.search(TEAM, "How do I reset my VPN password?") == []
    # ... nor can the same chat id on another platform/workspace
    assert await kb.search(OTHER_TENANT, "How do I reset my VPN password?") == []
    # a shared knowledge base of the tenant is read by every chat of that tenant only
    await kb.ingest_bytes(tenant, "handbook", make_pdf(), "handbook.pdf", shared=True)
    assert (await kb.search(TEAM, "How long does a refund take?"))[0].source == "Employee Handbook"
    assert await kb.search(OTHER_TENANT, "How long does a refund take?") == []
    # asking for a knowledge base outside the scope finds nothing
    assert await kb.search(TEAM, "How do I reset my VPN password?", kb=chat_kb_name(ALICE)) == []


async def test_chat_upload_and_group_permissions(kb: KnowledgeService) -> None:
    file = Attachment(kind="file", name="vpn.md", data=MARKDOWN)
    private = InboundMessage(key=ALICE, message_id="1", text="", attachments=(file,))
    receipt = await kb.ingest(private, file)
    assert receipt.kind == "notice" and "Added “VPN”" in receipt.text and "1 chunk," in receipt.text
    group = InboundMessage(key=TEAM, message_id="2", text="", attachments=(file,), is_group=True)
    refused = await kb.ingest(group, file)
    assert "Only the admins" in refused.text
    assert await kb.registry.sources(tenant_of(TEAM), chat_kb_name(TEAM)) == []
    admin = InboundMessage(key=TEAM, message_id="3", text="", attachments=(file,), is_group=True,
                           is_admin=True)
    assert "Added" in (await kb.ingest(admin, file)).text


async def test_delete_source_and_knowledge_base(kb: KnowledgeService) -> None:
    tenant, name = tenant_of(ALICE), chat_kb_name(ALICE)
    await kb.ingest_bytes(tenant, name, MARKDOWN, "vpn.md")
    await kb.ingest_bytes(tenant, name, HTML, "parking.html")
    removed = await kb.delete_source(tenant, name, "VPN")
    assert removed.title == "VPN"
    assert await kb.search(ALICE, "How do I reset my VPN password?") == []
    assert await kb.search(ALICE, "Where can visitors park?")
    assert await kb.delete_kb(tenant, name) == 1
    assert (await kb.vectors()).count(tenant=tenant, ready_only=False) == 0


# ---- isolation, as a property ---------------------------------------------------------------

TENANTS = ["slack:T1", "slack:T2", "telegram:B1"]
KBS = ["kb-a", "kb-b"]
TOPICS = ["VPN password reset portal", "refund within fourteen days", "parking garage B",
          "报销发票审核打款", "出差住宿标准", "laptop disk encryption"]


@pytest.fixture(scope="module")
def isolation_service(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder):
    """One service holding every topic in every tenant and knowledge base (built once)."""
    tmp = tmp_path_factory.mktemp("isolation")

    async def build():
        settings = make_settings(tmp, knowledge_min_score=0.0)
        store = await Store.open(settings.resolved_database_url)
        service = KnowledgeService(settings, store, _vectors("edge", tmp), lambda: embedder,
                                   dim=embedder.dim)
        for tenant in TENANTS:
            for kb_name in KBS:
                text = "\n\n".join(f"{t} ({tenant}/{kb_name})" for t in TOPICS)
                await service.ingest_bytes(tenant, kb_name, text.encode(), f"{kb_name}.txt")
        return service, store

    loop = asyncio.new_event_loop()
    service, store = loop.run_until_complete(build())
    yield service, loop
    loop.run_until_complete(service.close())
    loop.run_until_complete(store.close())
    loop.close()


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenant=st.sampled_from(TENANTS), kbs=st.lists(st.sampled_from(KBS), unique=True),
       query=st.sampled_from(TOPICS) | st.text(min_size=1, max_size=30))
def test_no_search_ever_leaves_its_tenant_and_knowledge_bases(isolation_service, tenant, kbs, query) -> None:
    service, loop = isolation_service
    passages = loop.run_until_complete(service.search_scope(tenant, kbs, query, top_k=10))
    for passage in passages:
        assert f"({tenant}/" in passage.text
        assert any(passage.text.endswith(f"({tenant}/{k})") or f"({tenant}/{k})" in passage.text
                   for k in kbs)


# ---- through the engine, as a chat would -------------------------------------------------------


async def test_a_document_sent_in_chat_is_then_used_to_answer(tmp_path: Path, embedder: Embedder) -> None:
    from bot.runtime import Runtime
    from conftest import ChatBot
    from fake_openai import FakeOpenAI, reply

    settings = make_settings(tmp_path, llm_max_retries=0)
    with FakeOpenAI() as model:
        settings.llm_base_url, settings.llm_model = model.base_url, "m"
        store = await Store.open(settings.resolved_database_url)
        service = KnowledgeService(settings, store, _vectors("edge", tmp_path), lambda: embedder,
                                   dim=embedder.dim)
        runtime = await Runtime.start(settings, knowledge=service, ingestor=service)
        chat = ChatBot(runtime, chat="chat-alice", user="alice")
        try:
            message = InboundMessage(key=chat.key(), message_id="u1", text="",
                                     attachments=(Attachment(kind="file", name="handbook.pdf",
                                                             data=make_pdf()),))
            receipt = await runtime.dispatcher.process(message)
            model.script(reply("Refunds arrive within 14 days [1]."))
            answer = await chat.say("How long does a refund take?")
            # another chat of the same bot has no such document
            model.script(reply("I don't know."))
            elsewhere = await chat.say("How long does a refund take?", chat="chat-bob", user="bob")
        finally:
            await runtime.close()
            await service.close()
            await store.close()
    assert receipt is not None and receipt.text.startswith("Added “Employee Handbook”")
    assert "3 pages" in receipt.text
    assert answer.text == "Refunds arrive within 14 days [1]."
    assert answer.citations[0].source == "Employee Handbook"
    assert answer.citations[0].location == "page 2"
    system = "\n".join(m["content"] for m in model.requests[0]["messages"] if m["role"] == "system")
    assert "refund within 14 days" in system
    bob_system = "\n".join(m["content"] for m in model.requests[1]["messages"] if m["role"] == "system")
    assert "refund within 14 days" not in bob_system
    assert elsewhere.citations == ()


async def test_kb_command_lists_searches_and_deletes(tmp_path: Path, embedder: Embedder) -> None:
    from bot.runtime import Runtime
    from conftest import ChatBot

    settings = make_settings(tmp_path)
    store = await Store.open(settings.resolved_database_url)
    service = KnowledgeService(settings, store, _vectors("edge", tmp_path), lambda: embedder,
                               dim=embedder.dim)
    runtime = await Runtime.start(settings, knowledge=service, ingestor=service)
    chat = ChatBot(runtime, chat="group-1", user="bob")
    try:
        tenant = tenant_of(chat.key())
        await service.ingest_bytes(tenant, chat_kb_name(chat.key()), MARKDOWN, "vpn.md")
        listing = await chat.say("/kb")
        found = await chat.say("/kb search VPN password")
        group_msg = InboundMessage(key=chat.key(), message_id="g1", text="/kb delete VPN",
                                   is_group=True)
        refused = await runtime.dispatcher.process(group_msg)
        admin_msg = InboundMessage(key=chat.key(), message_id="g2", text="/kb delete VPN",
                                   is_group=True, is_admin=True)
        deleted = await runtime.dispatcher.process(admin_msg)
        empty = await chat.say("/kb")
    finally:
        await runtime.close()
        await service.close()
        await store.close()
    assert "this chat** (1 sources)" in listing.text and "VPN (markdown" in listing.text
    assert "1. **VPN**, VPN > Reset" in found.text
    assert refused is not None and "Only the admins" in refused.text
    assert deleted is not None and "Deleted “VPN”" in deleted.text
    assert "empty" in empty.text


async def test_every_point_has_its_own_chunks_vectors(tmp_path: Path, embedder: Embedder) -> None:
    """Ingest runs the cross-lingual model, BM25 and e5 in its own order, some at once: each
    point must still carry the e5, cross-lingual and BM25 vectors of its own chunk's text."""
    import numpy as np

    from knowledge.edge_store import EdgeStore

    written = []

    class Recording(EdgeStore):
        def upsert(self, points):  # type: ignore[no-untyped-def]
            written.extend(points)
            super().upsert(points)

    settings = make_settings(tmp_path)
    store = await Store.open(settings.resolved_database_url)
    xl = load_crosslingual(USE_MODEL, tmp_path)
    service = KnowledgeService(settings, store, lambda dim: Recording(tmp_path / "qdrant", dim),
                               lambda: embedder, dim=embedder.dim, crosslingual_factory=lambda: xl)
    text = "\n\n".join(
        [f"Section {i}: the office in city {i} opens at {7 + i % 3} am; "
         + " ".join(f"desk {i}-{j} faces room {j * 7 % 13}." for j in range(8 + 12 * (i % 4)))
         for i in range(12)] + ["出差住宿标准为一线城市每晚不超过六百元。" * 3, "Short."])
    try:
        receipt = await service.ingest_bytes("acme", "kb", text.encode(), "mixed.txt")
    finally:
        await service.close()
        await store.close()
    texts = [str(p.payload["text"]) for p in written]
    assert receipt.chunks == len(written) >= 8 and len(set(texts)) == len(texts)
    dense = np.asarray([p.dense for p in written])
    alone = np.asarray([embedder.embed_passages([t])[0] for t in texts])
    assert np.einsum("ij,ij->i", dense, alone).min() > 0.99999
    crossed = np.asarray([p.extra[xl.vector_name] for p in written])
    xl_alone = np.asarray([xl.embed_passages([t])[0] for t in texts])
    assert np.einsum("ij,ij->i", crossed, xl_alone).min() > 0.99999
    assert [p.sparse for p in written] == [service.sparse.encode_document(t) for t in texts]
