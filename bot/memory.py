"""Per-conversation memory: recent turns within a token budget, older turns in a summary."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Coroutine

from bot.errors import KnowbotError
from bot.store import StoredMessage, Store
from bot.tokens import count_tokens, message_tokens
from bot.types import ConversationKey

log = logging.getLogger(__name__)

# (previous summary, turns to fold in) -> new summary
Summarizer = Callable[[str, list[StoredMessage]], Awaitable[str]]


class Memory:
    """Loads what a conversation remembers and folds old turns into a running summary."""

    def __init__(self, store: Store, budget: int, summarizer: Summarizer | None = None,
                 *, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.store = store
        self.budget = budget
        self.summarizer = summarizer
        self.spawn = spawn  # runs a fold after the reply
        self._folding: set[str] = set()

    async def recall(self, key: ConversationKey) -> tuple[str, list[StoredMessage]]:
        """The running summary and the recent turns that fit in the budget, oldest first."""
        window = max(50, self.budget // 4)
        state, turns = await self.store.recall(key, limit=window)
        total = sum(t.token_count for t in turns)
        if total <= self.budget:
            return state.summary, turns
        keep = self._newest_within(turns, self.budget // 2)
        start = len(turns) - len(keep)
        # Do not split an exchange: keep the question of a kept answer when it fits.
        if keep and keep[0].role == "assistant" and start > 0:
            if sum(t.token_count for t in keep) + turns[start - 1].token_count <= self.budget:
                start -= 1
                keep = turns[start:]
        fold = turns[:start]
        if self.summarizer is not None and fold:
            # Fold after replying: this answer sees the recent turns within the budget and the
            # previous summary; the next one sees the new summary.
            conv = key.conversation_id()
            if conv not in self._folding:
                self._folding.add(conv)
                self.spawn(self._fold(key, state.summary, fold))
        # Until a fold is stored (or with no model to fold with) the prompt holds only what fits;
        # nothing is marked as summarised, so the older turns stay stored.
        return state.summary, self._newest_within(turns, self.budget)

    async def _fold(self, key: ConversationKey, previous: str, fold: list[StoredMessage]) -> None:
        """Summarise `fold` into the running summary and store it (retried later if the model fails)."""
        assert self.summarizer is not None
        try:
            summary = (await self.summarizer(previous, fold)).strip()
        except KnowbotError:
            log.warning("could not summarise %d old turns; will try again", len(fold))
            return
        finally:
            self._folding.discard(key.conversation_id())
        await self.store.set_summary(key, summary, count_tokens(summary), fold[-1].id)

    @staticmethod
    def _newest_within(turns: list[StoredMessage], budget: int) -> list[StoredMessage]:
        kept: list[StoredMessage] = []
        used = 0
        for turn in reversed(turns):
            if used + turn.token_count > budget and kept:
                break
            kept.append(turn)
            used += turn.token_count
        kept.reverse()
        return kept

    async def remember(
        self, key: ConversationKey, question: str, answer: str, user_id: str = "",
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Store one exchange (the question and the answer, never retrieved passages).

        `meta` is kept with the answer: the citations it used, its tool calls, an error.
        Answering an inbox entry, the exchange is written with the entry's finish (see
        `bot.store.Unit`).
        """
        await self.store.add_messages(
            key,
            [("user", question, message_tokens("user", question)),
             ("assistant", answer, message_tokens("assistant", answer))],
            user_id=user_id, meta=[None, meta], defer=True,
        )

    async def forget(self, key: ConversationKey) -> int:
        """Forget everything about the conversation; return how many turns were removed."""
        return await self.store.reset(key)


def summary_prompt(previous: str, turns: list[StoredMessage], limit_tokens: int) -> list[dict[str, str]]:
    """The messages asking a model to fold turns into the running summary."""
    transcript = "\n".join(f"{t.role}: {t.content}" for t in turns)
    return [
        {
            "role": "system",
            "content": (
                "You maintain the memory of a chat assistant. Merge the earlier summary and the "
                "new turns into one updated summary: facts the user stated, decisions, open "
                "questions, names and numbers. Write in the conversation's language, plain prose, "
                f"at most about {limit_tokens} tokens. Output only the summary."
            ),
        },
        {
            "role": "user",
            "content": f"Earlier summary:\n{previous or '(none)'}\n\nNew turns:\n{transcript}",
        },
    ]
