"""Reminders the model can set from plain language ("remind me tomorrow at 9 to send the report")."""

from __future__ import annotations

from bot.errors import KnowbotError, ToolError
from plugins import ToolContext, tool


@tool
async def remind(ctx: ToolContext, when: str, what: str) -> str:
    """Set a reminder that this chat receives at a time, once or repeating.

    Args:
        when: The time in this exact form, in the user's local time: "in 10m", "in 2 hours",
            "today 17:30", "tomorrow 9:00", "friday 14:00", "2026-12-01 14:00",
            "every day 9:00", "every weekday 8:30", "every monday 9:00", "every mon, thu 18:00"
            or "every 2h". Translate other wordings and languages into it: 明天上午九点 ->
            "tomorrow 9:00"; 每周一早上九点 -> "every monday 9:00".
        what: What to remind of, in the user's own words and language.
    """
    if ctx.jobs is None:
        raise ToolError("scheduled jobs are not running in this Knowbot")
    try:
        return await ctx.jobs.schedule(ctx.key, "remind", when, ctx.key.user_id, what=what)
    except KnowbotError as exc:
        raise ToolError(exc.user_message) from exc


@tool
async def list_reminders(ctx: ToolContext) -> str:
    """List this chat's reminders and scheduled digests, with their ids and next times."""
    if ctx.jobs is None:
        raise ToolError("scheduled jobs are not running in this Knowbot")
    found = await ctx.jobs.scheduler.jobs(ctx.key)
    if not found:
        return "No reminders or digests are scheduled in this chat."
    return "\n".join(f"{j.id}: {j.kind} {j.text!r} ({j.schedule}; next "
                     f"{j.next_run.isoformat() if j.next_run else '-'})" for j in found)
