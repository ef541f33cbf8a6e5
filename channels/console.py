"""The console channel: `knowbot chat` in a terminal, or one answer per line from a pipe."""

from __future__ import annotations

import asyncio
import getpass
import sys
import uuid
from typing import TextIO

from bot.runtime import Runtime
from bot.types import ConversationKey, InboundMessage, Reply

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


def console_key(user: str | None = None) -> ConversationKey:
    """The conversation of the local terminal user."""
    name = user or _user()
    return ConversationKey(channel="console", tenant="local", chat_id=name, user_id=name)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "console"


def render_plain(reply: Reply) -> str:
    """A reply as plain text with its numbered sources underneath."""
    lines = [reply.text.rstrip()]
    if reply.citations:
        lines += ["", "Sources:"]
        for n, c in enumerate(reply.citations, start=1):
            where = f", {c.location}" if c.location else ""
            lines.append(f"  [{n}] {c.source}{where}")
    return "\n".join(lines)


class ConsoleChannel:
    """A terminal conversation through the same dispatcher as every other channel."""

    name = "console"

    def __init__(self, runtime: Runtime, key: ConversationKey | None = None) -> None:
        self.runtime = runtime
        self.key = key or console_key()

    def message(self, text: str) -> InboundMessage:
        """An inbound message from the terminal user (who is this Knowbot's admin)."""
        return InboundMessage(key=self.key, message_id=f"console-{uuid.uuid4().hex}",
                              text=text, is_admin=True)

    async def say(self, text: str) -> Reply | None:
        """Send one line and return the answer."""
        return await self.runtime.dispatcher.process(self.message(text))

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        """Print a reply (scheduled jobs use this)."""
        print(render_plain(reply), flush=True)

    async def run(self, stream: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
        """Answer each line: a prompt on a terminal, one answer per line from a pipe."""
        interactive = stream.isatty()
        if interactive:
            out.write("Knowbot: ask me anything. /help lists commands, /exit leaves.\n")
        while True:
            if interactive:
                out.write("\nyou> ")
                out.flush()
            line = await asyncio.to_thread(stream.readline)
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text.lower() in EXIT_WORDS:
                break
            reply = await self.say(text)
            if reply is not None:
                prefix = "\nknowbot> " if interactive else ""
                out.write(prefix + render_plain(reply) + "\n")
                if not interactive:
                    out.write("\n")
                out.flush()
