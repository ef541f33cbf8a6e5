"""Daily quotas: over a limit the person is told when it resets and the model is not called."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bot.clock import ManualClock
from bot.runtime import Runtime
from conftest import ChatBot, WordKnowledge, make_settings
from fake_openai import FakeOpenAI, reply

SHANGHAI = ZoneInfo("Asia/Shanghai")


async def _bot(tmp_path, server: FakeOpenAI, clock: ManualClock, **limits: int) -> ChatBot:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, llm_base_url=server.base_url, llm_model="m",
                             llm_api_key="k", timezone="Asia/Shanghai", **limits)
    return ChatBot(await Runtime.start(settings, knowledge=WordKnowledge(), clock=clock))


async def test_a_user_past_the_daily_question_limit_is_told_and_the_model_not_called(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(datetime(2031, 3, 9, 21, 30, tzinfo=SHANGHAI))
    async with FakeOpenAI() as server:
        bot = await _bot(tmp_path, server, clock, quota_user_requests=2)
        try:
            for n in range(2):
                assert "question" in (await bot.say(f"question {n}")).text
            refused = await bot.say("one more")
            assert refused.kind == "notice" and "limit of 2 questions" in refused.text
            assert "00:00 (Asia/Shanghai), in 2 h 30 min" in refused.text
            assert len(server.requests) == 2  # the model was not asked
            assert "2 of 2 questions" in (await bot.say("/quota")).text  # commands still work
            other = await bot.say("hello", user="bob")  # the limit is per person
            assert other.kind != "notice" and len(server.requests) == 3
            clock.advance(timedelta(hours=2, minutes=31))  # a new day in Shanghai
            assert (await bot.say("good morning")).kind != "notice"
            assert len(server.requests) == 4
        finally:
            await bot.runtime.close()


async def test_model_tokens_count_against_the_chats_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(datetime(2031, 3, 9, 12, 0, tzinfo=SHANGHAI))
    async with FakeOpenAI() as server:
        server.script(reply("first answer", prompt_tokens=700, completion_tokens=400))
        bot = await _bot(tmp_path, server, clock, quota_chat_tokens=1000)
        try:
            assert (await bot.say("long question")).text == "first answer"
            status = (await bot.say("/quota")).text
            assert "this chat: 1,100 of 1,000 model tokens" in status
            refused = await bot.say("another", user="bob")  # same chat, another person
            assert "This chat reached today's limit of 1,000 model tokens" in refused.text
            assert len(server.requests) == 1
            usage = await bot.runtime.engine.deps.quotas.today()
            assert usage == [{"day": "2031-03-09", "scope": "chat", "id": "test:team-1:chat-1",
                              "requests": 1, "tokens": 1100}]
        finally:
            await bot.runtime.close()


async def test_no_quotas_means_no_counting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with FakeOpenAI() as server:
        bot = await _bot(tmp_path, server, ManualClock())
        try:
            await bot.say("question")
            assert "No quotas" in (await bot.say("/quota")).text
            assert await bot.runtime.state.items("quota") == []
        finally:
            await bot.runtime.close()
