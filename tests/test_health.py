"""/healthz (alive) and /readyz (each part answers, or is named): on SQLite, and on PostgreSQL
and Redis reached through a TCP proxy that is stopped mid-test, a real refused connection."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from bot.runtime import Runtime
from conftest import WordKnowledge, make_settings
from tcp_proxy import TcpProxy
from webapp import running_app

REDIS_URL = os.environ.get("KNOWBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _word_runtime(settings: Any) -> Any:
    return Runtime.start(settings, knowledge=WordKnowledge())


async def test_ready_on_the_embedded_default_and_healthz_is_liveness(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path), [], _word_runtime) as (client, runtime):
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["failing"] == [] and body["checks"]["database"] == {"ok": True,
                                                                        "detail": "sqlite"}
        assert "redis" not in body["checks"]
        assert ready.headers["x-request-id"]
        alive = await client.get("/healthz", headers={"X-Request-ID": "probe-1"})
        assert alive.status_code == 200 and alive.headers["x-request-id"] == "probe-1"


async def test_the_first_probe_loads_the_embedding_model(tmp_path: Path, embedder: object) -> None:
    factory = lambda s: Runtime.start(s, embedder=embedder)  # noqa: E731
    async with running_app(make_settings(tmp_path), [], factory) as (client, runtime):
        assert runtime.knowledge._embedder is None  # type: ignore[attr-defined]
        for _ in range(100):
            ready = await client.get("/readyz")
            if ready.status_code == 200:
                break
            assert ready.json()["failing"] == ["embedding_model"]
            assert ready.json()["checks"]["embedding_model"]["detail"] == "loading"
            await asyncio.sleep(0.05)
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert checks["embedding_model"]["detail"] == "loaded"
        assert checks["vector_store"]["detail"] == "qdrant edge, opens on first use"
        assert runtime.knowledge._vectors is None  # a probe never takes the Edge store's lock


async def test_readyz_names_postgresql_when_it_stops(tmp_path: Path, pg_url: str) -> None:
    target = make_url(pg_url)
    with TcpProxy(target.port or 5432) as proxy:
        url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = make_settings(tmp_path, database_url=url)
        async with running_app(settings, [], _word_runtime) as (client, runtime):
            assert (await client.get("/readyz")).status_code == 200
            proxy.stop()
            down = await client.get("/readyz")
            assert down.status_code == 503
            body = down.json()
            assert body["failing"] == ["database"]
            assert "Connection refused" in body["checks"]["database"]["detail"]
            alive = await client.get("/healthz")
            assert alive.status_code == 200 and alive.json()["database"] == "unavailable"


@pytest.fixture
def redis_port() -> int:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        if os.environ.get("KNOWBOT_TEST_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis is required for this run but {REDIS_URL} does not answer")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    return make_url(REDIS_URL.replace("redis://", "postgresql://")).port or 6379


async def test_readyz_names_redis_when_it_stops(tmp_path: Path, redis_port: int) -> None:
    with TcpProxy(redis_port) as proxy:
        settings = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                                 scheduler_enabled=False)
        async with running_app(settings, [], _word_runtime) as (client, runtime):
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["redis"]["detail"] == "PONG"
            proxy.stop()
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert down.json()["failing"] == ["redis"]
            assert down.json()["checks"]["database"]["ok"] is True
