"""Per-conversation tool policy: which tools a chat may use, which need an admin, and which ask
for a confirmation in the chat (`/confirm CODE`) before they run.

`apply_policy` wraps the registry's tools in place; the originals stay in an inner registry that
only a confirmed call reaches. A tool "changes something" when its function carries
`__knowbot_confirm__ = True` (OpenAPI non-GET operations, MCP tools not marked read-only) or a
rule's `confirm` patterns name it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from bot.commands import Command
from bot.config import ToolPolicyRule
from bot.errors import ToolError
from bot.types import ConversationKey, InboundMessage, Reply
from plugins import Tool, ToolContext, ToolRegistry

if TYPE_CHECKING:
    from bot.engine import Engine
    from bot.kv import StateStore

log = logging.getLogger(__name__)

CONFIRM_NS = "tool-confirm"
_CTX = "__knowbot_ctx__"


def needs_confirmation_mark(item: Tool) -> bool:
    """True when the tool's own source marks it as changing something."""
    return bool(getattr(item.func, "__knowbot_confirm__", False))


def _scope(key: ConversationKey) -> str:
    return f"{key.channel}:{key.tenant}:{key.chat_id}"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


class ToolPolicy:
    """The rules, the pending confirmations, and the unwrapped tools they guard."""

    def __init__(self, rules: list[ToolPolicyRule], state: "StateStore", ttl: float,
                 inner: ToolRegistry) -> None:
        self.rules = rules
        self.state = state
        self.ttl = ttl
        self.inner = inner
        self.active = False  # True once some tool is guarded: /confirm is then offered

    def _rules(self, key: ConversationKey) -> list[ToolPolicyRule]:
        scope = _scope(key)
        return [r for r in self.rules if fnmatchcase(scope, r.match)]

    def allowed(self, name: str, key: ConversationKey) -> bool:
        """True if every matching rule with an allow-list lets this conversation use the tool."""
        return all(r.allow is None or _matches(name, r.allow) for r in self._rules(key))

    def admin_only(self, name: str, key: ConversationKey) -> bool:
        """True if a matching rule reserves the tool for admins."""
        return any(_matches(name, r.admin_only) for r in self._rules(key))

    def needs_confirmation(self, item: Tool, key: ConversationKey) -> bool:
        """True if the tool changes something (by its mark or a matching rule)."""
        return needs_confirmation_mark(item) or any(
            _matches(item.name, r.confirm) for r in self._rules(key)
        )

    def check(self, name: str, ctx: ToolContext) -> None:
        """Raise ToolError if this conversation (or this person) may not use the tool."""
        if not self.allowed(name, ctx.key):
            raise ToolError(f"the tool {name} is not available in this conversation")
        if self.admin_only(name, ctx.key) and not ctx.is_admin:
            raise ToolError(f"only an admin can use the tool {name}")

    async def request_confirmation(self, item: Tool, arguments: dict[str, Any],
                                   ctx: ToolContext) -> str:
        """Keep the call pending under a fresh code and say how to confirm it."""
        record = {"tool": item.name, "arguments": arguments,
                  "conversation": ctx.key.conversation_id(), "user": ctx.key.user_id}
        for _ in range(5):
            code = f"{secrets.randbelow(10**6):06d}"
            if await self.state.swap(CONFIRM_NS, code, record, 0, ttl=self.ttl):
                break
        else:  # pragma: no cover - a million codes in use at once
            raise ToolError("too many calls are waiting for confirmation; try again later")
        shown = json.dumps(arguments, ensure_ascii=False)[:300]
        minutes = max(1, round(self.ttl / 60))
        log.info("tool %s waits for confirmation in %s", item.name, ctx.key.conversation_id())
        # The person sees this under the answer whatever the model makes of it.
        ctx.notices.append(f"To run {item.name} with {shown}, reply /confirm {code} within "
                           f"{minutes} minutes.")
        return (
            f"Not run yet: {item.name} changes something, so it needs a confirmation first "
            f"(arguments: {shown}). To run it, reply /confirm {code} within {minutes} minutes "
            f"(the user is shown this)."
        )

    async def confirm(self, code: str, ctx: ToolContext) -> str:
        """Run the pending call under `code` if it belongs to this conversation and person."""
        unknown = "That confirmation code is unknown or has expired."
        entry = await self.state.get(CONFIRM_NS, code)
        if entry is None or entry.value.get("conversation") != ctx.key.conversation_id():
            return unknown
        if entry.value.get("user") != ctx.key.user_id and not ctx.is_admin:
            return unknown  # only the person who asked (or an admin) confirms
        record = await self.state.take(CONFIRM_NS, code)
        if record is None:
            return unknown
        name = record["tool"]
        try:
            self.check(name, ctx)
        except ToolError as exc:
            return f"Error: {exc}"
        log.info("tool %s confirmed in %s", name, ctx.key.conversation_id())
        return await self.inner.call(name, record["arguments"], ctx)


def _guarded(policy: ToolPolicy, item: Tool) -> Tool:
    """A copy of the tool that checks the policy (and asks for confirmation) first."""

    async def run(**kwargs: Any) -> Any:
        ctx: ToolContext = kwargs.pop(_CTX)
        policy.check(item.name, ctx)
        if policy.needs_confirmation(item, ctx.key):
            return await policy.request_confirmation(item, kwargs, ctx)
        if item.context_param:
            kwargs[item.context_param] = ctx
        if inspect.iscoroutinefunction(item.func):
            return await item.func(**kwargs)
        return await asyncio.to_thread(item.func, **kwargs)

    return Tool(name=item.name, description=item.description, parameters=item.parameters,
                func=run, context_param=_CTX, origin=item.origin)


def apply_policy(registry: ToolRegistry, rules: list[ToolPolicyRule], state: "StateStore",
                 ttl: float) -> ToolPolicy:
    """Wrap the registry's tools with the policy (all of them when rules exist, else only the
    ones that ask for confirmation)."""
    inner = ToolRegistry(timeout=registry.timeout, max_output=registry.max_output)
    policy = ToolPolicy(list(rules), state, ttl, inner)
    if rules:
        registry.visible = policy.allowed  # the model is offered only the tools it may use
    for item in list(registry):
        inner.add(item)
        if rules or needs_confirmation_mark(item):
            policy.active = True
            registry.remove(item.name)
            registry.add(_guarded(policy, item))
    return policy


def confirm_command(engine: "Engine", policy: ToolPolicy) -> Command:
    """The /confirm CODE command that runs a tool call waiting for confirmation."""

    async def handler(args: str, message: InboundMessage) -> Reply:
        code = args.strip()
        if not code:
            return Reply("Usage: /confirm CODE", kind="notice")
        output = await policy.confirm(code, engine.tool_context(message))
        return Reply(output, kind="command")

    return Command("confirm", "run a tool call that waits for your confirmation", handler,
                   usage="CODE")
