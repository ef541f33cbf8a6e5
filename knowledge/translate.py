"""Question translation for cross-language search, by the configured language model."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from bot.errors import KnowbotError
from bot.llm import LLMRouter

log = logging.getLogger(__name__)

PROMPT = ("Translate the user's message into {language}. It is a question for searching a "
          "team's documents: keep names, product codes, numbers and terms exactly as written. "
          "Reply with the translation only, nothing else.")
MAX_QUESTION = 1000  # characters translated; a longer question is searched as it is
CACHE_SIZE = 512


class LLMTranslator:
    """Translates questions with the model, bounded in time, remembering recent ones."""

    def __init__(self, llm: LLMRouter, timeout: float = 8.0) -> None:
        self.llm = llm
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def __call__(self, question: str, language: str) -> str | None:
        """`question` in `language` ("Chinese", "English"), or None if the model can't say."""
        if len(question) > MAX_QUESTION:
            return None
        key = (question, language)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        messages = [{"role": "system", "content": PROMPT.format(language=language)},
                    {"role": "user", "content": question}]
        try:
            completion = await asyncio.wait_for(self.llm.complete(messages), self.timeout)
        except (KnowbotError, asyncio.TimeoutError) as exc:
            log.info("question translation skipped: %s", type(exc).__name__)
            return None
        text = (completion.content or "").strip()
        if not text or len(text) > 4 * MAX_QUESTION:
            return None
        self._cache[key] = text
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return text
