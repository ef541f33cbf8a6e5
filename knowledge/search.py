"""Hybrid retrieval: dense and BM25 results fused with RRF, gated by relevance, de-duplicated."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from knowledge.types import Hit

RRF_K = 60


@dataclass(frozen=True)
class Candidate:
    """A fused result: the point, its RRF score and its dense cosine when known."""

    hit: Hit
    score: float
    dense: float | None


def rrf(dense: Sequence[Hit], sparse: Sequence[Hit], k: int = RRF_K) -> list[Candidate]:
    """Reciprocal-rank fusion of the dense and sparse rankings, best first."""
    scores: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    cosine: dict[str, float] = {}
    for rank, hit in enumerate(dense):
        scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank + 1)
        hits.setdefault(hit.id, hit)
        cosine[hit.id] = hit.score
    for rank, hit in enumerate(sparse):
        scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank + 1)
        hits.setdefault(hit.id, hit)
    ordered = sorted(scores, key=lambda i: -scores[i])
    return [Candidate(hits[i], scores[i], cosine.get(i)) for i in ordered]


_WORD = re.compile(r"[\w\u4e00-\u9fff]+")


def _shingles(text: str) -> set[str]:
    flat = "".join(_WORD.findall(text.lower()))
    if len(flat) < 5:
        return {flat}
    return {flat[i : i + 5] for i in range(len(flat) - 4)}


def collapse_near_duplicates(candidates: Sequence[Candidate], threshold: float = 0.85,
                             limit: int | None = None) -> list[Candidate]:
    """Drop candidates whose text nearly repeats a better one (Jaccard of 5-gram shingles).

    Stops once `limit` distinct candidates are kept.
    """
    kept: list[tuple[Candidate, set[str]]] = []
    for cand in candidates:
        if limit is not None and len(kept) >= limit:
            break
        grams = _shingles(str(cand.hit.payload.get("text", "")))
        duplicate = False
        for _, other in kept:
            union = len(grams | other)
            if union and len(grams & other) / union >= threshold:
                duplicate = True
                break
        if not duplicate:
            kept.append((cand, grams))
    return [c for c, _ in kept]


def relevant(candidates: Sequence[Candidate], best_dense: float, min_score: float,
             semantic_min_score: float, lexical: bool, margin: float = 0.04,
             spread: float = 0.07) -> list[Candidate]:
    """Keep candidates only when the best dense match clears the bar; drop ones far below it.

    Cosines of e5-style models are compressed: unrelated text still scores 0.75-0.85, most of
    all between texts in the same language. So a question that shares no keyword with the
    documents (`lexical` false) must clear the higher `semantic_min_score`, and every candidate
    must also be within `spread` of the best match, not only above the floor.
    """
    if best_dense < (min_score if lexical else semantic_min_score):
        return []
    floor = max(min_score - margin, best_dense - spread)
    return [c for c in candidates if c.dense is None or c.dense >= floor]
