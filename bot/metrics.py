"""Prometheus metrics: every Knowbot metric, in one registry per runtime, served at GET /metrics.

Labels are bounded: a channel name, a provider name from the configuration, a job kind, an
outcome from a fixed list; never a user, chat or message id. Values that describe state (the
outbox, and later the inbox) are read from the database when Prometheus scrapes, by the probes
registered with `add_probe`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

import bot
from bot.errors import KnowbotError

if TYPE_CHECKING:
    from bot.inbox import Inbox
    from bot.llm import UsageEvent
    from bot.outbox import Outbox

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_LABEL_VALUES = 32  # distinct values one label takes before the rest count as "other"
JOB_KINDS = ("housekeeping", "recrawl", "remind", "digest")
MODEL_OUTCOMES = ("ok", "rate_limited", "server_error", "timeout", "connection_error", "error")
MESSAGE_OUTCOMES = ("answered", "failed", "duplicate", "rate_limited", "not_taken")
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

Probe = Callable[[], Awaitable[None]]


class Metrics:
    """Knowbot's metric objects and the registry they live in."""

    def __init__(self, process: bool = True) -> None:
        r = self.registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.build = Gauge("knowbot_build_info", "Knowbot's version (always 1).", ["version"],
                           registry=r)
        self.build.labels(bot.__version__).set(1)
        # the platforms' HTTP requests (webhooks): count and time to the acknowledgement
        self.requests = Counter("knowbot_http_requests", "Requests from the platforms by "
                                "channel and status class.", ["channel", "status"], registry=r)
        self.ack_seconds = Histogram("knowbot_http_ack_seconds", "Seconds until a platform's "
                                     "request was answered (its acknowledgement).", ["channel"],
                                     buckets=FAST, registry=r)
        # messages through the dispatcher
        self.messages = Counter("knowbot_messages", "Messages taken, by channel and outcome "
                                "(answered, failed, duplicate, rate_limited, not_taken).",
                                ["channel", "outcome"], registry=r)
        self.answer_seconds = Histogram("knowbot_answer_seconds", "Seconds to answer one "
                                        "message, by channel.", ["channel"], buckets=LATENCY,
                                        registry=r)
        self.dedupe_hits = Counter("knowbot_dedupe_hits", "Redelivered messages dropped as "
                                   "duplicates, by channel.", ["channel"], registry=r)
        self.rate_limited = Counter("knowbot_rate_limit_refusals", "Messages refused by the "
                                    "per-user rate limit, by channel.", ["channel"], registry=r)
        # the model and the knowledge base
        self.model_calls = Counter("knowbot_model_calls", "Model calls (each attempt), by "
                                   "provider and outcome.", ["provider", "outcome"], registry=r)
        self.model_errors = Counter("knowbot_model_errors", "Model calls that failed, by "
                                    "provider.", ["provider"], registry=r)
        self.model_tokens = Counter("knowbot_model_tokens", "Model tokens, by provider and "
                                    "kind (prompt, completion).", ["provider", "kind"], registry=r)
        self.model_seconds = Histogram("knowbot_model_call_seconds", "Seconds one model call "
                                       "took, by provider.", ["provider"], buckets=LATENCY,
                                       registry=r)
        self.retrieval_seconds = Histogram("knowbot_retrieval_seconds", "Seconds one knowledge "
                                           "search took.", buckets=FAST, registry=r)
        # scheduled jobs
        self.jobs = Counter("knowbot_jobs", "Scheduled job runs, by kind and outcome (ok, "
                            "failed).", ["kind", "outcome"], registry=r)
        # state, read from the database at scrape time (see add_probe)
        self.outbox_depth = Gauge("knowbot_outbox_depth", "Replies waiting in the outbox.",
                                  registry=r)
        self.outbox_oldest = Gauge("knowbot_outbox_oldest_age_seconds", "Age of the oldest "
                                   "reply waiting in the outbox (0 when empty).", registry=r)
        self.inbox_depth = Gauge("knowbot_inbox_depth", "Messages in the inbox not yet "
                                 "answered (queued or being answered).", registry=r)
        self.inbox_oldest = Gauge("knowbot_inbox_oldest_age_seconds", "Age of the oldest "
                                  "unanswered message in the inbox (0 when empty).", registry=r)
        self.scrape_errors = Counter("knowbot_scrape_probe_errors", "State probes that failed "
                                     "during a scrape.", ["probe"], registry=r)
        self._probes: list[tuple[str, Probe]] = []
        self._seen: dict[str, set[str]] = {}

    # ---- bounded labels -----------------------------------------------------------------------

    def bounded(self, label: str, value: str, allowed: tuple[str, ...] = ()) -> str:
        """`value` if allowed (or among the first MAX_LABEL_VALUES seen), else "other"."""
        if allowed:
            return value if value in allowed else "other"
        seen = self._seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
        return value

    # ---- recording ----------------------------------------------------------------------------

    def request(self, channel: str, status: int, seconds: float) -> None:
        """One platform request answered with `status` after `seconds`."""
        name = self.bounded("channel", channel)
        self.requests.labels(name, f"{status // 100}xx").inc()
        self.ack_seconds.labels(name).observe(seconds)

    def message(self, channel: str, outcome: str, seconds: float | None = None) -> None:
        """One message through the dispatcher, with its answer time when it was answered."""
        name = self.bounded("channel", channel)
        self.messages.labels(name, self.bounded("outcome", outcome, MESSAGE_OUTCOMES)).inc()
        if outcome == "duplicate":
            self.dedupe_hits.labels(name).inc()
        elif outcome == "rate_limited":
            self.rate_limited.labels(name).inc()
        if seconds is not None:
            self.answer_seconds.labels(name).observe(seconds)

    def model_call(self, event: "UsageEvent") -> None:
        """One model attempt, from the usage event bot.llm reports."""
        provider = self.bounded("provider", event.provider)
        self.model_calls.labels(provider, self.bounded("model_outcome", event.outcome,
                                                       MODEL_OUTCOMES)).inc()
        if event.outcome != "ok":
            self.model_errors.labels(provider).inc()
        self.model_tokens.labels(provider, "prompt").inc(max(0, event.prompt_tokens))
        self.model_tokens.labels(provider, "completion").inc(max(0, event.completion_tokens))
        self.model_seconds.labels(provider).observe(max(0.0, event.latency_ms) / 1000)

    def job(self, kind: str, ok: bool) -> None:
        """One run of a scheduled job."""
        self.jobs.labels(self.bounded("job", kind, JOB_KINDS), "ok" if ok else "failed").inc()

    @contextmanager
    def retrieval(self) -> Iterator[None]:
        """Time one knowledge search."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.retrieval_seconds.observe(time.perf_counter() - started)

    # ---- scraping -----------------------------------------------------------------------------

    def add_probe(self, name: str, probe: Probe) -> None:
        """Run `probe` (which sets gauges) before every scrape."""
        self._probes.append((name, probe))

    async def render(self) -> bytes:
        """The Prometheus text exposition, state probes run first."""
        for name, probe in self._probes:
            try:
                await probe()
            except KnowbotError as exc:  # a scrape still answers, with the error counted
                log.warning("metrics probe %s failed: %s", name, exc)
                self.scrape_errors.labels(name).inc()
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when it has not been recorded): for tests, tools."""
        found = self.registry.get_sample_value(name, labels or None)
        return float(found) if found is not None else 0.0


def outbox_probe(metrics: Metrics, outbox: "Outbox") -> Probe:
    """A probe that sets the outbox's depth and oldest age from the database."""

    async def probe() -> None:
        depth, oldest = await outbox.stats()
        metrics.outbox_depth.set(depth)
        if oldest is None:
            metrics.outbox_oldest.set(0)
            return
        if oldest.tzinfo is None:  # SQLite hands back naive UTC
            oldest = oldest.replace(tzinfo=timezone.utc)
        now: datetime = outbox.clock.now()
        metrics.outbox_oldest.set(max(0.0, (now - oldest).total_seconds()))

    return probe


def inbox_probe(metrics: Metrics, inbox: "Inbox") -> Probe:
    """A probe that sets the inbox's depth and oldest age from the database."""

    async def probe() -> None:
        depth, age = await inbox.backlog()
        metrics.inbox_depth.set(depth)
        metrics.inbox_oldest.set(age)

    return probe
