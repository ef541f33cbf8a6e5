"""Plugins: schema generation from type hints, containment, built-in tools, entry points."""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

import pytest

from bot.types import ConversationKey
from plugins import ToolContext, ToolRegistry, build_tool, load_registry, tool
from plugins.calculate import calculate

KEY = ConversationKey("test", "t", "c", "u")


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def sample(city: str, days: int, units: Literal["metric", "imperial"] = "metric",
           tags: list[str] | None = None, colour: Colour = Colour.RED,
           ratio: Optional[float] = None, ctx: ToolContext | None = None) -> str:
    """Forecast the weather.

    Args:
        city: The city name.
        days: How many days ahead,
            from 1 to 7.
    """
    return city


def test_type_hints_become_the_json_schema() -> None:
    t = build_tool(sample)
    assert t.description == "Forecast the weather."
    assert t.parameters["required"] == ["city", "days"]
    props = t.parameters["properties"]
    assert props["city"] == {"type": "string", "description": "The city name."}
    assert props["days"] == {"type": "integer", "description": "How many days ahead, from 1 to 7."}
    assert props["units"] == {"enum": ["metric", "imperial"], "type": "string", "default": "metric"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["colour"]["enum"] == ["red", "blue"]
    assert props["ratio"] == {"type": "number"}
    assert t.parameters["additionalProperties"] is False


def test_context_parameter_is_hidden_from_the_model() -> None:
    def f(ctx: ToolContext, q: str) -> str:
        """Find."""
        return q

    t = build_tool(f)
    assert t.context_param == "ctx"
    assert list(t.parameters["properties"]) == ["q"]


def test_a_tool_needs_a_docstring_and_supported_types() -> None:
    def undocumented(x: int) -> int:
        return x

    def weird(x: bytes) -> None:
        """Weird."""

    with pytest.raises(TypeError, match="docstring"):
        build_tool(undocumented)
    with pytest.raises(TypeError, match="unsupported"):
        build_tool(weird)


def test_builtin_tools_are_registered() -> None:
    registry = load_registry(entry_points=False)
    assert {t.name for t in registry} == {"calculate", "current_time", "search_knowledge",
                                          "remind", "list_reminders"}
    spec = registry.get("calculate").spec()
    assert spec["type"] == "function" and spec["function"]["name"] == "calculate"
    assert spec["function"]["parameters"]["required"] == ["expression"]


def test_disabled_tools_are_removed() -> None:
    registry = load_registry(entry_points=False, disabled=["calculate"])
    assert registry.get("calculate") is None


@pytest.mark.parametrize("expression, expected", [
    ("2 + 3 * 4", "14"), ("(1200 * 0.15) / 12", "15"), ("2 ** 10", "1024"), ("-7 // 2", "-4"),
    ("sqrt(16) + abs(-2)", "6"), ("10 % 3", "1"), ("3 × 4", "12"), ("2^3", "8"),
    ("round(pi, 3)", "3.142"),
])
def test_calculate(expression: str, expected: str) -> None:
    assert calculate(expression).endswith(f"= {expected}")


@pytest.mark.parametrize("expression", [
    "__import__('os').system('id')", "open('/etc/passwd')", "(1).__class__", "9 ** 9 ** 9",
    "1/0", "x + 1", "[1, 2]", "lambda: 1", "'a' * 3", "10 ** 5000",
])
def test_calculate_refuses_anything_but_arithmetic(expression: str) -> None:
    from bot.errors import ToolError

    with pytest.raises(ToolError):
        calculate(expression)


async def test_current_time_is_time_zone_aware() -> None:
    registry = load_registry(entry_points=False)
    fixed = datetime(2026, 1, 15, 23, 30, tzinfo=timezone.utc)
    ctx = ToolContext(key=KEY, clock=lambda: fixed, timezone="Europe/Berlin")
    assert await registry.call("current_time", "{}", ctx) == "Friday 2026-01-16 00:30:00 Europe/Berlin (UTC+01:00)"
    shanghai = await registry.call("current_time", json.dumps({"timezone": "Asia/Shanghai"}), ctx)
    assert shanghai.startswith("Friday 2026-01-16 07:30:00 Asia/Shanghai")


async def test_a_tool_that_raises_hangs_or_floods_is_contained() -> None:
    registry = ToolRegistry(timeout=0.3, max_output=100)

    async def boom() -> str:
        """Explodes."""
        raise ValueError("kaboom")

    async def slow() -> str:
        """Never finishes."""
        await asyncio.sleep(30)
        return "late"

    def flood() -> str:
        """Prints a lot."""
        return "x" * 10_000

    for f in (boom, slow, flood):
        registry.add(build_tool(f))
    ctx = ToolContext(key=KEY)
    assert "kaboom" in await registry.call("boom", "{}", ctx)
    started = asyncio.get_running_loop().time()
    assert "did not finish within 0.3 seconds" in await registry.call("slow", "{}", ctx)
    assert asyncio.get_running_loop().time() - started < 2
    flooded = await registry.call("flood", "{}", ctx)
    assert len(flooded) < 200 and "cut at 100 characters" in flooded
    assert "no tool named" in await registry.call("missing", "{}", ctx)


async def test_bad_arguments_become_error_results() -> None:
    registry = load_registry(entry_points=False)
    ctx = ToolContext(key=KEY)
    assert "not valid JSON" in await registry.call("calculate", "{oops", ctx)
    assert "missing required" in await registry.call("calculate", "{}", ctx)
    assert "unknown argument" in await registry.call("calculate", '{"expression": "1", "x": 2}', ctx)


def test_third_party_plugins_load_from_the_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site"
    (package / "acme_weather").mkdir(parents=True)
    (package / "acme_weather" / "__init__.py").write_text(textwrap.dedent('''
        from plugins import tool

        @tool
        def weather(city: str) -> str:
            """Weather in a city."""
            return f"sunny in {city}"
    '''))
    dist = package / "acme_weather-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-weather\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[knowbot.plugins]\nweather = acme_weather\n")
    monkeypatch.syspath_prepend(str(package))
    registry = load_registry()
    t = registry.get("weather")
    assert t is not None and t.origin.startswith("entry point weather")
    assert t.parameters["required"] == ["city"]
    sys.modules.pop("acme_weather", None)


def test_decorator_with_a_name() -> None:
    @tool(name="lookup_order")
    def lookup(order_id: int) -> str:
        """Look up an order."""
        return str(order_id)

    assert lookup.__knowbot_tool__.name == "lookup_order"
    assert lookup(5) == "5"
