"""Telegram rendering: markdown replies to Telegram HTML, split to the 4096-character limit.

Every part this module produces is balanced HTML on its own: the markdown is split first (on
paragraph, line or sentence boundaries, measured by the size of its rendering) and each part is
rendered separately; a code block cut in two is closed at the end of one part and reopened (its
fence repeated, counted in the size) at the start of the next.
"""

from __future__ import annotations

import html
import re

from bot.types import Citation, Reply
from channels.text import split_text

MESSAGE_LIMIT = 4096  # characters of a Telegram message (sendMessage `text`)
MAX_PARTS = 20  # most messages one reply may become

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+#.-]{0,20})\s*$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_INLINE = re.compile(
    r"(?P<tick>`+)(?P<code>.+?)(?P=tick)"
    r"|\[(?P<label>[^\]\n]+)\]\((?P<url>[^()\s]+(?:\([^()\s]*\))?[^()\s]*)\)"
    r"|\*\*(?P<bold>\S(?:.*?\S)?)\*\*"
    r"|(?<!\w)__(?P<bold2>\S(?:.*?\S)?)__(?!\w)"
    r"|~~(?P<strike>\S(?:.*?\S)?)~~"
    r"|(?<![\w*])\*(?P<it>[^*\s](?:[^*]*?[^*\s])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<it2>[^_\s](?:[^_]*?[^_\s])?)_(?![\w_])"
)
_SAFE_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_TAG = re.compile(r"<[^>]*>")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts message length in."""
    return len(text.encode("utf-16-le")) // 2


def escape(text: str) -> str:
    """Escape text for Telegram HTML (&, < and >)."""
    return html.escape(text, quote=False)


def escape_attr(text: str) -> str:
    """Escape an attribute value for Telegram HTML (quotes too)."""
    return html.escape(text, quote=True)


def render_inline(text: str) -> str:
    """One line of markdown inline markup as Telegram HTML; unpaired markers stay literal."""
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(escape(text[pos:m.start()]))
        pos = m.end()
        if m.group("tick"):
            out.append(f"<code>{escape(m.group('code'))}</code>")
        elif m.group("label") is not None:
            url, label = m.group("url"), render_inline(m.group("label"))
            if url.lower().startswith(_SAFE_SCHEMES):
                out.append(f'<a href="{escape_attr(url)}">{label}</a>')
            else:
                out.append(f"{label} ({escape(url)})")
        elif m.group("bold") is not None or m.group("bold2") is not None:
            out.append(f"<b>{render_inline(m.group('bold') or m.group('bold2'))}</b>")
        elif m.group("strike") is not None:
            out.append(f"<s>{render_inline(m.group('strike'))}</s>")
        else:
            out.append(f"<i>{render_inline(m.group('it') or m.group('it2'))}</i>")
    out.append(escape(text[pos:]))
    return "".join(out)


def markdown_to_html(markdown: str) -> str:
    """Markdown (as the engine writes it) to balanced Telegram HTML."""
    out: list[str] = []
    code: list[str] | None = None
    lang = ""
    quote: list[str] = []

    def flush_quote() -> None:
        if quote:
            out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
            quote.clear()

    for line in markdown.split("\n"):
        fence = _FENCE.match(line)
        if code is not None:
            if fence:
                out.append(_pre(code, lang))
                code = None
            else:
                code.append(line)
            continue
        if fence:
            flush_quote()
            code, lang = [], fence.group(2)
            continue
        quoted = _QUOTE.match(line)
        if quoted:
            quote.append(render_inline(quoted.group(1)))
            continue
        flush_quote()
        heading = _HEADING.match(line)
        bullet = _BULLET.match(line)
        if heading:
            out.append(f"<b>{render_inline(heading.group(1))}</b>")
        elif _RULE.match(line):
            out.append("──────")
        elif bullet:
            out.append(f"{bullet.group(1)}• {render_inline(bullet.group(2))}")
        else:
            out.append(render_inline(line))
    flush_quote()
    if code is not None:  # an unclosed block: close it
        out.append(_pre(code, lang))
    return "\n".join(out)


def _pre(lines: list[str], lang: str) -> str:
    body = escape("\n".join(lines))
    if lang:
        return f'<pre><code class="language-{escape_attr(lang)}">{body}</code></pre>'
    return f"<pre>{body}</pre>"


def html_to_plain(text: str) -> str:
    """Telegram HTML back to plain text (the fallback when a part is refused as bad markup)."""
    return html.unescape(_TAG.sub("", text))


def render_citations(citations: tuple[Citation, ...]) -> list[str]:
    """The numbered source list as HTML lines: a heading and `[n] Title, location`."""
    if not citations:
        return []
    lines = ["<b>Sources</b>"]
    for n, c in enumerate(citations, start=1):
        title = escape(c.source or "source")
        if c.url.lower().startswith(_SAFE_SCHEMES):
            title = f'<a href="{escape_attr(c.url)}">{title}</a>'
        where = f", {escape(c.location)}" if c.location else ""
        lines.append(f"[{n}] {title}{where}")
    return lines


def _open_fence(markdown: str) -> str | None:
    """The fence line of a code block still open at the end of `markdown`, or None."""
    opened = None
    for line in markdown.split("\n"):
        m = _FENCE.match(line)
        if m:
            opened = None if opened is not None else f"{m.group(1)}{m.group(2)}"
    return opened


def split_markdown(text: str, limit: int, max_parts: int = MAX_PARTS) -> list[str]:
    """Markdown cut into parts whose rendering fits `limit`; a cut code block is reopened."""
    parts: list[str] = []
    rest, prefix = text.strip(), ""
    while rest:
        def size(md: str, prefix: str = prefix) -> int:
            return utf16_len(markdown_to_html(prefix + md))

        last = len(parts) == max_parts - 1
        if size(rest) <= limit or last:
            parts.append(prefix + split_text(rest, limit, size=size, max_parts=1)[0])
            break
        head = split_text(rest, limit, size=size, max_parts=2)[0]
        parts.append(prefix + head)
        rest = rest[len(head):].strip()
        fence = _open_fence(parts[-1])
        prefix = f"{fence}\n" if fence else ""
    return parts


def render_reply(reply: Reply, limit: int = MESSAGE_LIMIT, max_parts: int = MAX_PARTS) -> list[str]:
    """A reply as Telegram HTML messages, each at most `limit` UTF-16 units of markup."""
    parts = [markdown_to_html(p) for p in split_markdown(reply.text, limit, max_parts)]
    for line in render_citations(reply.citations):
        if utf16_len(line) > limit:
            line = escape(split_text(html_to_plain(line), limit - 64)[0])
        if parts and utf16_len(parts[-1]) + 2 + utf16_len(line) <= limit:
            joiner = "\n\n" if line.startswith("<b>Sources") else "\n"
            parts[-1] += joiner + line
        else:
            parts.append(line)
    if not parts:
        parts = ["…"]
    return parts[:max_parts]
