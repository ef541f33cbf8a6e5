"""The embedded vector store: a Qdrant Edge shard (the Qdrant engine, in-process) in one folder.

Quirks of qdrant-edge-py 0.9.0 handled here:

- `MatchValue(True)` is read as the integer 1 (the binding tries int before bool, and a Python
  bool is an int), so it never matches a stored bool and a filter on `ready` finds nothing.
  A numpy bool is not an int, so `MatchValue(numpy.True_)` reaches the engine as a real bool.
- Engine failures are raised as a bare `Exception` ("Service runtime error: ..."); they are
  translated to `StorageError` at the calls below.
- Point ids come back as `uuid.UUID`; hits carry them as canonical strings.

Durability: every update goes to the shard's write-ahead log before it returns (a killed
process loses nothing on reopen); `close()` also flushes the segments, so reopening skips WAL
replay. Thread safety: the engine synchronises itself and releases the GIL while it searches;
writes, `optimize()` and `close()` are serialised by one lock so `close()` never cuts a write
in half, while searches run in parallel with each other and with writes.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from qdrant_edge import (
    BoolIndexParams,
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HasVectorCondition,
    MatchAny,
    MatchValue,
    Modifier,
    PayloadSchemaType,
    Point as EdgePoint,
    PointVectors,
    Query,
    QueryRequest,
    ScrollRequest,
    SparseVector as EdgeSparseVector,
    UpdateOperation,
)

from bot.errors import ConfigError, StorageError
from knowledge.types import Hit, Point, SparseVector
from knowledge.vectorstore import VectorStore, chunk_record, named_query_ok

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "bm25"
KEYWORD_FIELDS = ("tenant", "kb", "source_id", "version")
REQUIRED_FIELDS = KEYWORD_FIELDS
_BATCH = 1000
_TRUE = np.True_  # see the module docstring: a Python True would match nothing

T = TypeVar("T")


def _is(key: str, value: Any) -> FieldCondition:
    """Condition: payload `key` equals `value`."""
    return FieldCondition(key, match=MatchValue(value))


def _owner(tenant: str, kb: str, source_id: str | None = None,
           version: str | None = None) -> list[FieldCondition]:
    """Conditions selecting a knowledge base, a source in it, or one version of that source."""
    conditions = [_is("tenant", tenant), _is("kb", kb)]
    if source_id is not None:
        conditions.append(_is("source_id", source_id))
    if version is not None:
        conditions.append(_is("version", version))
    return conditions


def _scope(tenant: str, kbs: Sequence[str], source_ids: Sequence[str] | None = None) -> Filter:
    """The filter of every search: ready, this tenant, one of these knowledge bases (and, if
    given, one of these sources)."""
    must = [_is("ready", _TRUE), _is("tenant", tenant),
            FieldCondition("kb", match=MatchAny(list(kbs)))]
    if source_ids is not None:
        must.append(FieldCondition("source_id", match=MatchAny(list(source_ids))))
    return Filter(must=must)


def check_vector_name(name: str) -> None:
    """Refuse a name that is not a valid extra vector name (or is one of the built-in two)."""
    if name in (DENSE, SPARSE) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"bad vector name {name!r}")


def check_delete_args(source_id: str | None, version: str | None,
                      keep_version: str | None) -> None:
    """Refuse delete() arguments that would remove more than the caller can have meant."""
    if version is not None and keep_version is not None:
        raise ValueError("delete: pass version or keep_version, not both")
    if source_id is None and (version is not None or keep_version is not None):
        raise ValueError("delete: version and keep_version need a source_id")


def canonical_id(point_id: str) -> str:
    """The point id as Qdrant stores it (a lower-case hyphenated UUID); ValueError otherwise."""
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        raise ValueError(f"point id must be a UUID string, got {point_id!r}") from None


def check_point(point: Point, dim: int, extra: dict[str, int] | None = None) -> dict[str, object]:
    """Validate one point; return its payload with ready=False unless the caller set it."""
    if len(point.dense) != dim:
        raise ValueError(f"point {point.id}: dense vector has {len(point.dense)} dimensions, "
                         f"the store has {dim}")
    for name, vector in point.extra.items():
        want = (extra or {}).get(name)
        if want is None:
            raise ValueError(f"point {point.id}: the store has no vector {name!r}")
        if len(vector) != want:
            raise ValueError(f"point {point.id}: vector {name!r} has {len(vector)} dimensions, "
                             f"the store has {want}")
    if len(point.sparse.indices) != len(point.sparse.values):
        raise ValueError(f"point {point.id}: sparse indices and values differ in length")
    missing = [f for f in REQUIRED_FIELDS if f not in point.payload]
    if missing:
        raise ValueError(f"point {point.id}: payload lacks {', '.join(missing)}")
    payload = dict(point.payload)
    payload.setdefault("ready", False)
    return payload


class EdgeStore(VectorStore):
    """VectorStore on a Qdrant Edge shard kept in `path` (created on first use)."""

    def __init__(self, path: Path, dim: int) -> None:
        """Open the shard in `path`, or create it with the "dense" and "bm25" vectors."""
        self.path = Path(path)
        self.dim = dim
        self._lock = threading.Lock()
        self._closed = False
        self.extra = self._stored_extra()  # named vectors beyond "dense": name -> dimensions
        config = EdgeConfig(
            vectors={DENSE: EdgeVectorParams(size=dim, distance=Distance.Cosine),
                     **{name: EdgeVectorParams(size=size, distance=Distance.Cosine)
                        for name, size in self.extra.items()}},
            sparse_vectors={SPARSE: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        )
        try:
            if (self.path / "edge_config.json").exists():
                self._shard = EdgeShard.load(str(self.path), config)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._shard = EdgeShard.create(str(self.path), config)
        except Exception as exc:  # the binding raises bare Exception for engine errors
            if "incompatible" in str(exc).lower():
                raise ConfigError(f"the vector store in {self.path} does not fit dim={dim}: "
                                  f"{exc}") from exc
            raise StorageError(f"cannot open the vector store in {self.path}: {exc}") from exc
        self._ensure_indexes()

    def _stored_extra(self) -> dict[str, int]:
        """The extra dense vectors an existing shard was given (its config must list them on load)."""
        try:
            stored = json.loads((self.path / "edge_config.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read the vector store's config in {self.path}: {exc}") from exc
        vectors = stored.get("vectors") or {}
        return {name: int(params["size"]) for name, params in vectors.items()
                if name != DENSE and isinstance(params, dict) and "size" in params}

    def add_vector(self, name: str, dim: int) -> None:
        """Make sure the named dense vector exists (added in place to an older store)."""
        check_vector_name(name)
        with self._lock:
            have = self.extra.get(name)
            if have == dim:
                return
            if have is not None:
                raise ConfigError(f"the vector store in {self.path} has a {have}-dim {name!r} "
                                  f"vector, not {dim}")
            self._call(self._shard.update,
                       UpdateOperation.create_dense_vector(name, dim, Distance.Cosine))
            self.extra = {**self.extra, name: dim}
        log.info("added the %d-dim vector %s to the vector store in %s", dim, name, self.path)

    def _ensure_indexes(self) -> None:
        """Create the payload indexes the filters use, if the shard lacks them."""
        have = set(self._shard.info().payload_schema)
        wanted: dict[str, Any] = {f: PayloadSchemaType.Keyword for f in KEYWORD_FIELDS}
        wanted["ready"] = BoolIndexParams()
        for field, schema in wanted.items():
            if field not in have:
                self._call(self._shard.update, UpdateOperation.create_field_index(field, schema))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one engine call, translating its bare `Exception`s into StorageError."""
        if self._closed:
            raise StorageError("the vector store is closed")
        try:
            return fn(*args)
        except Exception as exc:
            if type(exc) is not Exception:  # TypeError, ValueError...: a bug on our side
                raise
            raise StorageError(f"vector store ({self.path}): {exc}") from exc

    def _write(self, operation: UpdateOperation) -> None:
        """Apply one update under the write lock."""
        with self._lock:
            self._call(self._shard.update, operation)

    def upsert(self, points: Sequence[Point]) -> None:
        """Write points (new ones arrive with payload ready=False)."""
        converted = []
        for point in points:
            payload = check_point(point, self.dim, self.extra)
            vectors: dict[str, Any] = {DENSE: [float(x) for x in point.dense]}
            for name, vector in point.extra.items():
                vectors[name] = [float(x) for x in vector]
            if point.sparse.indices:
                vectors[SPARSE] = EdgeSparseVector(list(point.sparse.indices),
                                                   list(point.sparse.values))
            converted.append(EdgePoint(canonical_id(point.id), vectors, payload))
        for start in range(0, len(converted), _BATCH):
            self._write(UpdateOperation.upsert_points(converted[start:start + _BATCH]))

    def publish(self, tenant: str, kb: str, source_id: str, version: str) -> None:
        """Make one version of a source visible to searches (ready=True)."""
        selected = Filter(must=_owner(tenant, kb, source_id, version))
        self._write(UpdateOperation.set_payload_by_filter(selected, {"ready": True}))

    def delete(self, tenant: str, kb: str, source_id: str | None = None,
               version: str | None = None, keep_version: str | None = None) -> None:
        """Delete a knowledge base's points, or a source's, or one version, or all but one."""
        check_delete_args(source_id, version, keep_version)
        must_not = [_is("version", keep_version)] if keep_version is not None else None
        selected = Filter(must=_owner(tenant, kb, source_id, version), must_not=must_not)
        self._write(UpdateOperation.delete_points_by_filter(selected))

    def delete_unready(self, tenant: str | None = None) -> None:
        """Remove points of ingests that never finished (run at start-up)."""
        must = [_is("tenant", tenant)] if tenant is not None else None
        selected = Filter(must=must, must_not=[_is("ready", _TRUE)])
        self._write(UpdateOperation.delete_points_by_filter(selected))

    def search_dense(self, vector: Sequence[float], tenant: str, kbs: Sequence[str],
                     limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Nearest ready points by cosine, within the tenant's listed knowledge bases."""
        if len(vector) != self.dim:
            raise ValueError(f"query vector has {len(vector)} dimensions, the store has {self.dim}")
        if not kbs or limit <= 0 or source_ids == []:
            return []
        query = Query.Nearest([float(x) for x in vector], using=DENSE)
        return self._query(query, tenant, kbs, limit, source_ids)

    def search_sparse(self, vector: SparseVector, tenant: str, kbs: Sequence[str],
                      limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Best ready points by BM25 (IDF applied by the engine), within the scope."""
        if not kbs or limit <= 0 or not vector.indices or source_ids == []:
            return []
        sparse = EdgeSparseVector(list(vector.indices), list(vector.values))
        return self._query(Query.Nearest(sparse, using=SPARSE), tenant, kbs, limit, source_ids)

    def search_vector(self, name: str, vector: Sequence[float], tenant: str, kbs: Sequence[str],
                      limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Nearest ready points by cosine on a named vector, within the scope."""
        if not named_query_ok(self.extra, name, vector, kbs, limit) or source_ids == []:
            return []
        return self._query(Query.Nearest([float(x) for x in vector], using=name), tenant, kbs,
                           limit, source_ids)

    def missing_vector(self, name: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` points lacking the named vector, as (point id, chunk text)."""
        if name not in self.extra:
            raise ConfigError(f"the vector store in {self.path} has no vector {name!r}")
        request = ScrollRequest(limit=limit, filter=Filter(must_not=[HasVectorCondition(name)]),
                                with_payload=True)
        found, _ = self._call(self._shard.scroll, request)
        return [(str(p.id), str((p.payload or {}).get("text", ""))) for p in found]

    def chunks(self, tenant: str, kb: str, source_id: str, limit: int = 2000
               ) -> list[dict[str, Any]]:
        """A source's ready chunks (text, location, ordinal, version), in document order."""
        selected = Filter(must=[*_owner(tenant, kb, source_id), _is("ready", _TRUE)])
        found: list[Any] = []
        offset = None
        while len(found) < limit:
            request = ScrollRequest(limit=min(_BATCH, limit - len(found)), filter=selected,
                                    with_payload=True, offset=offset)
            page, offset = self._call(self._shard.scroll, request)
            found.extend(page)
            if offset is None or not page:
                break
        return sorted((chunk_record(p.payload or {}) for p in found),
                      key=lambda c: c["ordinal"])

    def count_missing(self, name: str) -> int:
        """How many points lack the named vector."""
        if name not in self.extra:
            return int(self._call(self._shard.count, CountRequest(exact=True)))
        request = CountRequest(exact=True, filter=Filter(must_not=[HasVectorCondition(name)]))
        return int(self._call(self._shard.count, request))

    def set_vectors(self, name: str, vectors: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Store the named vector of existing points (id, vector); points gone meanwhile are skipped."""
        want = self.extra.get(name)
        if want is None:
            raise ConfigError(f"the vector store in {self.path} has no vector {name!r}")
        items = [(canonical_id(i), [float(x) for x in v]) for i, v in vectors]
        if any(len(v) != want for _, v in items):
            raise ValueError(f"a {name!r} vector does not have {want} dimensions")
        with self._lock:  # writes are serialised: no delete can fall between the two calls
            present = {str(r.id) for r in self._call(
                self._shard.retrieve, [i for i, _ in items], False, False)}
            update = [PointVectors(i, {name: v}) for i, v in items if i in present]
            if update:
                self._call(self._shard.update, UpdateOperation.update_vectors(update))

    def _query(self, query: Query, tenant: str, kbs: Sequence[str], limit: int,
               source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Run one scoped query and turn the scored points into hits."""
        request = QueryRequest(limit=limit, query=query, filter=_scope(tenant, kbs, source_ids),
                               with_payload=True)
        found = self._call(self._shard.query, request)
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
                for p in found]

    def count(self, tenant: str | None = None, kb: str | None = None,
              source_id: str | None = None, ready_only: bool = True) -> int:
        """How many points match."""
        must = [_is(key, value) for key, value in
                (("tenant", tenant), ("kb", kb), ("source_id", source_id)) if value is not None]
        if ready_only:
            must.append(_is("ready", _TRUE))
        request = CountRequest(exact=True, filter=Filter(must=must) if must else None)
        return int(self._call(self._shard.count, request))

    def optimize(self) -> bool:
        """Build the HNSW index and merge segments; blocks writes while it runs (can take minutes)."""
        with self._lock:
            return bool(self._call(self._shard.optimize))

    def close(self) -> None:
        """Flush and release the store."""
        with self._lock:
            if self._closed:
                return
            try:
                self._shard.flush()
                self._shard.close()
            except Exception as exc:
                raise StorageError(f"cannot close the vector store in {self.path}: {exc}") from exc
            finally:
                self._closed = True
            log.debug("closed the vector store in %s", self.path)
