"""OpenAPI tools: a spec served on loopback becomes tools the model calls; calls are contained;
changing operations wait for /confirm; the per-conversation tool policy applies."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from bot.config import OpenAPISource
from bot.types import ConversationKey
from conftest import WordKnowledge, start_bot
from fake_openai import FakeOpenAI, reply, tool_calls
from plugins import ToolContext, ToolRegistry
from plugins.openapi import OpenAPITools, tool_name
from loopback import serve_in_thread

TOKEN = "Bearer s3cret-token"
KEY = ConversationKey("test", "team-1", "chat-1", "alice")


def spec_for(base: str) -> dict:
    """The shop's OpenAPI 3 document, with local $refs."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "Shop", "version": "1"},
        "servers": [{"url": base}],
        "components": {
            "schemas": {
                "NewOrder": {"type": "object", "required": ["item"], "properties": {
                    "item": {"type": "string", "description": "What to order."},
                    "quantity": {"$ref": "#/components/schemas/Quantity"}}},
                "Quantity": {"type": "integer", "minimum": 1, "example": 2},
            },
            "parameters": {"OrderId": {"name": "order_id", "in": "path", "required": True,
                                       "description": "The order number.",
                                       "schema": {"type": "integer"}}},
        },
        "paths": {
            "/orders/{order_id}": {
                "parameters": [{"$ref": "#/components/parameters/OrderId"}],
                "get": {"operationId": "getOrder", "summary": "Look up one order's status.",
                        "parameters": [{"name": "verbose", "in": "query",
                                        "schema": {"type": "boolean"}}]},
            },
            "/orders": {"post": {
                "operationId": "createOrder", "summary": "Place an order.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/NewOrder"}}}},
            }},
            "/slow": {"get": {"operationId": "slow", "summary": "Takes its time."}},
            "/huge": {"get": {"operationId": "huge", "summary": "Answers with 10 MB."}},
            "/elsewhere": {"get": {"operationId": "elsewhere", "summary": "Redirects away."}},
        },
    }


class ShopState:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, bytes]] = []


SHOP = ShopState()


async def _spec(request: Request) -> Response:
    return JSONResponse(spec_for(str(request.base_url).rstrip("/")))


async def _record(request: Request) -> None:
    SHOP.calls.append((request.method, request.url.path + ("?" + request.url.query
                                                          if request.url.query else ""),
                       request.headers.get("authorization"), await request.body()))


async def _order(request: Request) -> Response:
    await _record(request)
    if request.headers.get("authorization") != TOKEN:
        return JSONResponse({"error": "unauthorised"}, status_code=401)
    order_id = int(request.path_params["order_id"])
    if order_id != 1234:
        return JSONResponse({"error": f"no order {order_id}"}, status_code=404)
    return JSONResponse({"id": 1234, "status": "shipped", "carrier": "DHL"})


async def _create(request: Request) -> Response:
    await _record(request)
    body = await request.json()
    return JSONResponse({"id": 5678, "item": body["item"], "status": "placed"}, status_code=201)


async def _slow(request: Request) -> Response:
    await _record(request)
    await asyncio.sleep(3)
    return JSONResponse({"status": "finally"})


async def _huge(request: Request) -> Response:
    async def chunks():
        block = b"x" * 65536
        for _ in range(160):  # 10 MB
            yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def _elsewhere(request: Request) -> Response:
    port = request.url.port
    return RedirectResponse(f"http://localhost:{port}/orders/1234", status_code=302)


ROUTES = [
    Route("/openapi.json", _spec),
    Route("/orders/{order_id}", _order),
    Route("/orders", _create, methods=["POST"]),
    Route("/slow", _slow),
    Route("/huge", _huge),
    Route("/elsewhere", _elsewhere),
]


@pytest.fixture(scope="module")
def shop() -> Iterator[str]:
    """The shop's API on 127.0.0.1; yields its base URL."""
    with serve_in_thread(Starlette(routes=ROUTES)) as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    SHOP.calls.clear()


def source(shop: str, **extra: object) -> dict:
    return {"spec": f"{shop}/openapi.json", "headers": {"Authorization": TOKEN}, **extra}


async def registry_for(shop: str, **extra: object) -> tuple[ToolRegistry, OpenAPITools]:
    loaded = await OpenAPITools.load({"shop": OpenAPISource(**source(shop, **extra))})
    registry = ToolRegistry(timeout=10)
    for item in loaded.tools:
        registry.add(item)
    return registry, loaded


# ---- import -------------------------------------------------------------------------------


def test_tool_names_are_sanitised() -> None:
    assert tool_name("shop", "getOrder") == "shop_get_order"
    assert tool_name("my-api", "get /orders/{id}") == "my_api_get_orders_id"
    assert tool_name("9s", "x") == "t_9s_x"
    assert len(tool_name("a" * 50, "b" * 50)) == 64


async def test_each_operation_becomes_a_tool_with_its_parameters_as_schema(shop: str) -> None:
    registry, loaded = await registry_for(shop)
    try:
        names = [t.name for t in registry]
        assert names == ["shop_create_order", "shop_elsewhere", "shop_get_order", "shop_huge",
                         "shop_slow"]
        get_order = registry.get("shop_get_order")
        assert get_order is not None and get_order.origin == "openapi:shop"
        assert get_order.description.startswith("Look up one order's status.")
        props = get_order.parameters["properties"]
        assert props["order_id"] == {"type": "integer", "description": "The order number."}
        assert props["verbose"] == {"type": "boolean"}
        assert get_order.parameters["required"] == ["order_id"]
        body = registry.get("shop_create_order").parameters  # type: ignore[union-attr]
        assert body["required"] == ["body"]
        assert body["properties"]["body"]["properties"]["quantity"] == {
            "type": "integer", "minimum": 1}  # the $ref is inlined, "example" dropped
        assert getattr(get_order.func, "__knowbot_confirm__") is False
        assert getattr(registry.get("shop_create_order").func, "__knowbot_confirm__") is True
    finally:
        await loaded.aclose()


async def test_the_operations_allow_list_and_a_broken_source(shop: str, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"swagger": "2.0"}')
    loaded = await OpenAPITools.load({
        "shop": OpenAPISource(**source(shop, operations=["getOrder"])),
        "bad": OpenAPISource(spec=str(tmp_path / "bad.json")),
        "gone": OpenAPISource(spec=f"{shop}/missing.json"),
    })
    try:
        assert [t.name for t in loaded.tools] == ["shop_get_order"]
    finally:
        await loaded.aclose()


async def test_a_call_sends_the_configured_auth_and_returns_the_json(shop: str) -> None:
    registry, loaded = await registry_for(shop)
    try:
        out = await registry.call("shop_get_order", {"order_id": "1234", "verbose": True},
                                  ToolContext(key=KEY))
        assert json.loads(out) == {"id": 1234, "status": "shipped", "carrier": "DHL"}
        assert SHOP.calls == [("GET", "/orders/1234?verbose=true", TOKEN, b"")]
        missing = await registry.call("shop_get_order", {"order_id": 99}, ToolContext(key=KEY))
        assert missing.startswith("Error: the API answered HTTP 404")
        assert "no order 99" in missing
    finally:
        await loaded.aclose()


# ---- containment --------------------------------------------------------------------------


async def test_a_disallowed_host_is_refused(shop: str) -> None:
    registry, loaded = await registry_for(shop)
    try:
        out = await registry.call("shop_elsewhere", {}, ToolContext(key=KEY))
        assert out.startswith("Error: the host 'localhost' is not allowed")
        assert SHOP.calls == []  # the redirect was not followed
    finally:
        await loaded.aclose()
    registry, loaded = await registry_for(shop, allow_hosts=["api.example.com"])
    try:
        out = await registry.call("shop_get_order", {"order_id": 1234}, ToolContext(key=KEY))
        assert out.startswith("Error: the host '127.0.0.1' is not allowed")
        assert "api.example.com" in out
        assert SHOP.calls == []
    finally:
        await loaded.aclose()


async def test_a_slow_endpoint_is_cut_off(shop: str) -> None:
    registry, loaded = await registry_for(shop, timeout=0.3)
    try:
        started = time.monotonic()
        out = await registry.call("shop_slow", {}, ToolContext(key=KEY))
        assert out == "Error: the API did not answer within 0.3 seconds"
        assert time.monotonic() - started < 2
    finally:
        await loaded.aclose()


async def test_a_10_mb_response_is_refused(shop: str) -> None:
    registry, loaded = await registry_for(shop, max_response_bytes=100_000)
    try:
        out = await registry.call("shop_huge", {}, ToolContext(key=KEY))
        assert out == "Error: the response is too large (over the limit of 100000 bytes)"
    finally:
        await loaded.aclose()


# ---- through the model ----------------------------------------------------------------------


def _answer_from_tool_result(request: dict):
    """A model that answers with the order status it read in the tool result."""
    results = [m["content"] for m in request["messages"] if m["role"] == "tool"]
    data = json.loads(results[-1].split("\n")[1])
    return reply(f"Order {data['id']} is {data['status']} with {data['carrier']}.")


async def test_the_model_calls_the_api_and_the_result_reaches_the_answer(
    shop: str, tmp_path: Path, knowledge: WordKnowledge
) -> None:
    with FakeOpenAI(default=_answer_from_tool_result) as model:
        model.script(tool_calls(("shop_get_order", {"order_id": 1234})))
        chat = await start_bot(tmp_path, knowledge, llm_base_url=model.base_url, llm_model="m",
                               llm_max_retries=0, openapi={"shop": source(shop)})
        try:
            answer = await chat.say("what is the status of order 1234?")
        finally:
            await chat.runtime.close()
        assert answer.text == "Order 1234 is shipped with DHL."
        offered = [t["function"]["name"] for t in model.requests[0]["tools"]]
        assert "shop_get_order" in offered and "calculate" in offered
        assert SHOP.calls == [("GET", "/orders/1234", TOKEN, b"")]


# ---- confirmation and policy ---------------------------------------------------------------


async def test_a_changing_operation_waits_for_confirm_in_the_same_conversation(
    shop: str, tmp_path: Path, knowledge: WordKnowledge
) -> None:
    chat = await start_bot(tmp_path, knowledge, openapi={"shop": source(shop)})
    try:
        asked = await chat.say('/shop_create_order {"body": {"item": "book", "quantity": 2}}')
        assert "needs a confirmation" in asked.text
        code = asked.text.split("/confirm ")[1].split()[0]
        assert SHOP.calls == []  # nothing placed yet
        other = await chat.say(f"/confirm {code}", chat="chat-2")
        assert other.text == "That confirmation code is unknown or has expired."
        someone_else = await chat.say(f"/confirm {code}", user="mallory")
        assert someone_else.text == "That confirmation code is unknown or has expired."
        done = await chat.say(f"/confirm {code}")
        assert json.loads(done.text) == {"id": 5678, "item": "book", "status": "placed"}
        assert [(m, p, json.loads(b)) for m, p, _, b in SHOP.calls] == [
            ("POST", "/orders", {"item": "book", "quantity": 2})]
        again = await chat.say(f"/confirm {code}")
        assert again.text == "That confirmation code is unknown or has expired."
        assert len(SHOP.calls) == 1
        help_text = (await chat.say("/help")).text
        assert "/confirm CODE" in help_text
    finally:
        await chat.runtime.close()


async def test_the_model_is_told_to_ask_for_confirmation(
    shop: str, tmp_path: Path, knowledge: WordKnowledge
) -> None:
    with FakeOpenAI() as model:
        model.script(tool_calls(("shop_create_order", {"body": {"item": "pen"}})),
                     reply("Please confirm."))
        chat = await start_bot(tmp_path, knowledge, llm_base_url=model.base_url, llm_model="m",
                               llm_max_retries=0, openapi={"shop": source(shop)})
        try:
            answer = await chat.say("order a pen")
        finally:
            await chat.runtime.close()
        tool_result = model.requests[1]["messages"][-1]["content"]
        assert "reply /confirm " in tool_result and "Not run yet" in tool_result
        code = tool_result.split("/confirm ")[1].split()[0]
        # the person sees how to confirm even though the model only said "Please confirm."
        assert answer.text.startswith("Please confirm.") and f"/confirm {code}" in answer.text
        assert SHOP.calls == []


async def test_tool_policy_limits_tools_per_conversation_and_to_admins(
    shop: str, tmp_path: Path, knowledge: WordKnowledge
) -> None:
    chat = await start_bot(
        tmp_path, knowledge, openapi={"shop": source(shop)}, admins=["test:boss"],
        tool_policy=[
            {"match": "test:team-1:public-*", "allow": ["calculate", "current_time"]},
            {"match": "*", "admin_only": ["shop_*"]},
        ],
    )
    try:
        public = await chat.say("/shop_get_order 1234", chat="public-1", user="boss")
        assert public.text == "Error: the tool shop_get_order is not available in this conversation"
        assert (await chat.say("/calculate 2*3", chat="public-1")).text == "2*3 = 6"
        denied = await chat.say("/shop_get_order 1234")
        assert denied.text == "Error: only an admin can use the tool shop_get_order"
        assert SHOP.calls == []
        allowed = await chat.say("/shop_get_order 1234", user="boss")
        assert json.loads(allowed.text)["status"] == "shipped"
        # the model is offered only the tools the conversation may use
        registry = chat.runtime.registry
        public_tools = {s["function"]["name"] for s in registry.specs(chat.key("public-1"))}
        assert public_tools == {"calculate", "current_time"}
        assert "shop_get_order" in {s["function"]["name"] for s in registry.specs(chat.key())}
    finally:
        await chat.runtime.close()


# ---- knowbot plugins list ---------------------------------------------------------------------


def test_plugins_list_shows_every_tool_its_origin_and_schema(
    shop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml
    from typer.testing import CliRunner

    from bot.cli import app

    document = spec_for("https://ignored.example")
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(document))
    monkeypatch.setenv("KNOWBOT_OPENAPI", json.dumps({"shop": {
        "spec": str(tmp_path / "shop.yaml"), "base_url": shop,
        "operations": ["getOrder", "createOrder"]}}))
    done = CliRunner().invoke(app, ["plugins", "list", "--json"])
    assert done.exit_code == 0, done.output
    tools = {t["name"]: t for t in json.loads(done.stdout)}
    assert tools["calculate"]["origin"] == "builtin"
    assert tools["shop_get_order"]["origin"] == "openapi:shop"
    assert tools["shop_get_order"]["parameters"]["required"] == ["order_id"]
    assert tools["shop_get_order"]["confirm"] is False
    assert tools["shop_create_order"]["confirm"] is True
    assert "shop_slow" not in tools
    text = CliRunner().invoke(app, ["plugins", "list"]).stdout
    assert "shop_create_order  (openapi:shop)  [asks for /confirm]" in text
    assert '    schema: {"type": "object", "properties": {"body"' in text
