"""WeChat across replicas: a retry that lands on another replica gets the answer made anywhere."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bot.app import create_app
from bot.runtime import Runtime
from channels.wechat import WeChatChannel
from channels.wechat_planner import Timings
from conftest import WordKnowledge, make_settings
from fake_openai import FakeOpenAI
from fake_wechat import FakeWeChatAPI, WeChatServer, bound_socket, serve

TOKEN = "knowbot-test-token"
APP_ID = "wx-test-app"
FAST = Timings(window=0.8, platform_timeout=1.0, requests_per_message=3, keep_done=30, poll=0.05)


async def test_a_retry_on_another_replica_carries_the_answer(pg_url: str, tmp_path: Path,
                                                             ) -> None:
    api = FakeWeChatAPI(app_id=APP_ID)
    async with AsyncExitStack() as stack, FakeOpenAI(latency=1.3) as model:
        api_url = await stack.enter_async_context(serve(api.app()))
        urls = []
        for n in range(2):  # two replicas on one database
            settings = make_settings(
                tmp_path / f"replica-{n}", database_url=pg_url, wechat_token=TOKEN,
                wechat_app_id=APP_ID, wechat_app_secret=api.secret, wechat_api_base=api_url,
                secret_key="s" * 32, llm_base_url=model.base_url, llm_model="m",
                llm_max_retries=0, rate_limit_per_minute=100)
            channel = WeChatChannel(settings, timings=FAST)

            async def factory(s: Any) -> Runtime:
                return await Runtime.start(s, knowledge=WordKnowledge())

            app = create_app(settings, runtime_factory=factory, channels=[channel])
            sock, _ = bound_socket()
            urls.append(await stack.enter_async_context(serve(app, sock)))
        wx = WeChatServer(urls[0], TOKEN, app_id=APP_ID, timeout=FAST.platform_timeout, api=api)
        stack.push_async_callback(wx.close)
        wx.urls = [u.rstrip("/") + "/wechat" for u in urls]  # the first try to one, the retry to the other

        exchange = await wx.text("o-user-1", "what is the refund window?")
        # the first request on replica 0 timed out (the model takes 1.3 s); the retry on
        # replica 1 carried the answer, whichever replica's worker made it
        assert exchange.statuses == [None, 200]
        assert exchange.content == "echo: what is the refund window?"
        assert len(model.requests) == 1  # answered once
        assert api.texts("o-user-1") == []  # nothing pushed: the passive reply carried it
