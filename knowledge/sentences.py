"""Sentence boundaries for mixed Chinese and Latin text (used by the chunker)."""

from __future__ import annotations

import bisect
import re

# --- characters ---------------------------------------------------------------------------


def _is_ideograph(ch: str) -> bool:
    """Han characters and kana: scripts written without spaces between words."""
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF
        or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F
    )


def _is_cjk_punct(ch: str) -> bool:
    o = ord(ch)
    return 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF or 0xFE30 <= o <= 0xFE4F


def _is_cjk(ch: str) -> bool:
    return _is_ideograph(ch) or _is_cjk_punct(ch)


_IDEO = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_PUNCT = "\u3000-\u303f\uff00-\uffef\ufe30-\ufe4f"
_LINE_BREAK = re.compile(r"[^\S\n\r]*[\n\r]\s*")
_SPACES = re.compile(r"[^\S\n]+")
_CJK_GAP = re.compile(
    f"(?<=[{_IDEO}{_CJK_PUNCT}])\\n(?=[{_IDEO}{_CJK_PUNCT}])"
    f"|(?<=[{_CJK_PUNCT}]) (?=[{_IDEO}{_CJK_PUNCT}])|(?<=[{_IDEO}]) (?=[{_CJK_PUNCT}])"
)


def _normalise(text: str) -> str:
    """Collapse whitespace runs (keeping line breaks as one newline); no spaces inside Chinese."""
    text = text.replace("\u200b", "").replace("\ufeff", "").strip()
    text = _SPACES.sub(" ", _LINE_BREAK.sub("\n", text))
    return _CJK_GAP.sub("", text)


# --- sentences ------------------------------------------------------------------------------

_CJK_END = "。！？；｡"
_CLOSERS = "”’」』）)]】》〉\"'"
_CANDIDATE = re.compile(r"[。！？；｡!?.…]+|\n(?:[^\S\n]*\n)?")
_PROTECTED = re.compile(
    r"(?:https?|ftp)://[^\s<>\"，。！？；、）」』”]+|www\.[^\s<>\"，。！？；、）」』”]+"
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
)
_ABBREVIATIONS = frozenset(
    "e.g i.e mr mrs ms dr prof sr jr st vs etc cf al fig figs approx dept est inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec mt no nos vol p pp ch sec eq ref".split()
)
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]$")
_OPENERS = "([{\"'“‘（「『【《"


def _protected_spans(text: str) -> tuple[list[int], list[int]]:
    starts, ends = [], []
    for m in _PROTECTED.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in ".,;:!?)]'\"":
            end -= 1
        starts.append(m.start())
        ends.append(end)
    return starts, ends


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the "." at `dot` ends an abbreviation, an initial or a list number."""
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:dot].lstrip(_OPENERS).lower()
    if word in _ABBREVIATIONS or _DOTTED.match(word) or (len(word) == 1 and word.isalpha()):
        return True
    # "1. First step" at the start of a line or after a sentence is a list number
    if not word.isdigit():
        return False
    i = start - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] in "\n.!?:;。！？；："


def _neighbour(text: str, i: int, step: int) -> str:
    """The first non-space character from index i in direction `step`, or ""."""
    while 0 <= i < len(text) and text[i].isspace():
        i += step
    return text[i] if 0 <= i < len(text) else ""


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace trimmed; together they cover it all."""
    n = len(text)
    p_starts, p_ends = _protected_spans(text)
    cuts = [0]
    for m in _CANDIDATE.finditer(text):
        s = m.start()
        k = bisect.bisect_right(p_starts, s) - 1
        if k >= 0 and s < p_ends[k]:
            continue  # inside a URL or e-mail address
        run = m.group()
        if run[0] == "\n":
            prev, nxt = _neighbour(text, s - 1, -1), _neighbour(text, m.end(), 1)
            if run.count("\n") < 2 and prev and nxt:
                if (nxt.isascii() and nxt.islower()) or prev in ",，、-" or (
                    _is_ideograph(prev) and _is_ideograph(nxt)
                ):
                    continue  # a wrapped line, the sentence goes on
            cuts.append(s)
            continue
        end = m.end()
        while end < n and text[end] in _CLOSERS:
            end += 1
        if not any(c in _CJK_END for c in run):
            nxt = text[end] if end < n else ""
            if nxt and not nxt.isspace() and not _is_cjk(nxt):
                continue  # 3.14, report.pdf, a?b
            if run in (".", "…") or set(run) == {"."}:
                if len(run) == 1 and _is_abbreviation(text, s):
                    continue
                following = _neighbour(text, end, 1)
                if following.isascii() and following.islower():
                    continue  # "approx. five" and other abbreviations we do not know
        cuts.append(end)
    cuts.append(n)
    spans = []
    for a, b in zip(cuts, cuts[1:]):
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            spans.append((a, b))
    return spans


def split_sentences(text: str) -> list[str]:
    """Split mixed Chinese/English text into sentences; joined back they give the input."""
    return [text[a:b] for a, b in _sentence_spans(text)]


# --- cutting by tokens -----------------------------------------------------------------------
