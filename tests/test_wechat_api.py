"""The access token shared by replicas, and customer-service sends against the API fake."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import pytest

from bot.clock import ManualClock
from bot.errors import ChannelSendError
from bot.kv import StateStore
from bot.store import Store
from channels.wechat_api import TOKEN_NS, TokenManager, WeChatAPI
from fake_wechat import FakeWeChatAPI, serve


async def test_two_replicas_refreshing_at_once_fetch_one_token(pg_url: str) -> None:
    api = FakeWeChatAPI(token_delay=0.3)
    async with serve(api.app()) as base, httpx.AsyncClient() as http:
        stores = [await Store.open(pg_url), await Store.open(pg_url)]  # two replicas
        try:
            managers = [TokenManager(StateStore(s), http, api.app_id, api.secret, api_base=base)
                        for s in stores]
            tokens = await asyncio.gather(*(m.token() for m in managers for _ in range(3)))
            assert api.token_hits == 1
            assert len(set(tokens)) == 1 and tokens[0] in api.valid_tokens
        finally:
            for s in stores:
                await s.close()


async def test_token_is_refreshed_ahead_of_expiry_and_after_42001(pg_url: str) -> None:
    api = FakeWeChatAPI(expires_in=7200)
    async with serve(api.app()) as base, httpx.AsyncClient() as http:
        store = await Store.open(pg_url)
        try:
            clock = ManualClock(datetime(2031, 3, 9, 12, 0, tzinfo=timezone.utc))
            tokens = TokenManager(StateStore(store, clock=clock), http, api.app_id, api.secret,
                                  api_base=base, refresh_ahead=300)
            first = await tokens.token()
            clock.advance(6000)  # still 1200 s left: kept
            assert await tokens.token() == first and api.token_hits == 1
            clock.advance(1000)  # 200 s left: refreshed ahead of expiry
            second = await tokens.token()
            assert second != first and api.token_hits == 2
            api.user_wrote("o-1")
            api.expire_tokens()  # WeChat says 42001: refresh once and retry
            await WeChatAPI(tokens).send_text("o-1", "你好")
            assert api.token_hits == 3 and api.refused == [42001]
            assert api.texts("o-1") == ["你好"]
            entry = await StateStore(store).get(TOKEN_NS, api.app_id)
            assert entry is not None and entry.value["token"] in api.valid_tokens
        finally:
            await store.close()


async def test_send_errors_say_whether_a_retry_helps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    api = FakeWeChatAPI()
    async with serve(api.app()) as base, httpx.AsyncClient() as http:
        store = await Store.open(f"sqlite:///{tmp_path / 'k.db'}")
        try:
            client = WeChatAPI(TokenManager(StateStore(store), http, api.app_id, api.secret,
                                            api_base=base))
            with pytest.raises(ChannelSendError) as outside:
                await client.send_text("o-silent", "hello")  # never wrote: 45015
            assert outside.value.retryable is False
            api.user_wrote("o-2")
            for n in range(5):
                await client.send_text("o-2", f"m{n}")
            with pytest.raises(ChannelSendError) as spent:
                await client.send_text("o-2", "one too many")  # 45047
            assert spent.value.retryable is False
            bad = WeChatAPI(TokenManager(StateStore(store), http, "wx-other", "nope",
                                         api_base=base))
            with pytest.raises(ChannelSendError) as refused:
                await bad.send_text("o-2", "x")
            assert refused.value.retryable is False and api.token_hits == 1
        finally:
            await store.close()


async def test_hundreds_asking_at_once_share_one_read_of_the_stored_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every answer that may be pushed asks for the token: once known here, it is handed out
    without a database read each (those, one at a time behind the lock, took seconds)."""
    api = FakeWeChatAPI()
    async with serve(api.app()) as base, httpx.AsyncClient() as http:
        store = await Store.open(f"sqlite:///{tmp_path / 'k.db'}")
        try:
            state = StateStore(store)
            first = await TokenManager(state, http, api.app_id, api.secret,
                                       api_base=base).token()  # another replica fetched it
            reads = 0
            get = state.get

            async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
                nonlocal reads
                reads += 1
                return await get(*args, **kwargs)

            state.get = counted  # type: ignore[method-assign]
            here = TokenManager(state, http, api.app_id, api.secret, api_base=base)
            tokens = await asyncio.gather(*(here.token() for _ in range(300)))
            assert set(tokens) == {first} and api.token_hits == 1
            assert reads == 1
            await here.invalidate(first)  # WeChat refused it: read (and refresh) again
            assert await here.token() != first and api.token_hits == 2
        finally:
            await store.close()
