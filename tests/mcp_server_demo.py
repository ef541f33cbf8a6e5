"""A tiny MCP server for the tests: `python mcp_server_demo.py` serves it over stdio.

Tools: order_status (read-only), add_note (changes something: appends to $DEMO_NOTES_FILE),
broken (reports a tool error), sleepy (waits). `app()` builds it for streamable HTTP too.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations


def build() -> MCPServer:
    """The demo server with its tools."""
    server = MCPServer("demo", log_level="WARNING")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def order_status(order_id: int) -> str:
        """Look up the status of an order by its number."""
        greeting = os.environ.get("DEMO_GREETING", "")
        if order_id == 1234:
            return f"{greeting}order 1234 is out for delivery".strip()
        return f"no order {order_id}"

    @server.tool()
    def add_note(text: str) -> str:
        """Add a note to the team's notebook."""
        with Path(os.environ["DEMO_NOTES_FILE"]).open("a", encoding="utf-8") as notes:
            notes.write(text + "\n")
        return f"noted: {text}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def broken() -> str:
        """Always fails."""
        raise ToolError("the demo tool broke on purpose")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def sleepy(seconds: float) -> str:
        """Wait, then answer."""
        await asyncio.sleep(seconds)
        return "awake"

    return server


if __name__ == "__main__":
    build().run("stdio")
