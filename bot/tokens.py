"""Token estimates for memory budgets, with no tokenizer download.

Chinese, Japanese and Korean characters count one token each; other text counts one token per
four characters (rounded up), which is close to what BPE tokenizers of chat models produce.
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def count_tokens(text: str) -> int:
    """Estimate how many model tokens a text takes."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    other = len(text) - cjk
    return cjk + (other + 3) // 4


def message_tokens(role: str, content: str) -> int:
    """Estimate the tokens of one chat message, framing included."""
    return count_tokens(content) + 4
