"""Running several real `knowbot serve` processes against loopback platforms (tests, bench).

`Platforms` starts the fakes every replica talks to (the Telegram Bot API, Slack's Web API,
WeChat's API and a scripted model at 1 s) and builds the replicas' settings; `Replica` is one
`knowbot serve` process; `Balancer` spreads webhook calls over the replicas as a load balancer
does; `WeChatUser` plays WeChat for one person, with its retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fake_openai import FakeOpenAI
from fake_slack import FakeSlack
from fake_telegram import FakeBotAPI
from fake_wechat import FakeWeChatAPI, WeChatServer, serve

ROOT = Path(__file__).resolve().parents[1]

TG_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
SLACK_TOKEN = "xoxb-replicas"
SIGNING_SECRET = "5ecret-for-the-replica-test-0001"
WECHAT_TOKEN = "wechat-replicas-token"
WECHAT_APP = "wx-replicas"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replica:
    """One `knowbot serve` process."""

    def __init__(self, name: str, env: dict[str, str], data: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "KNOWBOT_DATA_DIR": str(data)}
        self.log = data.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then wait up to 20 s (blocking: from a loop serving fakes, use `stop_all`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def stop_all(replicas: list[Replica]) -> None:
    """Stop every replica at once without blocking the event loop: a replica finishing its
    answers on SIGTERM may still call the fakes this loop serves."""
    for replica in replicas:
        if replica.proc is not None and replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(asyncio.to_thread(replica.stop) for replica in replicas))


class Balancer:
    """Round robin over the replicas; a request a replica does not take goes to the next one."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self._next = itertools.count()
        self.client = httpx.AsyncClient(timeout=10)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        start = next(self._next)
        for n in range(len(self.replicas) * 10):
            replica = self.replicas[(start + n) % len(self.replicas)]
            try:
                response = await self.client.post(replica.url + path, **kwargs)
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code < 500:
                return response
        raise AssertionError(f"no replica took {path}")


def slack_headers(raw: str) -> dict[str, str]:
    """Slack's signature headers for a body."""
    ts = str(int(time.time()))
    digest = hmac.new(SIGNING_SECRET.encode(), f"v0:{ts}:{raw}".encode(), hashlib.sha256)
    return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": "v0=" + digest.hexdigest()}


def slack_event(n: int, text: str, event_id: str) -> str:
    """A DM event body for conversation `n`, as Slack posts it."""
    ts = f"{time.time():.6f}"
    # one thread per conversation: in Slack a thread is one conversation with its own memory
    event = {"type": "message", "channel_type": "im", "channel": f"D{n:05d}", "user": f"U{n:05d}",
             "text": text, "ts": ts, "event_ts": ts, "thread_ts": f"1700000000.{n:06d}"}
    return json.dumps({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
                       "event_id": event_id, "event_time": int(time.time()), "event": event})


class WeChatUser:
    """Plays WeChat for one user: each message is POSTed up to 3 times, 5 s apart at most,
    each try to the next replica, until one answers (a refused connection counts as a try)."""

    def __init__(self, replicas: list["Replica"], api: FakeWeChatAPI, conv: int) -> None:
        self.replicas = replicas
        self.api = api
        self.openid = f"o-user-{conv:03d}"
        self.wx = WeChatServer(replicas[0].url, WECHAT_TOKEN, app_id=WECHAT_APP)
        self.replies: list[tuple[str, float]] = []  # passive reply texts, when received

    async def say(self, text: str, conv: int) -> None:
        self.api.user_wrote(self.openid)
        xml = self.wx.xml(self.openid, "text", {"Content": text})
        for attempt in range(3):
            params, body = self.wx.envelope(xml, self.openid)
            replica = self.replicas[(conv + attempt) % len(self.replicas)]
            try:
                response = await self.wx.http.post(f"{replica.url}/wechat", params=params,
                                                   content=body, timeout=5.0)
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
                continue
            assert response.status_code == 200, response.text
            content = self.wx.read_reply(response.text, params)
            if content:
                self.replies.append((content, time.monotonic()))
            return

    def answers(self, marker: str = "question") -> list[tuple[str, float]]:
        """Answers (texts holding `marker`) in passive replies and customer-service messages."""
        pushed = [(m["text"]["content"], m["_at"]) for m in self.api.sent
                  if m["touser"] == self.openid]
        return sorted([(t, at) for t, at in self.replies + pushed if marker in t],
                      key=lambda pair: pair[1])


class Platforms:
    """The loopback platforms and model the replicas use (an async context manager)."""

    def __init__(self, model_latency: float = 1.0) -> None:
        self.model_latency = model_latency
        self.telegram = FakeBotAPI(TG_TOKEN)
        self.wechat = FakeWeChatAPI(app_id=WECHAT_APP)
        self.slack = FakeSlack()
        self.llm = FakeOpenAI(latency=model_latency)
        self._serving: Any = None
        self.wechat_api = ""

    async def __aenter__(self) -> "Platforms":
        await self.telegram.start()
        await self.slack.__aenter__()
        self.slack.add_workspace("T1", SLACK_TOKEN)
        await self.llm.__aenter__()
        self._serving = serve(self.wechat.app())
        self.wechat_api = await self._serving.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._serving.__aexit__(None, None, None)
        await self.llm.__aexit__(None, None, None)
        await self.slack.__aexit__(None, None, None)
        await self.telegram.stop()

    def env(self, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
        """A replica's environment: every channel on, pointed at these platforms."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KNOWBOT_") and k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        env.update({
            "KNOWBOT_DATABASE_URL": database_url, "KNOWBOT_REDIS_URL": redis_url,
            "KNOWBOT_LLM_BASE_URL": self.llm.base_url, "KNOWBOT_LLM_API_KEY": "sk-test",
            "KNOWBOT_LLM_MODEL": "scripted",
            "KNOWBOT_TELEGRAM_TOKEN": TG_TOKEN, "KNOWBOT_TELEGRAM_API_BASE": self.telegram.base_url,
            "KNOWBOT_TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram/webhook",
            "KNOWBOT_SLACK_BOT_TOKEN": SLACK_TOKEN, "KNOWBOT_SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "KNOWBOT_SLACK_API_BASE": self.slack.api_base,
            "KNOWBOT_WECHAT_TOKEN": WECHAT_TOKEN, "KNOWBOT_WECHAT_APP_ID": WECHAT_APP,
            "KNOWBOT_WECHAT_APP_SECRET": self.wechat.secret,
            "KNOWBOT_WECHAT_API_BASE": self.wechat_api, "KNOWBOT_WECHAT_VERIFIED": "true",
            "KNOWBOT_SECRET_KEY": "k" * 32, "KNOWBOT_SCHEDULER_ENABLED": "false",
            "PYTHONPATH": str(ROOT),
        })
        env.update(extra)
        return env
