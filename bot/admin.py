"""What an admin can do, as plain operations on a running Knowbot (local or over HTTP).

`LocalAdmin` works on a `Runtime` in this process; `bot.admin_client.RemoteAdmin` does the same
through the admin API of a running `knowbot serve`. The command line uses whichever applies,
so `knowbot ingest` works the same beside a server as without one. Every result is JSON-ready.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Protocol

from bot.errors import KnowbotError
from bot.types import ConversationKey, InboundMessage, Passage

if TYPE_CHECKING:
    from bot.runtime import Runtime

Progress = Callable[[int, int], None]

CONSOLE_TENANT = "console:local"


class Admin(Protocol):
    """The operations, whichever side runs them."""

    async def list_kbs(self, tenant: str | None) -> list[dict[str, Any]]: ...
    async def sources(self, tenant: str, kb: str) -> list[dict[str, Any]]: ...
    async def delete_source(self, tenant: str, kb: str, source: str) -> dict[str, Any]: ...
    async def delete_kb(self, tenant: str, kb: str) -> dict[str, Any]: ...
    async def search(self, tenant: str, kb: str | None, query: str, top_k: int
                     ) -> list[dict[str, Any]]: ...
    async def ingest_file(self, tenant: str, kb: str, data: bytes, name: str, mime: str,
                          origin: str, progress: Progress | None = None) -> dict[str, Any]: ...
    async def ingest_url(self, tenant: str, kb: str, url: str,
                         progress: Progress | None = None) -> dict[str, Any]: ...
    async def ask(self, question: str, kb: str | None, user: str) -> dict[str, Any]: ...
    async def usage(self, days: int) -> list[dict[str, Any]]: ...
    async def jobs(self, tenant: str | None) -> list[dict[str, Any]]: ...


def passage_record(p: Passage) -> dict[str, Any]:
    """A passage as JSON-ready data."""
    return {"text": p.text, "source": p.source, "location": p.location, "score": p.score,
            "source_id": p.source_id, "url": p.url}


def tenant_of_conversation(conversation_id: str) -> str:
    """CHANNEL:TENANT of a conversation id (CHANNEL:TENANT:CHAT:THREAD, ':' escaped inside)."""
    parts = conversation_id.split(":")
    if len(parts) < 2:
        return ""
    return f"{parts[0]}:{parts[1].replace('%3A', ':')}"


class LocalAdmin:
    """The operations on a runtime in this process."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime

    def _service(self) -> Any:
        service = self.runtime.knowledge
        if not hasattr(service, "registry"):
            raise KnowbotError("this Knowbot runs without a knowledge base")
        return service

    async def list_kbs(self, tenant: str | None) -> list[dict[str, Any]]:
        """Knowledge bases (of one tenant, or all) with their source counts."""
        rows = await self._service().registry.list_kbs(tenant)
        return [{"tenant": r.tenant, "name": r.name, "shared": r.shared, "sources": r.sources}
                for r in rows]

    async def tenants(self) -> list[str]:
        """Every tenant with a knowledge base or a conversation, and the console's own."""
        from sqlalchemy import select

        from bot.models import Conversation

        conv = Conversation.__table__  # type: ignore[attr-defined]
        query = select(conv.c.channel, conv.c.tenant).distinct()
        found = set(await self.runtime.store.read(
            lambda conn: [f"{row[0]}:{row[1]}" for row in conn.execute(query)]))
        service = self.runtime.knowledge
        if hasattr(service, "registry"):
            found |= {kb.tenant for kb in await service.registry.list_kbs()}
        found.add(CONSOLE_TENANT)
        return sorted(found)

    async def sources(self, tenant: str, kb: str) -> list[dict[str, Any]]:
        """The sources of one knowledge base."""
        rows = await self._service().registry.sources(tenant, kb)
        return [{"id": s.id, "title": s.title, "kind": s.kind, "pages": s.pages,
                 "chunks": s.chunk_count, "origin": s.origin, "added_by": s.added_by,
                 "added_at": s.added_at.isoformat(), "updated_at": s.updated_at.isoformat()}
                for s in rows]

    async def delete_source(self, tenant: str, kb: str, source: str) -> dict[str, Any]:
        """Delete one source by id, title or origin."""
        found = await self._service().delete_source(tenant, kb, source)
        return {"id": found.id, "title": found.title}

    async def delete_kb(self, tenant: str, kb: str) -> dict[str, Any]:
        """Delete a whole knowledge base."""
        return {"sources": await self._service().delete_kb(tenant, kb)}

    async def search(self, tenant: str, kb: str | None, query: str, top_k: int
                     ) -> list[dict[str, Any]]:
        """The passages a question finds in one knowledge base, or in all of the tenant's."""
        service = self._service()
        kbs = [kb] if kb else [k.name for k in await service.registry.list_kbs(tenant)]
        return [passage_record(p) for p in await service.search_scope(tenant, kbs, query, top_k)]

    async def ingest_file(self, tenant: str, kb: str, data: bytes, name: str, mime: str,
                          origin: str, progress: Progress | None = None) -> dict[str, Any]:
        """Add one file's bytes; the receipt as data."""
        receipt = await self._service().ingest_bytes(
            tenant, kb, data, name, mime=mime, origin=origin, added_by="admin", shared=True,
            progress=progress)
        return {**receipt.as_dict(), "message": receipt.text()}

    async def ingest_url(self, tenant: str, kb: str, url: str,
                         progress: Progress | None = None) -> dict[str, Any]:
        """Fetch and add one web page."""
        receipt = await self._service().ingest_url(tenant, kb, url, added_by="admin",
                                                   shared=True, progress=progress)
        return {**receipt.as_dict(), "message": receipt.text()}

    async def ask(self, question: str, kb: str | None, user: str) -> dict[str, Any]:
        """Answer one question as the terminal user `user` would get it."""
        from channels.console import console_key

        runtime = self.runtime
        message = InboundMessage(key=console_key(user), message_id=f"admin-{uuid.uuid4().hex}",
                                 text=question, is_admin=True)
        if question.strip().startswith("/"):
            reply = await runtime.dispatcher.process(message)
        else:
            async def handler(msg: InboundMessage) -> Any:
                return await runtime.engine.answer(msg, question, kb=kb)

            reply = await runtime.dispatcher.process(message, handler=handler)
        assert reply is not None  # a fresh message id is never a redelivery
        return {**reply.as_dict(), "kind": reply.kind}

    async def usage(self, days: int) -> list[dict[str, Any]]:
        """Model calls and tokens per day, tenant, provider and model over the last `days`."""
        since = self.runtime.clock.now() - timedelta(days=days)
        totals: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
            lambda: {"calls": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                     "latency_ms": 0.0})
        for r in await self.runtime.store.usage(since):
            key = (r.created_at.date().isoformat(), tenant_of_conversation(r.conversation_id),
                   r.provider, r.model)
            t = totals[key]
            t["calls"] += 1
            t["errors"] += int(r.outcome != "ok")
            t["prompt_tokens"] += r.prompt_tokens
            t["completion_tokens"] += r.completion_tokens
            t["latency_ms"] += r.latency_ms
        return [{"day": d, "tenant": tenant, "provider": p, "model": m, **t}
                for (d, tenant, p, m), t in sorted(totals.items())]

    async def quotas(self) -> list[dict[str, Any]]:
        """Today's quota counts per user, chat and tenant that has a limit."""
        quotas = self.runtime.engine.deps.quotas
        return await quotas.today() if quotas is not None else []

    async def jobs(self, tenant: str | None) -> list[dict[str, Any]]:
        """Scheduled jobs (of one tenant, or all), soonest first."""
        scheduler = self.runtime.scheduler
        if scheduler is None:
            return []
        found = []
        for job in await scheduler.all_jobs():
            key = ConversationKey.from_record(job["key"])
            if tenant and f"{key.channel}:{key.tenant}" != tenant:
                continue
            found.append(job)
        return found
