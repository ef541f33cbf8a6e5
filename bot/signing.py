"""Signed, expiring tokens for links Knowbot hands out (an answer page, an upload page)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable

from bot.config import Settings
from bot.errors import ConfigError

KEY_FILE = "secret.key"


def signing_key(settings: Settings) -> bytes:
    """KNOWBOT_SECRET_KEY, or a random key made once and kept (mode 600) in the data dir."""
    if settings.secret_key is not None:
        value = settings.secret_key.get_secret_value()
        if len(value) < 16:
            raise ConfigError("KNOWBOT_SECRET_KEY: use at least 16 characters")
        return value.encode()
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class BadToken(ValueError):
    """A token that is forged, malformed, for another purpose or expired."""


class LinkSigner:
    """HMAC-SHA256 tokens that carry a small JSON payload, a purpose and an expiry."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.clock = clock

    def _mac(self, purpose: str, body: str) -> str:
        digest = hmac.new(self._key, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
        return _b64(digest)

    def sign(self, purpose: str, payload: dict[str, Any], ttl: float) -> str:
        """A URL-safe token for `payload`, valid for `ttl` seconds and only for `purpose`."""
        body = _b64(json.dumps({"p": payload, "exp": int(self.clock() + ttl)},
                               separators=(",", ":")).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def verify(self, purpose: str, token: str) -> dict[str, Any]:
        """The payload of a good token; BadToken otherwise."""
        body, _, mac = token.partition(".")
        if not body or not mac or len(token) > 4096:
            raise BadToken("malformed token")
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            raise BadToken("bad signature")
        try:
            data = json.loads(_unb64(body))
        except ValueError as exc:
            raise BadToken("malformed token") from exc
        if not isinstance(data, dict) or data.get("exp", 0) < self.clock():
            raise BadToken("expired")
        payload = data.get("p")
        if not isinstance(payload, dict):
            raise BadToken("malformed token")
        return payload
