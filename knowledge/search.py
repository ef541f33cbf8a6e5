"""Hybrid retrieval: dense and BM25 results fused with RRF, gated by relevance, de-duplicated.

The rankings: e5 dense, the cross-lingual dense vector, BM25 of the question, BM25 of the
question written out word by word in the other language (knowledge/dictionary.py), and the
names ranking (`by_names`: the candidates of the others that contain the question's names).

Two gates: `relevant` (e5 cosine and keywords only, used when no cross-lingual vector is there
to ask) and `gate` (the cross-lingual cosine, whether the rankings agree, and whether the
passages mention what the question names; see Gate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from bot.types import Passage
from knowledge.dictionary import names_matched
from knowledge.langs import script_of
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
    """One ranked list to fuse, with its RRF weight.

    With `language` set (the question's script, "zh" or "en"), a hit whose text is in another
    script gets `other_weight` instead: the cross-lingual ranking is the only one that finds
    passages in the other language, so its vote for them counts more.
    """

    hits: Sequence[Hit]
    weight: float = 1.0
    other_weight: float | None = None
    language: str = ""

    def weight_of(self, hit: Hit) -> float:
        """This hit's weight in the fusion."""
        if self.other_weight is None or not self.language:
            return self.weight
        script = script_of(str(hit.payload.get("text", "")))
        return self.other_weight if script and script != self.language else self.weight


def fuse(dense: Ranking, xling: Ranking, sparse: Ranking, k: float,
         *more: Ranking) -> list[Candidate]:
    """Weighted reciprocal-rank fusion of the e5, cross-lingual and BM25 rankings (and any
    more, such as BM25 of the question translated by dictionary), best first."""
    scores: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    for ranking in (dense, xling, sparse, *more):
        for rank, hit in enumerate(ranking.hits):
            scores[hit.id] = scores.get(hit.id, 0.0) + ranking.weight_of(hit) / (k + rank + 1)
            hits.setdefault(hit.id, hit)
    cosine = {h.id: h.score for h in dense.hits}
    xcosine = {h.id: h.score for h in xling.hits}
    ordered = sorted(scores, key=lambda i: -scores[i])
    return [Candidate(hits[i], scores[i], cosine.get(i), xcosine.get(i)) for i in ordered]


def name_counts(candidates: Sequence[Candidate], names: Sequence[tuple[str, ...]]) -> list[int]:
    """How many of the question's names each candidate contains (its title counting)."""
    wanted = list(names)
    return [names_matched(wanted, _name_text(c.hit)) for c in candidates] if wanted else \
        [0] * len(candidates)


def by_names(candidates: Sequence[Candidate], names: Sequence[tuple[str, ...]],
             limit: int = 20, counts: Sequence[int] | None = None) -> list[Hit]:
    """A ranking of the candidates that contain the most of the question's names (in either
    language: knowledge/dictionary.py `names`), in their fused order; empty when none does.

    Dense models find the right kind of passage but barely tell two documents apart that
    differ only in a name (the Berlin and the Lisbon travel policy, one product from another);
    a name is a keyword that must be there. The document's title counts as part of every
    passage: a policy names its office in the title, not in every paragraph.
    """
    if not names:
        return []
    if counts is None:  # `name_counts`, when the caller has them already
        counts = name_counts(candidates, names)
    best = max(counts, default=0)
    if not best:
        return []
    return [c.hit for c, n in zip(candidates, counts) if n == best][:limit]


def named_sources(candidates: Sequence[Candidate], counts: Sequence[int],
                  limit: int, names: Sequence[tuple[str, ...]] = ()) -> list[str]:
    """The documents (source ids) the question's names point to, at most `limit`: with `names`
    given, those whose title holds the most of them first (a document titled with a name is
    about it; a passage of another may mention it in passing: "市场部 wants a demo video" in
    every Chinese handbook), then those whose candidates contain the most of the names (the
    title counting), then in fused order. Documents that contain fewer of the names than the
    best one still count: a question's common word taken for a name ("IP") can be missing from
    the answering document and present in an unrelated one. `counts`: `name_counts` of the
    candidates."""
    if limit <= 0:
        return []
    best: dict[str, int] = {}
    titled: dict[str, int] = {}
    wanted = list(names)
    for c, n in zip(candidates, counts):
        source = str(c.hit.payload.get("source_id", ""))
        if source and n and n > best.get(source, 0):
            best[source] = n
            if wanted and source not in titled:
                titled[source] = names_matched(wanted, str(c.hit.payload.get("title", "")))
    order = {source: i for i, source in enumerate(best)}  # first appearance: fused order
    return sorted(best, key=lambda source: (-titled.get(source, 0), -best[source],
                                            order[source]))[:limit]


def names_state(candidates: Sequence[Candidate], names: Sequence[tuple[str, ...]],
                terms: Sequence[tuple[str, ...]] = ()) -> str:
    """"found" (some candidate contains one of the question's names or terms), "unknown" (it
    has names and no candidate mentions any of them, nor of its terms) or "none" (neither).
    Terms (`Dictionary.terms`) only ever count when found."""
    wanted = [*names, *terms]
    if wanted and any(names_matched(wanted, _name_text(c.hit)) for c in candidates):
        return "found"
    return "unknown" if names else "none"


def _name_text(hit: Hit) -> str:
    return f"{hit.payload.get('title', '')}\n{hit.payload.get('text', '')}"


@dataclass(frozen=True)
class Gate:
    """When the knowledge base answers a question, from the cross-lingual and e5 rankings.

    The cross-lingual model's top cosine separates questions the documents answer from most
    they do not (e5's does not: its cosines are compressed into 0.75-0.93 for everything).
    Below `floor` the question is declined; at `sure` or above it is answered. In between
    (questions near the documents' topics, answered or not) it is answered only when the e5
    ranking agrees that one passage stands out: its best cosine is at least `peak` above the
    mean of its ranks 6 to 20 (a question the documents do not answer finds a flat list). With
    fewer than `PEAK_MIN_HITS` hits there is no list to judge and the question is answered.
    A kept passage must also be within `spread` of the best cross-lingual cosine (passages
    only another ranking found are kept, and so is e5's best).

    Names (see `names_state`) change the bar: a question naming something the passages
    contain ("the Berlin office", "the Lumio AB-123") is answered from `named_floor` on, with
    no peak asked for; one naming only things no passage mentions ("Paris", "the Champions
    League") is declined below `unknown_sure`. Questions without names keep floor/sure/peak.
    """

    floor: float
    sure: float
    peak: float
    spread: float
    named_floor: float | None = None  # None: names do not change the bar
    unknown_sure: float | None = None


PEAK_MIN_HITS = 8


def peak(dense: Sequence[Hit]) -> float | None:
    """How far e5's best cosine stands above its ranks 6-20; None for too short a list."""
    if len(dense) < PEAK_MIN_HITS:
        return None
    rest = [h.score for h in dense[5:20]]
    return dense[0].score - sum(rest) / len(rest)


def gate(candidates: Sequence[Candidate], dense: Sequence[Hit], xling: Sequence[Hit],
         rule: Gate, names: str = "none") -> list[Candidate]:
    """The candidates worth citing, or none when the question is not in the knowledge base.
    `names`: `names_state` of the question."""
    return gate_decision(candidates, dense, xling, rule, names)[0]


def gate_decision(candidates: Sequence[Candidate], dense: Sequence[Hit], xling: Sequence[Hit],
                  rule: Gate, names: str = "none") -> tuple[list[Candidate], str]:
    """`gate`'s candidates and, in words, why (the console's retrieval bench shows it)."""
    if not xling or not candidates:
        return [], "nothing found"
    best = xling[0].score
    top = dense[0].id if dense else None
    keep = f"; passages within {rule.spread:.2f} of it (and e5's best) are kept"
    # names move the bar: up when the question names only what no passage mentions, down when
    # the passages mention what it names
    bar = {"unknown": rule.unknown_sure, "found": rule.named_floor}.get(names)
    if bar is not None:
        said = ("no passage mentions the names the question asks about" if names == "unknown"
                else "passages mention the question's names")
        if best < bar:
            return [], (f"declined: {said}, and the best cross-lingual cosine {best:.3f} is "
                        f"below {bar:.3f}")
        return _within_spread(candidates, best, rule, top), (
            f"answered: {said}, and the cross-lingual cosine {best:.3f} is at or above "
            f"{bar:.3f}" + keep)
    if best < rule.floor:
        return [], (f"declined: the best cross-lingual cosine {best:.3f} is below the floor "
                    f"{rule.floor:.3f}")
    if best < rule.sure:
        stands_out = peak(dense)
        if stands_out is not None and stands_out < rule.peak:
            return [], (f"declined: cross-lingual cosine {best:.3f} is between the floor "
                        f"{rule.floor:.3f} and sure {rule.sure:.3f}, and e5's best stands only "
                        f"{stands_out:.3f} above its ranks 6-20 (needs {rule.peak:.3f})")
        why = (f"answered: cross-lingual cosine {best:.3f} is between the floor and sure, and "
               + (f"e5's best stands {stands_out:.3f} above its ranks 6-20"
                  if stands_out is not None else "too few hits to judge e5's peak"))
    else:
        why = f"answered: cross-lingual cosine {best:.3f} is at or above sure {rule.sure:.3f}"
    return _within_spread(candidates, best, rule, top), why + keep


def _within_spread(candidates: Sequence[Candidate], best: float, rule: Gate,
                   e5_top: str | None = None) -> list[Candidate]:
    """The candidates within `spread` of the best cross-lingual cosine, and always e5's best
    (`e5_top`, a point id): a table of specifications can score low with the cross-lingual
    model and still be e5's clear first in the question's own language."""
    return [c for c in candidates
            if c.xling is None or c.xling >= best - rule.spread or c.hit.id == e5_top]


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
            common = len(grams & other)  # |A u B| = |A| + |B| - |A n B|, without building it
            union = len(grams) + len(other) - common
            if union and common / union >= threshold:
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
    return relevant_decision(candidates, best_dense, min_score, semantic_min_score, lexical,
                             margin, spread)[0]


def relevant_decision(candidates: Sequence[Candidate], best_dense: float, min_score: float,
                      semantic_min_score: float, lexical: bool, margin: float = 0.04,
                      spread: float = 0.07) -> tuple[list[Candidate], str]:
    """`relevant`'s candidates and, in words, why."""
    bar = min_score if lexical else semantic_min_score
    kind = "shares keywords" if lexical else "shares no keyword"
    if best_dense < bar:
        return [], (f"declined: the question {kind}, and the best e5 cosine {best_dense:.3f} "
                    f"is below {bar:.3f}")
    floor = max(min_score - margin, best_dense - spread)
    kept = [c for c in candidates if c.dense is None or c.dense >= floor]
    return kept, (f"answered: the question {kind}, and the best e5 cosine {best_dense:.3f} "
                  f"clears {bar:.3f}; passages from e5 cosine {floor:.3f} are kept")


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
