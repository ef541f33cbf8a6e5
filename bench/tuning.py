"""Choosing RRF k, the fusion weights and the relevance gate on the bench's labelled questions.

Each question's four rankings (e5 dense, cross-lingual dense, BM25, and BM25 of the question
written out by dictionary in the other language; top 20 in the real scope, exactly what
`search_scope` asks the store for) are fetched once; every setting is then scored in Python with
the service's own `fuse`, `gate`/`relevant` and `collapse_near_duplicates`, so the grid costs no
model time. Printed: recall@5 per setting without a gate, the cross-lingual top cosine of
answerable and unanswerable questions, and the gate settings that decline the most unanswerable
questions while losing at most 2 % of the answerable ones.

Choosing on the questions a figure is reported on flatters it, so every choice is also made on
one half of the questions (alternate ones, in each bucket) and scored on the other half, both
ways round: the "held-out" figures are what to expect on questions the settings never saw.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bench.corpus import Question
from knowledge import search as search_module
from knowledge.dictionary import MIN_MATCHED, matched
from knowledge.langs import script_of
from knowledge.search import (
    Candidate,
    Gate,
    Ranking,
    by_names,
    collapse_near_duplicates,
    fuse,
    gate,
    names_state,
    relevant,
)
from knowledge.types import Hit

POOL = 20
NAMES_WEIGHT = 2.0  # the names ranking's weight in `fused` (tune() sets the configured one)
# the grid scores the same few thousand passages over and over: remember their shingles
search_module._shingles = functools.lru_cache(maxsize=None)(search_module._shingles)  # type: ignore[attr-defined]
KS = (2, 5, 8, 10, 15, 30, 60)
WEIGHTS = ((1, 1, 1), (1, 2, 1), (1, 2, 0.5), (1, 0, 1), (0, 1, 0), (1, 0, 0),
           (1, 1, 1, 2), (1, 1, 1, 3), (1, 0.5, 1, 2), (1, 0.5, 1, 3), (1, 0.5, 1, 4),
           (1, 1, 0.5, 3))


def norm(text: str) -> str:
    """Text compared for facts: NFKC, no whitespace, case-folded."""
    return "".join(unicodedata.normalize("NFKC", text).split()).casefold()


@dataclass(frozen=True)
class Lists:
    """One question's three rankings from the store."""

    question: Question
    dense: list[Hit]
    xling: list[Hit]
    sparse: list[Hit]
    dictionary: list[Hit]
    names: tuple[tuple[str, ...], ...] = ()  # the question's names (Dictionary.names)
    terms: tuple[tuple[str, ...], ...] = ()  # and its terms (Dictionary.terms)


async def collect(service: Any, questions: Sequence[Question], tenant: str,
                  kbs: Sequence[str]) -> list[Lists]:
    """The e5, cross-lingual and BM25 rankings of every question, top POOL, in the scope."""
    vectors = await service.vectors()
    e5 = await service.embedder()
    xl = await service.crosslingual()
    dictionary = await service.dictionary()
    xl_pool = max(POOL, service.settings.knowledge_crosslingual_pool)
    out = []
    for q in questions:
        dense_q = await asyncio.to_thread(e5.embed_query, q.text)
        xl_q = await asyncio.to_thread(xl.embed_query, q.text)
        sparse_q = service.sparse.encode_query(q.text)
        other = "en" if script_of(q.text) == "zh" else "zh"  # the corpus has both languages
        groups = dictionary.groups(q.text, other) if dictionary is not None else []
        written_out = " ".join(" ".join(group) for group in groups)
        dict_q = service.sparse.encode_query(written_out) if written_out.strip() else None
        by_dictionary = (vectors.search_sparse(dict_q, tenant, list(kbs), POOL)
                         if dict_q is not None and dict_q.indices else [])
        need = min(MIN_MATCHED, len(groups))  # as search_scope keeps them
        by_dictionary = [h for h in by_dictionary
                         if matched(groups, str(h.payload.get("text", ""))) >= need]
        out.append(Lists(
            q,
            vectors.search_dense(dense_q, tenant, list(kbs), POOL),
            vectors.search_vector(xl.vector_name, xl_q, tenant, list(kbs), xl_pool),
            vectors.search_sparse(sparse_q, tenant, list(kbs), POOL),
            by_dictionary,
            tuple(dictionary.names(q.text)) if dictionary is not None else (),
            tuple(dictionary.terms(q.text)) if dictionary is not None else ()))
    return out


def fused(lists: Lists, k: float, weights: Sequence[float], dictionary: float = 0.0,
          names: float | None = None) -> list[Candidate]:
    """The four rankings fused as search_scope fuses them, before any gate.

    `weights` are (e5, cross-lingual, BM25) or (e5, cross-lingual same-language, BM25,
    cross-lingual other-language); `dictionary` is the weight of the dictionary ranking for
    passages in the other language (0: off, as before it); `names` the weight of the names
    ranking (None: NAMES_WEIGHT, the one the tuning is run with; 0: off).
    """
    other = weights[3] if len(weights) > 3 else None
    language = script_of(lists.question.text)
    rankings = (Ranking(lists.dense, weights[0]),
                Ranking(lists.xling, weights[1], other, language),
                Ranking(lists.sparse, weights[2]), k,
                Ranking(lists.dictionary, 0.0, dictionary, language))
    result = fuse(*rankings)
    weight = NAMES_WEIGHT if names is None else names
    named = by_names(result, [*lists.names, *lists.terms]) if weight > 0 else []
    return fuse(*rankings, Ranking(named, weight)) if named else result


def passages(lists: Lists, k: float, weights: Sequence[float], rule: Gate | None,
             e5_floors: tuple[float, float] | None = None, dictionary: float = 0.0,
             candidates: list[Candidate] | None = None) -> list[Hit]:
    """What search_scope returns for these rankings under one setting (top 5); `candidates`:
    the fused list when already made."""
    result = candidates if candidates is not None else fused(lists, k, weights, dictionary)
    if rule is not None:
        result = gate(result, lists.dense, lists.xling, rule,
                      names_state(result, lists.names, lists.terms))
    elif e5_floors is not None:
        best = max((h.score for h in lists.dense), default=0.0)
        result = relevant(result, best, e5_floors[0], e5_floors[1],
                          lexical=any(h.score > 0 for h in lists.sparse))
    return [c.hit for c in collapse_near_duplicates(result, limit=5)]


@dataclass(frozen=True)
class Score:
    """Recall@5 by kind of question, and what the gate declined."""

    same: float
    cross: float
    declined_unanswerable: float
    declined_answerable: float


def score(all_lists: Sequence[Lists], results: Sequence[list[Hit]],
          source_ids: dict[str, str]) -> Score:
    """Score one setting's results against the labels."""
    same = cross = same_n = cross_n = 0
    none_declined = none_n = lost = answerable_n = 0
    for lists, hits in zip(all_lists, results):
        q = lists.question
        if not q.answerable:
            none_n += 1
            none_declined += not hits
            continue
        answerable_n += 1
        lost += not hits
        found = any(h.payload.get("source_id") == source_ids[q.doc]
                    and norm(q.fact) in norm(str(h.payload.get("text", ""))) for h in hits)
        if q.lang == q.doc_lang:
            same_n += 1
            same += found
        else:
            cross_n += 1
            cross += found
    return Score(same / max(1, same_n), cross / max(1, cross_n),
                 none_declined / max(1, none_n), lost / max(1, answerable_n))


def halves(all_lists: Sequence[Lists]) -> tuple[list[Lists], list[Lists]]:
    """The questions in two halves, alternate ones of each bucket (en, zh, en->zh, ..., none)."""
    seen: dict[str, int] = {}
    first, second = [], []
    for x in all_lists:
        bucket = x.question.bucket
        (first if seen.get(bucket, 0) % 2 == 0 else second).append(x)
        seen[bucket] = seen.get(bucket, 0) + 1
    return first, second


def _fusion_grid(all_lists: Sequence[Lists], source_ids: dict[str, str],
                 dictionaries: Sequence[float]) -> list[tuple[float, Score, float, tuple, float]]:
    rows = []
    for weights, k, d in itertools.product(WEIGHTS, KS, dictionaries):
        s = score(all_lists, [passages(x, k, weights, None, dictionary=d) for x in all_lists],
                  source_ids)
        rows.append((s.same + s.cross, s, k, weights, d))
    return rows


def _gate_grid(all_lists: Sequence[Lists], source_ids: dict[str, str], k: float,
               weights: Sequence[float], d: float) -> list[tuple[Score, Gate]]:
    candidates = []
    made = [fused(x, k, weights, d) for x in all_lists]  # the gate does not change the fusion
    floors = [round(0.10 + 0.04 * i, 2) for i in range(7)]
    for floor, extra, stands_out, named, unknown in itertools.product(
            floors, (0, 0.1, 0.15, 0.2, 0.3), (0.02, 0.03, 0.04), (None, 0.15, 0.2, 0.25),
            (None, 0.4, 0.5)):
        rule = Gate(floor, round(floor + extra, 2), stands_out, 0.25, named, unknown)
        s = score(all_lists, [passages(x, k, weights, rule, candidates=c)
                              for x, c in zip(all_lists, made)], source_ids)
        candidates.append((s, rule))
    return candidates


def _best_gate(candidates: list[tuple[Score, Gate]]) -> tuple[Score, Gate] | None:
    fit = [c for c in candidates if c[0].declined_answerable <= 0.02]
    fit.sort(key=lambda c: (-c[0].declined_unanswerable, -(c[0].same + c[0].cross),
                            c[0].declined_answerable))
    return fit[0] if fit else None


def tune(all_lists: Sequence[Lists], source_ids: dict[str, str], settings: Any) -> None:
    """Print the fusion grid, the cosine distributions and the best gate settings, each also
    chosen on one half of the questions and scored on the other."""
    k, weights = settings.knowledge_rrf_k, (settings.knowledge_weight_dense,
                                            settings.knowledge_weight_crosslingual,
                                            settings.knowledge_weight_bm25,
                                            settings.knowledge_weight_crosslingual_other)
    d = settings.knowledge_weight_dictionary if settings.knowledge_dictionary else 0.0
    global NAMES_WEIGHT
    NAMES_WEIGHT = settings.knowledge_weight_names if settings.knowledge_dictionary else 0.0
    print(f"names ranking weight {NAMES_WEIGHT} (in every row below)")
    for nw in (0.0, 1.0, 2.0, 3.0):
        s = score(all_lists, [passages(x, k, weights, None, dictionary=d,
                                       candidates=fused(x, k, weights, d, nw)) for x in all_lists],
                  source_ids)
        print(f"  names weight {nw}: same {s.same:.3f}, cross {s.cross:.3f}")
    print(f"fusion grid (no gate), dictionary ranking weight {d}: recall@5 same-language / "
          "cross-language; weights are (e5, cross-lingual, BM25) or (e5, cross-lingual for "
          "same-language passages, BM25, cross-lingual for other-language passages)")
    for w in WEIGHTS:
        cells = []
        for kk in KS:
            s = score(all_lists, [passages(x, kk, w, None, dictionary=d) for x in all_lists],
                      source_ids)
            cells.append(f"{s.same:.3f}/{s.cross:.3f}")
        print(f"  w={str(w):<15} " + "  ".join(f"k={kk}: {c}" for kk, c in zip(KS, cells)))
    print(f"the dictionary ranking at k={k}, weights={weights} (0: without it, as before):")
    for dw in (0.0, 1.0, 1.5, 2.0, 3.0):
        s = score(all_lists, [passages(x, k, weights, None, dictionary=dw) for x in all_lists],
                  source_ids)
        print(f"  dictionary weight {dw}: same {s.same:.3f}, cross {s.cross:.3f}")
    dictionaries = (0.0, 1.0, 2.0, 3.0)
    rows = _fusion_grid(all_lists, source_ids, dictionaries)
    best = max(rows, key=lambda r: r[0])
    print(f"  best in the grid: k={best[2]} weights={best[3]} dictionary {best[4]}: same "
          f"{best[1].same:.3f}, cross {best[1].cross:.3f} (chosen and scored on all questions)")
    first, second = halves(all_lists)
    for label, train, test in (("first", first, second), ("second", second, first)):
        chosen = max(_fusion_grid(train, source_ids, dictionaries), key=lambda r: r[0])
        s = score(test, [passages(x, chosen[2], chosen[3], None, dictionary=chosen[4])
                         for x in test], source_ids)
        print(f"  held out: chosen on the {label} half (k={chosen[2]}, weights={chosen[3]}, "
              f"dictionary {chosen[4]}; there same {chosen[1].same:.3f} cross "
              f"{chosen[1].cross:.3f}), scored on the other: same {s.same:.3f}, cross {s.cross:.3f}")
    answerable = [x.xling[0].score if x.xling else 0.0 for x in all_lists if x.question.answerable]
    unanswerable = [x.xling[0].score if x.xling else 0.0 for x in all_lists
                    if not x.question.answerable]
    print(f"cross-lingual top-1 cosine: answerable min {min(answerable):.3f}, p2 "
          f"{np.percentile(answerable, 2):.3f}, p10 {np.percentile(answerable, 10):.3f}, median "
          f"{np.median(answerable):.3f}; unanswerable median {np.median(unanswerable):.3f}, p90 "
          f"{np.percentile(unanswerable, 90):.3f}, max {max(unanswerable):.3f}")
    e5_top = [(x.dense[0].score if x.dense else 0.0, x.question.answerable) for x in all_lists]
    print(f"e5 top-1 cosine: answerable min {min(c for c, a in e5_top if a):.3f}; unanswerable "
          f"max {max((c for c, a in e5_top if not a), default=0):.3f}")
    candidates = _gate_grid(all_lists, source_ids, k, weights, d)
    fit = [c for c in candidates if c[0].declined_answerable <= 0.02]
    print(f"gate grid at k={k}, weights={weights}, dictionary {d}: {len(candidates)} settings, "
          f"{len(fit)} lose <= 2 % of answerable questions; the best of those (chosen and "
          "scored on all questions):")
    fit.sort(key=lambda c: (-c[0].declined_unanswerable, -(c[0].same + c[0].cross),
                            c[0].declined_answerable))
    for s, rule in fit[:5]:
        print(f"  floor {rule.floor:.2f} sure {rule.sure:.2f} peak {rule.peak} spread "
              f"{rule.spread:.2f} named floor {rule.named_floor} unknown-name sure "
              f"{rule.unknown_sure}: unanswerable declined {s.declined_unanswerable:.1%}, answerable "
              f"lost {s.declined_answerable:.1%}, recall same {s.same:.3f} cross {s.cross:.3f}")
    for label, train, test in (("first", first, second), ("second", second, first)):
        chosen = _best_gate(_gate_grid(train, source_ids, k, weights, d))
        if chosen is None:
            print(f"  held out: no gate on the {label} half loses <= 2 %")
            continue
        s = score(test, [passages(x, k, weights, chosen[1], dictionary=d) for x in test],
                  source_ids)
        print(f"  held out: chosen on the {label} half ({chosen[1]}; there declined "
              f"{chosen[0].declined_unanswerable:.1%}, lost {chosen[0].declined_answerable:.1%}), "
              f"scored on the other: unanswerable declined {s.declined_unanswerable:.1%}, "
              f"answerable lost {s.declined_answerable:.1%}, recall same {s.same:.3f} cross "
              f"{s.cross:.3f}")
    from knowledge.service import gate_rule

    current = gate_rule(settings)
    for label, part in (("all questions", all_lists), ("first half", first),
                        ("second half", second)):
        s = score(part, [passages(x, k, weights, current, dictionary=d) for x in part], source_ids)
        print(f"  configured gate {current} on {label}: unanswerable declined "
              f"{s.declined_unanswerable:.1%}, answerable lost {s.declined_answerable:.1%}, recall "
              f"same {s.same:.3f} cross {s.cross:.3f}")
    e5_only = score(all_lists, [passages(x, k, weights, None, (settings.knowledge_min_score,
                                                              settings.knowledge_semantic_min_score),
                                         dictionary=d)
                                for x in all_lists], source_ids)
    print(f"  for comparison, the e5 gate (floors {settings.knowledge_min_score}/"
          f"{settings.knowledge_semantic_min_score}): unanswerable declined "
          f"{e5_only.declined_unanswerable:.1%}, answerable lost {e5_only.declined_answerable:.1%}")
