"""SQLModel tables: conversations, messages, inbox and outbox, dedupe ids, usage, state."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from bot.types import utcnow


def _ts(**kwargs: object) -> Column:  # type: ignore[type-arg]
    return Column(DateTime(timezone=True), nullable=False, **kwargs)  # type: ignore[arg-type]


class Conversation(SQLModel, table=True):
    """One conversation, with its running summary of turns older than the memory budget."""

    __tablename__ = "conversation"

    id: str = Field(primary_key=True, max_length=512)
    channel: str = Field(max_length=32)
    tenant: str = Field(max_length=128)
    chat_id: str = Field(max_length=256)
    thread_id: Optional[str] = Field(default=None, max_length=256)
    summary: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    summary_tokens: int = 0
    summarized_upto: int = Field(default=0, description="Id of the last message in the summary.")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Message(SQLModel, table=True):
    """One turn of a conversation: what a person said or what Knowbot answered."""

    __tablename__ = "message"
    __table_args__ = (Index("ix_message_conversation_id_id", "conversation_id", "id"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    conversation_id: str = Field(max_length=512)
    role: str = Field(max_length=16)
    content: str = Field(sa_column=Column(Text, nullable=False))
    token_count: int = 0
    user_id: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    # an answer's JSON: the citations it used, the tool calls it made, what went wrong
    meta: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class ProcessedInbound(SQLModel, table=True):
    """A platform message id already taken: a redelivery of it is never answered twice."""

    __tablename__ = "processed_inbound"
    __table_args__ = (
        UniqueConstraint("channel", "tenant", "message_id", name="uq_processed_inbound"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    tenant: str = Field(max_length=128)
    message_id: str = Field(max_length=256)
    conversation_id: str = Field(max_length=512)
    status: str = Field(default="processing", max_length=16)
    received_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))


class UsageRecord(SQLModel, table=True):
    """One call to a model provider: tokens, latency and outcome."""

    __tablename__ = "usage_record"

    id: Optional[int] = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    provider: str = Field(max_length=64)
    model: str = Field(max_length=128)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    outcome: str = Field(max_length=32)
    conversation_id: str = Field(default="", max_length=512)
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class KnowledgeBase(SQLModel, table=True):
    """A named collection of sources owned by a tenant; shared ones are read by all its chats."""

    __tablename__ = "knowledge_base"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_knowledge_base_tenant_name"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=200, index=True)
    name: str = Field(max_length=200)
    shared: bool = False
    chat_id: str = Field(default="", max_length=256, description="The chat a private KB belongs to.")
    created_by: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Source(SQLModel, table=True):
    """One ingested document or page: where it came from, its hash and its chunks."""

    __tablename__ = "source"
    __table_args__ = (UniqueConstraint("kb_id", "origin", name="uq_source_kb_origin"),)

    id: str = Field(primary_key=True, max_length=64)
    kb_id: int = Field(foreign_key="knowledge_base.id", index=True)
    title: str = Field(sa_column=Column(Text, nullable=False))
    origin: str = Field(max_length=1024, description="File name or URL.")
    kind: str = Field(max_length=16)
    content_hash: str = Field(max_length=64, index=True)
    version: str = Field(max_length=64)
    chunk_count: int = 0
    pages: Optional[int] = None
    lang: str = Field(default="", max_length=8, description="Main script: zh, en or unknown.")
    added_by: str = Field(default="", max_length=256)
    added_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class StateEntry(SQLModel, table=True):
    """A small piece of shared state (tokens, pending answers, quotas), with a version for CAS."""

    __tablename__ = "state_entry"

    namespace: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=512)
    value: str = Field(sa_column=Column(Text, nullable=False))
    version: int = 1
    expires_at: Optional[datetime] = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True, index=True)
    )
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class OutboxEntry(SQLModel, table=True):
    """A reply that could not be sent yet: retried until it goes out, across restarts."""

    __tablename__ = "outbox_entry"

    id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(max_length=32, index=True)
    key: str = Field(sa_column=Column(Text, nullable=False))
    reply: str = Field(sa_column=Column(Text, nullable=False))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    # what the channel needs to send it (a message to reply to); the inbox entry it answers,
    # which stays unfinished (and holds its conversation) until this reply has left
    context: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    inbox_id: Optional[int] = Field(default=None, index=True)


class InboxEntry(SQLModel, table=True):
    """A message a platform handed over: kept until its answer has been sent.

    Written before the platform is told the message arrived; unique by the platform's id, so a
    redelivery is never taken twice. Workers on any replica take entries under a lease, the
    oldest unfinished one of each conversation only, so a conversation is answered in order.
    """

    __tablename__ = "inbox_entry"
    __table_args__ = (
        UniqueConstraint("channel", "tenant", "message_id", name="uq_inbox_entry"),
        Index("ix_inbox_entry_conversation_id_id", "conversation_id", "id"),
        Index("ix_inbox_entry_status_id", "status", "id"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    tenant: str = Field(max_length=128)
    message_id: str = Field(max_length=255)
    conversation_id: str = Field(max_length=512)
    message: str = Field(sa_column=Column(Text, nullable=False))
    context: str = Field(sa_column=Column(Text, nullable=False))
    # queued -> running (leased) -> answered (reply in the outbox) -> done; or dead
    status: str = Field(default="queued", max_length=16)
    attempts: int = 0
    lease_owner: str = Field(default="", max_length=64)
    lease_until: Optional[datetime] = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    finished_at: Optional[datetime] = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
