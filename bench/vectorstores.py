"""Query latency, insert and reopen times of both vector stores at knowledge-base scale.

    python bench/vectorstores.py [--points 100000] [--queries 200] [--local-queries 20]
                                 [--backends edge,server] [--tenants 2] [--kbs 4]
                                 [--no-optimize] [--dir DIR]

Both stores get the same points: 384-dim random unit vectors, a 30-term sparse vector each, the
payload schema of knowledge/vectorstore.py, in sources of 500 points spread round-robin over
tenants and knowledge bases. Each store is filled through `upsert` (batches of 1,000) and
`publish` (one call per source), closed, reopened, then asked top-5 dense queries scoped to tenant
t0 and knowledge bases kb0+kb1 (with the defaults, a quarter of the points), and sparse queries in
the same scope. EdgeStore is measured again after `optimize()` (HNSW). The server store runs on
qdrant-client's local mode (no Qdrant server here), which is plain Python: slow at this size
(it commits each point to SQLite on its own and filters point by point), so it gets fewer
queries (--local-queries; with 20, "p99" is the slowest of them). Its numbers say nothing about
a real Qdrant server.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qdrant_client import QdrantClient  # noqa: E402

from knowledge.edge_store import EdgeStore  # noqa: E402
from knowledge.qdrant_store import QdrantServerStore  # noqa: E402
from knowledge.types import Point, SparseVector  # noqa: E402
from knowledge.vectorstore import VectorStore  # noqa: E402

DIM = 384
SOURCE_SIZE = 500
VOCAB = 50_000
TERMS = 30
BATCH = 1000


def rss_mb() -> float:
    """Resident memory of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def owner(source: int, tenants: int, kbs: int) -> tuple[str, str]:
    """Tenant and knowledge base of the n-th source."""
    return f"t{source % tenants}", f"kb{(source // tenants) % kbs}"


def make_points(start: int, stop: int, rng: np.random.Generator, tenants: int,
                kbs: int) -> list[Point]:
    """Points start..stop-1: unit dense vectors, random sparse terms, full payload."""
    dense = rng.standard_normal((stop - start, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    points = []
    for row, n in enumerate(range(start, stop)):
        source = n // SOURCE_SIZE
        tenant, kb = owner(source, tenants, kbs)
        terms = np.unique(rng.integers(0, VOCAB, TERMS))
        points.append(Point(
            id=str(uuid.UUID(int=n + 1)),
            dense=tuple(dense[row].tolist()),
            sparse=SparseVector(tuple(int(t) for t in terms), (1.0,) * len(terms)),
            payload={"tenant": tenant, "kb": kb, "source_id": f"s{source}", "version": "v1",
                     "ready": False, "title": f"Document {source}", "location": f"page {n % 40}",
                     "text": f"chunk {n} of document {source}", "url": "", "ordinal": n % SOURCE_SIZE},
        ))
    return points


def latencies(run: Callable[[int], object], count: int) -> tuple[float, float]:
    """p50 and p99 in milliseconds of `count` calls, after a few warm-up calls."""
    for i in range(min(10, max(1, count // 10))):
        run(i)
    times = []
    for i in range(count):
        started = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def measure_queries(store: VectorStore, count: int, seed: int) -> dict[str, float]:
    """Dense and sparse top-5 latencies in the t0 / kb0+kb1 scope."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count + 10, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = [vectors[i].tolist() for i in range(count + 10)]
    terms = [sorted({int(t) for t in rng.integers(0, VOCAB, 3)}) for _ in range(count + 10)]
    sparse = [SparseVector(tuple(t), (1.0,) * len(t)) for t in terms]
    hits = store.search_dense(queries[0], "t0", ["kb0", "kb1"], 5)
    assert len(hits) == 5 and all(h.payload["tenant"] == "t0" for h in hits), hits
    dense_p50, dense_p99 = latencies(
        lambda i: store.search_dense(queries[i], "t0", ["kb0", "kb1"], 5), count)
    sparse_p50, sparse_p99 = latencies(
        lambda i: store.search_sparse(sparse[i], "t0", ["kb0", "kb1"], 5), count)
    return {"dense_p50": dense_p50, "dense_p99": dense_p99,
            "sparse_p50": sparse_p50, "sparse_p99": sparse_p99}


def run(name: str, open_store: Callable[[], VectorStore], args: argparse.Namespace,
        queries: int) -> None:
    """Fill, close, reopen and query one backend; print what it took."""
    print(f"\n== {name}: {args.points:,} points, {DIM} dims", flush=True)
    rng = np.random.default_rng(42)
    store = open_store()
    started = time.perf_counter()
    for start in range(0, args.points, BATCH):
        store.upsert(make_points(start, min(start + BATCH, args.points), rng, args.tenants, args.kbs))
    upserted = time.perf_counter() - started
    sources = (args.points + SOURCE_SIZE - 1) // SOURCE_SIZE
    started = time.perf_counter()
    for source in range(sources):
        store.publish(*owner(source, args.tenants, args.kbs), f"s{source}", "v1")
    published = time.perf_counter() - started
    assert store.count() == args.points
    print(f"insert: upsert {upserted:.1f} s ({args.points / upserted:,.0f} points/s), "
          f"publish {sources} sources {published:.1f} s", flush=True)
    started = time.perf_counter()
    store.close()
    closed = time.perf_counter() - started

    started = time.perf_counter()
    store = open_store()
    reopened = time.perf_counter() - started
    scope = store.count("t0", "kb0") + store.count("t0", "kb1")
    print(f"close {closed:.2f} s, reopen {reopened:.2f} s, RSS {rss_mb():,.0f} MB; "
          f"query scope t0/kb0+kb1 = {scope:,} points", flush=True)
    report(f"{queries} queries", measure_queries(store, queries, seed=7))

    if isinstance(store, EdgeStore) and not args.no_optimize:
        started = time.perf_counter()
        store.optimize()
        print(f"optimize() (HNSW): {time.perf_counter() - started:.1f} s", flush=True)
        report("after optimize", measure_queries(store, queries, seed=7))
        store.close()
        started = time.perf_counter()
        store = open_store()
        print(f"reopen after optimize {time.perf_counter() - started:.2f} s", flush=True)
    store.close()


def report(label: str, numbers: dict[str, float]) -> None:
    """One line of latencies."""
    print(f"{label}: dense top-5 p50 {numbers['dense_p50']:.2f} ms, p99 {numbers['dense_p99']:.2f} ms"
          f" | sparse top-5 p50 {numbers['sparse_p50']:.2f} ms, p99 {numbers['sparse_p99']:.2f} ms",
          flush=True)


def main() -> None:
    """Parse the options and benchmark each backend in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--local-queries", type=int, default=20,
                        help="queries for qdrant-client local mode (seconds each at 100k)")
    parser.add_argument("--tenants", type=int, default=2)
    parser.add_argument("--kbs", type=int, default=4)
    parser.add_argument("--backends", default="edge,server")
    parser.add_argument("--no-optimize", action="store_true", help="skip EdgeStore.optimize()")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (a temp dir)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Local mode is not recommended")  # we know

    root = Path(tempfile.mkdtemp(prefix="knowbot-bench-", dir=args.dir))
    try:
        for backend in args.backends.split(","):
            if backend == "edge":
                run("EdgeStore (Qdrant Edge)", lambda: EdgeStore(root / "edge", DIM), args,
                    args.queries)
            elif backend == "server":
                run("QdrantServerStore (qdrant-client local mode)",
                    lambda: QdrantServerStore(QdrantClient(path=str(root / "local")), DIM), args,
                    args.local_queries)
            else:
                parser.error(f"unknown backend {backend!r}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
