"""WeChat text: replies rendered as plain text (WeChat shows no markdown), split to its limits."""

from __future__ import annotations

import re

from bot.types import Reply
from channels.text import split_text, utf8_len

PASSIVE_LIMIT = 2048  # bytes of Content a passive text reply holds
PART_LIMIT = 1600  # bytes of answer per message: room left for a note and a link

WELCOME = (
    "Welcome! I am Knowbot. I answer questions from this account's documents and say where "
    "each answer comes from.\n\n"
    "Just ask a question in plain words, or send /help to see the commands.\n\n"
    "Admins add knowledge by sharing an article link with me, or with /upload, which gives a "
    "private page to upload documents (PDF, Word, Excel, Markdown, HTML, text)."
)
NOT_SUPPORTED = ("I can't read {what} yet. Please send your question as text (or a voice "
                 "message).")
VOICE_UNRECOGNISED = "I couldn't make out that voice message. Could you type your question?"
LINK_NOT_ADMIN = ("Thanks for the link! Only the account's admins can add articles to the "
                  "knowledge base, so I did not keep it.")
PREPARING = "Your answer takes a little longer; it is being prepared."
PREPARING_PUSH = PREPARING + " I will send it to you here as soon as it is ready."
PREPARING_HOLD = PREPARING + " Send me any message in a minute and I will hand it over."
PREPARING_PAGE = "You can also read it here when it is ready: {url}"
MORE_PUSH = "(continued in the next message)"
MORE_HELD = "(more to follow: send any message for the next part)"
MORE_PAGE = "Read the whole answer: {url}"
NEW_QUESTION_LATER = "(Your new message is being answered; send any message to get it.)"
NEW_QUESTION_PUSH = "(Your new message is being answered; the answer follows.)"
PUSH_FAILED = "I could not send you this answer earlier, so here it is, as it waited for you:"
BUSY_ELSEWHERE = "I'm still working on that message; the answer follows."

_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_EMPHASIS = re.compile(r"(\*\*|__|~~|`+)(.+?)\1", re.S)
_SINGLE = re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.M)
_QUOTE = re.compile(r"^\s{0,3}>\s?", re.M)
_BULLET = re.compile(r"^(\s*)[-*+]\s+", re.M)
_FENCE = re.compile(r"^\s*```[^\n]*$\n?", re.M)


_URL = re.compile(r"https?://[^\s)\]]+")


def plain_text(markdown: str) -> str:
    """Markdown rendered as readable plain text: markup removed, links as "text (url)"."""
    text = _FENCE.sub("", markdown.replace("\x00", ""))
    text = _LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", text)
    urls: list[str] = []

    def stash(m: re.Match[str]) -> str:  # URLs keep their underscores and asterisks
        urls.append(m.group(0))
        return f"\x00{len(urls) - 1}\x00"

    text = _URL.sub(stash, text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub(lambda m: f"{m.group(1)}• ", text)
    for _ in range(3):  # nested emphasis
        text = _EMPHASIS.sub(lambda m: m.group(2), text)
    text = _SINGLE.sub(lambda m: m.group(1), text)
    text = re.sub(r"\x00(\d+)\x00", lambda m: urls[int(m.group(1))], text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def citation_lines(reply: Reply) -> list[str]:
    """The reply's sources as plain numbered lines."""
    lines = []
    for n, c in enumerate(reply.citations, 1):
        where = f", {c.location}" if c.location else ""
        url = f" {c.url}" if c.url else ""
        lines.append(f"[{n}] {c.source}{where}{url}")
    return lines


def render(reply: Reply) -> str:
    """The whole reply as WeChat text: the answer, then its sources."""
    text = plain_text(reply.text)
    lines = citation_lines(reply)
    if lines:
        text = f"{text}\n\nSources:\n" + "\n".join(lines)
    return text


def parts_of(reply: Reply, limit: int = PART_LIMIT) -> list[str]:
    """The reply rendered and split into messages of at most `limit` UTF-8 bytes."""
    return split_text(render(reply), limit, size=utf8_len, max_parts=30) or ["(empty answer)"]


def join(*pieces: str) -> str:
    """Non-empty pieces joined by blank lines."""
    return "\n\n".join(p for p in pieces if p)


def fit(text: str, limit: int = PASSIVE_LIMIT) -> str:
    """`text` cut to `limit` UTF-8 bytes if it is longer (a last guard before sending)."""
    if utf8_len(text) <= limit:
        return text
    return split_text(text, limit - 4, size=utf8_len, max_parts=1)[0]


def fits(text: str, limit: int = PASSIVE_LIMIT) -> bool:
    """True if `text` fits in one passive reply."""
    return utf8_len(text) <= limit
