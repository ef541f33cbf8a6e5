"""Keeping the citations an answer actually uses, numbered in order of use."""

from __future__ import annotations

import re

from bot.types import Citation

_REF = re.compile(r"\[(\d{1,3})\]")


def select_citations(text: str, available: list[Citation]) -> tuple[str, tuple[Citation, ...]]:
    """Renumber [n] references to 1..k in order of first use and return the cited sources.

    References to numbers that do not exist are removed. If the text cites nothing, every
    available citation is returned unchanged, so the sources are never hidden.
    """
    order: dict[int, int] = {}
    for match in _REF.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= len(available) and n not in order:
            order[n] = len(order) + 1
    if not order:
        return _REF.sub(lambda m: "" if not 1 <= int(m.group(1)) <= len(available) else m.group(0),
                        text), tuple(available)

    def renumber(match: re.Match[str]) -> str:
        n = int(match.group(1))
        return f"[{order[n]}]" if n in order else ""

    cited = [available[n - 1] for n in sorted(order, key=order.get)]  # type: ignore[arg-type]
    return _REF.sub(renumber, text), tuple(cited)
