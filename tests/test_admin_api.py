"""The admin API, and the `knowbot` commands beside a running server on the embedded default."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bot.storelock import StoreBusy, StoreLock

KNOWBOT = str(Path(sys.executable).parent / "knowbot")
REFUNDS = ("# Refund policy\n\nCustomers may return any item within 30 days of purchase for a "
           "full refund, provided they show the receipt. Gift cards are never refunded.\n")


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KNOWBOT_", "OPENAI_"))}
    return {**env, "KNOWBOT_DATA_DIR": str(data), **extra}


def run(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KNOWBOT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_commands_work_while_the_server_runs_on_the_embedded_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _env(data)
    port = _port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([KNOWBOT, "serve", "--port", str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        doc = tmp_path / "refunds.md"
        doc.write_text(REFUNDS)

        ingested = run("ingest", str(doc), "--json", env=env)
        assert ingested.returncode == 0, ingested.stderr
        (receipt,) = json.loads(ingested.stdout)
        assert receipt["ok"] and receipt["status"] == "added" and receipt["chunks"] >= 1
        assert "WouldBlock" not in ingested.stderr

        found = run("kb", "search", "how long do I have to return something?", "--json", env=env)
        assert found.returncode == 0, found.stderr
        assert "30 days" in json.loads(found.stdout)[0]["text"]
        asked = run("ask", "--json", "how many days for a refund?", env=env)
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["citations"][0]["source"] == "Refund policy"
        listing = run("kb", "sources", env={**env, "COLUMNS": "300"})
        assert "Refund policy" in listing.stdout and str(doc) in listing.stdout

        # the API itself: a token is needed, a wrong one is refused, the document is public
        assert httpx.get(f"{base}/api/kbs").status_code == 401
        assert httpx.get(f"{base}/api/kbs", headers={"Authorization": "Bearer nope"}
                         ).status_code == 401
        token = (data / "admin.token").read_text().strip()
        assert oct((data / "admin.token").stat().st_mode & 0o777) == "0o600"
        auth = {"Authorization": f"Bearer {token}"}
        kbs = httpx.get(f"{base}/api/kbs", headers=auth).json()
        assert kbs == [{"tenant": "console:local", "name": "default", "shared": True, "sources": 1}]
        big = httpx.post(f"{base}/api/ingest/file", params={"name": "big.txt"}, headers=auth,
                         content=b"x" * (50 * 2**20 + 1), timeout=60)
        assert big.status_code == 413 and "limit" in big.json()["error"]
        spec = httpx.get(f"{base}/api/openapi.json").json()
        assert {"/kbs", "/search", "/ingest/file", "/usage", "/jobs"} <= set(spec["paths"])

        deleted = run("kb", "delete", "default", "Refund policy", "--yes", env=env)
        assert deleted.returncode == 0 and "Deleted" in deleted.stdout
        gone = run("kb", "search", "refund", "--json", env=env)
        assert json.loads(gone.stdout) == []
    finally:
        server.terminate()
        server.wait(30)
    assert not (data / "server.json").exists()  # a stopped server is not looked for


async def test_a_second_process_waits_for_the_store_then_says_who_holds_it(tmp_path: Path) -> None:
    holder = StoreLock(tmp_path, "ingest")
    await holder.acquire(wait=0)
    notices: list[str] = []
    other = StoreLock(tmp_path, "kb search")
    with pytest.raises(StoreBusy) as refused:
        await other.acquire(wait=0.5, on_wait=notices.append)
    assert f"process {os.getpid()} (knowbot ingest)" in str(refused.value)
    assert "KNOWBOT_QDRANT_URL" in str(refused.value) and notices  # told it waits, then why not
    holder.release()
    await other.acquire(wait=1)
    other.release()


def test_a_command_waits_while_another_process_holds_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    script = ("import asyncio, time, sys; from bot.storelock import StoreLock\n"
              f"lock = StoreLock(sys.argv[1], 'ingest'); asyncio.run(lock.acquire(0))\n"
              "print('held', flush=True); time.sleep(6); lock.release()\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(data)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = run("kb", "list", env=_env(data, KNOWBOT_STORE_WAIT_SECONDS="0"), timeout=60)
        started = time.monotonic()
        listed = run("kb", "list", env=_env(data))
        waited = time.monotonic() - started
    finally:
        holder.wait(20)
    assert refused.returncode == 2  # no waiting allowed: one clear line, never a traceback
    assert "is in use by process" in refused.stderr and "(knowbot ingest)" in refused.stderr
    assert "Traceback" not in refused.stderr and "went wrong" not in refused.stderr
    assert listed.returncode == 0, listed.stderr
    assert "waiting for process" in listed.stderr and waited >= 1.0
