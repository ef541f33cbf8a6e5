"""The source registry in Knowbot's database: knowledge bases, their sources, and who may read them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from bot.errors import StorageError
from bot.models import KnowledgeBase, Source
from bot.store import Store
from bot.types import ConversationKey

_KB = KnowledgeBase.__table__  # type: ignore[attr-defined]
# What a conversation may read, asked on every message: built once, each call binds its chat.
_READABLE = (select(_KB.c.name)
             .where(_KB.c.tenant == bindparam("r_tenant"),
                    or_(_KB.c.shared.is_(True), _KB.c.name == bindparam("r_chat_kb")))
             .order_by(_KB.c.name))


def tenant_of(key: ConversationKey) -> str:
    """The knowledge tenant of a conversation: its platform and workspace/account/bot."""
    return f"{key.channel}:{key.tenant}"


def chat_kb_name(key: ConversationKey) -> str:
    """The name of a chat's own knowledge base."""
    return f"chat-{key.chat_id}"


@dataclass(frozen=True)
class KBInfo:
    """A knowledge base and how many sources it holds."""

    id: int
    tenant: str
    name: str
    shared: bool
    chat_id: str
    sources: int


@dataclass(frozen=True)
class SourceInfo:
    """One registered source."""

    id: str
    kb: str
    title: str
    origin: str
    kind: str
    content_hash: str
    version: str
    chunk_count: int
    pages: int | None
    added_by: str
    added_at: datetime
    updated_at: datetime
    lang: str = ""


def _source_info(row: Source, kb: str) -> SourceInfo:
    return SourceInfo(row.id, kb, row.title, row.origin, row.kind, row.content_hash, row.version,
                      row.chunk_count, row.pages, row.added_by, row.added_at, row.updated_at,
                      row.lang or "")


class Registry:
    """Reads and writes the knowledge_base and source tables."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def ensure_kb(self, tenant: str, name: str, *, shared: bool = False, chat_id: str = "",
                        created_by: str = "") -> int:
        """The id of a knowledge base, created if missing."""
        found = await self._kb_id(tenant, name)
        if found is not None:
            return found
        try:
            async with self.store.session() as session:
                row = KnowledgeBase(tenant=tenant, name=name, shared=shared, chat_id=chat_id,
                                    created_by=created_by)
                session.add(row)
                await session.commit()
                return int(row.id)  # type: ignore[arg-type]
        except StorageError:  # created at the same moment elsewhere: read it back
            found = await self._kb_id(tenant, name)
            if found is None:
                raise
            return found

    async def _kb_id(self, tenant: str, name: str) -> int | None:
        async with self.store.session() as session:
            result = await session.exec(  # type: ignore[call-overload]
                select(KnowledgeBase.id).where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
                .where(KnowledgeBase.name == name)  # type: ignore[arg-type]
            )
            return result.scalar_one_or_none()

    async def readable(self, key: ConversationKey) -> list[str]:
        """Names of the knowledge bases a conversation may read: its chat's own and the shared ones."""
        params = {"r_tenant": tenant_of(key), "r_chat_kb": chat_kb_name(key)}
        return await self.store.read(
            lambda conn: list(conn.execute(_READABLE, params).scalars().all()))

    async def languages(self, tenant: str, kbs: list[str]) -> set[str]:
        """The main languages of the sources in these knowledge bases ("" for unknown);
        empty when they hold no source."""
        if not kbs:
            return set()
        statement = (
            select(Source.lang).distinct()
            .join(KnowledgeBase, Source.kb_id == KnowledgeBase.id)  # type: ignore[arg-type]
            .where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
            .where(KnowledgeBase.name.in_(kbs))  # type: ignore[attr-defined]
        )
        return await self.store.read(lambda conn: {row[0] for row in conn.execute(statement)})

    async def list_kbs(self, tenant: str | None = None) -> list[KBInfo]:
        """Knowledge bases, of one tenant or all, with their source counts."""
        async with self.store.session() as session:
            query = (
                select(KnowledgeBase, func.count(Source.id))  # type: ignore[arg-type]
                .join(Source, Source.kb_id == KnowledgeBase.id, isouter=True)  # type: ignore[arg-type]
                .group_by(KnowledgeBase.id)
                .order_by(KnowledgeBase.tenant, KnowledgeBase.name)
            )
            if tenant is not None:
                query = query.where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
            result = await session.exec(query)  # type: ignore[call-overload]
            return [KBInfo(int(kb.id), kb.tenant, kb.name, kb.shared, kb.chat_id, int(n))
                    for kb, n in result.all()]

    async def sources(self, tenant: str, kb: str) -> list[SourceInfo]:
        """The sources of a knowledge base, newest first."""
        async with self.store.session() as session:
            result = await session.exec(  # type: ignore[call-overload]
                select(Source).join(KnowledgeBase, Source.kb_id == KnowledgeBase.id)  # type: ignore[arg-type]
                .where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
                .where(KnowledgeBase.name == kb)  # type: ignore[arg-type]
                .order_by(Source.updated_at.desc())  # type: ignore[attr-defined]
            )
            return [_source_info(row, kb) for row in result.scalars().all()]

    async def source_by_id(self, tenant: str, source_id: str) -> tuple[SourceInfo, KBInfo] | None:
        """A source of the tenant by its id, with its knowledge base (None: not in this tenant)."""
        statement = (select(Source, KnowledgeBase)
                     .join(KnowledgeBase, Source.kb_id == KnowledgeBase.id)  # type: ignore[arg-type]
                     .where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
                     .where(Source.id == source_id))  # type: ignore[arg-type]
        async with self.store.session() as session:
            row = (await session.exec(statement)).first()  # type: ignore[call-overload]
            if row is None:
                return None
            source, kb = row
            return _source_info(source, kb.name), KBInfo(int(kb.id), kb.tenant, kb.name,
                                                          kb.shared, kb.chat_id, 0)

    async def find_source(self, tenant: str, kb: str, *, origin: str | None = None,
                          content_hash: str | None = None, source_id: str | None = None
                          ) -> SourceInfo | None:
        """A source of the knowledge base by origin, content hash or id."""
        async with self.store.session() as session:
            query = (select(Source).join(KnowledgeBase, Source.kb_id == KnowledgeBase.id)  # type: ignore[arg-type]
                     .where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
                     .where(KnowledgeBase.name == kb))  # type: ignore[arg-type]
            if origin is not None:
                query = query.where(Source.origin == origin)  # type: ignore[arg-type]
            if content_hash is not None:
                query = query.where(Source.content_hash == content_hash)  # type: ignore[arg-type]
            if source_id is not None:
                query = query.where(Source.id == source_id)  # type: ignore[arg-type]
            result = await session.exec(query.limit(1))  # type: ignore[call-overload]
            row = result.scalars().first()
            return _source_info(row, kb) if row is not None else None

    async def save_source(self, kb_id: int, kb: str, *, source_id: str, title: str, origin: str,
                          kind: str, content_hash: str, version: str, chunk_count: int,
                          pages: int | None, added_by: str, lang: str = "") -> SourceInfo:
        """Insert a source or point an existing one at its new version."""
        async with self.store.session() as session:
            row = await session.get(Source, source_id)
            now = self.store.clock.now()
            if row is None:
                row = Source(id=source_id, kb_id=kb_id, title=title, origin=origin, kind=kind,
                             content_hash=content_hash, version=version, chunk_count=chunk_count,
                             pages=pages, lang=lang, added_by=added_by, added_at=now,
                             updated_at=now)
                session.add(row)
            else:
                row.title, row.kind, row.content_hash = title, kind, content_hash
                row.version, row.chunk_count, row.pages = version, chunk_count, pages
                row.lang = lang
                row.updated_at = now
                session.add(row)
            try:
                await session.commit()
            except IntegrityError as exc:
                from bot.errors import StorageError

                raise StorageError("that source was added at the same moment by someone else") from exc
            await session.refresh(row)
            return _source_info(row, kb)

    async def delete_source(self, source_id: str) -> None:
        """Remove a source from the registry."""
        async with self.store.session() as session:
            await session.exec(delete(Source).where(Source.id == source_id))  # type: ignore[call-overload,arg-type]
            await session.commit()

    async def delete_kb(self, tenant: str, kb: str) -> int:
        """Remove a knowledge base and its sources from the registry; return the sources removed."""
        kb_id = await self._kb_id(tenant, kb)
        if kb_id is None:
            return 0
        async with self.store.session() as session:
            result = await session.exec(delete(Source).where(Source.kb_id == kb_id))  # type: ignore[call-overload,arg-type]
            await session.exec(delete(KnowledgeBase).where(KnowledgeBase.id == kb_id))  # type: ignore[call-overload,arg-type]
            await session.commit()
            return int(result.rowcount or 0)

    async def set_shared(self, tenant: str, kb: str, shared: bool) -> None:
        """Share a knowledge base with every chat of its tenant, or stop sharing it."""
        async with self.store.session() as session:
            await session.exec(  # type: ignore[call-overload]
                update(KnowledgeBase).where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
                .where(KnowledgeBase.name == kb).values(shared=shared)  # type: ignore[arg-type]
            )
            await session.commit()

    async def versions(self, tenant: str, source_ids: set[str]) -> dict[str, str]:
        """The current version of each of these sources (those still registered) in the tenant."""
        if not source_ids:
            return {}
        statement = (
            select(Source.id, Source.version)
            .join(KnowledgeBase, Source.kb_id == KnowledgeBase.id)  # type: ignore[arg-type]
            .where(KnowledgeBase.tenant == tenant)  # type: ignore[arg-type]
            .where(Source.id.in_(sorted(source_ids)))  # type: ignore[attr-defined]
        )
        return await self.store.read(
            lambda conn: {sid: version for sid, version in conn.execute(statement).all()})
