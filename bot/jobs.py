"""Chat commands for scheduled jobs: /remind, /digest, /jobs and /timezone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.clock import Clock
from bot.commands import Command
from bot.errors import CommandError
from bot.kv import StateStore
from bot.types import ConversationKey, InboundMessage, Reply
from bot.when import USAGE as WHEN_USAGE, parse_when

if TYPE_CHECKING:
    from bot.channel import Channel
    from bot.scheduler import JobInfo, Scheduler

TZ_NAMESPACE = "timezone"


class JobCommands:
    """Builds the job commands over a scheduler and the runtime's channels."""

    def __init__(self, scheduler: "Scheduler", state: StateStore, default_zone: str,
                 channel_for: Callable[[str], "Channel | None"],
                 clock: Clock | None = None) -> None:
        self.scheduler = scheduler
        self.state = state
        self.default_zone = default_zone
        self.channel_for = channel_for
        self.clock = clock or state.clock

    async def zone_of(self, key: ConversationKey) -> str:
        """The user's own time zone if they set one, else the configured default."""
        entry = await self.state.get(TZ_NAMESPACE, key.user_scope())
        return entry.value if entry is not None else self.default_zone

    async def schedule(self, key: ConversationKey, kind: str, phrase: str,
                       created_by: str, what: str | None = None) -> str:
        """Schedule `phrase` ("tomorrow 9:00 send the report"); the confirmation to show.

        With `what` given, `phrase` must be only the time ("tomorrow 9:00").
        """
        zone = await self.zone_of(key)
        when, rest = parse_when(phrase, self.clock.now().astimezone(ZoneInfo(zone)))
        if what is None:
            what = rest
        elif rest:
            raise CommandError(f"I could read the time only up to {rest!r} in {phrase!r}. "
                               + WHEN_USAGE)
        what = what.strip()
        if not what:
            raise CommandError("What should I remind you of? For example: "
                               "/remind tomorrow 9:00 send the report")
        if len(what) > 1000:
            raise CommandError("Please keep a reminder under 1,000 characters.")
        job = await self.scheduler.add(key, kind, when, what, created_by=created_by, zone=zone)
        noun = "remind you" if kind == "remind" else "answer"
        text = f"OK, I'll {noun} {job.schedule}: {what} (job {job.id}; /jobs lists them)."
        warning = self._push_problem(key, job)
        return f"{text}\n\n{warning}" if warning else text

    def _push_problem(self, key: ConversationKey, job: "JobInfo") -> str | None:
        channel = self.channel_for(key.channel)
        if channel is None:
            return ("Note: this chat's channel is not running in this Knowbot, so I can't "
                    "deliver the job until it is.")
        check = getattr(channel, "push_problem", None)
        return check(key, job.next_run, self.clock.now()) if check is not None else None

    def commands(self) -> list[Command]:
        """The /remind, /digest, /jobs and /timezone commands."""

        async def remind(args: str, message: InboundMessage) -> Reply:
            if not args.strip():
                return Reply("Usage: /remind WHEN WHAT. " + WHEN_USAGE, kind="notice")
            text = await self.schedule(message.key, "remind", args, message.key.user_id)
            return Reply(text, kind="command")

        async def digest(args: str, message: InboundMessage) -> Reply:
            if not args.strip():
                return Reply("Usage: /digest WHEN QUESTION, e.g. /digest every weekday 9:00 "
                             "what changed in the on-call docs?, or /digest every monday 9:00 "
                             "new documents (what was added to the knowledge base). "
                             + WHEN_USAGE, kind="notice")
            text = await self.schedule(message.key, "digest", args, message.key.user_id)
            return Reply(text, kind="command")

        async def jobs(args: str, message: InboundMessage) -> Reply:
            verb, _, rest = args.strip().partition(" ")
            if verb.lower() in ("cancel", "delete", "rm", "remove"):
                job_id = rest.strip()
                if not job_id:
                    return Reply("Usage: /jobs cancel ID (the id from /jobs).", kind="notice")
                if await self.scheduler.cancel(message.key, job_id):
                    return Reply(f"Cancelled job {job_id}.", kind="command")
                return Reply(f"This chat has no job {job_id}; /jobs lists them.", kind="notice")
            found = await self.scheduler.jobs(message.key)
            if not found:
                return Reply("No scheduled jobs in this chat. Make one with /remind or /digest.",
                             kind="command")
            zone = ZoneInfo(await self.zone_of(message.key))
            lines = []
            for job in found:
                nxt = job.next_run.astimezone(zone).strftime("%Y-%m-%d %H:%M") if job.next_run else "-"
                lines.append(f"- `{job.id}` {job.kind}: {job.text} ({job.schedule}; next {nxt})")
            return Reply("\n".join(lines), kind="command")

        async def timezone(args: str, message: InboundMessage) -> Reply:
            name = args.strip()
            if not name:
                zone = await self.zone_of(message.key)
                return Reply(f"Your time zone is {zone}. Change it with /timezone NAME, e.g. "
                             "/timezone Asia/Shanghai.", kind="command")
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                return Reply(f"I don't know the time zone {name!r}; use an IANA name such as "
                             "Asia/Shanghai or Europe/Berlin.", kind="notice")
            await self.state.put(TZ_NAMESPACE, message.key.user_scope(), name)
            return Reply(f"Your time zone is now {name}.", kind="command")

        return [
            Command("remind", "remind this chat of something at a time", remind,
                    usage="WHEN WHAT (e.g. tomorrow 9:00 send the report)"),
            Command("digest", "answer a question on a schedule", digest,
                    usage="WHEN QUESTION (e.g. every weekday 9:00 what changed?)"),
            Command("jobs", "list this chat's scheduled jobs, or cancel one", jobs,
                    usage="[cancel ID]"),
            Command("timezone", "show or set your time zone", timezone, usage="[NAME]"),
        ]
