"""The conversation core: one message in, one Reply out."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Coroutine, Protocol
from zoneinfo import ZoneInfo

from bot.citations import select_citations
from bot.clock import SYSTEM_CLOCK, Clock
from bot.commands import CommandSet, builtin_commands, parse_command
from bot.config import Settings
from bot.errors import KnowbotError, LLMError
from bot.knowledge import KnowledgeSearch
from bot.llm import LLMRouter
from bot.memory import Memory, summary_prompt
from bot.metrics import Metrics
from bot.prompt import build_messages
from bot.store import StoredMessage, Store
from bot.toolloop import run_tool_loop
from bot.types import Attachment, Citation, InboundMessage, Passage, Reply
from plugins import ToolContext, ToolRegistry

log = logging.getLogger(__name__)


class Ingestor(Protocol):
    """Takes documents sent in chat into the knowledge base (the knowledge package implements it)."""

    async def ingest(self, message: InboundMessage, attachment: Attachment) -> Reply:
        """Ingest one attachment for the conversation and return a receipt."""
        ...


@dataclass
class EngineDeps:
    """What the engine needs, passed in so tests can hand in local ones."""

    settings: Settings
    store: Store
    llm: LLMRouter
    registry: ToolRegistry
    knowledge: KnowledgeSearch
    ingestor: Ingestor | None = None
    clock: Clock = SYSTEM_CLOCK
    metrics: Metrics | None = None
    quotas: Any = None  # bot.quota.Quotas: daily limits checked before each model call


NO_MODEL_INTRO = (
    "No language model is configured, so here are the best matching passages from your "
    "documents, quoted as they are:"
)
MODEL_DOWN_INTRO = (
    "The language model is not answering right now, so here are the best matching passages "
    "from your documents, quoted as they are:"
)


def extractive_answer(
    passages: list[Passage], max_chars: int, intro: str = NO_MODEL_INTRO
) -> tuple[str, tuple[Citation, ...]]:
    """An answer made only of quoted passages, each cited, within a quote budget."""
    lines = [intro, ""]
    citations: list[Citation] = []
    budget = max_chars
    for passage in passages:
        if budget <= 0:
            break
        text = " ".join(passage.text.split())
        if len(text) > budget:
            text = text[: max(0, budget - 1)].rstrip() + "…"
        budget -= len(text)
        citations.append(Citation(passage.source, passage.location, passage.text[:200], passage.url))
        lines.append(f"> {text} [{len(citations)}]")
        lines.append("")
    return "\n".join(lines).rstrip(), tuple(citations)


def answer_meta(citations: "tuple[Citation, ...] | list[Citation]", tools: Any = (),
                error: str | None = None) -> dict[str, Any]:
    """What is kept beside an answer: the citations it used, its tool calls, what went wrong."""
    meta: dict[str, Any] = {
        "citations": [{"source": c.source, "location": c.location, "url": c.url,
                       "snippet": c.snippet} for c in citations]}
    if tools:
        meta["tools"] = [{"name": t.name, "arguments": t.arguments, "result": t.result_preview}
                         for t in tools]
    if error:
        meta["error"] = error[:2000]
    return meta


NOTHING_FOUND = (
    "I could not find anything about that in the knowledge base. Send me a document "
    "(PDF, Word, Excel, Markdown, HTML or text) or a link to add one, or ask an admin to."
)


URL_ONLY = re.compile(r"^\s*(https?://\S+)\s*$", re.I)

_WHOLE_EN = re.compile(
    r"\b(print|show|dump|give|send|output|paste|copy|reproduce|export|read out|type out)\b"
    r".{0,40}\b(whole|entire|full|complete|all of|every (word|line|page)|verbatim|word for word)\b"
    r".{0,40}\b(document|doc|file|pdf|text|content|contents|knowledge base|handbook|manual|source)s?\b",
    re.I | re.S,
)
_ZH_WHOLE = r"(全文|整篇|整个文档|整份|完整的?(内容|文档|文件|原文)|全部(内容|原文)|所有(内容|原文))"
_ZH_VERB = r"(发给我|给我|发我|输出|打印|显示|复制|粘贴|导出|贴出|逐字)"
_WHOLE_ZH = re.compile(f"{_ZH_VERB}.{{0,12}}{_ZH_WHOLE}|{_ZH_WHOLE}.{{0,12}}{_ZH_VERB}", re.S)
WHOLE_DOCUMENT = (
    "I don't hand out whole documents from the knowledge base. Ask me a specific question and I "
    "will answer it with short quotes and their sources."
)


def asks_for_whole_document(text: str) -> bool:
    """True when a message asks to print or dump a whole document rather than ask about it."""
    return bool(_WHOLE_EN.search(text) or _WHOLE_ZH.search(text))


class Engine:
    """Answers messages: commands, uploads, and questions through memory, knowledge and the model."""

    def __init__(self, deps: EngineDeps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self._tasks: set[asyncio.Task[None]] = set()
        self.memory = Memory(
            deps.store,
            deps.settings.memory_token_budget,
            self._summarise if deps.llm.configured else None,
            spawn=self.spawn,
        )
        self.commands: CommandSet = builtin_commands(self)
        self.jobs: Any = None  # bot.jobs.JobCommands, set by the runtime when the scheduler runs

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run follow-up work (such as folding memory) after the reply, tracked until shutdown."""
        # a fresh context: follow-up work belongs to no request
        task = asyncio.create_task(self._contained(coro), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _contained(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:  # noqa: BLE001 - background work must not die silently
            log.exception("background work failed")

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for background work to finish (at shutdown, or in tests)."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()

    @property
    def llm_configured(self) -> bool:
        """True when a model provider is configured."""
        return self.deps.llm.configured

    def tool_context(self, message: InboundMessage) -> ToolContext:
        """The context a tool sees when called from this message."""
        return ToolContext(
            key=message.key,
            knowledge=self.deps.knowledge,
            timezone=self.settings.timezone,
            is_admin=message.is_admin
            or self.settings.is_admin(message.key.channel, message.key.user_id),
            clock=self.deps.clock.now,
            jobs=self.jobs,
        )

    async def handle(self, message: InboundMessage) -> Reply:
        """Answer one message; KnowbotErrors propagate to the dispatcher's error boundary."""
        text = message.text.strip()
        files = [a for a in message.attachments if a.kind in ("file", "link")]
        link = URL_ONLY.match(text)
        if not files and link and self.deps.ingestor is not None:
            files = [Attachment(kind="link", url=link.group(1), name=link.group(1))]
        if files:
            return await self._ingest(message, files)
        if not text:
            return Reply("Send me a question, or /help to see what I can do.", kind="notice")
        parsed = parse_command(text)
        if parsed is not None:
            return await self.commands.run(parsed[0], parsed[1], message)
        return await self.answer(message, text)

    async def _ingest(self, message: InboundMessage, files: list[Attachment]) -> Reply:
        if self.deps.ingestor is None:
            return Reply(
                "Adding documents is not switched on in this Knowbot, so I did not keep "
                f"{files[0].name or 'the file'}.",
                kind="notice",
            )
        receipts = [await self.deps.ingestor.ingest(message, f) for f in files]
        if len(receipts) == 1:
            return receipts[0]
        return Reply("\n\n".join(r.text for r in receipts), kind="notice")

    async def answer(self, message: InboundMessage, question: str, kb: str | None = None) -> Reply:
        """Answer a question from memory, the knowledge base and the model."""
        key = message.key
        if asks_for_whole_document(question):
            return Reply(WHOLE_DOCUMENT, kind="notice")
        started = time.perf_counter()
        passages = await self.deps.knowledge.search(
            key, question, top_k=self.settings.knowledge_top_k, kb=kb
        )
        if self.deps.metrics is not None:
            self.deps.metrics.retrieval_seconds.observe(time.perf_counter() - started)
        if not self.llm_configured:
            if passages:
                text, citations = extractive_answer(passages, self.settings.max_quote_chars)
            else:
                text, citations = NOTHING_FOUND, ()
            await self.memory.remember(key, question, text, user_id=key.user_id,
                                       meta=answer_meta(citations))
            return Reply(text, citations)

        if self.deps.quotas is not None:
            refused = await self.deps.quotas.admit(key)  # over a limit: the model is not called
            if refused is not None:
                return refused
        summary, history = await self.memory.recall(key)
        now = self.deps.clock.now().astimezone(ZoneInfo(self.settings.timezone))
        messages = build_messages(
            self.settings.system_prompt, now, summary, history, passages, question
        )
        ctx = self.tool_context(message)
        ctx.citations.extend(
            Citation(p.source, p.location, p.text[:200], p.url) for p in passages
        )
        try:
            result = await run_tool_loop(
                self.deps.llm, messages, self.deps.registry, ctx,
                max_steps=self.settings.llm_max_steps, conversation_id=key.conversation_id(),
            )
        except LLMError as exc:
            log.warning("every model provider failed for %s", key.conversation_id())
            problem = str(exc) or exc.user_message
            if passages:
                text, citations = extractive_answer(
                    passages, self.settings.max_quote_chars, MODEL_DOWN_INTRO
                )
                await self.memory.remember(key, question, text, user_id=key.user_id,
                                           meta=answer_meta(citations, error=problem))
                return Reply(text, citations, kind="error")
            await self.memory.remember(key, question, exc.user_message, user_id=key.user_id,
                                       meta=answer_meta((), error=problem))
            raise
        except Exception as exc:
            # anything else fails the message (the dispatcher says so); the conversation keeps
            # what went wrong, for the console
            from bot.dispatcher import UNEXPECTED

            said = exc.user_message if isinstance(exc, KnowbotError) else UNEXPECTED
            try:
                await self.memory.remember(key, question, said, user_id=key.user_id,
                                           meta=answer_meta((), error=f"{type(exc).__name__}: "
                                                                      f"{exc}"))
            except Exception:  # noqa: BLE001 - the original error is the one to report
                log.warning("could not keep the failed turn of %s", key.conversation_id())
            raise
        text, citations = select_citations(result.text, ctx.citations)
        await self.memory.remember(key, question, text, user_id=key.user_id,
                                   meta=answer_meta(citations, result.tool_calls))
        if ctx.notices:
            text = text.rstrip() + "\n\n" + "\n".join(f"> {n}" for n in ctx.notices)
        return Reply(text, citations)

    async def _summarise(self, previous: str, turns: list[StoredMessage]) -> str:
        limit = max(100, self.settings.memory_token_budget // 4)
        completion = await self.deps.llm.complete(summary_prompt(previous, turns, limit))
        if not completion.content:
            raise LLMError("the model returned an empty summary")
        return completion.content

