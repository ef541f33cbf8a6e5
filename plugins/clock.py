"""The current date and time, in any time zone."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.errors import ToolError
from plugins import ToolContext, tool


@tool
def current_time(ctx: ToolContext, timezone: str = "") -> str:
    """Get the current date, time and weekday.

    Args:
        timezone: An IANA time zone such as "Asia/Shanghai" or "Europe/Berlin"; empty for the
            conversation's own time zone.
    """
    name = timezone.strip() or ctx.timezone
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ToolError(f"unknown time zone {name!r}; use an IANA name like Asia/Shanghai") from exc
    now = ctx.clock().astimezone(zone)
    return f"{now.strftime('%A %Y-%m-%d %H:%M:%S')} {name} (UTC{now.strftime('%z')[:3]}:{now.strftime('%z')[3:]})"
