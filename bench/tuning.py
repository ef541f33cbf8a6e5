"""Choosing RRF k, the fusion weights and the relevance gate on the bench's labelled questions.

Each question's three rankings (e5 dense, cross-lingual dense, BM25; top 20 in the real scope,
exactly what `search_scope` asks the store for) are fetched once; every setting is then scored
in Python with the service's own `fuse`, `gate`/`relevant` and `collapse_near_duplicates`, so
the grid costs no model time. Printed: recall@5 per setting without a gate, the cross-lingual top
cosine of answerable and unanswerable questions, and the gate settings that decline the most
unanswerable questions while losing at most 2 % of the answerable ones.
"""

from __future__ import annotations

import asyncio
import itertools
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bench.corpus import Question
from knowledge.langs import script_of
from knowledge.search import Gate, Ranking, collapse_near_duplicates, fuse, gate, relevant
from knowledge.types import Hit

POOL = 20
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


async def collect(service: Any, questions: Sequence[Question], tenant: str,
                  kbs: Sequence[str]) -> list[Lists]:
    """The e5, cross-lingual and BM25 rankings of every question, top POOL, in the scope."""
    vectors = await service.vectors()
    e5 = await service.embedder()
    xl = await service.crosslingual()
    out = []
    for q in questions:
        dense_q = await asyncio.to_thread(e5.embed_query, q.text)
        xl_q = await asyncio.to_thread(xl.embed_query, q.text)
        sparse_q = service.sparse.encode_query(q.text)
        out.append(Lists(
            q,
            vectors.search_dense(dense_q, tenant, list(kbs), POOL),
            vectors.search_vector(xl.vector_name, xl_q, tenant, list(kbs), POOL),
            vectors.search_sparse(sparse_q, tenant, list(kbs), POOL)))
    return out


def passages(lists: Lists, k: float, weights: Sequence[float], rule: Gate | None,
             e5_floors: tuple[float, float] | None = None) -> list[Hit]:
    """What search_scope returns for these rankings under one setting (top 5).

    `weights` are (e5, cross-lingual, BM25) or (e5, cross-lingual same-language, BM25,
    cross-lingual other-language).
    """
    other = weights[3] if len(weights) > 3 else None
    fused = fuse(Ranking(lists.dense, weights[0]),
                 Ranking(lists.xling, weights[1], other, script_of(lists.question.text)),
                 Ranking(lists.sparse, weights[2]), k)
    if rule is not None:
        fused = gate(fused, lists.dense, lists.xling, rule)
    elif e5_floors is not None:
        best = max((h.score for h in lists.dense), default=0.0)
        fused = relevant(fused, best, e5_floors[0], e5_floors[1],
                         lexical=any(h.score > 0 for h in lists.sparse))
    return [c.hit for c in collapse_near_duplicates(fused, limit=5)]


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


def tune(all_lists: Sequence[Lists], source_ids: dict[str, str], settings: Any) -> None:
    """Print the fusion grid, the cosine distributions and the best gate settings."""
    print("fusion grid (no gate): recall@5 same-language / cross-language; weights are "
          "(e5, cross-lingual, BM25) or (e5, cross-lingual for same-language passages, BM25, "
          "cross-lingual for other-language passages)")
    rows = []
    for weights in WEIGHTS:
        cells = []
        for k in KS:
            s = score(all_lists, [passages(x, k, weights, None) for x in all_lists], source_ids)
            cells.append(f"{s.same:.3f}/{s.cross:.3f}")
            rows.append((s.same + s.cross, s, k, weights))
        print(f"  w={str(weights):<15} " + "  ".join(f"k={k}: {c}" for k, c in zip(KS, cells)))
    best = max(rows, key=lambda r: r[0])
    print(f"  best: k={best[2]} weights={best[3]}: same {best[1].same:.3f}, cross {best[1].cross:.3f}")
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
    k, weights = settings.knowledge_rrf_k, (settings.knowledge_weight_dense,
                                            settings.knowledge_weight_crosslingual,
                                            settings.knowledge_weight_bm25,
                                            settings.knowledge_weight_crosslingual_other)
    candidates = []
    floors = [round(0.10 + 0.02 * i, 2) for i in range(14)]
    for floor, extra, stands_out, spread in itertools.product(
            floors, (0, 0.05, 0.1, 0.15, 0.2, 0.3), (0.02, 0.025, 0.03, 0.035, 0.04),
            (0.15, 0.25, 2.0)):
        rule = Gate(floor, round(floor + extra, 2), stands_out, spread)
        s = score(all_lists, [passages(x, k, weights, rule) for x in all_lists], source_ids)
        candidates.append((s, rule))
    fit = [c for c in candidates if c[0].declined_answerable <= 0.02]
    print(f"gate grid at k={k}, weights={weights}: {len(candidates)} settings, {len(fit)} lose "
          f"<= 2 % of answerable questions; the best of those:")
    fit.sort(key=lambda c: (-c[0].declined_unanswerable, -(c[0].same + c[0].cross),
                            c[0].declined_answerable))
    for s, rule in fit[:8]:
        print(f"  floor {rule.floor:.2f} sure {rule.sure:.2f} peak {rule.peak} spread "
              f"{rule.spread:.2f}: unanswerable declined {s.declined_unanswerable:.1%}, answerable "
              f"lost {s.declined_answerable:.1%}, recall same {s.same:.3f} cross {s.cross:.3f}")
    current = Gate(settings.knowledge_gate_floor, settings.knowledge_gate_sure,
                   settings.knowledge_gate_peak, settings.knowledge_gate_spread)
    s = score(all_lists, [passages(x, k, weights, current) for x in all_lists], source_ids)
    print(f"  configured gate {current}: unanswerable declined {s.declined_unanswerable:.1%}, "
          f"answerable lost {s.declined_answerable:.1%}, recall same {s.same:.3f} cross {s.cross:.3f}")
    e5_only = score(all_lists, [passages(x, k, weights, None, (settings.knowledge_min_score,
                                                              settings.knowledge_semantic_min_score))
                                for x in all_lists], source_ids)
    print(f"  for comparison, the e5 gate (floors {settings.knowledge_min_score}/"
          f"{settings.knowledge_semantic_min_score}): unanswerable declined "
          f"{e5_only.declined_unanswerable:.1%}, answerable lost {e5_only.declined_answerable:.1%}")
