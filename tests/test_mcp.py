"""MCP tools: a stdio server started by the test (and a streamable HTTP one on loopback) serves
tools that appear beside the built-in ones, that the model calls, and that are contained."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

from bot.config import MCPServerConfig
from bot.types import ConversationKey
from conftest import WordKnowledge, start_bot
from fake_openai import FakeOpenAI, reply, tool_calls
from plugins import ToolContext, ToolRegistry
from plugins.mcp_tools import MCPTools
from loopback import serve_in_thread

DEMO = str(Path(__file__).parent / "mcp_server_demo.py")
KEY = ConversationKey("test", "team-1", "chat-1", "alice")


def demo_config(tmp_path: Path, **extra: object) -> dict:
    """The stdio demo server, run by this Python."""
    return {"command": sys.executable, "args": [DEMO],
            "env": {"DEMO_NOTES_FILE": str(tmp_path / "notes.txt"), "DEMO_GREETING": "Hi: "},
            **extra}


async def test_stdio_tools_are_listed_with_their_schema_and_a_broken_server_is_skipped(
    tmp_path: Path,
) -> None:
    loaded = await MCPTools.start({
        "demo": MCPServerConfig(**demo_config(tmp_path)),
        "missing": MCPServerConfig(command=str(tmp_path / "no-such-server")),
        "mute": MCPServerConfig(command=sys.executable, args=["-c", "import time; time.sleep(30)"],
                                start_timeout=0.5),
    })
    try:
        by_name = {t.name: t for t in loaded.tools}
        assert sorted(by_name) == ["demo_add_note", "demo_broken", "demo_order_status",
                                   "demo_sleepy"]
        status = by_name["demo_order_status"]
        assert status.origin == "mcp:demo"
        assert status.description == "Look up the status of an order by its number."
        assert status.parameters["properties"]["order_id"]["type"] == "integer"
        assert status.parameters["required"] == ["order_id"]
        assert getattr(status.func, "__knowbot_confirm__") is False  # read-only hint
        assert getattr(by_name["demo_add_note"].func, "__knowbot_confirm__") is True
        assert [c.name for c in loaded.connections] == ["demo"]

        registry = ToolRegistry(timeout=1.0)
        for item in loaded.tools:
            registry.add(item)
        ctx = ToolContext(key=KEY)
        assert await registry.call("demo_order_status", {"order_id": 1234}, ctx) == (
            "Hi: order 1234 is out for delivery")  # the configured env reached the server
        broken = await registry.call("demo_broken", {}, ctx)
        assert broken.startswith("Error: ") and "the demo tool broke on purpose" in broken
        slow = await registry.call("demo_sleepy", {"seconds": 2}, ctx)
        assert slow == "Error: the tool demo_sleepy did not finish within 1 seconds."
        # the session survives a call given up on
        assert "no order 7" in await registry.call("demo_order_status", {"order_id": 7}, ctx)
    finally:
        await loaded.aclose()
    assert all(c._task is not None and c._task.done() for c in loaded.connections)
    assert await registry.call("demo_order_status", {"order_id": 1}, ctx) == (
        "Error: the MCP server demo is not connected")


def _answer_from_tool_result(request: dict):
    results = [m["content"] for m in request["messages"] if m["role"] == "tool"]
    return reply("The shop says: " + results[-1].split("\n")[1])


async def test_the_model_calls_an_mcp_tool_and_changes_wait_for_confirm(
    tmp_path: Path, knowledge: WordKnowledge
) -> None:
    with FakeOpenAI(default=_answer_from_tool_result) as model:
        model.script(tool_calls(("demo_order_status", {"order_id": 1234})))
        chat = await start_bot(tmp_path, knowledge, llm_base_url=model.base_url, llm_model="m",
                               llm_max_retries=0, mcp_servers={"demo": demo_config(tmp_path)})
        try:
            offered = {t["function"]["name"] for t in
                       [*chat.runtime.registry.specs()]}
            assert {"demo_order_status", "calculate", "search_knowledge"} <= offered
            answer = await chat.say("where is order 1234?")
            assert answer.text == "The shop says: Hi: order 1234 is out for delivery"
            assert "demo_order_status" in {t["function"]["name"]
                                           for t in model.requests[0]["tools"]}

            asked = await chat.say("/demo_add_note buy milk")
            assert "needs a confirmation" in asked.text
            assert not (tmp_path / "notes.txt").exists()
            code = asked.text.split("/confirm ")[1].split()[0]
            done = await chat.say(f"/confirm {code}")
            assert done.text == "noted: buy milk"
            assert (tmp_path / "notes.txt").read_text() == "buy milk\n"
        finally:
            await chat.runtime.close()


async def test_a_server_that_fails_to_start_does_not_stop_knowbot(
    tmp_path: Path, knowledge: WordKnowledge
) -> None:
    chat = await start_bot(tmp_path, knowledge, mcp_servers={
        "crash": {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"],
                  "start_timeout": 5}})
    try:
        assert not any(t.origin.startswith("mcp:") for t in chat.runtime.registry)
        assert (await chat.say("/calculate 1+2")).text == "1+2 = 3"
    finally:
        await chat.runtime.close()


# ---- streamable HTTP ----------------------------------------------------------------------


class _RecordAuth(BaseHTTPMiddleware):
    seen: list[str | None] = []

    async def dispatch(self, request, call_next):  # type: ignore[no-untyped-def]
        _RecordAuth.seen.append(request.headers.get("authorization"))
        return await call_next(request)


@pytest.fixture(scope="module")
def http_mcp() -> Iterator[str]:
    """The demo server over streamable HTTP on 127.0.0.1; yields its endpoint."""
    sys.path.insert(0, str(Path(__file__).parent))
    from mcp_server_demo import build

    app = build().streamable_http_app()
    app.user_middleware.insert(0, Middleware(_RecordAuth))
    with serve_in_thread(app, "/mcp") as url:
        yield url


async def test_streamable_http_server_tools_with_headers(http_mcp: str) -> None:
    loaded = await MCPTools.start({"remote": MCPServerConfig(
        url=http_mcp, headers={"Authorization": "Bearer mcp-token"}, tools=["order_status"])})
    try:
        assert [(t.name, t.origin) for t in loaded.tools] == [
            ("remote_order_status", "mcp:remote")]
        registry = ToolRegistry()
        registry.add(loaded.tools[0])
        out = await registry.call("remote_order_status", json.dumps({"order_id": 1234}),
                                  ToolContext(key=KEY))
        assert out == "order 1234 is out for delivery"
        assert _RecordAuth.seen and set(_RecordAuth.seen) == {"Bearer mcp-token"}
    finally:
        await loaded.aclose()
