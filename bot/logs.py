"""Logging: text or one JSON object a line, the message's context on every line, secrets masked.

A context variable carries the request id (set when a platform's request arrives, or when a
poller takes an update) and the channel, conversation and message id (set when the dispatcher
takes the message) through everything the answer does, the model call included; every log line
written meanwhile carries them. The values of every configured secret are replaced by `***` in
whatever is written, whoever logged it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, TextIO
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.types import InboundMessage

_CONTEXT: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "knowbot_log_context", default={})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MASK = "***"
MIN_SECRET = 4  # shorter values would mask ordinary words
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "_knowbot_handler"  # marks the handler configure() installed
_LINK_TOKEN = re.compile(r"(/link\?t=)[^\s\"'&]+")  # a console link's one-time token


def current() -> dict[str, str]:
    """The log context of the running code (request id, channel, conversation, message id)."""
    return dict(_CONTEXT.get())


@contextmanager
def bound(**fields: str | None) -> Iterator[dict[str, str]]:
    """Add fields to the log context for the code inside the block."""
    merged = {**_CONTEXT.get(), **{k: str(v) for k, v in fields.items() if v}}
    token = _CONTEXT.set(merged)
    try:
        yield merged
    finally:
        _CONTEXT.reset(token)


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex[:16]


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh id."""
    if header and _REQUEST_ID.match(header):
        return header
    return new_request_id()


def message_context(message: "InboundMessage") -> Any:
    """The log context of one message: its channel, conversation, id (and a request id)."""
    key = message.key
    fields: dict[str, str | None] = {"channel": key.channel,
                                     "conversation": key.conversation_id(),
                                     "message_id": message.message_id}
    if "request_id" not in _CONTEXT.get():
        fields["request_id"] = new_request_id()
    return bound(**fields)


def fresh_context() -> contextvars.Context:
    """An empty context for a new task that carries only the log context (a request id at least)."""
    fields = dict(_CONTEXT.get())
    fields.setdefault("request_id", new_request_id())
    context = contextvars.Context()
    context.run(_CONTEXT.set, fields)
    return context


# ---- secrets ----------------------------------------------------------------------------------


def _walk(value: Any, found: set[str]) -> None:
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _walk(getattr(value, name), found)
    elif isinstance(value, dict):
        for item in value.values():
            _walk(item, found)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            _walk(item, found)


def secret_values(settings: "Settings") -> list[str]:
    """Every secret the settings hold: SecretStr values, URL passwords, the providers' keys."""
    found: set[str] = set()
    _walk(settings, found)
    try:
        _walk(list(settings.providers().values()), found)  # OPENAI_API_KEY too
    except Exception:  # noqa: BLE001 - a bad provider setup is reported elsewhere
        pass
    for url in (settings.database_url, settings.redis_url, settings.qdrant_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                found.add(password)
    return sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True)


class _Masking:
    """Replaces secret values in a formatted line."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets

    def mask(self, text: str) -> str:
        """`text` with every secret value replaced by ***."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "link?t=" in text:  # a one-time console link in an access log line
            text = _LINK_TOKEN.sub(r"\1" + MASK, text)
        return text


class TextFormatter(logging.Formatter):
    """The classic one-line text format, with secrets masked."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(TEXT_FORMAT)
        self._masking = _Masking(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """Format the record as text with secrets masked."""
        return self._masking.mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the log context, any exception."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._masking = _Masking(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """Format the record as one JSON line with secrets masked."""
        mask = self._masking.mask
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        line.update(getattr(record, "knowbot", None) or {})
        if record.exc_info:
            line["exception"] = mask(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = mask(self.formatStack(record.stack_info))
        return mask(json.dumps(line, ensure_ascii=False, default=str))


class ContextFilter(logging.Filter):
    """Copies the log context onto each record as it is written (in the logging call's context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the current log context to the record."""
        record.knowbot = _CONTEXT.get()
        return True


def make_handler(settings: "Settings", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler in the configured format, with the context and secrets masked."""
    handler = logging.StreamHandler(stream or sys.stderr)
    secrets = secret_values(settings)
    handler.setFormatter(JsonFormatter(secrets) if settings.log_format == "json"
                         else TextFormatter(secrets))
    handler.addFilter(ContextFilter())
    return handler


def configure(settings: "Settings", level: str, stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to stderr in the configured format (replacing ours)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    handler = make_handler(settings, stream)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("alembic", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return handler
