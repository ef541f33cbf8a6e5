"""Slack rendering: the core's markdown as mrkdwn, cut into Block Kit messages within limits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.types import Citation, Reply
from channels.text import split_text

SECTION_LIMIT = 3000  # characters of text in one section block
MESSAGE_LIMIT = 40000  # characters of a message's text
BLOCKS_PER_MESSAGE = 50
CONTEXT_ELEMENTS = 10  # a context block holds at most 10 elements
MESSAGES_PER_REPLY = 20  # bound on how many messages one reply becomes

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.S)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\((\S+?)(?:\s+\"[^\"]*\")?\)")
_AUTOLINK = re.compile(r"<(https?://[^\s<>|]+)>")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+", re.M)
_RULE = re.compile(r"^[ \t]*([-*_])([ \t]*\1){2,}[ \t]*$", re.M)
_HOLD = "\x00{}\x00"
_HELD = re.compile(r"\x00(\d+)\x00")


def escape(text: str) -> str:
    """Escape the three characters Slack treats as control characters (& < >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    url = escape(url).replace("|", "%7C")
    label = escape(label).replace("|", "¦").strip()
    return f"<{url}|{label}>" if label and label != url else f"<{url}>"


def to_mrkdwn(markdown: str) -> str:
    """Convert the core's markdown to Slack mrkdwn: links, bold, italics, code, lists, headings."""
    held: list[str] = []

    def hold(value: str) -> str:
        held.append(value)
        return _HOLD.format(len(held) - 1)

    text = markdown.replace("\r\n", "\n").replace("\x00", "")
    # Code first: its content is only escaped, never formatted.
    text = _FENCE.sub(lambda m: hold("```\n" + escape(m.group(1).rstrip("\n")) + "\n```"), text)
    text = _INLINE_CODE.sub(lambda m: hold("`" + escape(m.group(1)) + "`"), text)
    text = _LINK.sub(lambda m: hold(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK.sub(lambda m: hold(_link(m.group(1), "")), text)
    lines = []
    for line in text.split("\n"):
        quote = re.match(r"^[ \t]*((?:>[ \t]?)+)", line)  # a quote's ">" must stay literal
        if quote:
            lines.append(hold("> ") + escape(line[quote.end():]))
        else:
            lines.append(escape(line))
    text = "\n".join(lines)
    text = _RULE.sub("──────────", text)
    text = _HEADING.sub(lambda m: hold("*" + m.group(1).strip("*_ ") + "*"), text)
    text = _BULLET.sub(lambda m: m.group(1) + "• ", text)
    text = _BOLD.sub(lambda m: hold("*") + m.group(2) + hold("*"), text)
    text = _ITALIC.sub(lambda m: "_" + m.group(1) + "_", text)
    text = _STRIKE.sub(lambda m: "~" + m.group(1) + "~", text)
    while _HELD.search(text):  # held pieces may hold others (a link inside a heading)
        text = _HELD.sub(lambda m: held[int(m.group(1))], text)
    return text


def _balance_fences(parts: list[str]) -> list[str]:
    """Close a code block a cut left open, and reopen it in the next part."""
    out: list[str] = []
    carry = False
    for part in parts:
        if carry:
            part = "```\n" + part
        carry = part.count("```") % 2 == 1
        if carry:
            part = part + "\n```"
        out.append(part)
    return out


def citation_lines(citations: tuple[Citation, ...]) -> list[str]:
    """Numbered mrkdwn lines for a reply's sources, with a link when a source has one."""
    lines = []
    for n, c in enumerate(citations, start=1):
        source = escape(c.source or "source")
        if c.url.startswith(("http://", "https://")):
            source = _link(c.url, c.source or c.url)
        where = f", {escape(c.location)}" if c.location else ""
        lines.append(f"[{n}] {source}{where}")
    return lines


def context_block(citations: tuple[Citation, ...]) -> dict[str, Any] | None:
    """A context block listing the numbered citations (at most 10 elements of 3,000 characters)."""
    lines = citation_lines(citations)
    if not lines:
        return None
    if len(lines) > CONTEXT_ELEMENTS:  # fold the rest into the last element
        lines = lines[: CONTEXT_ELEMENTS - 1] + ["\n".join(lines[CONTEXT_ELEMENTS - 1:])]
    elements = []
    for line in lines:
        if len(line) > SECTION_LIMIT:
            line = line[: SECTION_LIMIT - 1] + "…"
        elements.append({"type": "mrkdwn", "text": line})
    return {"type": "context", "elements": elements}


@dataclass(frozen=True)
class SlackMessage:
    """One message to post: a plain-text fallback and its blocks."""

    text: str
    blocks: list[dict[str, Any]]


CONFIRM_ACTION = "knowbot_confirm"
_CONFIRM = re.compile(r"/confirm (\d{6})\b")


def _confirm_actions(text: str) -> dict[str, Any] | None:
    """A button for each tool call waiting for `/confirm CODE` in the text (at most 5)."""
    codes = list(dict.fromkeys(_CONFIRM.findall(text)))[:5]
    if not codes:
        return None
    return {"type": "actions", "elements": [
        {"type": "button", "action_id": f"{CONFIRM_ACTION}_{n}", "value": code, "style": "primary",
         "text": {"type": "plain_text", "text": f"Confirm {code}" if len(codes) > 1 else "Confirm"}}
        for n, code in enumerate(codes)]}


def render(reply: Reply) -> list[SlackMessage]:
    """A reply as one or more Slack messages: sections of ≤3,000 chars, citations as context."""
    body = to_mrkdwn(reply.text) or " "
    sections = _balance_fences(split_text(body, SECTION_LIMIT - 8, max_parts=BLOCKS_PER_MESSAGE
                                          * MESSAGES_PER_REPLY))
    context = context_block(reply.citations)
    messages: list[SlackMessage] = []
    blocks: list[dict[str, Any]] = []
    texts: list[str] = []
    size = 0
    for section in sections:
        full = len(blocks) >= BLOCKS_PER_MESSAGE - 1 or size + len(section) + 2 > MESSAGE_LIMIT
        if blocks and full:
            messages.append(SlackMessage("\n\n".join(texts), blocks))
            blocks, texts, size = [], [], 0
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": section}})
        texts.append(section)
        size += len(section) + 2
    confirm = _confirm_actions(reply.text)
    if confirm is not None:
        blocks.append(confirm)
    if context is not None:
        blocks.append(context)
        sources = "\n".join(e["text"] for e in context["elements"])
        if size + len(sources) + 2 <= MESSAGE_LIMIT:
            texts.append(sources)
    messages.append(SlackMessage("\n\n".join(texts), blocks))
    return messages[:MESSAGES_PER_REPLY]
