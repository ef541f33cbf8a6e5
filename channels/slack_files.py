"""Slack HTTP helpers: bounded 429 retries (Retry-After) and fetching shared files for ingest."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import urlsplit

import httpx
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import IngestError
from bot.types import Attachment

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
MAX_FILES = 5  # files taken from one message
SLACK_HOSTS = ("slack.com", "slack-gov.com", "slack-edge.com")


def retry_after(response: Optional[HttpResponse]) -> float | None:
    """The Retry-After seconds of a 429 response, or None."""
    if response is None or response.status_code != 429:
        return None
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(values[0] if isinstance(values, list) else values))
            except (TypeError, ValueError, IndexError):
                return 1.0
    return 1.0


class RateLimitRetry(AsyncRetryHandler):
    """Retry a 429 after Slack's Retry-After, a bounded number of times and wait."""

    def __init__(self, max_retry_count: int = 2, max_wait: float = 30.0,
                 sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait
        self.sleep = sleep

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                                response: Optional[HttpResponse] = None,
                                error: Optional[Exception] = None) -> bool:
        wait = retry_after(response)
        return wait is not None and wait <= self.max_wait

    async def prepare_for_next_attempt_async(self, *, state: RetryState, request: HttpRequest,
                                             response: Optional[HttpResponse] = None,
                                             error: Optional[Exception] = None) -> None:
        """Wait as long as Slack asked, then let the client send again."""
        wait = retry_after(response) or 1.0
        log.info("Slack rate limit: retrying in %.1f s", wait)
        state.next_attempt_requested = True
        await self.sleep(wait)
        state.increment_current_attempt()


def trusted_file_url(url: str, api_base: str | None) -> bool:
    """True if a file URL is Slack's own (the bot token is sent only there)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if api_base:
        base = urlsplit(api_base)
        if host == (base.hostname or "").lower() and parts.port == base.port:
            return parts.scheme in ("http", "https")
    if parts.scheme != "https":
        return False
    return any(host == h or host.endswith("." + h) for h in SLACK_HOSTS)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


async def fetch_file(client: AsyncWebClient, http: httpx.AsyncClient, token: str, file_id: str,
                     *, max_bytes: int, api_base: str | None, download: bool = True
                     ) -> Attachment:
    """files.info, size check, then the private URL with the bot token (read capped)."""
    try:
        info = await client.files_info(token=token, file=file_id)
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else "unknown"
        log.warning("files.info %s failed: %s", file_id, error)
        raise IngestError("I could not read that file from Slack "
                          f"({error}); please share it again.") from exc
    file: dict[str, Any] = info.get("file") or {}
    name = str(file.get("name") or file.get("title") or file_id)
    size = file.get("size")
    mime = str(file.get("mimetype") or "")
    if isinstance(size, int) and size > max_bytes:
        raise IngestError(f"{name} is {_mb(size)}, over the {max_bytes / (1024 * 1024):.0f} MB "
                          "limit; please send a smaller file.")
    if not download:
        return Attachment(kind="file", name=name, mime_type=mime, size=size)
    url = str(file.get("url_private_download") or file.get("url_private") or "")
    if not url or file.get("mode") in ("external", "tombstone", "hidden_by_limit"):
        raise IngestError(f"I could not download {name}: Slack does not host its content.")
    if not trusted_file_url(url, api_base):
        log.warning("file %s has an unexpected download host; not sending the token there",
                    file_id)
        raise IngestError(f"I could not download {name} from Slack.")
    data = await _download(http, url, token, name, max_bytes)
    if mime and not mime.startswith("text/html") and data[:15].lower().startswith(
            (b"<!doctype html", b"<html")):
        # Slack answers a login page when the token may not read files (files:read missing)
        raise IngestError(f"I could not download {name}: Slack did not let me read it.")
    return Attachment(kind="file", name=name, mime_type=mime, size=len(data), data=data)


async def _download(http: httpx.AsyncClient, url: str, token: str, name: str,
                    max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        async with http.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as resp:
            if resp.status_code != 200:
                log.warning("file download answered %s", resp.status_code)
                raise IngestError(f"I could not download {name} from Slack "
                                  f"(HTTP {resp.status_code}); please share it again.")
            async for chunk in resp.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise IngestError(f"{name} is over the "
                                      f"{max_bytes / (1024 * 1024):.0f} MB limit; please send a "
                                      "smaller file.")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        log.warning("file download failed: %s", type(exc).__name__)
        raise IngestError(f"I could not download {name} from Slack; please try again.") from exc
    return b"".join(chunks)
