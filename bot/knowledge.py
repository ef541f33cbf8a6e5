"""The interface through which the engine reads the knowledge base."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bot.types import ConversationKey, Passage


@runtime_checkable
class KnowledgeSearch(Protocol):
    """Search the documents a conversation may read; the knowledge package implements it."""

    async def search(
        self, key: ConversationKey, query: str, top_k: int = 5, kb: str | None = None
    ) -> list[Passage]:
        """Return the best passages for the query, best first, scoped to what `key` may read."""
        ...


class NoKnowledge:
    """A knowledge base with nothing in it."""

    async def search(
        self, key: ConversationKey, query: str, top_k: int = 5, kb: str | None = None
    ) -> list[Passage]:
        """Return no passages."""
        return []
