"""Wiring: builds the store, model router, tools, knowledge, engine and dispatcher from settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Awaitable, Callable

from bot.clock import SYSTEM_CLOCK, Clock
from bot.config import Settings
from bot.dispatcher import Dispatcher
from bot.engine import Engine, EngineDeps, Ingestor
from bot.inbox import Inbox
from bot.knowledge import KnowledgeSearch
from bot.kv import StateStore
from bot.llm import LLMRouter
from bot.metrics import Metrics, inbox_probe, outbox_probe
from bot.outbox import Outbox
from bot.quota import Quotas
from bot.ratelimit import MemoryRateLimiter, RateLimiter
from bot.store import Store
from bot.types import ConversationKey, Reply
from bot.usage import UsageRecorder
from bot.signals import Signals
from bot.workers import Workers
from plugins import ToolRegistry, load_registry

if TYPE_CHECKING:
    from bot.channel import Channel
    from bot.scheduler import Scheduler
    from knowledge.service import KnowledgeService

log = logging.getLogger(__name__)


DEFAULT_EMBEDDING_MODEL = "multilingual-e5-small"


def fan_out(*sinks: Callable[[object], Awaitable[None]]) -> Callable[[object], Awaitable[None]]:
    """One usage sink that hands each event to several (the recorder, the quotas)."""
    async def sink(event: object) -> None:
        for each in sinks:
            await each(event)

    return sink


def build_knowledge(settings: Settings, store: Store, model: object | None = None
                    ) -> "KnowledgeService":
    """The knowledge base on the configured embedder and vector store (both opened lazily).

    `model` hands in an embedder already loaded (tests share one across many runtimes).
    """
    from knowledge.service import KnowledgeService, open_vectors

    def embedder() -> object:
        if model is not None:
            return model
        from knowledge.embedder import Embedder

        if settings.embedding_model == DEFAULT_EMBEDDING_MODEL:
            return Embedder.default(settings.data_dir, models_dir=settings.resolved_models_dir)
        return Embedder.from_name(settings.embedding_model, settings.resolved_models_dir)

    def crosslingual() -> object | None:
        from knowledge.crosslingual import load_crosslingual

        return load_crosslingual(settings.knowledge_crosslingual_model, settings.data_dir,
                                 models_dir=settings.resolved_models_dir)

    dim = 384 if settings.embedding_model == DEFAULT_EMBEDDING_MODEL else None
    if model is not None:
        dim = model.dim  # type: ignore[attr-defined]
    return KnowledgeService(settings, store, lambda d: open_vectors(settings, d), embedder, dim=dim,
                            crosslingual_factory=crosslingual)


async def load_external_tools(settings: Settings, registry: ToolRegistry
                              ) -> list[Callable[[], Awaitable[None]]]:
    """Add the OpenAPI and MCP tools to the registry; return what closes them."""
    closers: list[Callable[[], Awaitable[None]]] = []
    if settings.openapi:
        from plugins.openapi import OpenAPITools

        openapi = await OpenAPITools.load(settings.openapi)
        closers.append(openapi.aclose)
        for item in openapi.tools:
            registry.add(item)
    if settings.mcp_servers:
        from plugins.mcp_tools import MCPTools

        mcp = await MCPTools.start(settings.mcp_servers)
        closers.append(mcp.aclose)
        for item in mcp.tools:
            registry.add(item)
    for name in settings.plugins_disabled:
        registry.remove(name)
    return closers


@dataclass
class Runtime:
    """Everything a running Knowbot holds; channels get it when they mount."""

    settings: Settings
    store: Store
    llm: LLMRouter
    registry: ToolRegistry
    knowledge: KnowledgeSearch
    engine: Engine
    dispatcher: Dispatcher
    limiter: RateLimiter
    usage: UsageRecorder
    state: StateStore
    channels: list["Channel"] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)  # GET /metrics reads its registry
    outbox: Outbox = field(init=False)  # retries sends through whatever channels run now
    inbox: Inbox = field(init=False)  # where platform messages wait for a worker
    workers: Workers = field(init=False)
    signals: Signals = field(init=False)  # wake-ups across replicas (through Redis, if set)
    plugin_closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    scheduler: "Scheduler | None" = None

    @property
    def clock(self) -> Clock:
        """The one clock of this Knowbot (the store hands it to the state store and outbox)."""
        return self.store.clock

    def channel(self, name: str) -> "Channel | None":
        """The running channel called `name`, if any."""
        return next((c for c in self.channels if c.name == name), None)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        knowledge: KnowledgeSearch | None = None,
        ingestor: Ingestor | None = None,
        registry: ToolRegistry | None = None,
        llm: LLMRouter | None = None,
        limiter: RateLimiter | None = None,
        embedder: object | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> "Runtime":
        """Open the database (migrating it) and build every component.

        `clock` is the one clock every part decides by (tests pass a ManualClock).
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(settings.resolved_database_url, clock=clock,
                                 migrate=settings.migrate_on_start, wait=settings.migrate_wait)

        metrics = Metrics()
        usage = UsageRecorder(store, metrics=metrics)
        state = StateStore(store)
        quotas = Quotas(state, settings)
        if llm is None:
            llm = LLMRouter.from_settings(
                settings, usage_sink=fan_out(usage, quotas.on_usage) if quotas.active else usage)
        closers: list[Callable[[], Awaitable[None]]] = []
        policy = None
        if registry is None:
            registry = load_registry(
                timeout=settings.tool_timeout,
                max_output=settings.tool_max_output,
                disabled=settings.plugins_disabled,
            )
            closers = await load_external_tools(settings, registry)
            from plugins.policy import apply_policy

            policy = apply_policy(registry, settings.tool_policy, state, settings.tool_confirm_ttl)
        if limiter is None:
            if settings.redis_url:
                from bot.ratelimit import RedisRateLimiter

                limiter = RedisRateLimiter(settings.redis_url, settings.rate_limit_per_minute)
            else:
                limiter = MemoryRateLimiter(settings.rate_limit_per_minute)
        if knowledge is None:
            service = build_knowledge(settings, store, embedder)
            knowledge, ingestor = service, ingestor or service
            if settings.knowledge_reindex_on_start and (
                    settings.qdrant_url or (settings.data_dir / "qdrant").exists()):
                # a store made before the cross-lingual vector gets it filled, in the background
                service.start_reindex()
        if llm.configured and settings.knowledge_translate and hasattr(knowledge, "translator"):
            from knowledge.translate import LLMTranslator

            knowledge.translator = LLMTranslator(llm)  # type: ignore[attr-defined]
        engine = Engine(
            EngineDeps(settings=settings, store=store, llm=llm, registry=registry,
                       knowledge=knowledge, ingestor=ingestor, clock=clock, quotas=quotas,
                       metrics=metrics)
        )
        if hasattr(knowledge, "registry"):  # the real knowledge service: chat can manage it
            from knowledge.commands import kb_command

            engine.commands.add(kb_command(engine, knowledge))  # type: ignore[arg-type]
        if policy is not None and policy.active:
            from plugins.policy import confirm_command

            engine.commands.add(confirm_command(engine, policy))
        dispatcher = Dispatcher(engine.handle, store, limiter, metrics)
        log.info(
            "Knowbot ready: database %s, %s, %d tools",
            store.dialect,
            f"model providers {', '.join(llm.order)}" if llm.configured else "no language model",
            len(registry),
        )
        runtime = cls(settings, store, llm, registry, knowledge, engine, dispatcher, limiter, usage,
                      state, metrics=metrics)
        runtime.plugin_closers = closers
        if settings.console_enabled:  # /console: a one-time link to the web console
            from bot.console.auth import console_command

            engine.commands.add(console_command(settings, state, clock, runtime.deliver))
        await runtime.signals.start()
        return runtime

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.store, lambda: self.channels)
        self.inbox = Inbox(self.store, lease=timedelta(seconds=self.settings.inbox_lease_seconds),
                           max_attempts=self.settings.inbox_max_attempts)
        self.workers = Workers(self.inbox, self.outbox, lambda: self.channels,
                               concurrency=self.settings.workers)
        self.signals = Signals(self.settings.redis_url,
                               single_process=self.store.dialect == "sqlite")
        self.metrics.add_probe("outbox", outbox_probe(self.metrics, self.outbox))
        self.metrics.add_probe("inbox", inbox_probe(self.metrics, self.inbox))
        self.inbox.duplicates.append(lambda channel: self.metrics.message(channel, "duplicate"))

    async def deliver(self, key: ConversationKey, reply: Reply) -> bool:
        """Send a reply that no inbound message waits for (a job), through the outbox."""
        channel = self.channel(key.channel)
        if channel is None:
            await self.outbox.keep(key.channel, key, reply, "channel not running here")
            return False
        return await self.outbox.deliver(channel, key, reply)

    async def start_scheduler(self, lead: bool = True) -> None:
        """Open the job store and add the job commands; `lead` competes to run the jobs."""
        if not self.settings.scheduler_enabled or self.scheduler is not None:
            return
        from bot.housekeeping import run_housekeeping
        from bot.jobs import JobCommands
        from bot.scheduler import Scheduler

        async def housekeeping() -> None:
            await run_housekeeping(self.store, self.state, self.settings.retention_days)
            optimize = getattr(self.knowledge, "optimize", None)
            if optimize is not None:
                await optimize()

        recrawl = getattr(self.knowledge, "recrawl", None)
        self.scheduler = Scheduler(
            self.store.url, self.state, self.deliver, answer=self.engine.answer,
            changes=getattr(self.knowledge, "changes", None),
            timezone_name=self.settings.timezone, housekeeping=housekeeping,
            recrawl=recrawl, recrawl_hours=self.settings.recrawl_hours if recrawl else 0,
            redis_url=self.settings.redis_url, metrics=self.metrics)
        await self.scheduler.start(lead=lead)
        jobs = JobCommands(self.scheduler, self.state, self.settings.timezone, self.channel)
        self.engine.jobs = jobs
        for command in jobs.commands():
            self.engine.commands.add(command)

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Finish the messages in flight, then close every connection."""
        await self.workers.stop(drain_timeout)
        if self.scheduler is not None:
            await self.scheduler.close()
        await self.outbox.close()
        unfinished = await self.dispatcher.drain(drain_timeout)
        if unfinished:
            log.warning("%d message(s) were still unfinished at shutdown", unfinished)
        await self.engine.drain(drain_timeout)
        await self.usage.close()
        for close_plugin in reversed(self.plugin_closers):
            try:
                await close_plugin()
            except Exception:  # noqa: BLE001 - one plugin must not stop the shutdown
                log.warning("closing a plugin source failed", exc_info=True)
        close_knowledge = getattr(self.knowledge, "close", None)
        if close_knowledge is not None:
            await close_knowledge()
        await self.llm.close()
        close = getattr(self.limiter, "close", None)
        if close is not None:
            await close()
        await self.signals.close()
        await self.store.close()
        log.info("Knowbot stopped")
