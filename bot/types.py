"""The core value types shared by every channel and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ConversationKey:
    """Identifies one conversation: everything per-conversation is keyed by it."""

    channel: str
    tenant: str
    chat_id: str
    user_id: str
    thread_id: str | None = None

    def conversation_id(self) -> str:
        """A stable string id for the conversation (user excluded in shared chats by the channel)."""
        parts = [self.channel, self.tenant, self.chat_id, self.thread_id or "-"]
        return ":".join(p.replace(":", "%3A") for p in parts)

    def user_scope(self) -> str:
        """A stable string id for the user within this channel and tenant."""
        return f"{self.channel}:{self.tenant}:{self.user_id}"

    def to_record(self) -> dict[str, str | None]:
        """The key as plain JSON-ready data (for jobs and the outbox)."""
        return {"channel": self.channel, "tenant": self.tenant, "chat_id": self.chat_id,
                "user_id": self.user_id, "thread_id": self.thread_id}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ConversationKey":
        """Rebuild a key saved with `to_record`."""
        return cls(record["channel"], record["tenant"], record["chat_id"], record["user_id"],
                   record.get("thread_id"))


@dataclass(frozen=True)
class Attachment:
    """A file or link that came with a message."""

    kind: Literal["file", "link"]
    name: str = ""
    url: str = ""
    mime_type: str = ""
    size: int | None = None
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class InboundMessage:
    """One message a person sent, normalised from any platform."""

    key: ConversationKey
    message_id: str
    text: str
    attachments: tuple[Attachment, ...] = ()
    is_group: bool = False
    mentions_bot: bool = False
    is_admin: bool = False
    received_at: datetime = field(default_factory=utcnow)
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Citation:
    """Where a piece of an answer came from."""

    source: str
    location: str = ""
    snippet: str = ""
    url: str = ""


@dataclass(frozen=True)
class Reply:
    """A channel-neutral answer: markdown text, numbered citations, attachments."""

    text: str
    citations: tuple[Citation, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    kind: Literal["answer", "command", "error", "notice"] = "answer"

    def as_dict(self) -> dict[str, Any]:
        """The reply as plain JSON-ready data."""
        return {
            "answer": self.text,
            "citations": [
                {"source": c.source, "location": c.location, "snippet": c.snippet}
                for c in self.citations
            ],
        }

    def to_record(self) -> dict[str, Any]:
        """Everything needed to rebuild the reply later (outbox, held answers); no file bytes."""
        return {
            "text": self.text,
            "kind": self.kind,
            "citations": [
                {"source": c.source, "location": c.location, "snippet": c.snippet, "url": c.url}
                for c in self.citations
            ],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Reply":
        """Rebuild a reply saved with `to_record`."""
        return cls(
            text=record["text"],
            kind=record.get("kind", "answer"),
            citations=tuple(Citation(**c) for c in record.get("citations", ())),
        )


@dataclass(frozen=True)
class Passage:
    """One retrieved passage from the knowledge base."""

    text: str
    source: str
    location: str = ""
    score: float = 0.0
    source_id: str = ""
    url: str = ""
