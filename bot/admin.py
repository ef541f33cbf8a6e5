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
from bot.types import ConversationKey, InboundMessage, Passage, Reply

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


def _count_call(totals: dict[str, Any], record: Any) -> None:
    """Add one usage record (a model call) to a row of totals."""
    totals["calls"] += 1
    totals["errors"] += int(record.outcome != "ok")
    totals["prompt_tokens"] += record.prompt_tokens
    totals["completion_tokens"] += record.completion_tokens
    totals["latency_ms"] += record.latency_ms


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

    async def kbs_with_chats(self, tenant: str | None, chats: list[str] | None = None
                             ) -> list[dict[str, Any]]:
        """Knowledge bases with the chats that read them: a chat's own KB its chat, a shared
        one every chat of the tenant Knowbot has talked in. `chats` keeps only those chats'
        own knowledge bases (a group admin's reach)."""
        rows = await self._service().registry.list_kbs(tenant)
        talked = await self.runtime.store.chats(tenant)
        found = []
        for r in rows:
            if chats is not None and (r.shared or r.chat_id not in chats):
                continue
            bound = [r.chat_id] if r.chat_id else (
                sorted(talked.get(r.tenant, [])) if r.shared else [])
            found.append({"tenant": r.tenant, "name": r.name, "shared": r.shared,
                          "sources": r.sources, "chats": bound, "chat_id": r.chat_id or None})
        return found

    async def kb_info(self, tenant: str, kb: str) -> dict[str, Any] | None:
        """One knowledge base of a tenant, or None."""
        rows = await self._service().registry.list_kbs(tenant)
        found = next((r for r in rows if r.name == kb), None)
        if found is None:
            return None
        return {"tenant": found.tenant, "name": found.name, "shared": found.shared,
                "chat_id": found.chat_id or None, "sources": found.sources}

    async def source_details(self, tenant: str, kb: str) -> list[dict[str, Any]]:
        """The sources of one knowledge base, with language, link and last re-crawl."""
        service = self._service()
        rows = await service.registry.sources(tenant, kb)
        recrawled = await service.recrawled(tenant, kb)
        return [{"id": s.id, "title": s.title, "origin": s.origin, "kind": s.kind,
                 "pages": s.pages, "chunks": s.chunk_count, "added_by": s.added_by,
                 "added_at": _iso(s.added_at), "updated_at": _iso(s.updated_at),
                 "lang": s.lang or None, "recrawled_at": recrawled.get(s.id),
                 "url": s.origin if s.origin.startswith(("http://", "https://")) else None}
                for s in rows]

    async def source_chunks(self, tenant: str, source_id: str
                            ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A source (with its knowledge base) and its chunks, or None if the tenant has none."""
        found = await self._service().chunks(tenant, source_id)
        if found is None:
            return None
        source, chunks = found
        info = await self.kb_info(tenant, source.kb)
        return {"id": source.id, "title": source.title, "kb": source.kb,
                "chat_id": info["chat_id"] if info else None}, chunks

    async def recrawl_source(self, tenant: str, kb: str, source_id: str,
                             progress: Progress | None = None) -> dict[str, Any]:
        """Fetch one link source again now; the receipt as data."""
        receipt = await self._service().recrawl_source(tenant, kb, source_id, progress)
        return {**receipt.as_dict(), "message": receipt.text()}

    async def bench(self, tenant: str, kb: str | None, chat: str | None, query: str,
                    top_k: int) -> dict[str, Any]:
        """A retrieval test: the ranked passages with every ranking's score, where the gate
        falls and the extractive answer the chat would get."""
        from bot.engine import NOTHING_FOUND, extractive_answer
        from knowledge.registry import chat_kb_name

        service = self._service()
        names = [k.name for k in await service.registry.list_kbs(tenant)]
        if kb:
            kbs = [kb] if kb in names else []
        elif chat:
            shared = {k.name for k in await service.registry.list_kbs(tenant) if k.shared}
            kbs = [n for n in names if n in shared or n == chat_kb_name(
                ConversationKey("", "", chat, ""))]
        else:
            kbs = names
        searched = await service.diagnose_scope(tenant, kbs, query, top_k) if kbs else []
        if not searched:
            return {"passages": [], "gate": {"kept": 0, "reason": "nothing to search: the scope "
                                             "holds no document"},
                    "answer": NOTHING_FOUND, "kbs": kbs}
        from knowledge.search import interleave

        passages = []
        for text, found in searched:  # the question, then its translations (with a model)
            kept = {c.hit.id for c in found.kept}
            for rank, c in enumerate(found.shown, 1):
                p = found.passage(c)
                passages.append({"rank": rank, "query": text, "text": p.text, "source": p.source,
                                 "source_id": p.source_id, "location": p.location,
                                 "url": p.url or None,
                                 "scores": {"dense": c.dense, "xling": c.xling,
                                            "bm25": found.bm25.get(c.hit.id), "fused": c.score},
                                 "kept": c.hit.id in kept})
        answered = interleave([[d.passage(c) for c in d.kept] for _, d in searched], top_k)
        if answered:
            answer, _ = extractive_answer(answered, self.runtime.settings.max_quote_chars)
        else:
            answer = NOTHING_FOUND
        reason = searched[0][1].reason if len(searched) == 1 else "; ".join(
            f"{text!r}: {d.reason}" for text, d in searched)
        return {"passages": passages, "gate": {"kept": len(answered), "reason": reason},
                "answer": answer, "kbs": kbs}

    async def conversations(self, **query: Any) -> list[dict[str, Any]]:
        """Conversations by channel, tenant and text (see Store.conversations)."""
        return await self.runtime.store.conversations(**query)

    async def conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """One conversation with its messages, citations, tool calls and errors."""
        return await self.runtime.store.conversation(conversation_id)

    async def forget_user(self, tenant: str, user: str, chats: list[str] | None = None
                          ) -> dict[str, int]:
        """Delete a user's data in a tenant (CHANNEL:TENANT): their messages (and the
        conversations left empty), the summaries that may repeat them, their inbox entries and
        their scheduled jobs. `chats` limits it to some chats."""
        channel, _, raw = tenant.partition(":")
        done = await self.runtime.store.forget_user(channel, raw, user, chats)
        await self.runtime.inbox.forget_user(done["affected"], user)
        jobs = 0
        scheduler = self.runtime.scheduler
        if scheduler is not None:
            for job in await scheduler.all_jobs():
                key = ConversationKey.from_record(job["key"])
                if (key.channel, key.tenant, key.user_id) != (channel, raw, user):
                    continue
                if chats is not None and key.chat_id not in chats:
                    continue
                jobs += int(await scheduler.cancel(key, job["id"]))
        return {"messages": done["messages"], "conversations": done["conversations"],
                "jobs": jobs}

    async def usage_rows(self, days: int, may_see: Callable[[str, str | None], bool]
                         ) -> list[dict[str, Any]]:
        """Model calls per day, tenant, channel, provider and model, with the average latency,
        for the conversations `may_see(tenant, chat_id)` allows."""
        since = self.runtime.clock.now() - timedelta(days=days)
        totals: dict[tuple[str, str, str, str, str], dict[str, Any]] = defaultdict(
            lambda: {"calls": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                     "latency_ms": 0.0})
        for r in await self.runtime.store.usage(since):
            tenant = tenant_of_conversation(r.conversation_id)
            parts = r.conversation_id.split(":")
            chat = parts[2].replace("%3A", ":") if len(parts) > 2 else None
            if not may_see(tenant, chat):
                continue
            key = (_day(r.created_at), tenant, tenant.partition(":")[0], r.provider, r.model)
            _count_call(totals[key], r)
        return [{"day": d, "tenant": tenant, "channel": channel, "provider": p, "model": m,
                 "calls": t["calls"], "errors": t["errors"], "prompt_tokens": t["prompt_tokens"],
                 "completion_tokens": t["completion_tokens"],
                 "latency_ms_avg": round(t["latency_ms"] / t["calls"], 1) if t["calls"] else 0.0}
                for (d, tenant, channel, p, m), t in sorted(totals.items())]

    async def quota_state(self, may_see: Callable[[str, str | None], bool]
                          ) -> list[dict[str, Any]]:
        """Today's counts per scope with their limits, for the scopes `may_see` allows."""
        quotas = self.runtime.engine.deps.quotas
        if quotas is None:
            return []
        limits = {limit.scope: limit for limit in quotas.limits}
        found = []
        for row in await quotas.today():
            parts = str(row.get("id", "")).split(":")
            tenant = ":".join(parts[:2])
            chat = parts[2] if row.get("scope") == "chat" and len(parts) > 2 else None
            if not may_see(tenant, chat):
                continue
            limit = limits.get(row.get("scope", ""))
            found.append({**row, "tenant": tenant,
                          "limit_requests": limit.requests if limit else 0,
                          "limit_tokens": limit.tokens if limit else 0})
        return found

    async def backlog(self, tenants: list[str] | None = None) -> dict[str, Any]:
        """What waits: inbox entries by state, replies in the outbox (of some tenants only)."""
        return {"inbox": await self.runtime.inbox.counts(tenants),
                "outbox": await self.runtime.outbox.pending(tenants)}

    async def playground(self, question: str, kb: str | None, admin: str) -> dict[str, Any]:
        """Answer as the engine answers a conversation, in the console's own tenant; the
        conversation is this admin's. Tool calls are told to `bot.toolloop.TOOL_EVENTS`."""
        chat = "web-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in admin)[:100]
        key = ConversationKey("console", "local", chat, chat)
        message = InboundMessage(key=key, message_id=f"console-web-{uuid.uuid4().hex}",
                                 text=question, is_admin=True)
        reply = await self._answer(message, kb)
        return {"answer": reply.text, "kind": reply.kind, "conversation": key.conversation_id(),
                "citations": [{"source": c.source, "location": c.location, "url": c.url or None,
                               "snippet": c.snippet} for c in reply.citations]}

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
                          origin: str, progress: Progress | None = None, *,
                          added_by: str = "admin", chat_id: str = "") -> dict[str, Any]:
        """Add one file's bytes; the receipt as data. A new knowledge base is shared with the
        whole tenant, or, with `chat_id`, that chat's own."""
        receipt = await self._service().ingest_bytes(
            tenant, kb, data, name, mime=mime, origin=origin, added_by=added_by,
            shared=not chat_id, chat_id=chat_id, progress=progress)
        return {**receipt.as_dict(), "message": receipt.text()}

    async def ingest_url(self, tenant: str, kb: str, url: str,
                         progress: Progress | None = None, *, added_by: str = "admin",
                         chat_id: str = "") -> dict[str, Any]:
        """Fetch and add one web page."""
        receipt = await self._service().ingest_url(tenant, kb, url, added_by=added_by,
                                                   shared=not chat_id, chat_id=chat_id,
                                                   progress=progress)
        return {**receipt.as_dict(), "message": receipt.text()}

    async def ask(self, question: str, kb: str | None, user: str) -> dict[str, Any]:
        """Answer one question as the terminal user `user` would get it."""
        from channels.console import console_key

        message = InboundMessage(key=console_key(user), message_id=f"admin-{uuid.uuid4().hex}",
                                 text=question, is_admin=True)
        reply = await self._answer(message, kb)
        return {**reply.as_dict(), "kind": reply.kind}

    async def _answer(self, message: InboundMessage, kb: str | None) -> Reply:
        """A fresh message through the dispatcher: a command as typed, else answered from `kb`."""
        runtime = self.runtime
        question = message.text
        if question.strip().startswith("/"):
            reply = await runtime.dispatcher.process(message)
        else:
            async def handler(msg: InboundMessage) -> Any:
                return await runtime.engine.answer(msg, question, kb=kb)

            reply = await runtime.dispatcher.process(message, handler=handler)
        assert reply is not None  # a fresh message id is never a redelivery
        return reply

    async def usage(self, days: int) -> list[dict[str, Any]]:
        """Model calls and tokens per day, tenant, provider and model over the last `days`."""
        since = self.runtime.clock.now() - timedelta(days=days)
        totals: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
            lambda: {"calls": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                     "latency_ms": 0.0})
        for r in await self.runtime.store.usage(since):
            key = (r.created_at.date().isoformat(), tenant_of_conversation(r.conversation_id),
                   r.provider, r.model)
            _count_call(totals[key], r)
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


def _iso(value: Any) -> str | None:
    """An aware ISO time (SQLite hands back naive UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        from datetime import timezone

        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _day(value: Any) -> str:
    """The UTC day of a time."""
    from datetime import timezone

    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).date().isoformat()
