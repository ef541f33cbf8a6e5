"""Splitting long replies to a platform's limit on paragraph, line, sentence or word boundaries."""

from __future__ import annotations

import re
from typing import Callable

# Ends of sentences in Latin and Chinese text (the punctuation stays with its sentence).
_SENTENCE_END = re.compile(r"(?<=[.!?;。！？；…])\s*")


def utf8_len(text: str) -> int:
    """Length in UTF-8 bytes (WeChat counts bytes)."""
    return len(text.encode("utf-8"))


def _hard_cut(text: str, limit: int, size: Callable[[str], int]) -> tuple[str, str]:
    """The longest prefix of `text` within `limit`, and the rest."""
    lo, hi = 1, len(text)
    while lo < hi:  # binary search on characters, so multi-byte sizes work too
        mid = (lo + hi + 1) // 2
        if size(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo], text[lo:]


def _cut(text: str, limit: int, size: Callable[[str], int]) -> tuple[str, str]:
    """Cut `text` before `limit` at the best boundary: paragraph, line, sentence, space."""
    head, _ = _hard_cut(text, limit, size)
    floor = len(head) // 3  # a boundary too early would leave tiny pieces
    for pattern in ("\n\n", "\n"):
        at = head.rfind(pattern)
        if at > floor:
            return text[:at], text[at + len(pattern):]
    ends = [m.end() for m in _SENTENCE_END.finditer(head) if floor < m.end() < len(head)]
    if ends:
        return text[:ends[-1]], text[ends[-1]:]
    at = head.rfind(" ")
    if at > floor:
        return text[:at], text[at + 1:]
    return head, text[len(head):]


def split_text(text: str, limit: int, size: Callable[[str], int] = len,
               max_parts: int = 100) -> list[str]:
    """Split `text` into pieces of at most `limit` (measured by `size`), on natural boundaries.

    No piece is empty; whitespace at the cuts is dropped. At most `max_parts` pieces: the last
    one is cut short and ends with an ellipsis if the text is longer still.
    """
    if limit < 8:
        raise ValueError("limit too small")
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if size(rest) <= limit:
            parts.append(rest)
            break
        if len(parts) == max_parts - 1:
            head, _ = _hard_cut(rest, limit - size("…"), size)
            parts.append(head.rstrip() + "…")
            break
        head, rest = _cut(rest, limit, size)
        head, rest = head.rstrip(), rest.lstrip()
        if head:
            parts.append(head)
    return parts
