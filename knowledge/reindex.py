"""Filling the cross-lingual vector of chunks stored before it existed, from their stored text.

Resumable by construction: each step asks the store for points that still lack the vector,
embeds their text and writes the vectors in place, so a step that finished stays finished and an
interrupted run simply starts again with what is still missing. Nothing is re-uploaded, and
searches keep working meanwhile (points without the vector are found by e5 and BM25).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from bot.errors import StorageError
from knowledge.vectorstore import VectorStore

log = logging.getLogger(__name__)

MAX_IDLE_STEPS = 3  # steps in a row that filled nothing before giving up (a store refusing writes)


async def fill_missing(vectors: VectorStore, model: Any, batch: int,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Embed and store the missing vectors of `model`, `batch` chunks a step; return how many."""
    name = model.vector_name
    total = await asyncio.to_thread(vectors.count_missing, name)
    if not total:
        return 0
    log.info("reindex: %d chunks need their %s vector", total, name)
    done = idle = 0
    next_log = 0.1
    if progress is not None:
        progress(0, total)
    while True:
        todo = await asyncio.to_thread(vectors.missing_vector, name, batch)
        if not todo:
            break
        ids = [point_id for point_id, _ in todo]
        embedded = await asyncio.to_thread(model.embed_passages, [text for _, text in todo], 32)
        try:
            await asyncio.to_thread(vectors.set_vectors, name, list(zip(ids, embedded)))
        except StorageError:
            idle += 1
            if idle >= MAX_IDLE_STEPS:
                raise
            log.warning("reindex: a step failed; trying again", exc_info=True)
            continue
        left = await asyncio.to_thread(vectors.count_missing, name)
        filled = max(0, total - left - done)
        idle = 0 if filled else idle + 1
        if idle >= MAX_IDLE_STEPS:
            raise StorageError(f"reindex: the store keeps {left} chunks without {name}")
        done += filled
        total = max(total, done + left)  # points written meanwhile without the vector count too
        if progress is not None:
            progress(done, total)
        if done / total >= next_log:
            log.info("reindex: %d of %d chunks have their %s vector", done, total, name)
            next_log = done / total + 0.1
    log.info("reindex: done, %d chunks filled", done)
    return done


def log_end(task: asyncio.Task[int]) -> None:
    """Log how a background reindex ended (a done-callback)."""
    if task.cancelled():
        log.info("background reindex stopped; it resumes where it was at the next start")
    elif task.exception() is not None:
        log.error("background reindex failed", exc_info=task.exception())
