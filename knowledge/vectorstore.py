"""The VectorStore interface: one schema, two Qdrant backends (embedded Edge and server).

Every point carries a payload with `tenant`, `kb`, `source_id`, `version`, `ready`, `title`,
`location`, `text`, `url` and `ordinal`. Searches only ever see points whose `ready` is true and
whose tenant and knowledge base are in the caller's scope; ingest writes a new version's points
unready, publishes them in one step, then removes the old version: all of a source or none.

Beside "dense" (the e5 vector) and "bm25", a store may hold more named dense vectors (the
cross-lingual one, named after its model). `add_vector` adds one in place to a store made before
it existed; points written before then lack it until `set_vectors` fills them from their text
(`missing_vector` lists them), so a reindex is resumable: whatever was filled stays filled.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from knowledge.types import Hit, Point, SparseVector


def named_query_ok(extra: dict[str, int], name: str, vector: Sequence[float],
                   kbs: Sequence[str], limit: int) -> bool:
    """Whether a search on a named vector has anything to do (ValueError on a wrong size)."""
    want = extra.get(name)
    if want is None:
        return False  # not added (yet): nothing carries it
    if len(vector) != want:
        raise ValueError(f"query vector has {len(vector)} dimensions, {name!r} has {want}")
    return bool(kbs) and limit > 0


def chunk_record(payload: dict[str, Any]) -> dict[str, Any]:
    """A stored chunk as the console shows it."""
    try:
        ordinal = int(payload.get("ordinal", 0))
    except (TypeError, ValueError):
        ordinal = 0
    return {"ordinal": ordinal, "text": str(payload.get("text", "")),
            "location": str(payload.get("location", "")), "version": str(payload.get("version", ""))}


class VectorStore(Protocol):
    """Dense + sparse vectors with payload filters; blocking calls (callers use to_thread)."""

    def upsert(self, points: Sequence[Point]) -> None:
        """Write points (new ones arrive with payload ready=False)."""
        ...

    def publish(self, tenant: str, kb: str, source_id: str, version: str) -> None:
        """Make one version of a source visible to searches (ready=True)."""
        ...

    def delete(self, tenant: str, kb: str, source_id: str | None = None,
               version: str | None = None, keep_version: str | None = None) -> None:
        """Delete a knowledge base's points, or a source's, or one version, or all but one."""
        ...

    def delete_unready(self, tenant: str | None = None) -> None:
        """Remove points of ingests that never finished (run at start-up)."""
        ...

    def search_dense(self, vector: Sequence[float], tenant: str, kbs: Sequence[str],
                     limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Nearest ready points by cosine, within the tenant's listed knowledge bases."""
        ...

    def search_sparse(self, vector: SparseVector, tenant: str, kbs: Sequence[str],
                      limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Best ready points by BM25 (IDF applied by the engine), within the scope."""
        ...

    def add_vector(self, name: str, dim: int) -> None:
        """Make sure the named dense vector exists (added in place to an older store)."""
        ...

    def search_vector(self, name: str, vector: Sequence[float], tenant: str, kbs: Sequence[str],
                      limit: int, source_ids: Sequence[str] | None = None) -> list[Hit]:
        """Nearest ready points by cosine on a named vector, within the scope.

        In all three searches `source_ids`, when given, narrows the scope to those sources
        (the search ranks every chunk of a document the names ranking picked out)."""
        ...

    def missing_vector(self, name: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` points lacking the named vector, as (point id, chunk text)."""
        ...

    def chunks(self, tenant: str, kb: str, source_id: str, limit: int = 2000
               ) -> list[dict[str, Any]]:
        """A source's ready chunks as `chunk_record`s, in document order (at most `limit`)."""
        ...

    def count_missing(self, name: str) -> int:
        """How many points lack the named vector."""
        ...

    def set_vectors(self, name: str, vectors: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Store the named vector of existing points (id, vector); points gone meanwhile are skipped."""
        ...

    def count(self, tenant: str | None = None, kb: str | None = None,
              source_id: str | None = None, ready_only: bool = True) -> int:
        """How many points match."""
        ...

    def close(self) -> None:
        """Flush and release the store."""
        ...
