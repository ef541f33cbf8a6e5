"""Bot commands: /help, /reset, /memory, /ask, and every plugin tool as /name; no model needed."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bot.errors import CommandError
from bot.types import InboundMessage, Reply

if TYPE_CHECKING:
    from bot.engine import Engine

_COMMAND = re.compile(r"^/([A-Za-z][A-Za-z0-9_]{0,63})(?:@[A-Za-z0-9_]+)?(?:\s+|$)(.*)$", re.S)

Handler = Callable[[str, InboundMessage], Awaitable[Reply]]


def parse_command(text: str) -> tuple[str, str] | None:
    """Split "/name@bot args" into ("name", "args"); None if the text is not a command."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), match.group(2).strip()


@dataclass(frozen=True)
class Command:
    """A command people type in chat."""

    name: str
    help: str
    handler: Handler
    usage: str = ""
    admin_only: bool = False


class CommandSet:
    """The commands of one engine; channels may add their own (such as /kb)."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self._commands: dict[str, Command] = {}

    def add(self, command: Command) -> None:
        """Register a command, replacing one of the same name."""
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        """The command with this name, or None."""
        return self._commands.get(name)

    def all(self) -> list[Command]:
        """Every registered command, in registration order."""
        return list(self._commands.values())

    def is_admin(self, message: InboundMessage) -> bool:
        """True if the sender is a chat admin or a configured Knowbot admin."""
        key = message.key
        return message.is_admin or self.engine.settings.is_admin(key.channel, key.user_id)

    async def run(self, name: str, args: str, message: InboundMessage) -> Reply:
        """Run a command or a plugin tool by name; unknown names get a pointer to /help."""
        command = self._commands.get(name)
        if command is not None:
            if command.admin_only and not self.is_admin(message):
                return Reply(f"Only admins can use /{name}.", kind="notice")
            return await command.handler(args, message)
        tool = self.engine.deps.registry.get(name)
        if tool is not None:
            arguments = tool_arguments(tool.parameters, args)
            output = await self.engine.deps.registry.call(
                name, arguments, self.engine.tool_context(message)
            )
            return Reply(output, kind="command")
        return Reply(f"I don't know the command /{name}. Send /help to see the commands.",
                     kind="notice")


def tool_arguments(parameters: dict[str, Any], args: str) -> dict[str, Any]:
    """Turn what a person typed after /tool into the tool's arguments."""
    props = list(parameters.get("properties", {}))
    required = parameters.get("required", [])
    args = args.strip()
    if not args or not props:
        return {}
    if args.startswith("{"):
        try:
            data = json.loads(args)
        except json.JSONDecodeError as exc:
            raise CommandError(f"Those arguments are not valid JSON: {exc.msg}.") from exc
        if not isinstance(data, dict):
            raise CommandError("Give the arguments as a JSON object, or as plain words.")
        return data
    first_schema = parameters["properties"][props[0]]
    if len(props) == 1 or (len(required) == 1 and required[0] == props[0]
                           and first_schema.get("type") == "string" and "=" not in args):
        return {props[0]: args}
    try:
        tokens = shlex.split(args)
    except ValueError:
        tokens = args.split()
    if tokens and all("=" in t and t.split("=", 1)[0] in props for t in tokens):
        return dict(t.split("=", 1) for t in tokens)
    result: dict[str, Any] = {}
    for i, name in enumerate(props):
        if i >= len(tokens):
            break
        result[name] = " ".join(tokens[i:]) if i == len(props) - 1 else tokens[i]
    return result


def builtin_commands(engine: "Engine") -> CommandSet:
    """The commands every Knowbot has."""
    commands = CommandSet(engine)

    async def help_(args: str, message: InboundMessage) -> Reply:
        lines = ["**Knowbot** answers questions from your team's documents, with sources.", ""]
        lines.append("Ask a question in plain words, or use a command:")
        for command in commands.all():
            usage = f" {command.usage}" if command.usage else ""
            admin = " (admins)" if command.admin_only else ""
            lines.append(f"- /{command.name}{usage}: {command.help}{admin}")
        tools = [t for t in engine.deps.registry if commands.get(t.name) is None]
        if tools:
            lines.append("")
            lines.append("Tools (the assistant uses them, and you can call them directly):")
            for t in tools:
                first = t.description.splitlines()[0] if t.description else ""
                lines.append(f"- /{t.name}: {first}")
        lines.append("")
        lines.append("Send a document or a link to add it to the knowledge base.")
        if not engine.llm_configured:
            lines.append("No language model is configured: answers are quotes from the documents.")
        return Reply("\n".join(lines), kind="command")

    async def reset(args: str, message: InboundMessage) -> Reply:
        removed = await engine.memory.forget(message.key)
        return Reply(f"Done: I forgot this conversation ({removed} messages).", kind="command")

    async def memory(args: str, message: InboundMessage) -> Reply:
        summary, turns = await engine.memory.recall(message.key)
        total = await engine.deps.store.count_messages(message.key)
        if not summary and not turns:
            return Reply("I don't remember anything from this conversation yet.", kind="command")
        lines = [f"I remember {total} messages of this conversation."]
        if summary:
            lines += ["", "**Summary of earlier turns:**", summary]
        if turns:
            lines += ["", f"**Most recent turns ({len(turns)}):**"]
            for turn in turns[-10:]:
                text = " ".join(turn.content.split())
                text = text if len(text) <= 160 else text[:159] + "…"
                lines.append(f"- {turn.role}: {text}")
        lines += ["", "Send /reset to make me forget it."]
        return Reply("\n".join(lines), kind="command")

    async def ask(args: str, message: InboundMessage) -> Reply:
        if not args:
            return Reply("Usage: /ask QUESTION", kind="notice")
        return await engine.answer(message, args)

    commands.add(Command("help", "show this help", help_))
    commands.add(Command("ask", "ask a question (useful in groups)", ask, usage="QUESTION"))
    commands.add(Command("memory", "show what I remember of this conversation", memory))
    commands.add(Command("reset", "forget this conversation", reset))

    async def quota(args: str, message: InboundMessage) -> Reply:
        quotas = engine.deps.quotas
        if quotas is None:
            return Reply("No quotas are set here: ask as much as you like.", kind="command")
        return Reply(await quotas.describe(message.key), kind="command")

    commands.add(Command("quota", "how much of today's question and token quota is used", quota))
    return commands
