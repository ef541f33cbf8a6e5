"""Housekeeping and re-crawls: old turns go, usage rolls up, changed pages are re-ingested."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import update

from bot.housekeeping import ROLLUP_NAMESPACE, prune_messages, roll_up_usage, run_housekeeping
from bot.kv import StateStore
from bot.llm import UsageEvent
from bot.models import Message, UsageRecord
from bot.store import Store
from bot.types import ConversationKey, utcnow
from conftest import start_knowledge_bot

KEY = ConversationKey("test", "team-1", "chat-1", "alice")


async def age(store: Store, table, days: float) -> None:  # type: ignore[no-untyped-def]
    """Make every row of a table `days` old."""
    t = table.__table__
    stmt = update(t).values(created_at=utcnow() - timedelta(days=days))
    await store.write(lambda conn: conn.execute(stmt))


async def test_retention_removes_only_old_turns(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        await store.add_messages(KEY, [("user", "old question", 3), ("assistant", "old answer", 3)])
        await age(store, Message, 40)
        await store.add_messages(KEY, [("user", "new question", 3)])
        assert await prune_messages(store, timedelta(days=30)) == 2
        _, turns = await store.recall(KEY)
        assert [t.content for t in turns] == ["new question"]
        done = await run_housekeeping(store, StateStore(store), retention_days=0)
        assert done["messages"] == 0  # 0 keeps everything
    finally:
        await store.close()


async def test_usage_rolls_up_into_daily_totals(db_url: str) -> None:
    store = await Store.open(db_url)
    state = StateStore(store)
    try:
        events = [UsageEvent(provider="default", model="m1", prompt_tokens=10, completion_tokens=5,
                             latency_ms=100.0, outcome="ok", conversation_id="c")
                  for _ in range(3)]
        await store.record_usage_many(events)
        await age(store, UsageRecord, 45)
        await store.record_usage_many(events[:1])  # recent: stays detailed
        assert await roll_up_usage(store) == 3
        ((key, entry),) = await state.items(ROLLUP_NAMESPACE)
        assert key.endswith("|default|m1")
        assert entry.value["calls"] == 3 and entry.value["prompt_tokens"] == 30
        assert entry.value["completion_tokens"] == 15
        assert len(await store.usage()) == 1
        assert await roll_up_usage(store) == 0  # nothing left to fold
    finally:
        await store.close()


@pytest.fixture
async def site():  # type: ignore[no-untyped-def]
    """A web page on loopback whose text the test can change."""
    page = {"body": "<html><body><h1>On-call</h1><p>The on-call phone is 555-0100.</p>"
                    "</body></html>", "hits": 0}

    async def handler(request: web.Request) -> web.Response:
        page["hits"] += 1
        return web.Response(text=page["body"], content_type="text/html")

    app = web.Application()
    app.router.add_get("/oncall", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    page["url"] = f"http://127.0.0.1:{port}/oncall"
    try:
        yield page
    finally:
        await runner.cleanup()


async def test_recrawl_skips_unchanged_pages_and_reingests_changed_ones(
        tmp_path: Path, embedder, site) -> None:  # type: ignore[no-untyped-def]
    runtime = await start_knowledge_bot(tmp_path, embedder, ingest_allow_hosts=["127.0.0.1"])
    service = runtime.knowledge
    try:
        receipt = await service.ingest_url("test:team-1", "chat-chat-1", site["url"],  # type: ignore[attr-defined]
                                           chat_id="chat-1")
        assert receipt.status == "added"
        assert await service.recrawl() == {"added": 0, "updated": 0, "unchanged": 1, "failed": 0}  # type: ignore[attr-defined]
        site["body"] = site["body"].replace("555-0100", "555-0199")
        assert (await service.recrawl())["updated"] == 1  # type: ignore[attr-defined]
        passages = await service.search(KEY, "what is the on-call phone number?")
        assert passages and "555-0199" in passages[0].text
        assert all("555-0100" not in p.text for p in passages)
        site["body"] = "<html>"  # broken now: counted, the old version stays
        counts = await service.recrawl()  # type: ignore[attr-defined]
        assert counts["failed"] == 1
        assert "555-0199" in (await service.search(KEY, "on-call phone number"))[0].text
    finally:
        await runtime.close()
