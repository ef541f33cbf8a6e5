"""Hybrid retrieval: dense and BM25 results fused with RRF, gated by relevance, de-duplicated.

Two gates: `relevant` (e5 cosine and keywords only, used when no cross-lingual vector is there
to ask) and `gate` (the cross-lingual cosine and whether the rankings agree; see Gate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from bot.types import Passage
from knowledge.types import Hit

RRF_K = 60


@dataclass(frozen=True)
class Candidate:
    """A fused result: the point, its RRF score and its dense cosine when known."""

    hit: Hit
    score: float
    dense: float | None
    xling: float | None = None  # its cross-lingual cosine, when that ranking returned it


@dataclass(frozen=True)
class Ranking:
    """One ranked list to fuse, with its RRF weight."""

    hits: Sequence[Hit]
    weight: float = 1.0


def fuse(dense: Ranking, xling: Ranking, sparse: Ranking, k: float) -> list[Candidate]:
    """Weighted reciprocal-rank fusion of the e5, cross-lingual and BM25 rankings, best first."""
    scores: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    for ranking in (dense, xling, sparse):
        for rank, hit in enumerate(ranking.hits):
            scores[hit.id] = scores.get(hit.id, 0.0) + ranking.weight / (k + rank + 1)
            hits.setdefault(hit.id, hit)
    cosine = {h.id: h.score for h in dense.hits}
    xcosine = {h.id: h.score for h in xling.hits}
    ordered = sorted(scores, key=lambda i: -scores[i])
    return [Candidate(hits[i], scores[i], cosine.get(i), xcosine.get(i)) for i in ordered]


@dataclass(frozen=True)
class Gate:
    """When the knowledge base answers a question, from the cross-lingual ranking.

    The cross-lingual model's top cosine separates questions the documents answer from most
    they do not (e5's does not: its cosines are compressed into 0.75-0.93 for everything).
    Below `floor` the question is declined; at `sure` or above it is answered. In between
    (questions near the documents' topics, answered or not) it is answered only when the
    rankings agree and the words back it: the best fused passage is within the first
    `agree_depth` of at least two of the three rankings, and the best BM25 score per query term
    reaches `lexical` (the question names things the documents contain, not only common
    words). A kept passage must also be within `spread` of the best cross-lingual cosine
    (passages only another ranking found are kept).
    """

    floor: float
    sure: float
    agree_depth: int
    spread: float
    lexical: float = 0.0


def gate(candidates: Sequence[Candidate], dense: Sequence[Hit], xling: Sequence[Hit],
         sparse: Sequence[Hit], rule: Gate, terms: int) -> list[Candidate]:
    """The candidates worth citing, or none when the question is not in the knowledge base.

    `terms` is how many distinct terms the question's BM25 vector has.
    """
    if not xling or not candidates:
        return []
    best = xling[0].score
    if best < rule.floor:
        return []
    if best < rule.sure:
        top = candidates[0].hit.id
        votes = sum(top in {h.id for h in ranking[:rule.agree_depth]}
                    for ranking in (dense, xling, sparse))
        words = sparse[0].score / max(1, terms) if sparse else 0.0
        if votes < 2 or words < rule.lexical:
            return []
    return [c for c in candidates if c.xling is None or c.xling >= best - rule.spread]


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


def interleave(lists: Sequence[Sequence[Passage]], top_k: int) -> list[Passage]:
    """The first of each list, then the second of each, ...: distinct passages, at most top_k."""
    out: list[Passage] = []
    seen: set[tuple[str, str]] = set()
    for rank in range(max((len(x) for x in lists), default=0)):
        for passages in lists:
            if rank < len(passages):
                p = passages[rank]
                if (p.source_id, p.text) not in seen:
                    seen.add((p.source_id, p.text))
                    out.append(p)
                if len(out) >= top_k:
                    return out
    return out
