"""Chunking: cut a loaded document into pieces sized in the embedding model's tokens.

Structure-aware: headings start chunks and travel with them as a "Setup > VPN" prefix, chunks
never span a heading or page/slide/sheet change, table rows are packed whole, and long blocks
are cut on sentence boundaries (Chinese 。！？； as well as Latin) with a little overlap. Token
counts come from the caller's `count_tokens`; each block or sentence is counted once and sums
are used as (slightly pessimistic) estimates, and every finished chunk is counted again so that
the limit holds exactly.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

from bot.errors import ConfigError
from knowledge.sentences import _is_cjk, _normalise, _sentence_spans, split_sentences  # noqa: F401
from knowledge.types import Block, Chunk, LoadedDocument

Strategy = Literal["paragraph", "sentence", "window"]
CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class ChunkSettings:
    """How to chunk: strategy, and sizes counted in the embedding model's tokens."""

    strategy: Strategy = "paragraph"
    max_tokens: int = 256
    overlap_tokens: int = 32
    min_tokens: int = 16

    def __post_init__(self) -> None:
        if self.strategy not in ("paragraph", "sentence", "window"):
            raise ConfigError(f"Unknown chunking strategy {self.strategy!r}; use paragraph, sentence or window")
        if self.max_tokens < 1:
            raise ConfigError("Chunk max_tokens must be at least 1")
        if self.overlap_tokens < 0 or self.min_tokens < 0:
            raise ConfigError("Chunk overlap_tokens and min_tokens must not be negative")

    @property
    def overlap(self) -> int:
        """The overlap in use: overlap_tokens, but at most half a chunk."""
        return min(self.overlap_tokens, self.max_tokens // 2)


def _snap(text: str, pos: int, guess: int, end: int) -> int:
    """Move a cut at `guess` back to a word boundary (a space, or next to a CJK character)."""
    if guess >= end:
        return end
    low = pos + (guess - pos) // 2 + 1
    space = max(text.rfind(" ", low, guess + 1), text.rfind("\n", low, guess + 1))
    for i in range(guess, max(space, low - 1), -1):
        if not text[i - 1].isspace() and (_is_cjk(text[i]) or _is_cjk(text[i - 1])):
            return i
    return space if space >= low else guess


def _skip_space(text: str, pos: int, end: int) -> int:
    while pos < end and text[pos].isspace():
        pos += 1
    return pos


def _cut(text: str, pos: int, end: int, target: int, count: CountTokens, cpt: float) -> tuple[int, int, int]:
    """A long piece text[pos:stop] of <= target tokens, found in a few counts: (stop, cut, tokens).

    `cpt` is the expected characters per token; `cut` >= stop is where the next piece may start.
    A piece is only over `target` when a single character is.
    """
    best, best_n = pos, 0  # the longest cut known to fit
    over, over_n = end + 1, 0  # the shortest cut known not to
    cut = _snap(text, pos, pos + max(1, int(target * cpt)), end)
    for _ in range(6):
        n = count(text[pos:cut])
        if n <= target:
            best, best_n = cut, n
            if cut >= end or n >= target * 0.9:
                break
            guess = pos + int((cut - pos) * target / max(n, 1) * 0.97)
            if over <= end:
                guess = min(guess, (cut + over) // 2)
        else:
            over, over_n = cut, n
            guess = pos + int((cut - pos) * target / n * 0.95)
            if best > pos:
                guess = max(guess, (best + cut) // 2)
        nxt = _snap(text, pos, max(pos + 1, guess), end)
        if nxt <= best or nxt >= over:
            break
        cut = nxt
    while best == pos:  # nothing fitted yet: keep shrinking, down to a single character
        cut = _snap(text, pos, max(pos + 1, min(over - 1, pos + int((over - pos) * target / over_n * 0.9))), end)
        n = count(text[pos:cut])
        if n <= target or cut - pos <= 1:
            best, best_n = cut, n
        else:
            over, over_n = cut, n
    stop, cut, n = best, best, best_n
    while stop > pos and text[stop - 1].isspace():
        stop -= 1
    if stop != cut:  # report the count of exactly the text we keep
        m = count(text[pos:stop])
        stop, n = (stop, m) if m <= target else (cut, n)
    return stop, cut, n


def _split_by_tokens(
    text: str, start: int, end: int, target: int, count: CountTokens, total: int
) -> list[tuple[int, int, int]]:
    """Cut text[start:end] (`total` tokens) into (start, end, tokens) pieces of <= target tokens."""
    pieces = []
    cpt = max((end - start) / max(total, 1), 0.25)
    pos = _skip_space(text, start, end)
    while pos < end:
        stop, cut, n = _cut(text, pos, end, target, count, cpt)
        pieces.append((pos, stop, n))
        cpt = max((stop - pos) / max(n, 1), 0.25)
        pos = _skip_space(text, cut, end)
    return pieces


# --- locations -------------------------------------------------------------------------------

_ROW_SUFFIX = re.compile(r"(?:,\s*|\s+|^)(?:rows?|lines?)\s+\d+(?:\s*[-–]\s*\d+)?\s*$", re.IGNORECASE)
_NUMBERED = re.compile(r"^(?P<pre>.*?)(?P<word>[^\W\d_]+?)s?\s+(?P<a>\d+)(?:\s*[-–]\s*(?P<b>\d+))?$")


def merge_locations(locations: list[str]) -> str:
    """One location for a chunk spanning several: "page 3" + "page 4" -> "pages 3-4"."""
    unique = list(dict.fromkeys(loc for loc in locations if loc))
    if len(unique) <= 1:
        return unique[0] if unique else ""
    groups: list[tuple[object, list[str]]] = []  # runs of one kind: pages, rows of one sheet
    for loc in unique:
        m = _NUMBERED.match(loc)
        kind = (m["pre"], m["word"].lower()) if m else loc
        if groups and groups[-1][0] == kind:
            groups[-1][1].append(loc)
        else:
            groups.append((kind, [loc]))
    parts = []
    for _, locs in groups:
        if len(locs) == 1:
            parts.append(locs[0])
            continue
        ms = [m for m in map(_NUMBERED.match, locs) if m]
        numbers = [int(m[g]) for m in ms for g in ("a", "b") if m[g]]
        parts.append(f"{ms[0]['pre']}{ms[0]['word']}s {min(numbers)}-{max(numbers)}")
    return "; ".join(parts) if len(parts) <= 3 else f"{parts[0]} – {parts[-1]}"


def _describe(locations: list[str], path: tuple[str, ...]) -> str:
    """The chunk's location, with its heading path unless the location already names it."""
    location = merge_locations(locations)
    if not path:
        return location
    trail = " > ".join(path)
    if trail in location or location.endswith(path[-1]):
        return location
    return f"{location} · {trail}" if location else trail


# --- blocks and units ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    text: str
    location: str
    path: tuple[str, ...]
    heading: bool
    area: str  # the location without its row number: blocks in one area may share a chunk


class _Unit(NamedTuple):
    item: int  # index into the items
    start: int  # span of the item's text
    end: int
    tokens: int


def _items(blocks: tuple[Block, ...]) -> list[_Item]:
    """Normalised, non-empty blocks; body blocks without a heading path inherit the last heading."""
    items: list[_Item] = []
    current: tuple[str, ...] = ()
    for block in blocks:
        text = _normalise(block.text)
        if not text:
            continue
        path = tuple(h for h in (_normalise(h) for h in block.heading_path) if h)
        if block.kind == "heading":
            path = path if path and path[-1] == text else path + (text,)
            current = path
        else:
            path = path or current
        area = _ROW_SUFFIX.sub("", block.location).strip()
        items.append(_Item(text, block.location, path, block.kind == "heading", area))
    return items


def _join(items: list[_Item], units: list[_Unit]) -> str:
    """The text of consecutive units: spans of one block as written, blocks on their own lines."""
    parts, i = [], 0
    while i < len(units):
        j = i
        while j + 1 < len(units) and units[j + 1].item == units[i].item:
            j += 1
        parts.append(items[units[i].item].text[units[i].start : units[j].end])
        i = j + 1
    return "\n".join(parts)


def _units(item: int, text: str, limit: int, piece: int, count: CountTokens, whole: bool) -> list[_Unit]:
    """Units of one block: whole if `whole` and it fits `limit`, else sentences, else token pieces.

    Each sentence is counted once; their sum slightly over-estimates the block (a tokenizer may
    spend a token on each piece's start), so only a borderline block is counted again whole.
    """
    spans = _sentence_spans(text)
    counts = [count(text[a:b]) for a, b in spans]
    total = sum(counts)
    if whole and total <= limit:
        return [_Unit(item, 0, len(text), total)]
    if whole and len(spans) > 1 and total - len(spans) <= limit:
        n = count(text)
        if n <= limit:
            return [_Unit(item, 0, len(text), n)]
    units = []
    for (a, b), m in zip(spans, counts):
        if m <= limit:
            units.append(_Unit(item, a, b, m))
        else:
            units.extend(_Unit(item, *p) for p in _split_by_tokens(text, a, b, piece, count, m))
    return units


# --- packing ---------------------------------------------------------------------------------

Group = tuple[int, int, int]  # (overlap start, first new unit, end) as indices into the units


def _overlap_start(units: list[_Unit], i: int, overlap: int, room: int, floor: int, same_block: bool) -> int:
    """Where the overlap before unit i starts: whole trailing units worth about `overlap` tokens."""
    if overlap <= 0 or i == 0 or (same_block and units[i - 1].item != units[i].item):
        return i
    k, total = i, 0
    while k > floor:
        u = units[k - 1]
        if same_block and u.item != units[i].item:
            break
        if total + u.tokens > min(overlap, room):
            if k == i and u.tokens <= min(overlap * 3 // 2, room):
                k -= 1  # one sentence a little longer than asked beats no overlap
            break
        total += u.tokens
        k -= 1
    return k


def _pack(units: list[_Unit], budget: int, overlap: int, min_tokens: int, same_block: bool) -> list[Group]:
    """Greedy packing up to `budget` tokens, with overlap; a tiny last group borrows from the one before."""
    groups: list[Group] = []
    i, n = 0, len(units)
    while i < n:
        ov = i
        if groups:
            ov = _overlap_start(units, i, overlap, budget - units[i].tokens, groups[-1][1], same_block)
        total = sum(u.tokens for u in units[ov:i])
        j = i
        while j < n and (j == i or total + units[j].tokens <= budget):
            total += units[j].tokens
            j += 1
        groups.append((ov, i, j))
        i = j
    if len(groups) >= 2:
        (pov, ps, pe), (_, ls, le) = groups[-2], groups[-1]
        new = sum(u.tokens for u in units[ls:le])
        before = sum(u.tokens for u in units[ps:pe])
        moved = ls
        while new < min_tokens and moved - 1 > ps:
            t = units[moved - 1].tokens
            if before - t < new + t or new + t > budget:
                break
            moved, new, before = moved - 1, new + t, before - t
        if moved != ls:
            ov = _overlap_start(units, moved, overlap, budget - new, ps, same_block)
            groups[-2:] = [(pov, ps, moved), (ov, moved, le)]
    return groups


def _pack_sentences(units: list[_Unit], budget: int, min_tokens: int) -> list[Group]:
    """One sentence per group, with short ones gathered until the group reaches `min_tokens`."""
    groups: list[Group] = []
    i, n = 0, len(units)
    while i < n:
        j, total = i, 0
        while j < n and (j == i or (total < min_tokens and total + units[j].tokens <= budget)):
            total += units[j].tokens
            j += 1
        groups.append((i, i, j))
        i = j
    if len(groups) >= 2:
        (ps, _, _), (ls, _, le) = groups[-2], groups[-1]
        last = sum(u.tokens for u in units[ls:le])
        if last < min_tokens and sum(u.tokens for u in units[ps:le]) <= budget:
            groups[-2:] = [(ps, ps, le)]
    return groups


# --- strategies ------------------------------------------------------------------------------

Draft = tuple[str, list[str], tuple[str, ...], int | None]  # text, locations, heading path, tokens


def _structured(items: list[_Item], count: CountTokens, settings: ChunkSettings) -> list[Draft]:
    """Paragraph and sentence strategies: sections by heading and area, packed within each."""
    max_tokens = settings.max_tokens
    prefixes: dict[tuple[str, ...], tuple[str, int]] = {}

    def prefix_for(path: tuple[str, ...]) -> tuple[str, int]:
        if path not in prefixes:
            trail = " > ".join(path)
            n = count(trail) if trail else 0
            prefixes[path] = (trail, n) if trail and n <= max_tokens // 3 else ("", 0)
        return prefixes[path]

    covered = set()  # heading paths whose text reaches the chunks through some prefix
    for it in items:
        if not it.heading and prefix_for(it.path)[0]:
            covered.update(it.path[:k] for k in range(1, len(it.path) + 1))

    sections: list[tuple[tuple[str, int], tuple[str, ...], list[int]]] = []
    key: tuple[str, tuple[str, ...]] | None = None
    for idx, it in enumerate(items):
        if it.heading or (it.area, it.path) != key:
            key = (it.area, it.path)
            uncovered = it.heading and it.path not in covered
            sections.append((("", 0) if uncovered else prefix_for(it.path), it.path, []))
            if it.heading and not uncovered:
                continue  # the heading travels as the prefix of the chunks below it
        sections[-1][2].append(idx)

    sentence_mode = settings.strategy == "sentence"
    drafts: list[Draft] = []
    for (prefix, prefix_tokens), path, members in sections:
        if not members:
            continue
        budget = max(1, max_tokens - prefix_tokens - (1 if prefix else 0))
        piece = budget if sentence_mode or not settings.overlap else max(
            1, min(budget, max(8, settings.overlap))
        )
        units = [
            u for idx in members
            for u in _units(idx, items[idx].text, budget, piece, count, whole=not sentence_mode)
        ]
        if sentence_mode:
            groups = _pack_sentences(units, budget, settings.min_tokens)
        else:
            groups = _pack(units, budget, settings.overlap, settings.min_tokens, same_block=True)
        for ov, _, end in groups:
            _emit(items, units[ov:end], prefix, path, count, max_tokens, drafts)
    return drafts


def _emit(
    items: list[_Item], members: list[_Unit], prefix: str, path: tuple[str, ...],
    count: CountTokens, max_tokens: int, drafts: list[Draft],
) -> None:
    """Add the draft of these units, counted; if the estimate was short, halve it on a unit boundary."""
    body = _join(items, members)
    text = f"{prefix}\n{body}" if prefix else body
    n = count(text)
    if n > max_tokens and len(members) == 1:  # a whole block: fall back on its sentences
        u, source = members[0], items[members[0].item].text
        spans = [(u.start + a, u.start + b) for a, b in _sentence_spans(source[u.start : u.end])]
        if len(spans) > 1:
            members = [_Unit(u.item, a, b, count(source[a:b])) for a, b in spans]
    if n > max_tokens and len(members) > 1:
        total, half, acc = sum(u.tokens for u in members), 1, members[0].tokens
        while half < len(members) - 1 and acc + members[half].tokens <= total / 2:
            acc += members[half].tokens
            half += 1
        _emit(items, members[:half], prefix, path, count, max_tokens, drafts)
        _emit(items, members[half:], prefix, path, count, max_tokens, drafts)
        return
    if n > max_tokens and prefix:  # one unit that fits only without its heading
        text, n = body, count(body)
    drafts.append((text, [items[u.item].location for u in members], path, n))


def _windows(items: list[_Item], count: CountTokens, settings: ChunkSettings) -> list[Draft]:
    """Window strategy: fixed token windows with overlap over all the text, headings included."""
    if not items:
        return []
    text = "\n".join(it.text for it in items)
    starts, offset = [], 0
    for it in items:
        starts.append(offset)
        offset += len(it.text) + 1
    end, max_tokens, overlap = len(text), settings.max_tokens, settings.overlap
    sample = text[:4000]
    cpt = max(len(sample) / max(count(sample), 1), 0.25)
    drafts: list[Draft] = []
    pos = 0
    while pos < end:
        stop, cut, n = _cut(text, pos, end, max_tokens, count, cpt)
        cpt = max((stop - pos) / max(n, 1), 0.25)
        if cut < end and (end - cut) < settings.min_tokens * cpt:  # a tiny tail: take it in
            m = count(text[pos:end])
            if m <= max_tokens:
                stop = cut = end
                n = m
        first, last = bisect.bisect_right(starts, pos) - 1, bisect.bisect_right(starts, stop - 1) - 1
        members = items[first : last + 1]
        common = members[0].path
        for it in members[1:]:
            k = 0
            while k < min(len(common), len(it.path)) and common[k] == it.path[k]:
                k += 1
            common = common[:k]
        drafts.append((text[pos:stop], [it.location for it in members], common, n))
        if cut >= end:
            break
        following = cut
        if overlap:
            following = _snap(text, pos, max(pos + 1, cut - int(overlap * cpt)), end)
        if (end - cut) < settings.min_tokens * cpt:  # still a tiny tail: end the last window at the end
            following = min(following, _snap(text, pos, max(pos + 1, end - int(max_tokens * cpt * 0.9)), end))
        pos = _skip_space(text, following, end)
    return drafts


def chunk_document(
    doc: LoadedDocument, count_tokens: CountTokens, settings: ChunkSettings = ChunkSettings()
) -> list[Chunk]:
    """Cut a loaded document into chunks of at most settings.max_tokens tokens, with locations."""
    items = _items(doc.blocks)
    if settings.strategy == "window":
        drafts = _windows(items, count_tokens, settings)
    else:
        drafts = _structured(items, count_tokens, settings)
    chunks: list[Chunk] = []
    for text, locations, path, known in drafts:
        location = _describe(locations, path)
        n = count_tokens(text) if known is None else known
        pieces = [(0, len(text), n)]
        if n > settings.max_tokens:  # the estimate was short: cut the finished text itself
            pieces = _split_by_tokens(text, 0, len(text), settings.max_tokens, count_tokens, n)
        for a, b, tokens in pieces:
            chunks.append(Chunk(text[a:b], location, len(chunks), tokens, path))
    return chunks
