"""The Channel protocol: one file per messaging platform implements it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.types import ConversationKey, Reply

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bot.runtime import Runtime


@runtime_checkable
class Channel(Protocol):
    """A messaging platform: it mounts its routes on the app and sends replies."""

    name: str

    def mount(self, app: "FastAPI", runtime: "Runtime") -> None:
        """Add the channel's webhook routes to the HTTP app."""
        ...

    async def start(self) -> None:
        """Begin work that runs beside the server (pollers, sockets)."""
        ...

    async def stop(self) -> None:
        """Finish that work."""
        ...

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        """Deliver a reply to a conversation, within the platform's rules."""
        ...
