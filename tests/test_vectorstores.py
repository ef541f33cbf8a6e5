"""Both vector stores, one suite: Qdrant Edge in a folder, and the server store on qdrant-client's
local mode (the same client API a Qdrant server answers). Small random dense vectors; the sparse
vectors come from the real BM25 encoder."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient

from bot.errors import ConfigError, StorageError
from knowledge.edge_store import EdgeStore
from knowledge.qdrant_store import QdrantServerStore
from knowledge.sparse import SparseEncoder
from knowledge.types import Hit, Point, SparseVector
from knowledge.vectorstore import VectorStore

DIM = 8
ROOT = Path(__file__).resolve().parent.parent
ENCODER = SparseEncoder()


def _open(backend: str, folder: Path, dim: int = DIM) -> VectorStore:
    if backend == "edge":
        return EdgeStore(folder / "edge", dim)
    return QdrantServerStore(QdrantClient(path=str(folder / "qdrant")), dim)


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder in RAM when the machine has /dev/shm: every Edge write is fsynced, which costs
    ~0.1 s on this disk. The durability tests below use the real disk."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="knowbot-test-", dir="/dev/shm"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, fast_dir: Path) -> Iterator[VectorStore]:
    """An empty store of each backend."""
    opened = _open(request.param, fast_dir)
    yield opened
    opened.close()


_rng = np.random.default_rng(20240501)


def chunk(tenant: str, kb: str, source: str, version: str, text: str = "") -> Point:
    """One stored chunk, unready, with a random dense vector."""
    return Point(
        id=str(uuid.uuid4()),
        dense=tuple(float(x) for x in _rng.standard_normal(DIM)),
        sparse=ENCODER.encode_document(text) if text else SparseVector((), ()),
        payload={"tenant": tenant, "kb": kb, "source_id": source, "version": version,
                 "ready": False, "title": source, "location": "", "text": text,
                 "url": "", "ordinal": 0},
    )


def chunks(tenant: str, kb: str, source: str, version: str, n: int = 3) -> list[Point]:
    return [chunk(tenant, kb, source, version, text=f"{source} {version} part {i}")
            for i in range(n)]


def ids(hits: list[Hit]) -> set[str]:
    return {hit.id for hit in hits}


def everything(store: VectorStore, tenant: str, kbs: list[str]) -> set[str]:
    """Ids of every point a dense search in this scope can see."""
    return ids(store.search_dense(_rng.standard_normal(DIM).tolist(), tenant, kbs, 1000))


# --- the atomic-ingest cycle ---------------------------------------------------------------------

def test_unready_points_stay_invisible_until_published(store: VectorStore) -> None:
    points = chunks("acme", "hr", "handbook.pdf", "v1")
    store.upsert(points)

    assert store.search_dense(points[0].dense, "acme", ["hr"], 5) == []
    assert store.search_sparse(ENCODER.encode_query("handbook.pdf v1"), "acme", ["hr"], 5) == []
    assert store.count("acme", "hr") == 0
    assert store.count("acme", "hr", ready_only=False) == 3

    store.publish("acme", "hr", "handbook.pdf", "v1")

    hits = store.search_dense(points[0].dense, "acme", ["hr"], 5)
    assert ids(hits) == {p.id for p in points}
    assert hits[0].id == points[0].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload["ready"] is True and hits[0].payload["title"] == "handbook.pdf"
    assert store.count("acme", "hr") == 3


def test_sparse_search_finds_published_points(store: VectorStore) -> None:
    store.upsert([chunk("acme", "it", "vpn.md", "v1", "Reset your VPN password in the portal."),
                  chunk("acme", "it", "wifi.md", "v1", "The guest Wi-Fi network is open.")])
    store.publish("acme", "it", "vpn.md", "v1")
    store.publish("acme", "it", "wifi.md", "v1")

    hits = store.search_sparse(ENCODER.encode_query("vpn"), "acme", ["it"], 5)

    assert [hit.payload["source_id"] for hit in hits] == ["vpn.md"]
    assert hits[0].score > 0


def test_publish_touches_only_that_version(store: VectorStore) -> None:
    store.upsert(chunks("acme", "hr", "handbook.pdf", "v1") + chunks("acme", "hr", "handbook.pdf", "v2"))
    store.publish("acme", "hr", "handbook.pdf", "v2")
    assert store.count("acme", "hr") == 3
    assert {h.payload["version"] for h in store.search_dense([1.0] * DIM, "acme", ["hr"], 10)} == {"v2"}


def test_reingest_replaces_the_old_version_in_one_step(store: VectorStore) -> None:
    old = chunks("acme", "hr", "handbook.pdf", "v1", n=4)
    store.upsert(old)
    store.publish("acme", "hr", "handbook.pdf", "v1")

    new = chunks("acme", "hr", "handbook.pdf", "v2", n=2)
    store.upsert(new)
    assert everything(store, "acme", ["hr"]) == {p.id for p in old}  # still the old one
    store.publish("acme", "hr", "handbook.pdf", "v2")
    store.delete("acme", "hr", "handbook.pdf", keep_version="v2")

    assert everything(store, "acme", ["hr"]) == {p.id for p in new}
    assert store.count("acme", "hr", ready_only=False) == 2


# --- deletes -------------------------------------------------------------------------------------

@pytest.fixture
def library(store: VectorStore) -> VectorStore:
    """acme/hr: handbook v1 + v2 (both published) and policy v1; acme/it: vpn v1; globex/hr: a copy."""
    for tenant, kb, source, version in [("acme", "hr", "handbook", "v1"), ("acme", "hr", "handbook", "v2"),
                                        ("acme", "hr", "policy", "v1"), ("acme", "it", "vpn", "v1"),
                                        ("globex", "hr", "handbook", "v1")]:
        store.upsert(chunks(tenant, kb, source, version, n=2))
        store.publish(tenant, kb, source, version)
    return store


def test_delete_a_source(library: VectorStore) -> None:
    library.delete("acme", "hr", "handbook")
    assert library.count("acme", "hr") == 2
    assert library.count("acme", "hr", "handbook") == 0
    assert library.count("globex", "hr", "handbook") == 2


def test_delete_one_version(library: VectorStore) -> None:
    library.delete("acme", "hr", "handbook", version="v1")
    assert {h.payload["version"] for h in library.search_dense([1.0] * DIM, "acme", ["hr"], 10)
            if h.payload["source_id"] == "handbook"} == {"v2"}
    assert library.count("acme", "hr") == 4


def test_delete_all_but_one_version(library: VectorStore) -> None:
    library.upsert(chunks("acme", "hr", "handbook", "v3"))  # an unfinished ingest goes too
    library.delete("acme", "hr", "handbook", keep_version="v2")
    assert library.count("acme", "hr", "handbook", ready_only=False) == 2
    assert library.count("acme", "hr", "policy") == 2


def test_delete_a_whole_knowledge_base(library: VectorStore) -> None:
    library.delete("acme", "hr")
    assert library.count("acme", "hr", ready_only=False) == 0
    assert library.count("acme", "it") == 2
    assert library.count("globex", "hr") == 2


def test_delete_refuses_ambiguous_arguments(library: VectorStore) -> None:
    with pytest.raises(ValueError):
        library.delete("acme", "hr", "handbook", version="v1", keep_version="v2")
    with pytest.raises(ValueError):
        library.delete("acme", "hr", keep_version="v2")
    assert library.count(ready_only=False) == 10


def test_delete_unready_removes_unfinished_ingests(library: VectorStore) -> None:
    library.upsert(chunks("acme", "hr", "handbook", "v3") + chunks("globex", "it", "new", "v1"))
    library.delete_unready("acme")
    assert library.count("acme", ready_only=False) == 8
    assert library.count("globex", ready_only=False) == 5
    library.delete_unready()
    assert library.count(ready_only=False) == library.count() == 10


def test_counts(library: VectorStore) -> None:
    library.upsert(chunks("acme", "hr", "handbook", "v3"))
    assert library.count() == 10
    assert library.count(ready_only=False) == 13
    assert library.count("acme") == 8
    assert library.count("acme", "hr") == 6
    assert library.count("acme", "hr", "handbook") == 4
    assert library.count("acme", "hr", "handbook", ready_only=False) == 7
    assert library.count(kb="hr") == 8
    assert library.count("nobody") == 0


# --- scope ---------------------------------------------------------------------------------------

def test_no_knowledge_bases_means_no_hits(library: VectorStore) -> None:
    assert library.search_dense([1.0] * DIM, "acme", [], 5) == []
    assert library.search_sparse(ENCODER.encode_query("handbook"), "acme", [], 5) == []


def test_search_scope_is_tenant_and_listed_kbs(library: VectorStore) -> None:
    assert {(h.payload["tenant"], h.payload["kb"]) for h in
            library.search_dense([1.0] * DIM, "acme", ["hr", "it"], 20)} == {("acme", "hr"), ("acme", "it")}
    assert {(h.payload["tenant"], h.payload["kb"]) for h in
            library.search_dense([1.0] * DIM, "globex", ["hr", "it"], 20)} == {("globex", "hr")}
    assert library.search_sparse(ENCODER.encode_query("vpn"), "globex", ["it"], 5) == []


TENANTS = ["acme", "globex", "初创"]
KBS = ["hr", "it", "财务"]
VOCAB = 12  # sparse term ids 0..11, so queries and points often share terms


@pytest.fixture
def model() -> dict[str, tuple[dict, set[int]]]:
    """What the store should hold: id -> (payload, sparse term ids); kept across examples."""
    return {}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_hit_ever_leaves_the_scope(store: VectorStore, model: dict, data: st.DataObject) -> None:
    """Random points in random tenants/kbs, published or not, then random queries: every hit is a
    ready point of the queried tenant and kbs, and every such point is found."""
    owners = st.tuples(st.sampled_from(TENANTS), st.sampled_from(KBS),
                       st.sampled_from(["a", "b"]), st.sampled_from(["1", "2"]))
    batch = data.draw(st.lists(st.tuples(owners, st.sets(st.integers(0, VOCAB - 1), max_size=4)),
                               min_size=1, max_size=10), label="points")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    points = []
    for (tenant, kb, source, version), terms in batch:
        terms_sorted = sorted(terms)
        point = Point(id=str(uuid.uuid4()), dense=tuple(rng.standard_normal(DIM) + 0.01),
                      sparse=SparseVector(tuple(terms_sorted), (1.0,) * len(terms_sorted)),
                      payload={"tenant": tenant, "kb": kb, "source_id": source,
                               "version": version, "ready": False})
        points.append(point)
        model[point.id] = (dict(point.payload), set(terms_sorted))
    store.upsert(points)
    for owner in data.draw(st.lists(owners, max_size=4), label="published"):
        store.publish(*owner)
        for payload, _ in model.values():
            if (payload["tenant"], payload["kb"], payload["source_id"], payload["version"]) == owner:
                payload["ready"] = True

    for _ in range(3):
        tenant = data.draw(st.sampled_from(TENANTS), label="tenant")
        kbs = data.draw(st.lists(st.sampled_from(KBS), unique=True, max_size=3), label="kbs")
        terms = sorted(data.draw(st.sets(st.integers(0, VOCAB - 1), min_size=1, max_size=3),
                                 label="query terms"))
        visible = {pid for pid, (p, _) in model.items()
                   if p["ready"] and p["tenant"] == tenant and p["kb"] in kbs}

        dense = store.search_dense(rng.standard_normal(DIM).tolist(), tenant, kbs, len(model) + 1)
        sparse = store.search_sparse(SparseVector(tuple(terms), (1.0,) * len(terms)),
                                     tenant, kbs, len(model) + 1)

        for hit in dense + sparse:
            assert hit.payload["tenant"] == tenant and hit.payload["kb"] in kbs
            assert hit.payload["ready"] is True
        assert ids(dense) == visible
        assert ids(sparse) == {pid for pid in visible if model[pid][1] & set(terms)}
        assert store.count(tenant) == sum(1 for p, _ in model.values()
                                          if p["ready"] and p["tenant"] == tenant)


# --- Chinese and English keyword search ----------------------------------------------------------

PASSAGES = {
    "expenses-zh": "报销流程：员工在费用发生后三十天内提交报销单，附上发票，经理审批后由财务打款。",
    "leave-zh": "年假天数根据工龄计算，未休完的年假可以顺延到下一年第一季度。",
    "vpn-en": "If you forget your VPN password, reset it in the IT self-service portal.",
    "wifi-en": "The guest Wi-Fi password is printed on the card at the reception desk.",
    "deploy-en": "Production deployments are frozen during the last week of each quarter.",
    "errors-zh": "服务器返回404错误时，请先检查链接是否正确。",
}


@pytest.fixture
def passages(store: VectorStore) -> VectorStore:
    store.upsert([chunk("acme", "docs", source, "v1", text) for source, text in PASSAGES.items()])
    for source in PASSAGES:
        store.publish("acme", "docs", source, "v1")
    return store


@pytest.mark.parametrize("question, source", [
    ("报销流程", "expenses-zh"),
    ("怎么提交发票？", "expenses-zh"),
    ("VPN password", "vpn-en"),
    ("I forgot my vpn passwords", "vpn-en"),
    ("年假可以顺延吗", "leave-zh"),
    ("deployment freeze", "deploy-en"),
    ("404", "errors-zh"),
])
def test_keyword_search_in_chinese_and_english(passages: VectorStore, question: str, source: str) -> None:
    hits = passages.search_sparse(ENCODER.encode_query(question), "acme", ["docs"], 3)
    assert hits and hits[0].payload["source_id"] == source


def test_the_encoder_segments_chinese_into_words() -> None:
    whole = set(ENCODER.encode_query("报销流程").indices)
    assert len(whole) == 2  # 报销 + 流程, not one term per character nor one per sentence
    assert set(ENCODER.encode_query("报销").indices) < whole
    assert set(ENCODER.encode_query("流程").indices) < whole
    assert ENCODER.encode_query("的").indices == ()  # a stop word
    sentence = ENCODER.encode_query("员工需要在三十天内提交报销单和发票")
    assert 4 <= len(sentence.indices) <= 10


def test_the_encoder_stems_english_and_drops_stop_words() -> None:
    assert ENCODER.encode_query("passwords").indices == ENCODER.encode_query("password").indices
    assert ENCODER.encode_query("VPN").indices == ENCODER.encode_query("vpn").indices
    assert len(ENCODER.encode_query("How do I reset my VPN password?").indices) == 3
    assert ENCODER.encode_query("the of and").indices == ()


def test_the_encoder_keeps_numbers() -> None:
    assert len(ENCODER.encode_query("error 404").indices) == 2
    assert set(ENCODER.encode_query("404").indices) <= set(ENCODER.encode_document("返回404错误").indices)
    assert ENCODER.encode_query("５００").indices == ENCODER.encode_query("500").indices
    assert ENCODER.encode_query("v2.3").indices != ()


def test_document_weights_are_term_frequencies_and_queries_are_ones() -> None:
    doc = ENCODER.encode_document("vpn vpn vpn password")
    weights = dict(zip(doc.indices, doc.values))
    vpn, = ENCODER.encode_query("vpn").indices
    password, = ENCODER.encode_query("password").indices
    assert weights[vpn] > weights[password] > 0
    assert set(ENCODER.encode_query("vpn password").values) == {1.0}
    assert ENCODER.encode_document("") == ENCODER.encode_query("  ") == SparseVector((), ())


async def test_the_encoder_is_safe_from_many_threads() -> None:
    texts = list(PASSAGES.values()) * 8
    expected = [ENCODER.encode_document(t) for t in texts]
    got = await asyncio.gather(*(asyncio.to_thread(ENCODER.encode_document, t) for t in texts))
    assert list(got) == expected


# --- lifecycle, errors, threads ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["edge", "server"])
def test_reopen_after_close_keeps_everything(backend: str, tmp_path: Path) -> None:
    store = _open(backend, tmp_path)
    published = chunks("acme", "hr", "handbook", "v1")
    store.upsert(published + chunks("acme", "hr", "handbook", "v2"))
    store.publish("acme", "hr", "handbook", "v1")
    store.close()
    store.close()  # closing twice is harmless

    reopened = _open(backend, tmp_path)
    try:
        assert reopened.count("acme", "hr") == 3
        assert reopened.count("acme", "hr", ready_only=False) == 6
        hit = reopened.search_dense(published[1].dense, "acme", ["hr"], 1)[0]
        assert hit.id == published[1].id and hit.payload["version"] == "v1"
        reopened.delete_unready()
        assert reopened.count(ready_only=False) == 3
    finally:
        reopened.close()


def test_a_closed_store_refuses_calls(store: VectorStore) -> None:
    store.close()
    with pytest.raises(StorageError):
        store.count()


def test_bad_points_are_refused(store: VectorStore) -> None:
    good = chunk("acme", "hr", "s", "v1")
    with pytest.raises(ValueError):
        store.upsert([Point("not-a-uuid", good.dense, good.sparse, good.payload)])
    with pytest.raises(ValueError):
        store.upsert([Point(good.id, good.dense[:-1], good.sparse, good.payload)])
    with pytest.raises(ValueError):
        store.upsert([Point(good.id, good.dense, good.sparse, {"tenant": "acme"})])
    with pytest.raises(ValueError):
        store.search_dense([1.0] * (DIM + 1), "acme", ["hr"], 5)
    assert store.count(ready_only=False) == 0


def test_points_without_a_ready_flag_arrive_unready(store: VectorStore) -> None:
    point = chunk("acme", "hr", "s", "v1")
    del point.payload["ready"]
    store.upsert([point])
    assert store.count(ready_only=False) == 1 and store.count() == 0


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_reopening_with_another_dimension_is_a_config_error(backend: str, tmp_path: Path) -> None:
    _open(backend, tmp_path).close()
    with pytest.raises(ConfigError):
        _open(backend, tmp_path, dim=DIM * 2)


async def test_many_threads_at_once(store: VectorStore) -> None:
    """Searches, upserts and publishes from several threads, as asyncio.to_thread callers do."""
    async def ingest(source: str) -> None:
        await asyncio.to_thread(store.upsert, chunks("acme", "hr", source, "v1", n=5))
        await asyncio.to_thread(store.publish, "acme", "hr", source, "v1")

    async def search() -> list[Hit]:
        return await asyncio.to_thread(store.search_dense, [1.0] * DIM, "acme", ["hr"], 5)

    results = await asyncio.gather(*[ingest(f"doc{i}") for i in range(8)],
                                   *[search() for _ in range(24)])
    assert all(len(r) <= 5 for r in results if isinstance(r, list))
    assert store.count("acme", "hr") == 40


def test_edge_writes_survive_a_killed_process(tmp_path: Path) -> None:
    """Each write is in the WAL when upsert/publish returns: a crash before close() loses nothing."""
    script = textwrap.dedent(f"""
        import os, sys, uuid
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from knowledge.edge_store import EdgeStore
        from knowledge.types import Point, SparseVector
        store = EdgeStore(Path({str(tmp_path / 'edge')!r}), {DIM})
        payload = dict(tenant="acme", kb="hr", source_id="s", version="v1", ready=False)
        store.upsert([Point(str(uuid.uuid4()), (1.0,) * {DIM}, SparseVector((), ()), payload)
                      for _ in range(7)])
        store.publish("acme", "hr", "s", "v1")
        os._exit(0)  # no close(), no flush()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    store = EdgeStore(tmp_path / "edge", DIM)
    try:
        assert store.count("acme", "hr") == 7
    finally:
        store.close()


def test_server_store_translates_connection_errors() -> None:
    client = QdrantClient(url="http://127.0.0.1:9", check_compatibility=False)  # nothing listens
    with pytest.raises(StorageError):
        QdrantServerStore(client, DIM)


def test_from_url_connects_and_creates_the_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict] = []

    def client(**kwargs: object) -> QdrantClient:
        made.append(kwargs)
        return QdrantClient(":memory:")

    monkeypatch.setattr("knowledge.qdrant_store.QdrantClient", client)
    store = QdrantServerStore.from_url("http://qdrant:6333", api_key="k", dim=DIM, collection="kb")
    try:
        assert made == [{"url": "http://qdrant:6333", "api_key": "k"}]
        assert store.client.collection_exists("kb") and store.count() == 0
    finally:
        store.close()
