"""Tools from Model Context Protocol servers (stdio or streamable HTTP), configured by name.

Each server gets one owner task that enters its transport and `mcp.ClientSession` in an
AsyncExitStack, lists the tools (bounded in time), then holds the session open until `aclose()`;
so the SDK's task groups are entered and left in the same task, whichever task closes Knowbot.
A server that fails to start is logged and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from contextlib import AsyncExitStack
from typing import Any

from bot.config import MCPServerConfig
from bot.errors import ToolError
from plugins import Tool
from plugins.openapi import tool_name

log = logging.getLogger(__name__)

MAX_TOOL_PAGES = 20
MAX_DESCRIPTION = 1000


def _errlog() -> Any:
    """Where a stdio server's stderr goes: our real stderr, or nowhere if it has no file."""
    stream = sys.__stderr__
    try:
        if stream is not None:
            stream.fileno()
            return stream
    except (OSError, ValueError):
        pass
    return subprocess.DEVNULL


def result_text(result: Any) -> str:
    """An MCP CallToolResult as text for the model."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(block, 'uri', '')}]")
        else:
            parts.append(f"[{kind or 'unknown'} content omitted]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _parameters(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The server's input schema with the keys the registry relies on."""
    params = dict(schema or {})
    params["type"] = "object"
    params.setdefault("properties", {})
    params.setdefault("required", [])
    return params


class MCPConnection:
    """One configured MCP server: its session (held by an owner task) and its tools."""

    def __init__(self, name: str, config: MCPServerConfig) -> None:
        self.name = name
        self.config = config
        self.session: Any = None
        self.tools: list[Any] = []
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def _transport(self, stack: AsyncExitStack) -> tuple[Any, Any]:
        cfg = self.config
        if cfg.command:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=cfg.command, args=list(cfg.args),
                env={k: v.get_secret_value() for k, v in cfg.env.items()} or None,
            )
            return await stack.enter_async_context(stdio_client(params, errlog=_errlog()))
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        client = await stack.enter_async_context(create_mcp_http_client(headers=headers))
        assert cfg.url is not None
        return await stack.enter_async_context(streamable_http_client(cfg.url, http_client=client))

    async def _own(self) -> None:
        from mcp import ClientSession
        from mcp.types import PaginatedRequestParams

        try:
            async with AsyncExitStack() as stack:
                read, write = await self._transport(stack)
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                cursor = None
                for _ in range(MAX_TOOL_PAGES):
                    page = await session.list_tools(
                        params=PaginatedRequestParams(cursor=cursor) if cursor else None
                    )
                    self.tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self.session = session
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # noqa: BLE001 - any transport or protocol failure
            self._error = exc
        finally:
            self.session = None
            self._ready.set()

    async def start(self) -> None:
        """Connect and list the tools within the start timeout; raise ToolError if it fails."""
        self._task = asyncio.create_task(self._own(), name=f"mcp-{self.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), self.config.start_timeout)
        except TimeoutError:
            await self.aclose()
            raise ToolError(f"did not answer within {self.config.start_timeout:g} seconds"
                            ) from None
        if self.session is None:
            await self.aclose()
            reason = self._error
            raise ToolError(f"{type(reason).__name__}: {reason}" if reason else "it stopped")

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call one tool on the server; a tool-level error becomes ToolError."""
        if self.session is None:
            raise ToolError(f"the MCP server {self.name} is not connected")
        try:
            result = await self.session.call_tool(tool, arguments)
        except ToolError:
            raise
        except Exception as exc:  # noqa: BLE001 - MCPError and transport failures
            raise ToolError(f"the MCP server {self.name} failed: {exc}") from exc
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or "the tool reported an error")
        return text

    def as_tools(self) -> list[Tool]:
        """The server's tools as Knowbot Tools with origin "mcp:<name>"."""
        wanted = set(self.config.tools) if self.config.tools is not None else None
        made: list[Tool] = []
        for remote in self.tools:
            if wanted is not None and remote.name not in wanted:
                continue
            made.append(Tool(
                name=tool_name(self.name, remote.name),
                description=(remote.description or remote.title or remote.name)[:MAX_DESCRIPTION],
                parameters=_parameters(remote.input_schema),
                func=self._caller(remote),
                origin=f"mcp:{self.name}",
            ))
        return made

    def _caller(self, remote: Any) -> Any:
        async def call(**arguments: Any) -> str:
            return await self.call(remote.name, arguments)

        read_only = bool(remote.annotations and remote.annotations.read_only_hint)
        confirm = self.config.confirm
        call.__knowbot_confirm__ = (  # type: ignore[attr-defined]
            confirm if confirm is not None else not read_only
        )
        return call

    async def aclose(self) -> None:
        """Close the session and stop the server (bounded)."""
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        if self.session is None:  # still starting: stop waiting for the server
            task.cancel()
        _, pending = await asyncio.wait({task}, timeout=10)
        if pending:
            task.cancel()
            log.warning("MCP server %s did not stop in time; cancelled", self.name)


class MCPTools:
    """Every configured MCP server's connection and tools."""

    def __init__(self) -> None:
        self.connections: list[MCPConnection] = []
        self.tools: list[Tool] = []

    @classmethod
    async def start(cls, servers: dict[str, MCPServerConfig]) -> "MCPTools":
        """Connect to every server concurrently; one that fails is logged and skipped."""
        loaded = cls()
        connections = [MCPConnection(name, cfg) for name, cfg in servers.items()]
        results = await asyncio.gather(*(c.start() for c in connections),
                                       return_exceptions=True)
        for connection, outcome in zip(connections, results, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                log.error("MCP server %s skipped: %s", connection.name, outcome)
                continue
            tools = connection.as_tools()
            log.info("MCP server %s: %d tool(s)", connection.name, len(tools))
            loaded.connections.append(connection)
            loaded.tools.extend(tools)
        return loaded

    async def aclose(self) -> None:
        """Close every session."""
        await asyncio.gather(*(c.aclose() for c in self.connections), return_exceptions=True)
