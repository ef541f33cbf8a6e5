"""The `knowbot` commands' way to the admin operations: a running server's API, or locally.

`open_admin` finds a `knowbot serve` on this data directory (it writes `server.json` there and
answers /healthz) or at `--server URL`, and returns a `RemoteAdmin` on its API; otherwise it
starts a runtime in this process, holding the data directory's store lock (waiting, bounded, for
another command to finish), and returns a `LocalAdmin`.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator
from urllib.parse import quote

import httpx

from bot.admin import Admin, LocalAdmin, Progress
from bot.admin_api import SERVER_FILE, admin_token
from bot.errors import KnowbotError

if TYPE_CHECKING:
    from bot.config import Settings

TIMEOUT = httpx.Timeout(30.0, read=600.0)  # an ingest of a big file takes minutes
SERVER_HELP = ("A running `knowbot serve` to work through (its URL; the token is "
               "KNOWBOT_ADMIN_TOKEN). Default: the server on this data directory, if one runs.")


def running_server(settings: "Settings") -> str | None:
    """The URL of a live `knowbot serve` on this data directory, if there is one."""
    path = Path(settings.data_dir) / SERVER_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
        url = str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        if httpx.get(f"{url}/healthz", timeout=3.0).status_code < 500:
            return url
    except httpx.HTTPError:
        pass
    return None


class RemoteAdmin:
    """The admin operations through a server's /api."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.client = httpx.AsyncClient(base_url=f"{self.url}/api", timeout=TIMEOUT,
                                        headers={"Authorization": f"Bearer {token}"})

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise KnowbotError(f"the server at {self.url} did not answer: "
                               f"{type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise KnowbotError(_error_of(response))
        return response.json()

    async def _stream(self, path: str, progress: Progress | None, **kwargs: Any
                      ) -> dict[str, Any]:
        try:
            async with self.client.stream("POST", path, **kwargs) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise KnowbotError(_error_of(response))
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "progress" in event:
                        if progress is not None:
                            progress(*event["progress"])
                    elif event.get("ok"):
                        return event["receipt"]
                    else:
                        raise KnowbotError(event.get("error") or "the ingest failed")
        except httpx.HTTPError as exc:
            raise KnowbotError(f"the server at {self.url} did not answer: "
                               f"{type(exc).__name__}") from exc
        raise KnowbotError("the server ended the ingest without a receipt")

    async def list_kbs(self, tenant: str | None) -> list[dict[str, Any]]:
        """Knowledge bases and their source counts."""
        return await self._call("GET", "/kbs", params={"tenant": tenant} if tenant else None)

    async def sources(self, tenant: str, kb: str) -> list[dict[str, Any]]:
        """The sources of a knowledge base."""
        return await self._call("GET", f"/kbs/{quote(kb, safe='')}/sources",
                                params={"tenant": tenant})

    async def delete_source(self, tenant: str, kb: str, source: str) -> dict[str, Any]:
        """Delete one source."""
        return await self._call("DELETE", f"/kbs/{quote(kb, safe='')}/sources/"
                                          f"{quote(source, safe='')}", params={"tenant": tenant})

    async def delete_kb(self, tenant: str, kb: str) -> dict[str, Any]:
        """Delete a knowledge base."""
        return await self._call("DELETE", f"/kbs/{quote(kb, safe='')}", params={"tenant": tenant})

    async def search(self, tenant: str, kb: str | None, query: str, top_k: int
                     ) -> list[dict[str, Any]]:
        """Retrieve passages."""
        return await self._call("POST", "/search", json={"query": query, "tenant": tenant,
                                                          "kb": kb, "top_k": top_k})

    async def ingest_file(self, tenant: str, kb: str, data: bytes, name: str, mime: str,
                          origin: str, progress: Progress | None = None) -> dict[str, Any]:
        """Upload a file."""
        params = {"name": name, "tenant": tenant, "kb": kb, "origin": origin}
        return await self._stream("/ingest/file", progress, params=params, content=data,
                                  headers={"Content-Type": mime or "application/octet-stream"})

    async def ingest_url(self, tenant: str, kb: str, url: str,
                         progress: Progress | None = None) -> dict[str, Any]:
        """Have the server fetch a page."""
        return await self._stream("/ingest/url", progress, params={"tenant": tenant, "kb": kb},
                                  json={"url": url})

    async def ask(self, question: str, kb: str | None, user: str) -> dict[str, Any]:
        """Ask one question."""
        return await self._call("POST", "/ask", json={"question": question, "kb": kb,
                                                       "user": user})

    async def usage(self, days: int) -> list[dict[str, Any]]:
        """Usage per day."""
        return await self._call("GET", "/usage", params={"days": days})

    async def jobs(self, tenant: str | None) -> list[dict[str, Any]]:
        """Scheduled jobs."""
        return await self._call("GET", "/jobs", params={"tenant": tenant} if tenant else None)


def _error_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return f"the server answered HTTP {response.status_code}"


@asynccontextmanager
async def open_admin(settings: "Settings", server: str | None = None) -> AsyncIterator[Admin]:
    """The admin operations: through a running server if there is one, else in this process."""
    url = server or running_server(settings)
    if url is not None:
        token = admin_token(settings)
        if token is None:
            raise KnowbotError(f"no admin token for {url}: set KNOWBOT_ADMIN_TOKEN to the "
                               "server's token")
        remote = RemoteAdmin(url, token)
        try:
            yield remote
        finally:
            await remote.aclose()
        return
    async with local_runtime(settings, "command") as runtime:
        yield LocalAdmin(runtime)


@asynccontextmanager
async def local_runtime(settings: "Settings", what: str) -> AsyncIterator[Any]:
    """A runtime in this process, holding the store lock while it runs (embedded store only)."""
    from bot.runtime import Runtime
    from bot.storelock import StoreLock, tell

    lock = None
    if not settings.qdrant_url:
        lock = StoreLock(settings.data_dir, what)
        await lock.acquire(settings.store_wait_seconds, on_wait=tell)
    try:
        runtime = await Runtime.start(settings)
        try:
            yield runtime
        finally:
            await runtime.close()
    finally:
        if lock is not None:
            lock.release()
