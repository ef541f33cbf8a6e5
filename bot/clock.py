"""Knowbot's one clock: everything that decides by the time of day asks it for "now".

The runtime builds one `Clock` and hands it to every part that compares a time with now: the
scheduler (and, through it, APScheduler), the job commands, each channel's `push_problem`, the
outbox's and the state store's expiries, the store's dedupe and retention cutoffs, signed
links and WeChat's 48-hour window. Production uses the system clock; a test or a simulation
passes a `ManualClock` and moves time for all of them at once.

Durations that never meet a calendar (a request timeout, a pacing gap) keep using
`time.monotonic` where they are measured.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from bot.errors import KnowbotError


class Clock:
    """The system's wall clock: aware UTC datetimes and Unix seconds."""

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return datetime.now(timezone.utc)

    def time(self) -> float:
        """The current time in seconds since the Unix epoch."""
        return time.time()

    @property
    def is_system(self) -> bool:
        """True for the real wall clock (nothing to make other libraries follow)."""
        return type(self) is Clock


SYSTEM_CLOCK = Clock()


class ManualClock(Clock):
    """A clock that moves only when told to: for tests and simulations."""

    def __init__(self, start: datetime | None = None) -> None:
        moment = start if start is not None else datetime.now(timezone.utc)
        if moment.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = moment.astimezone(timezone.utc)

    def now(self) -> datetime:
        """The time the clock was last set to."""
        return self._now

    def time(self) -> float:
        """That time in Unix seconds."""
        return self._now.timestamp()

    def set(self, moment: datetime) -> None:
        """Move the clock to `moment` (an aware datetime, in any zone)."""
        if moment.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = moment.astimezone(timezone.utc)

    def advance(self, seconds: float | timedelta) -> None:
        """Move the clock forward."""
        self._now += seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)


# ---- APScheduler ---------------------------------------------------------------------------
# APScheduler 3 reads `datetime.now()` inside its own modules (when it adds a job, looks for due
# jobs, checks a misfire, starts an interval). To keep one clock, a scheduler built on another
# clock than the system's points those modules' `datetime` at a subclass whose `now` reads it.
# That is process-wide, so one such clock can be followed at a time.

_APSCHEDULER_MODULES = ("apscheduler.schedulers.base", "apscheduler.executors.base",
                        "apscheduler.triggers.interval", "apscheduler.triggers.date")
_followed: Clock | None = None
_holders = 0
_lock = threading.Lock()


class ClockedDatetime(datetime):
    """`datetime` whose `now()` reads the clock APScheduler follows (module level: it pickles)."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
        """Now on the followed clock: aware in `tz`, or naive local time like datetime.now()."""
        moment = (_followed or SYSTEM_CLOCK).now()
        return moment.astimezone(tz) if tz is not None else moment.astimezone().replace(tzinfo=None)


def follow_in_apscheduler(clock: Clock) -> bool:
    """Make APScheduler read `clock`; True if it must be released with `release_apscheduler`."""
    global _followed, _holders
    if clock.is_system:
        return False
    import importlib

    with _lock:
        if _followed is not None and _followed is not clock:
            raise KnowbotError("APScheduler already follows another clock in this process")
        if _holders == 0:
            for name in _APSCHEDULER_MODULES:
                importlib.import_module(name).datetime = ClockedDatetime  # type: ignore[attr-defined]
        _followed = clock
        _holders += 1
    return True


def release_apscheduler() -> None:
    """Undo one `follow_in_apscheduler`; the last release gives APScheduler the real clock back."""
    global _followed, _holders
    import importlib

    with _lock:
        _holders = max(0, _holders - 1)
        if _holders == 0:
            for name in _APSCHEDULER_MODULES:
                importlib.import_module(name).datetime = datetime  # type: ignore[attr-defined]
            _followed = None
