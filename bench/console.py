"""The web console's back end under a realistic amount of data, over real HTTP.

Serves `create_app` with uvicorn on 127.0.0.1 (SQLite and Qdrant Edge in a temporary data dir,
the offline e5 and cross-lingual models), fills it with conversations and documents, signs in
with the password, and times the calls the console's pages make. Prints the median and p95 of
each (milliseconds) and the sign-in's scrypt cost; compare figures from one run, and with the
first row: /healthz, the cost of one HTTP round trip on this machine.

    HF_HUB_OFFLINE=1 python bench/console.py [--conversations 2000] [--messages 10] [--docs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from bot.app import create_app  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.console.auth import hash_password, verify_hash  # noqa: E402
from bot.runtime import Runtime  # noqa: E402
from bot.types import ConversationKey  # noqa: E402

PASSWORD = "bench password 123"
TOPICS = ["VPN access", "Parking", "Expenses", "Canteen", "Laptops", "Holidays", "Security",
          "Printing", "Travel", "Payroll"]


def doc(n: int) -> str:
    topic = TOPICS[n % len(TOPICS)]
    return (f"# {topic} {n}\n\n" + " ".join(
        f"Rule {i} of {topic.lower()} policy {n}: staff ask the {topic.lower()} desk, who answer "
        f"within {i + 1} days and keep a record of case {n}-{i}." for i in range(12)) + "\n")


async def timed(label: str, call: Any, runs: int, figures: dict[str, list[float]]) -> None:
    for _ in range(runs):
        started = time.perf_counter()
        response = await call()
        assert response.status_code == 200, (label, response.status_code, response.text[:200])
        figures.setdefault(label, []).append((time.perf_counter() - started) * 1000)


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="knowbot-console-bench-"))
    settings = Settings(data_dir=data, console_password_hash=hash_password(PASSWORD),
                        scheduler_enabled=False, log_level="WARNING")
    app = create_app(settings, runtime_factory=Runtime.start, channels=[])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.05)
    runtime: Runtime = app.state.runtime
    figures: dict[str, list[float]] = {}
    try:
        started = time.perf_counter()
        for c in range(args.conversations):
            key = ConversationKey("slack", f"T{c % 5}", f"C{c}", f"U{c % 50}")
            turns = [("user" if i % 2 == 0 else "assistant",
                      f"message {i} of conversation {c} about {TOPICS[(c + i) % 10]}", 12)
                     for i in range(args.messages)]
            await runtime.store.add_messages(key, turns, user_id=key.user_id,
                                             meta=[None, {"citations": [{"source": "x"}]}] *
                                             (args.messages // 2))
        filled = time.perf_counter() - started
        for n in range(args.docs):
            await runtime.knowledge.ingest_bytes(  # type: ignore[attr-defined]
                "slack:T0", "default", doc(n).encode(), f"doc{n}.md", shared=True)
        print(f"filled {args.conversations} conversations x {args.messages} messages in "
              f"{filled:.1f} s; {args.docs} documents ingested")

        scrypt = []
        encoded = settings.console_password_hash.get_secret_value()  # type: ignore[union-attr]
        for _ in range(5):
            t = time.perf_counter()
            verify_hash(PASSWORD, encoded)
            scrypt.append((time.perf_counter() - t) * 1000)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            page = await client.get("/console/login")
            csrf_form = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            t = time.perf_counter()
            signed = await client.post("/console/login", data={"password": PASSWORD,
                                                               "csrf": csrf_form})
            sign_in_ms = (time.perf_counter() - t) * 1000
            assert signed.status_code == 303
            csrf = (await client.get("/console/api/me")).json()["csrf"]
            first = (await client.get("/console/api/conversations")).json()[0]["id"]
            calls = {
                "GET /healthz (the HTTP floor)": lambda: client.get("/healthz"),
                "GET /api/me": lambda: client.get("/console/api/me"),
                "GET /api/kbs": lambda: client.get("/console/api/kbs"),
                "GET /api/sources": lambda: client.get("/console/api/sources", params={
                    "tenant": "slack:T0", "kb": "default"}),
                "GET /api/conversations (50 newest)": lambda: client.get(
                    "/console/api/conversations"),
                "GET /api/conversations?q= (text search)": lambda: client.get(
                    "/console/api/conversations", params={"q": "about Parking"}),
                "GET /api/conversations/{id}": lambda: client.get(
                    f"/console/api/conversations/{first}"),
                "POST /api/bench (top 8)": lambda: client.post(
                    "/console/api/bench", headers={"X-CSRF-Token": csrf},
                    json={"query": "停车场在哪里？", "tenant": "slack:T0"}),
                "GET /api/usage": lambda: client.get("/console/api/usage"),
            }
            await timed("warm-up", calls["POST /api/bench (top 8)"], 2, {})
            for label, call in calls.items():
                await timed(label, call, args.runs, figures)
        print(f"scrypt verify (N=2^14, r=8): median {statistics.median(scrypt):.0f} ms; "
              f"sign-in POST {sign_in_ms:.0f} ms")
        print(f"{'call':42} {'median ms':>10} {'p95 ms':>8}")
        for label, values in figures.items():
            values.sort()
            p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
            print(f"{label:42} {statistics.median(values):10.1f} {p95:8.1f}")
    finally:
        server.should_exit = True
        await task
        sock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--docs", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
