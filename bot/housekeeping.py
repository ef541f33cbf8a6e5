"""Housekeeping, run by the scheduler: message retention, dedupe, inbox and state expiry, usage roll-ups."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from sqlalchemy import Connection, delete, func, insert, select, update

from bot.inbox import Inbox
from bot.kv import StateStore
from bot.models import Message, StateEntry, UsageRecord
from bot.store import Store

log = logging.getLogger(__name__)

_MESSAGE = Message.__table__  # type: ignore[attr-defined]
_USAGE = UsageRecord.__table__  # type: ignore[attr-defined]
_STATE = StateEntry.__table__  # type: ignore[attr-defined]

DEDUPE_KEEP = timedelta(days=7)  # platforms stop retrying within minutes; a week is generous
USAGE_DETAIL_KEEP = timedelta(days=30)  # older usage records become one row per day and model
ROLLUP_NAMESPACE = "usage-daily"


async def prune_messages(store: Store, older_than: timedelta) -> int:
    """Delete conversation turns older than the retention period; return how many."""
    cutoff = store.clock.now() - older_than
    stmt = delete(_MESSAGE).where(_MESSAGE.c.created_at < cutoff)
    return await store.write(lambda conn: int(conn.execute(stmt).rowcount or 0))


async def roll_up_usage(store: Store, older_than: timedelta = USAGE_DETAIL_KEEP) -> int:
    """Fold usage records older than `older_than` into daily totals per provider and model.

    The totals are kept in the state store's table under "usage-daily" (`DAY|provider|model`),
    added to what an earlier roll-up of the same day left, and the detailed rows are deleted,
    all in one transaction: a crash midway folds nothing twice. Returns how many rows were folded.
    """
    cutoff = store.clock.now() - older_than
    day = func.date(_USAGE.c.created_at)
    query = (select(day.label("day"), _USAGE.c.provider, _USAGE.c.model,
                    func.count().label("calls"),
                    func.sum(_USAGE.c.prompt_tokens).label("prompt"),
                    func.sum(_USAGE.c.completion_tokens).label("completion"),
                    func.sum(_USAGE.c.latency_ms).label("latency"))
             .where(_USAGE.c.created_at < cutoff)
             .group_by(day, _USAGE.c.provider, _USAGE.c.model))
    stamp = store.clock.now()

    def fold(conn: Connection) -> int:
        folded = 0
        for row in conn.execute(query).all():
            key = f"{row.day}|{row.provider}|{row.model}"
            where = (_STATE.c.namespace == ROLLUP_NAMESPACE, _STATE.c.key == key)
            old = conn.execute(select(_STATE.c.value, _STATE.c.version).where(*where)).first()
            total = (json.loads(old.value) if old else
                     {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "latency_ms": 0.0})
            total["calls"] += int(row.calls)
            total["prompt_tokens"] += int(row.prompt or 0)
            total["completion_tokens"] += int(row.completion or 0)
            total["latency_ms"] += float(row.latency or 0.0)
            value = json.dumps(total)
            if old is None:
                conn.execute(insert(_STATE).values(namespace=ROLLUP_NAMESPACE, key=key,
                                                   value=value, version=1, updated_at=stamp))
            else:
                conn.execute(update(_STATE).where(*where).values(
                    value=value, version=old.version + 1, updated_at=stamp))
            folded += int(row.calls)
        if folded:
            conn.execute(delete(_USAGE).where(_USAGE.c.created_at < cutoff))
        return folded

    return await store.write(fold)


async def run_housekeeping(store: Store, state: StateStore, retention_days: int) -> dict[str, int]:
    """Everything housekeeping does, once; returns what it removed."""
    done = {"messages": 0, "dedupe": 0, "inbox": 0, "state": 0, "usage": 0}
    if retention_days > 0:
        done["messages"] = await prune_messages(store, timedelta(days=retention_days))
    done["dedupe"] = await store.prune_inbound(DEDUPE_KEEP)
    done["inbox"] = await Inbox(store).prune(DEDUPE_KEEP)  # finished entries dedupe until then
    done["state"] = await state.purge_expired()
    done["usage"] = await roll_up_usage(store)
    log.info("housekeeping: %s", done)
    return done
