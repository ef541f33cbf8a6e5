"""The scale-out vector store: a Qdrant server or cluster, spoken to through qdrant-client.

The same schema and semantics as the embedded EdgeStore: named vectors "dense" (cosine) and
"bm25" (sparse, IDF modifier), keyword indexes on tenant (is_tenant=True), kb, source_id and
version, a bool index on ready, and every search filtered to ready points of one tenant's listed
knowledge bases. Mutations wait for the server to apply them (wait=True), so a publish is
visible to the next search.

The store owns the client: `close()` closes it. A server client (HTTP or gRPC) is thread-safe
and is used from several threads at once; qdrant-client's local mode (`QdrantClient(path=...)`
or `":memory:"`, used by the tests) is plain Python without locking, so for it every call is
serialised by a lock. Local mode ignores payload indexes (and warns; the warning is silenced).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from typing import Any, Callable, ContextManager, Sequence, TypeVar

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from bot.errors import ConfigError, StorageError
from knowledge.edge_store import (
    DENSE,
    KEYWORD_FIELDS,
    SPARSE,
    canonical_id,
    check_delete_args,
    check_point,
    check_vector_name,
)
from knowledge.types import Hit, Point, SparseVector
from knowledge.vectorstore import VectorStore, chunk_record, named_query_ok

try:  # gRPC errors surface as-is when the client is built with prefer_grpc=True
    from grpc import RpcError as _RpcError
except ImportError:  # pragma: no cover - grpcio is a dependency of qdrant-client
    class _RpcError(Exception):  # type: ignore[no-redef]
        """Stand-in when grpcio is missing."""

log = logging.getLogger(__name__)

_BATCH = 256
_SDK_ERRORS = (ApiException, _RpcError)
_LOCAL_INDEX_WARNING = "Payload indexes have no effect in the local Qdrant"

T = TypeVar("T")


def _is(key: str, value: Any) -> models.FieldCondition:
    """Condition: payload `key` equals `value`."""
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _owner(tenant: str, kb: str, source_id: str | None = None,
           version: str | None = None) -> list[models.Condition]:
    """Conditions selecting a knowledge base, a source in it, or one version of that source."""
    conditions: list[models.Condition] = [_is("tenant", tenant), _is("kb", kb)]
    if source_id is not None:
        conditions.append(_is("source_id", source_id))
    if version is not None:
        conditions.append(_is("version", version))
    return conditions


def _scope(tenant: str, kbs: Sequence[str], source_ids: Sequence[str] | None = None
           ) -> models.Filter:
    """The filter of every search: ready, this tenant, one of these knowledge bases (and, if
    given, one of these sources)."""
    must: list[models.Condition] = [
        _is("ready", True), _is("tenant", tenant),
        models.FieldCondition(key="kb", match=models.MatchAny(any=list(kbs))),
    ]
    if source_ids is not None:
        must.append(models.FieldCondition(key="source_id",
                                          match=models.MatchAny(any=list(source_ids))))
    return models.Filter(must=must)


def _is_local(client: QdrantClient) -> bool:
    """Whether the client runs qdrant-client's in-process local mode rather than a server."""
    options = getattr(client, "init_options", {}) or {}
    return options.get("location") == ":memory:" or options.get("path") is not None


class QdrantServerStore(VectorStore):
    """VectorStore on one collection of a Qdrant server (created on first use)."""

    def __init__(self, client: QdrantClient, dim: int, collection: str = "knowbot") -> None:
        """Use `collection` through `client` (owned from now on), creating it if missing."""
        self.client = client
        self.dim = dim
        self.collection = collection
        self._closed = False
        self.extra: dict[str, int] = {}  # named vectors beyond "dense": name -> dimensions
        self._local = _is_local(client)
        self._lock: ContextManager[Any] = (
            threading.RLock() if self._local else contextlib.nullcontext()
        )
        self._ensure_collection()

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None, dim: int = 384,
                 collection: str = "knowbot") -> QdrantServerStore:
        """Connect to the Qdrant server at `url` and use (or create) `collection`."""
        return cls(QdrantClient(url=url, api_key=api_key), dim, collection)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, translating the SDK's errors into StorageError."""
        if self._closed:
            raise StorageError("the vector store is closed")
        try:
            with self._lock:
                return fn(*args, **kwargs)
        except _SDK_ERRORS as exc:
            raise StorageError(f"Qdrant collection {self.collection!r}: {exc}") from exc

    def _ensure_collection(self) -> None:
        """Create the collection and its payload indexes, or check the existing one fits."""
        if not self._call(self.client.collection_exists, self.collection):
            try:
                self._call(
                    self.client.create_collection, self.collection,
                    vectors_config={DENSE: models.VectorParams(size=self.dim,
                                                               distance=models.Distance.COSINE)},
                    sparse_vectors_config={SPARSE: models.SparseVectorParams(
                        modifier=models.Modifier.IDF)},
                )
                log.info("created Qdrant collection %s (dim %d)", self.collection, self.dim)
            except StorageError as exc:  # another replica created it first
                cause = exc.__cause__
                if not (isinstance(cause, UnexpectedResponse) and cause.status_code == 409):
                    raise
        info = self._call(self.client.get_collection, self.collection)
        self._check_fits(info)
        vectors = info.config.params.vectors
        self.extra = {name: int(params.size) for name, params in vectors.items()
                      if name != DENSE} if isinstance(vectors, dict) else {}
        wanted: dict[str, Any] = {
            field: models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD)
            for field in KEYWORD_FIELDS
        }
        wanted["tenant"] = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD,
                                                     is_tenant=True)
        wanted["ready"] = models.PayloadSchemaType.BOOL
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LOCAL_INDEX_WARNING)
            for field, schema in wanted.items():
                if field not in (info.payload_schema or {}):
                    self._call(self.client.create_payload_index, self.collection, field,
                               field_schema=schema, wait=True)

    def _check_fits(self, info: models.CollectionInfo) -> None:
        """Refuse a collection whose vectors differ from the schema (a ConfigError)."""
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        sparse = info.config.params.sparse_vectors or {}
        if dense is None or dense.size != self.dim or SPARSE not in sparse:
            raise ConfigError(
                f"Qdrant collection {self.collection!r} exists but lacks a {self.dim}-dim "
                f"{DENSE!r} vector or a {SPARSE!r} sparse vector; use another collection name"
            )

    def add_vector(self, name: str, dim: int) -> None:
        """Make sure the named dense vector exists (added in place: Qdrant 1.18 or later)."""
        check_vector_name(name)
        have = self.extra.get(name)
        if have == dim:
            return
        if have is not None:
            raise ConfigError(f"Qdrant collection {self.collection!r} has a {have}-dim {name!r} "
                              f"vector, not {dim}")
        config = models.DenseVectorNameConfig(
            dense=models.DenseVectorConfig(size=dim, distance=models.Distance.COSINE))
        try:
            self._call(self.client.create_vector_name, self.collection, name, config, wait=True)
        except StorageError as exc:  # another replica added it first, or an older server
            info = self._call(self.client.get_collection, self.collection)
            vectors = info.config.params.vectors
            if not (isinstance(vectors, dict) and name in vectors):
                raise StorageError(f"cannot add the vector {name!r} to Qdrant collection "
                                   f"{self.collection!r} (a server before 1.18 cannot): "
                                   f"{exc}") from exc
        self.extra = {**self.extra, name: dim}
        log.info("added the %d-dim vector %s to Qdrant collection %s", dim, name, self.collection)

    def upsert(self, points: Sequence[Point]) -> None:
        """Write points (new ones arrive with payload ready=False)."""
        structs = []
        for point in points:
            payload = check_point(point, self.dim, self.extra)
            vector: dict[str, Any] = {DENSE: [float(x) for x in point.dense]}
            for name, extra in point.extra.items():
                vector[name] = [float(x) for x in extra]
            if point.sparse.indices:
                vector[SPARSE] = models.SparseVector(indices=list(point.sparse.indices),
                                                     values=list(point.sparse.values))
            structs.append(models.PointStruct(id=canonical_id(point.id), vector=vector,
                                              payload=payload))
        for start in range(0, len(structs), _BATCH):
            self._call(self.client.upsert, self.collection, structs[start:start + _BATCH],
                       wait=True)

    def publish(self, tenant: str, kb: str, source_id: str, version: str) -> None:
        """Make one version of a source visible to searches (ready=True)."""
        selected = models.Filter(must=_owner(tenant, kb, source_id, version))
        self._call(self.client.set_payload, self.collection, {"ready": True},
                   points=selected, wait=True)

    def delete(self, tenant: str, kb: str, source_id: str | None = None,
               version: str | None = None, keep_version: str | None = None) -> None:
        """Delete a knowledge base's points, or a source's, or one version, or all but one."""
        check_delete_args(source_id, version, keep_version)
        must_not = [_is("version", keep_version)] if keep_version is not None else None
        selected = models.Filter(must=_owner(tenant, kb, source_id, version), must_not=must_not)
        self._delete(selected)

    def delete_unready(self, tenant: str | None = None) -> None:
        """Remove points of ingests that never finished (run at start-up)."""
        must = [_is("tenant", tenant)] if tenant is not None else None
        self._delete(models.Filter(must=must, must_not=[_is("ready", True)]))

    def _delete(self, selected: models.Filter) -> None:
        """Delete the points a filter selects, waiting until it is applied."""
        self._call(self.client.delete, self.collection,
                   points_selector=models.FilterSelector(filter=selected), wait=True)

    def search_dense(self, vector: Sequence[float], tenant: str, kbs: Sequence[str],
                     limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Nearest ready points by cosine, within the tenant's listed knowledge bases."""
        if len(vector) != self.dim:
            raise ValueError(f"query vector has {len(vector)} dimensions, the store has {self.dim}")
        if not kbs or limit <= 0 or source_ids == []:
            return []
        return self._query([float(x) for x in vector], DENSE, tenant, kbs, limit, source_ids)

    def search_sparse(self, vector: SparseVector, tenant: str, kbs: Sequence[str],
                      limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Best ready points by BM25 (IDF applied by the engine), within the scope."""
        if not kbs or limit <= 0 or not vector.indices or source_ids == []:
            return []
        query = models.SparseVector(indices=list(vector.indices), values=list(vector.values))
        return self._query(query, SPARSE, tenant, kbs, limit, source_ids)

    def search_vector(self, name: str, vector: Sequence[float], tenant: str, kbs: Sequence[str],
                      limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Nearest ready points by cosine on a named vector, within the scope."""
        if not named_query_ok(self.extra, name, vector, kbs, limit) or source_ids == []:
            return []
        return self._query([float(x) for x in vector], name, tenant, kbs, limit, source_ids)

    def _lacking(self, name: str) -> models.Filter:
        """Points without the named vector."""
        return models.Filter(must_not=[models.HasVectorCondition(has_vector=name)])

    def missing_vector(self, name: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` points lacking the named vector, as (point id, chunk text)."""
        if name not in self.extra:
            raise ConfigError(f"Qdrant collection {self.collection!r} has no vector {name!r}")
        found, _ = self._call(self.client.scroll, self.collection,
                              scroll_filter=self._lacking(name), limit=limit,
                              with_payload=["text"], with_vectors=False)
        return [(str(p.id), str((p.payload or {}).get("text", ""))) for p in found]

    def chunks(self, tenant: str, kb: str, source_id: str, limit: int = 2000
               ) -> list[dict[str, Any]]:
        """A source's ready chunks (text, location, ordinal, version), in document order."""
        selected = models.Filter(must=[*_owner(tenant, kb, source_id), _is("ready", True)])
        found: list[Any] = []
        offset = None
        while len(found) < limit:
            page, offset = self._call(self.client.scroll, self.collection,
                                      scroll_filter=selected, limit=min(256, limit - len(found)),
                                      offset=offset, with_payload=True, with_vectors=False)
            found.extend(page)
            if offset is None or not page:
                break
        return sorted((chunk_record(p.payload or {}) for p in found),
                      key=lambda c: c["ordinal"])

    def count_missing(self, name: str) -> int:
        """How many points lack the named vector."""
        selected = self._lacking(name) if name in self.extra else None
        result = self._call(self.client.count, self.collection, count_filter=selected, exact=True)
        return int(result.count)

    def set_vectors(self, name: str, vectors: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Store the named vector of existing points (id, vector); points gone meanwhile are skipped."""
        want = self.extra.get(name)
        if want is None:
            raise ConfigError(f"Qdrant collection {self.collection!r} has no vector {name!r}")
        items = [(canonical_id(i), [float(x) for x in v]) for i, v in vectors]
        if any(len(v) != want for _, v in items):
            raise ValueError(f"a {name!r} vector does not have {want} dimensions")
        for attempt in range(3):  # a point deleted by another replica meanwhile fails the batch
            found = self._call(self.client.retrieve, self.collection, [i for i, _ in items],
                               with_payload=False, with_vectors=False)
            present = {str(p.id) for p in found}
            update = [models.PointVectors(id=i, vector={name: v}) for i, v in items if i in present]
            if not update:
                return
            try:
                self._call(self.client.update_vectors, self.collection, update, wait=True)
                return
            except StorageError:
                if attempt == 2:
                    raise

    def _query(self, query: Any, using: str, tenant: str, kbs: Sequence[str],
               limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Run one scoped query and turn the scored points into hits."""
        response = self._call(self.client.query_points, self.collection, query=query,
                              using=using, query_filter=_scope(tenant, kbs, source_ids),
                              limit=limit,
                              with_payload=True)
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
                for p in response.points]

    def count(self, tenant: str | None = None, kb: str | None = None,
              source_id: str | None = None, ready_only: bool = True) -> int:
        """How many points match."""
        must: list[models.Condition] = [
            _is(key, value) for key, value in
            (("tenant", tenant), ("kb", kb), ("source_id", source_id)) if value is not None
        ]
        if ready_only:
            must.append(_is("ready", True))
        result = self._call(self.client.count, self.collection,
                            count_filter=models.Filter(must=must) if must else None, exact=True)
        return int(result.count)

    def close(self) -> None:
        """Flush and release the store (closes the client; local mode releases its folder)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            try:
                self.client.close()
            except _SDK_ERRORS as exc:
                raise StorageError(f"cannot close the Qdrant client: {exc}") from exc
