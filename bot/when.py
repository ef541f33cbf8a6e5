"""Reading "when" in reminders: `in 10m`, `tomorrow 9:00`, `2026-12-01 14:00`, `every monday 9:00`.

`parse_when(text, now)` reads a time phrase at the start of `text` and returns a `When` (one
moment, a weekly/daily schedule, or a fixed interval) plus the rest of the text (the "what").
Times without a zone are in the zone of `now` (the user's or tenant's time zone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from bot.errors import CommandError

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAY_WORDS = {
    "monday": 0, "mon": 0, "tuesday": 1, "tue": 1, "tues": 1, "wednesday": 2, "wed": 2,
    "thursday": 3, "thu": 3, "thur": 3, "thurs": 3, "friday": 4, "fri": 4, "saturday": 5,
    "sat": 5, "sunday": 6, "sun": 6,
}
_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600,
          "hours": 3600, "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800,
          "weeks": 604800}

_DURATION = re.compile(r"(\d{1,5})\s*([a-z]+)")
_CLOCK = r"(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*(am|pm)?"
_DAY_LIST = r"((?:mon|tue|wed|thu|fri|sat|sun)[a-z]*(?:\s*(?:,|and)\s*(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*)*)"

USAGE = ("Say when first: `in 10m`, `in 2 hours`, `at 17:30`, `tomorrow 9:00`, `friday 14:00`, "
         "`2026-12-01 14:00`, `every day 9:00`, `every weekday 8:30`, `every monday 9:00`, "
         "or `every 2h`.")

MIN_INTERVAL = 60  # seconds: a repeating job runs at most once a minute
MAX_AHEAD = timedelta(days=5 * 366)


@dataclass(frozen=True)
class When:
    """A parsed time: one moment (`at`), a schedule on days at a time, or an interval."""

    at: datetime | None = None
    days: tuple[int, ...] = ()  # 0 = Monday; with `hour`/`minute` for a repeating schedule
    hour: int = 0
    minute: int = 0
    every_seconds: int = 0

    @property
    def repeats(self) -> bool:
        """True for schedules and intervals."""
        return self.at is None

    def describe(self, zone: str) -> str:
        """Plain words for people: 'on Tue 2026-12-01 at 14:00 (Asia/Shanghai)'."""
        if self.at is not None:
            return f"on {self.at.strftime('%a %Y-%m-%d at %H:%M')} ({zone})"
        if self.every_seconds:
            return f"every {_plain_duration(self.every_seconds)}"
        if len(self.days) == 7:
            days = "every day"
        elif self.days == (0, 1, 2, 3, 4):
            days = "every weekday"
        else:
            days = "every " + ", ".join(DAYS[d].capitalize() for d in self.days)
        return f"{days} at {self.hour:02d}:{self.minute:02d} ({zone})"

    def cron_days(self) -> str:
        """The days as APScheduler's day_of_week field."""
        return ",".join(DAYS[d] for d in self.days)


def _plain_duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def _clock(hour: str, minute: str | None, meridiem: str | None) -> tuple[int, int]:
    h, m = int(hour), int(minute or 0)
    if meridiem:
        if not 1 <= h <= 12:
            raise CommandError(f"{hour}{meridiem} is not a time of day.")
        h = h % 12 + (12 if meridiem == "pm" else 0)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise CommandError(f"{hour}:{minute or '00'} is not a time of day.")
    return h, m


def _days(text: str) -> tuple[int, ...]:
    found = []
    for word in re.split(r"\s*(?:,|and)\s*", text.strip()):
        day = _DAY_WORDS.get(word)
        if day is None:
            raise CommandError(f"I don't know the day {word!r}. {USAGE}")
        found.append(day)
    return tuple(sorted(set(found)))


def _local(day: date, at: tuple[int, int], now: datetime) -> datetime:
    """The wall-clock time on `day` in now's zone (fold=0 on the repeated hour of a DST change)."""
    return datetime.combine(day, time(at[0], at[1]), tzinfo=now.tzinfo)


def parse_when(text: str, now: datetime) -> tuple[When, str]:
    """Read a time phrase at the start of `text`; return it and the rest. CommandError if none."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    raw = text.strip()
    low = raw.lower()

    def rest(match: re.Match[str]) -> str:
        return raw[match.end():].strip(" ,:;-—")

    # "every 2h", "every 30 minutes"
    m = re.match(r"every\s+(\d{1,5})\s*([a-z]+)\b", low)
    if m and m.group(2) in _UNITS:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds < MIN_INTERVAL:
            raise CommandError("A repeating reminder can run at most once a minute.")
        return When(every_seconds=seconds), rest(m)
    # "every day 9:00", "every weekday at 8:30", "every monday, wednesday 9am"
    m = re.match(r"every\s+(day|weekday|" + _DAY_LIST + r")\s+" + _CLOCK + r"\b", low)
    if m:
        kind = m.group(1)
        days = (tuple(range(7)) if kind == "day" else (0, 1, 2, 3, 4) if kind == "weekday"
                else _days(kind))
        hour, minute = _clock(m.group(3), m.group(4), m.group(5))
        return When(days=days, hour=hour, minute=minute), rest(m)
    # "in 10m", "in 2 hours 30 minutes"
    m = re.match(r"in\s+((?:\d{1,5}\s*[a-z]+\s*)+)", low)
    if m:
        total = 0
        for amount, unit in _DURATION.findall(m.group(1)):
            if unit not in _UNITS:
                break
            total += int(amount) * _UNITS[unit]
        if total > 0:
            # Only the words that were durations are consumed.
            consumed = re.match(r"in\s+(?:\d{1,5}\s*(?:" + "|".join(sorted(_UNITS, key=len, reverse=True))
                                + r")\b\s*)+", low)
            end = consumed.end() if consumed else m.end()
            return _checked(When(at=now + timedelta(seconds=total)), now), raw[end:].strip(" ,:;-—")
    # "2026-12-01 14:00", "2026-12-01T14:00", "2026-12-01"
    m = re.match(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ t]" + _CLOCK + r")?\b", low)
    if m:
        try:
            day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError as exc:
            raise CommandError(f"{m.group(0)} is not a date.") from exc
        at = _clock(m.group(4), m.group(5), m.group(6)) if m.group(4) else (9, 0)
        return _checked(When(at=_local(day, at, now)), now), rest(m)
    # "tomorrow 9:00", "today at 17:30", "tomorrow"
    m = re.match(r"(today|tomorrow|tonight)(?:\s+" + _CLOCK + r")?\b", low)
    if m:
        day = now.date() + timedelta(days=1 if m.group(1) == "tomorrow" else 0)
        if m.group(2):
            at = _clock(m.group(2), m.group(3), m.group(4))
        else:
            at = (20, 0) if m.group(1) == "tonight" else (9, 0)
        return _checked(When(at=_local(day, at, now)), now), rest(m)
    # "friday 14:00", "on monday at 9am"
    m = re.match(r"(?:on\s+|next\s+)?(mon|tue|wed|thu|fri|sat|sun)[a-z]*\s+" + _CLOCK + r"\b", low)
    if m and low[m.start(1):].split()[0] in _DAY_WORDS:
        target = _DAY_WORDS[low[m.start(1):].split()[0]]
        at = _clock(m.group(2), m.group(3), m.group(4))
        ahead = (target - now.weekday()) % 7
        moment = _local(now.date() + timedelta(days=ahead), at, now)
        if moment <= now:
            moment = _local(now.date() + timedelta(days=ahead + 7), at, now)
        return _checked(When(at=moment), now), rest(m)
    # "at 17:30", "17:30", "9am": today, or tomorrow if that time has passed
    m = re.match(r"(?:at\s+)?(\d{1,2})(?::(\d{2})|\s*(am|pm))\s*(am|pm)?\b", low)
    if m:
        at = _clock(m.group(1), m.group(2), m.group(3) or m.group(4))
        moment = _local(now.date(), at, now)
        if moment <= now:
            moment = _local(now.date() + timedelta(days=1), at, now)
        return _checked(When(at=moment), now), rest(m)
    raise CommandError(f"I couldn't tell when from {raw[:40]!r}. {USAGE}")


def _checked(when: When, now: datetime) -> When:
    assert when.at is not None
    if when.at <= now:
        raise CommandError(f"{when.at.strftime('%Y-%m-%d %H:%M')} has already passed.")
    if when.at - now > MAX_AHEAD:
        raise CommandError("That is more than five years away; please pick an earlier time.")
    return when
