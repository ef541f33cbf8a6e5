"""Which script a text is mostly written in: Chinese ("zh") or Latin ("en"), for translation."""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]+")

NAMES = {"zh": "Chinese", "en": "English"}


def script_of(text: str, sample: int = 20_000) -> str:
    """"zh" when Chinese characters outweigh Latin words, "en" when Latin words do, else ""."""
    head = text[:sample]
    cjk = len(_CJK.findall(head))
    latin = len(_LATIN.findall(head))  # a word counts like one or two characters of Chinese
    if cjk == 0 and latin == 0:
        return ""
    return "zh" if cjk >= 1.5 * latin else "en"
