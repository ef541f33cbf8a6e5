"""Tools the model (and people, as commands) can call.

A tool is a plain typed Python function with a docstring, decorated with `@tool`. Its type
hints become the JSON schema the model sees; its docstring becomes the description. A parameter
annotated `ToolContext` receives the calling conversation and is hidden from the model.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Union, get_args, get_origin

from bot.errors import ToolError
from bot.knowledge import KnowledgeSearch, NoKnowledge
from bot.types import ConversationKey

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "knowbot.plugins"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ToolContext:
    """What a tool may know about the conversation that called it."""

    key: ConversationKey
    knowledge: KnowledgeSearch = field(default_factory=NoKnowledge)
    timezone: str = "UTC"
    is_admin: bool = False
    clock: Callable[[], datetime] = _utcnow
    citations: list[Any] = field(default_factory=list)
    jobs: Any = None  # bot.jobs.JobCommands when the scheduler runs: tools may schedule
    notices: list[str] = field(default_factory=list)  # shown to the person under the answer


@dataclass(frozen=True)
class Tool:
    """A registered tool: its callable, name, description and JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]
    context_param: str | None = None
    origin: str = "builtin"

    def spec(self) -> dict[str, Any]:
        """The tool as the Chat Completions API's `tools` entry (built once; do not change it)."""
        cached = self.__dict__.get("_spec")
        if cached is None:
            cached = {"type": "function", "function": {
                "name": self.name, "description": self.description,
                "parameters": self.parameters}}
            object.__setattr__(self, "_spec", cached)  # frozen: the one place it is written
        return cached


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_for(annotation: Any) -> dict[str, Any]:
    """The JSON schema of one type hint."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if origin is Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and next(iter(kinds)) in _JSON_TYPES:
            schema["type"] = _JSON_TYPES[next(iter(kinds))]
        return schema
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return {"type": "string", "enum": [m.value for m in annotation]}
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        item = args[0] if args else str
        return {"type": "array", "items": _schema_for(item)}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _schema_for(members[0])
        return {"anyOf": [_schema_for(a) for a in members]}
    raise TypeError(f"unsupported parameter type {annotation!r}")


def _param_docs(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and an `Args:` section's entries."""
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    in_args = False
    current = None
    for line in lines:
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args:
            if not stripped:
                continue
            if ":" in stripped and not line.startswith("        "):
                name, _, text = stripped.partition(":")
                current = name.split("(")[0].strip()
                params[current] = text.strip()
            elif current:
                params[current] += " " + stripped
        else:
            description.append(line)
    return "\n".join(description).strip(), params


def build_tool(func: Callable[..., Any], name: str | None = None, origin: str = "builtin") -> Tool:
    """Make a Tool from a typed, documented function."""
    if not func.__doc__:
        raise TypeError(f"tool {func.__name__} needs a docstring: it is the model's description")
    hints = typing.get_type_hints(func)
    description, param_docs = _param_docs(func.__doc__)
    properties: dict[str, Any] = {}
    required: list[str] = []
    context_param = None
    for pname, param in inspect.signature(func).parameters.items():
        annotation = hints.get(pname, str)
        if annotation is ToolContext or ToolContext in get_args(annotation):
            context_param = pname
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {func.__name__}: *args and **kwargs are not supported")
        schema = _schema_for(annotation)
        if pname in param_docs:
            schema["description"] = param_docs[pname]
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        elif param.default is not None:
            schema["default"] = param.default
        properties[pname] = schema
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return Tool(
        name=name or func.__name__,
        description=description,
        parameters=parameters,
        func=func,
        context_param=context_param,
        origin=origin,
    )


def tool(func: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Mark a function as a tool; usable as `@tool` or `@tool(name="...")`."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__knowbot_tool__ = build_tool(f, name=name)  # type: ignore[attr-defined]
        return f

    return mark(func) if func is not None else mark


def tools_in(module: Any, origin: str) -> list[Tool]:
    """All functions marked with @tool in a module."""
    found = []
    for value in vars(module).values():
        marked = getattr(value, "__knowbot_tool__", None)
        if isinstance(marked, Tool):
            found.append(Tool(**{**marked.__dict__, "origin": origin}))
    return found


def _coerce(value: Any, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, str):
        return int(value)
    if kind == "number" and isinstance(value, str):
        return float(value)
    if kind == "boolean" and isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return value


class ToolRegistry:
    """The tools available to a conversation, and the contained way to call them."""

    def __init__(self, timeout: float = 15.0, max_output: int = 8000) -> None:
        self._tools: dict[str, Tool] = {}
        self.timeout = timeout
        self.max_output = max_output
        # Which tools a conversation may use (a tool policy sets it); None: all of them.
        self.visible: Callable[[str, ConversationKey], bool] | None = None

    def add(self, item: Tool) -> None:
        """Register a tool; a later tool with the same name replaces the earlier one."""
        if item.name in self._tools:
            log.warning("tool %s from %s replaces the one from %s", item.name, item.origin,
                        self._tools[item.name].origin)
        self._tools[item.name] = item

    def remove(self, name: str) -> None:
        """Unregister a tool if present."""
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        """The tool with this name, or None."""
        return self._tools.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._tools.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self, key: ConversationKey | None = None) -> list[dict[str, Any]]:
        """The tools as Chat Completions `tools` entries (those `key`'s conversation may use)."""
        visible = self.visible if key is not None else None
        return [t.spec() for t in self if visible is None or visible(t.name, key)]

    def parse_arguments(self, item: Tool, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
        """Decode and check a tool call's arguments; raise ToolError with a clear message."""
        if arguments is None or arguments == "":
            data: Any = {}
        elif isinstance(arguments, str):
            try:
                data = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ToolError(f"arguments are not valid JSON: {exc.msg}") from exc
        else:
            data = arguments
        if not isinstance(data, dict):
            raise ToolError("arguments must be a JSON object")
        props = item.parameters["properties"]
        unknown = sorted(set(data) - set(props))
        if unknown:
            raise ToolError(f"unknown argument(s): {', '.join(unknown)}")
        missing = [p for p in item.parameters["required"] if p not in data]
        if missing:
            raise ToolError(f"missing required argument(s): {', '.join(missing)}")
        try:
            return {k: _coerce(v, props[k]) for k, v in data.items()}
        except ValueError as exc:
            raise ToolError(f"bad argument value: {exc}") from exc

    async def call(
        self, name: str, arguments: str | dict[str, Any] | None, ctx: ToolContext
    ) -> str:
        """Run a tool, contained: errors, hangs and huge outputs become a short text result."""
        item = self._tools.get(name)
        if item is None:
            return f"Error: there is no tool named {name!r}."
        try:
            kwargs = self.parse_arguments(item, arguments)
            if item.context_param:
                kwargs[item.context_param] = ctx
            result = await asyncio.wait_for(self._invoke(item, kwargs), timeout=self.timeout)
        except ToolError as exc:
            return f"Error: {exc}"
        except asyncio.TimeoutError:
            log.warning("tool %s timed out after %.1fs", name, self.timeout)
            return f"Error: the tool {name} did not finish within {self.timeout:g} seconds."
        except Exception as exc:  # noqa: BLE001 - the boundary that contains any plugin failure
            log.warning("tool %s raised", name, exc_info=True)
            return f"Error: the tool {name} failed: {type(exc).__name__}: {exc}"
        return self._limit(result)

    async def _invoke(self, item: Tool, kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(item.func):
            return await item.func(**kwargs)
        return await asyncio.to_thread(item.func, **kwargs)

    def _limit(self, result: Any) -> str:
        if isinstance(result, str):
            text = result
        else:
            try:
                text = json.dumps(result, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                text = str(result)
        if len(text) > self.max_output:
            text = text[: self.max_output] + f"\n[... output cut at {self.max_output} characters]"
        return text


def load_registry(
    timeout: float = 15.0,
    max_output: int = 8000,
    disabled: typing.Iterable[str] = (),
    entry_points: bool = True,
) -> ToolRegistry:
    """The built-in tools plus every third-party plugin in the `knowbot.plugins` group."""
    from importlib.metadata import entry_points as find_entry_points

    from plugins import calculate, clock, knowledge_search, remind

    registry = ToolRegistry(timeout=timeout, max_output=max_output)
    for module in (clock, calculate, knowledge_search, remind):
        for item in tools_in(module, origin="builtin"):
            registry.add(item)
    if entry_points:
        for ep in find_entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception:  # noqa: BLE001 - a broken plugin must not stop Knowbot
                log.exception("plugin %s could not be loaded; skipped", ep.name)
                continue
            origin = f"entry point {ep.name} ({ep.value})"
            found = (
                [build_tool(loaded, origin=origin)]
                if callable(loaded) and not isinstance(loaded, types.ModuleType)
                else tools_in(loaded, origin=origin)
            )
            for item in found:
                registry.add(item)
    for name in disabled:
        registry.remove(name)
    return registry
