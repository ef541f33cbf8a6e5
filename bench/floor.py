"""The least CPU any replica must spend per answered message, from the SDKs it is built on.

    python bench/floor.py [--calls 2000] [--concurrency 50] [--rate 200]

`bench/load.py` measures what Knowbot's replicas spend per answered message. This measures what
no implementation on the same components can avoid: each platform's one unavoidable step, done
by the library Knowbot uses for it, with nothing of Knowbot's around it. Per message:

- HTTP in: uvicorn + FastAPI serving one POST that reads its body and answers "ok" (a child
  process, its CPU read from /proc, driven by this one over loopback).
- Inbound parsing: aiogram's `Update` from the webhook's JSON (Telegram); slack_sdk's signature
  check and the event's JSON (Slack; Bolt's own dispatch, which Knowbot also runs, is left out);
  wechatpy's decryption and parse of an encrypted message (WeChat).
- The model: one call through the openai SDK's lean path Knowbot uses (`client.post` with the
  body as JSON, `cast_to=bytes`), beside the same POST with aiohttp alone.
- The answer out: aiogram's `send_message` (Telegram), slack_sdk's `chat.postMessage` (Slack),
  wechatpy's encryption of the passive reply (WeChat).

The platforms and the model are the loopback fakes the tests use (`tests/replicas.py`), in a
child process of their own, so their CPU is not counted here. Everything in this process runs
one call at a time per task on one uvloop loop, `--concurrency` tasks at once, and is timed as
this process's CPU over `--calls` calls. No database, no Redis, no Knowbot: the floor is a
lower bound on a replica's CPU per message. At the end: that floor times `--rate`, in cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SERVER = """
import sys
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
app = FastAPI()
@app.post("/hook")
async def hook(request: Request):
    await request.body()
    return PlainTextResponse("ok")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop",
            http="httptools")
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spread(calls: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """`calls` calls of `one`, `concurrency` at a time."""
    counter = iter(range(calls))

    async def lane() -> None:
        for n in counter:
            await one(n)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def _per_call(calls: int, concurrency: int, one: Callable[[int], Awaitable[Any]],
                    cpu: Callable[[], float] = _cpu) -> float:
    """CPU ms per call of `one` (after a warm-up of `concurrency` calls)."""
    await _spread(concurrency, concurrency, one)
    before = cpu()
    await _spread(calls, concurrency, one)
    return (cpu() - before) / calls * 1000


def _per_call_sync(calls: int, one: Callable[[int], Any]) -> float:
    for n in range(20):
        one(n)
    before = _cpu()
    for n in range(calls):
        one(n)
    return (_cpu() - before) / calls * 1000


async def measure(args: argparse.Namespace) -> dict[str, float]:
    import aiohttp
    import openai
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.types import Update
    from slack_sdk.signature import SignatureVerifier
    from slack_sdk.web.async_client import AsyncWebClient
    from wechatpy import parse_message
    from wechatpy.crypto import WeChatCrypto
    from wechatpy.replies import TextReply

    from load import RemotePlatforms, _cpu_seconds
    from replicas import SIGNING_SECRET, SLACK_TOKEN, TG_TOKEN, slack_event, slack_headers

    figures: dict[str, float] = {}
    n, c = args.calls, args.concurrency
    text = "An answer of an ordinary length, a sentence or two, as a model would give it. " * 2

    # HTTP in: a bare FastAPI route under uvicorn, its CPU per request.
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.post(f"http://127.0.0.1:{port}/hook", data=b"{}") as r:
                        await r.read()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            body = slack_event(1, "a question", "Ev0001").encode()

            async def hook(_: int) -> None:
                async with http.post(f"http://127.0.0.1:{port}/hook", data=body) as r:
                    await r.read()

            figures["HTTP in (uvicorn + FastAPI, server side)"] = await _per_call(
                n, c, hook, cpu=lambda: _cpu_seconds(server.pid))
    finally:
        server.terminate()
        server.wait(10)

    # Inbound parsing, one message at a time (no I/O).
    update = json.dumps({"update_id": 1, "message": {
        "message_id": 7, "date": int(time.time()), "text": "a question about the handbook",
        "chat": {"id": 42, "type": "private", "first_name": "Ada"},
        "from": {"id": 42, "is_bot": False, "first_name": "Ada"}}})
    figures["Telegram in: aiogram Update"] = _per_call_sync(
        n, lambda _: Update.model_validate_json(update))
    verifier = SignatureVerifier(SIGNING_SECRET)
    headers = slack_headers(body.decode())
    stamp = headers["X-Slack-Request-Timestamp"]

    def slack_in(_: int) -> Any:
        assert verifier.is_valid_request(body, headers)
        return json.loads(body)

    figures["Slack in: slack_sdk signature + JSON"] = _per_call_sync(n, slack_in)
    crypto = WeChatCrypto("token", "a" * 43, "wx-app")
    inner = ("<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[o-user]]>"
             "</FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType>"
             "<Content><![CDATA[a question about the handbook]]></Content><MsgId>1</MsgId></xml>")
    sealed = crypto.encrypt_message(inner, "nonce", stamp)
    import xmltodict

    envelope = xmltodict.parse(sealed)["xml"]

    def wechat_in(_: int) -> Any:
        xml = crypto.decrypt_message({"Encrypt": envelope["Encrypt"]}, envelope["MsgSignature"],
                                     stamp, "nonce")
        return parse_message(xml)

    message = wechat_in(0)
    figures["WeChat in: wechatpy decrypt + parse"] = _per_call_sync(n, wechat_in)
    figures["WeChat out: wechatpy passive reply, encrypted"] = _per_call_sync(
        n, lambda _: crypto.encrypt_message(
            TextReply(source=message.target, target=message.source, content=text).render(),
            "nonce", stamp))

    # The model and the sends, against the loopback platforms in their own process.
    with RemotePlatforms(0.0, 10, "postgresql://unused", "redis://unused") as platforms:
        env = platforms.env
        model = openai.AsyncOpenAI(api_key="sk-test", base_url=env["KNOWBOT_LLM_BASE_URL"],
                                   max_retries=0, timeout=30,
                                   http_client=openai.DefaultAioHttpClient(timeout=30))
        messages = [{"role": "system", "content": "You answer from the team's documents. " * 10},
                    {"role": "user", "content": "load message 1 of 1: a question"}]
        request = {"model": "scripted", "messages": messages, "temperature": 0.3}

        async def ask(_: int) -> None:
            await model.post("/chat/completions", body=request, cast_to=bytes)

        figures["model: openai SDK, client.post"] = await _per_call(n, c, ask)
        await model.close()
        async with aiohttp.ClientSession() as http:
            url = env["KNOWBOT_LLM_BASE_URL"].rstrip("/") + "/chat/completions"

            async def ask_raw(_: int) -> None:
                async with http.post(url, json=request,
                                     headers={"Authorization": "Bearer sk-test"}) as r:
                    json.loads(await r.read())

            raw_model = await _per_call(n, c, ask_raw)
        bot = Bot(TG_TOKEN, session=AiohttpSession(
            api=TelegramAPIServer.from_base(env["KNOWBOT_TELEGRAM_API_BASE"])))

        async def tg_send(k: int) -> None:
            await bot.send_message(1000 + k % 50, text)

        figures["Telegram out: aiogram send_message"] = await _per_call(n, c, tg_send)
        await bot.session.close()
        session = aiohttp.ClientSession()
        slack = AsyncWebClient(token=SLACK_TOKEN, base_url=env["KNOWBOT_SLACK_API_BASE"],
                               session=session)

        async def slack_send(k: int) -> None:
            await slack.chat_postMessage(channel=f"D{k % 50:04d}", text=text)

        figures["Slack out: slack_sdk chat.postMessage"] = await _per_call(n, c, slack_send)
        await session.close()
    figures["(for comparison: the model call with aiohttp alone)"] = raw_model
    return figures


def report(figures: dict[str, float], rate: float) -> None:
    width = max(len(k) for k in figures)
    for name, ms in figures.items():
        print(f"  {name:<{width}}  {ms:6.3f} ms")
    shared = (figures["HTTP in (uvicorn + FastAPI, server side)"]
              + figures["model: openai SDK, client.post"])
    floors = {
        "telegram": shared + figures["Telegram in: aiogram Update"]
        + figures["Telegram out: aiogram send_message"],
        "slack": shared + figures["Slack in: slack_sdk signature + JSON"]
        + figures["Slack out: slack_sdk chat.postMessage"],
        "wechat": shared + figures["WeChat in: wechatpy decrypt + parse"]
        + figures["WeChat out: wechatpy passive reply, encrypted"],
    }
    mean = sum(floors.values()) / len(floors)
    print("floor per answered message (HTTP in + parse + model call + answer out; no database, "
          "no Redis, no Knowbot): " + ", ".join(f"{k} {v:.2f} ms" for k, v in floors.items())
          + f"; mean {mean:.2f} ms")
    print(f"at {rate:.0f} messages/s, a third on each channel: {mean * rate / 1000:.2f} cores "
          f"of CPU for the replicas before any of their own work ({os.cpu_count()} cores here)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        figures = runner.run(measure(args))
    report(figures, args.rate)


if __name__ == "__main__":
    main()
