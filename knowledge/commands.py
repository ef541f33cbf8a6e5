"""The /kb chat command: list, search and delete what this chat's knowledge holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.commands import Command
from bot.errors import KnowbotError
from bot.types import InboundMessage, Reply
from knowledge.registry import chat_kb_name, tenant_of

if TYPE_CHECKING:
    from bot.engine import Engine
    from knowledge.service import KnowledgeService

USAGE = ("Usage: /kb (list the sources), /kb search QUERY, /kb delete SOURCE "
         "(a title or id from the list).")
SNIPPET = 160


def kb_command(engine: "Engine", service: "KnowledgeService") -> Command:
    """The /kb command bound to an engine and a knowledge service."""

    async def handle(args: str, message: InboundMessage) -> Reply:
        verb, _, rest = args.strip().partition(" ")
        verb, rest = verb.lower(), rest.strip()
        key = message.key
        tenant = tenant_of(key)
        if verb in ("", "list", "ls"):
            lines: list[str] = []
            for kb in await service.registry.readable(key):
                sources = await service.registry.sources(tenant, kb)
                if not sources:
                    continue
                label = "this chat" if kb == chat_kb_name(key) else f"shared: {kb}"
                lines.append(f"**{label}** ({len(sources)} sources)")
                lines += [f"- {s.title} ({s.kind}, {s.chunk_count} chunks, id {s.id[:8]})"
                          for s in sources[:50]]
                if len(sources) > 50:
                    lines.append(f"- … and {len(sources) - 50} more")
            if not lines:
                return Reply("This chat's knowledge base is empty. Send me a document or a link "
                             "to add one.", kind="command")
            return Reply("\n".join(lines), kind="command")
        if verb == "search":
            if not rest:
                return Reply(USAGE, kind="notice")
            passages = await service.search(key, rest, top_k=5)
            if not passages:
                return Reply("Nothing in the knowledge base matches that.", kind="command")
            lines = []
            for n, p in enumerate(passages, 1):
                text = " ".join(p.text.split())
                text = text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"
                where = f", {p.location}" if p.location else ""
                lines.append(f"{n}. **{p.source}**{where}: {text}")
            return Reply("\n".join(lines), kind="command")
        if verb in ("delete", "remove", "rm"):
            if not rest:
                return Reply(USAGE, kind="notice")
            if not service.may_add(message):
                return Reply("Only the admins of this chat can delete from its knowledge base.",
                             kind="notice")
            try:
                removed = await service.delete_source(tenant, chat_kb_name(key), rest)
            except KnowbotError as exc:
                return Reply(str(exc), kind="notice")
            return Reply(f"Deleted “{removed.title}” from this chat's knowledge base.",
                         kind="command")
        return Reply(USAGE, kind="notice")

    return Command("kb", "list, search or delete this chat's documents", handle,
                   usage="[search QUERY | delete SOURCE]")
