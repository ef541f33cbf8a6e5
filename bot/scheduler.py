"""Scheduled jobs: reminders, digests, re-crawls and housekeeping, on APScheduler.

Jobs live in APScheduler's SQLAlchemy job store in Knowbot's own database, so they survive
restarts; a missed job fires once when Knowbot comes back (coalescing, a generous misfire grace).
Every replica can add, list and cancel jobs, but only the one holding the scheduler lease runs
them: the lease is an entry in the database (or a Redis key when KNOWBOT_REDIS_URL is set) that
the leader renews; if it dies, another replica takes over when the lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from zoneinfo import ZoneInfo

from bot.clock import Clock, follow_in_apscheduler, release_apscheduler
from bot.errors import CommandError, KnowbotError
from bot.kv import StateStore
from bot.lease import LEASE_SECONDS, Lease, RedisLease
from bot.types import ConversationKey, InboundMessage, Reply
from bot.when import When

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)

Deliver = Callable[[ConversationKey, Reply], Awaitable[bool]]
Answer = Callable[[InboundMessage, str], Awaitable[Reply]]
Changes = Callable[[ConversationKey, datetime], Awaitable[str]]

# What a /digest asks for when it wants the knowledge base's news rather than an answer.
CHANGES_WORDS = {"changes", "new documents", "what's new", "whats new", "news", "新文档", "更新"}

JOB_TABLE = "scheduled_job"
MISFIRE_GRACE = 24 * 3600  # a job missed by up to a day still fires (once) after downtime
MAX_JOBS_PER_CONVERSATION = 50
RENEW_SECONDS = 15.0

_active: "Scheduler | None" = None  # the scheduler whose process runs jobs (APScheduler calls by name)


async def run_job(kind: str, payload: dict[str, Any]) -> None:
    """The function every stored job calls; APScheduler finds it by this module path."""
    if _active is None:
        log.warning("job %s fired with no scheduler running", kind)
        return
    await _active.run(kind, payload)


@dataclass(frozen=True)
class JobInfo:
    """A job as people see it in /jobs."""

    id: str
    kind: str
    text: str
    schedule: str
    next_run: datetime | None


class Scheduler:
    """Knowbot's jobs on APScheduler, with one leader among replicas."""

    def __init__(self, database_url: str, state: StateStore, deliver: Deliver, *,
                 answer: Answer | None = None, changes: Changes | None = None,
                 timezone_name: str = "UTC",
                 housekeeping: Callable[[], Awaitable[None]] | None = None,
                 recrawl: Callable[[], Awaitable[None]] | None = None,
                 recrawl_hours: float = 24.0, redis_url: str | None = None,
                 renew_seconds: float = RENEW_SECONDS, lease_seconds: float = LEASE_SECONDS,
                 clock: Clock | None = None, metrics: Any = None) -> None:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        from bot.db import sync_url

        self.deliver = deliver
        self.metrics = metrics  # a bot.metrics.Metrics counts runs and failures
        self.answer = answer
        self.changes = changes
        self.state = state
        self.zone = timezone_name
        self.clock = clock or state.clock  # APScheduler follows it too (see bot.clock)
        self.owner = uuid.uuid4().hex
        self.renew_seconds = renew_seconds
        self.lease: Lease | RedisLease = (
            RedisLease(redis_url, self.owner, lease_seconds, key="knowbot:scheduler:leader")
            if redis_url else Lease(state, self.owner, lease_seconds, "scheduler", "leader"))
        self._housekeeping = housekeeping
        self._recrawl = recrawl
        self._recrawl_hours = recrawl_hours
        self.leader = False
        self._follows = False
        self._task: asyncio.Task[None] | None = None
        self.aps: AsyncIOScheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=sync_url(database_url),
                                                     tablename=JOB_TABLE)},
            job_defaults={"coalesce": True, "misfire_grace_time": MISFIRE_GRACE,
                          "max_instances": 1},
            timezone=timezone.utc,
        )

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, lead: bool = True) -> None:
        """Open the job store (paused); with `lead`, compete for the lease to run the jobs."""
        global _active
        self._follows = follow_in_apscheduler(self.clock)
        self.aps.start(paused=True)  # creates its table once: a short blocking call at start-up
        if not lead:
            return
        _active = self
        await self._system_jobs()
        await self.tick()
        self._task = asyncio.create_task(self._leadership(), name="knowbot:scheduler")

    async def _system_jobs(self) -> None:
        from apscheduler.triggers.interval import IntervalTrigger

        system = [("housekeeping", self._housekeeping, 6.0)]
        if self._recrawl_hours > 0:
            system.append(("recrawl", self._recrawl, self._recrawl_hours))
        for kind, fn, hours in system:
            if fn is None:
                continue
            await asyncio.to_thread(
                self.aps.add_job, run_job, IntervalTrigger(hours=hours, timezone=timezone.utc),
                kwargs={"kind": kind, "payload": {}}, id=f"system:{kind}",
                replace_existing=True, name=kind)
        if self._recrawl_hours <= 0:
            await asyncio.to_thread(self._remove_quietly, "system:recrawl")

    def _remove_quietly(self, job_id: str) -> None:
        from apscheduler.jobstores.base import JobLookupError

        try:
            self.aps.remove_job(job_id)
        except JobLookupError:
            pass

    async def tick(self) -> None:
        """Renew or take the lease; run jobs while leading, pause when not; see others' jobs."""
        try:
            leading = await self.lease.acquire()
        except (KnowbotError, OSError) as exc:
            log.warning("scheduler lease check failed: %s", exc)
            leading = False
        except Exception as exc:  # noqa: BLE001 - a Redis outage must not stop the loop
            log.warning("scheduler lease check failed: %s", exc)
            leading = False
        if leading and not self.leader:
            log.info("this replica now runs the scheduled jobs")
            self.aps.resume()
        elif not leading and self.leader:
            log.info("another replica runs the scheduled jobs now")
            self.aps.pause()
        self.leader = leading
        if leading:
            self.aps.wakeup()  # jobs other replicas added since the last look

    async def _leadership(self) -> None:
        while True:
            await asyncio.sleep(self.renew_seconds)
            await self.tick()

    async def close(self) -> None:
        """Stop running jobs and give the lease up; stored jobs stay."""
        global _active
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.aps.running:
            self.aps.shutdown(wait=False)
        if self._task is not None:
            try:
                await self.lease.release()
            except Exception:  # noqa: BLE001 - shutting down; the lease expires anyway
                log.debug("could not release the scheduler lease", exc_info=True)
        if _active is self:
            _active = None
        if self._follows:
            self._follows = False
            release_apscheduler()

    # ---- jobs of a conversation -------------------------------------------------------------

    def _trigger(self, when: When, zone: str) -> Any:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.date import DateTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if when.at is not None:
            return DateTrigger(run_date=when.at, timezone=ZoneInfo(zone))
        if when.every_seconds:
            return IntervalTrigger(seconds=when.every_seconds, timezone=ZoneInfo(zone))
        return CronTrigger(day_of_week=when.cron_days(), hour=when.hour, minute=when.minute,
                           timezone=ZoneInfo(zone))

    async def add(self, key: ConversationKey, kind: str, when: When, text: str, *,
                  created_by: str = "", zone: str | None = None) -> JobInfo:
        """Schedule a reminder or digest for a conversation; CommandError past the per-chat cap."""
        zone = zone or self.zone
        if len(await self.jobs(key)) >= MAX_JOBS_PER_CONVERSATION:
            raise CommandError(f"This chat already has {MAX_JOBS_PER_CONVERSATION} scheduled "
                               "jobs; cancel some with /jobs cancel ID first.")
        job_id = uuid.uuid4().hex[:8]
        payload = {"id": job_id, "key": key.to_record(), "conv": key.conversation_id(),
                   "text": text, "by": created_by, "schedule": when.describe(zone),
                   "since": self.clock.now().isoformat()}
        job = await asyncio.to_thread(
            self.aps.add_job, run_job, self._trigger(when, zone),
            kwargs={"kind": kind, "payload": payload}, id=job_id, name=kind)
        if self.leader:
            self.aps.wakeup()
        return JobInfo(job_id, kind, text, payload["schedule"], job.next_run_time)

    async def jobs(self, key: ConversationKey) -> list[JobInfo]:
        """The conversation's jobs, soonest first."""
        conv = key.conversation_id()
        found = []
        for job in await asyncio.to_thread(self.aps.get_jobs):
            payload = job.kwargs.get("payload", {})
            if payload.get("conv") == conv:
                found.append(JobInfo(job.id, job.kwargs["kind"], payload.get("text", ""),
                                     payload.get("schedule", ""), job.next_run_time))
        far = datetime.max.replace(tzinfo=timezone.utc)
        return sorted(found, key=lambda j: j.next_run or far)

    async def all_jobs(self) -> list[dict[str, Any]]:
        """Every conversation's jobs (system jobs left out), soonest first, as data."""
        far = datetime.max.replace(tzinfo=timezone.utc)
        found = []
        for job in await asyncio.to_thread(self.aps.get_jobs):
            payload = job.kwargs.get("payload", {})
            if "key" in payload:
                found.append((job.next_run_time or far, {
                    "id": job.id, "kind": job.kwargs["kind"], "text": payload.get("text", ""),
                    "schedule": payload.get("schedule", ""), "key": payload["key"],
                    "created_by": payload.get("by", ""),
                    "next_run": job.next_run_time.isoformat() if job.next_run_time else None}))
        return [item for _, item in sorted(found, key=lambda pair: pair[0])]

    async def cancel(self, key: ConversationKey, job_id: str) -> bool:
        """Remove one of the conversation's jobs; False if it has no job with that id."""
        if not any(j.id == job_id for j in await self.jobs(key)):
            return False
        await asyncio.to_thread(self._remove_quietly, job_id)
        return True

    # ---- running ----------------------------------------------------------------------------

    async def run(self, kind: str, payload: dict[str, Any]) -> None:
        """Carry out one firing of a job (called by APScheduler on the leader)."""
        try:
            if kind == "housekeeping" and self._housekeeping is not None:
                await self._housekeeping()
            elif kind == "recrawl" and self._recrawl is not None:
                await self._recrawl()
            elif kind == "remind":
                key = ConversationKey.from_record(payload["key"])
                await self.deliver(key, Reply(f"⏰ Reminder: {payload['text']}", kind="notice"))
            elif kind == "digest":
                await self._digest(payload)
            else:
                log.warning("unknown job kind %s", kind)
        except KnowbotError as exc:
            log.warning("scheduled %s failed: %s", kind, exc)
            self._count(kind, ok=False)
        except Exception:  # noqa: BLE001 - one failing job must not stop the scheduler
            log.exception("scheduled %s failed unexpectedly", kind)
            self._count(kind, ok=False)
        else:
            self._count(kind, ok=True)

    def _count(self, kind: str, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.job(kind, ok)

    async def _digest(self, payload: dict[str, Any]) -> None:
        key = ConversationKey.from_record(payload["key"])
        if payload["text"].strip().lower() in CHANGES_WORDS and self.changes is not None:
            # since the last run of this digest (kept in the state store), or its creation
            mark = f"digest-since:{payload.get('id', '')}"
            entry = await self.state.get("scheduler", mark)
            since = datetime.fromisoformat(entry.value if entry else payload["since"])
            now = self.clock.now()
            text = await self.changes(key, since)
            await self.state.put("scheduler", mark, now.isoformat(), ttl=400 * 86400)
            await self.deliver(key, Reply(f"**Scheduled digest**\n\n{text}", kind="notice"))
            return
        if self.answer is None:
            return
        message = InboundMessage(key=key, message_id="", text=payload["text"], is_admin=False)
        reply = await self.answer(message, payload["text"])
        heading = f"**Scheduled digest:** {payload['text']}\n\n"
        await self.deliver(key, Reply(heading + reply.text, citations=reply.citations,
                                      kind=reply.kind))

    def next_fire(self, job_id: str) -> datetime | None:
        """When a job fires next (None when it is gone)."""
        job = self.aps.get_job(job_id)
        return job.next_run_time if job is not None else None

