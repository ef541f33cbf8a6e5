"""LLMRouter against local OpenAI-compatible servers, through the real openai client."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import openai
import pytest
from fake_openai import (
    FakeOpenAI,
    echo,
    hang,
    raw_json,
    reply,
    status,
    tool_calls,
    trickle,
)
from pydantic import SecretStr

from bot.config import ProviderConfig, Settings
from bot.errors import LLMError
from bot.llm import Completion, LLMRouter, ToolCall, UsageEvent

pytestmark = pytest.mark.asyncio

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def servers():
    with FakeOpenAI() as first, FakeOpenAI() as second:
        yield first, second


def fresh(fake: FakeOpenAI) -> FakeOpenAI:
    fake.reset()
    fake.default = echo
    fake.latency = 0.0
    return fake


@pytest.fixture
def server(servers):
    return fresh(servers[0])


@pytest.fixture
def backup(servers):
    return fresh(servers[1])


class Recorder:
    """Collects usage events and backoff sleeps."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self.sleeps: list[float] = []

    async def sink(self, event: UsageEvent) -> None:
        self.events.append(event)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    @property
    def outcomes(self) -> list[tuple[str, str]]:
        return [(e.provider, e.outcome) for e in self.events]


def make_router(*servers: FakeOpenAI, rec: Recorder, **options) -> LLMRouter:
    providers = {
        f"p{i}": ProviderConfig(base_url=s.base_url, model=f"model-{i}")
        for i, s in enumerate(servers)
    }
    options.setdefault("timeout", 5)
    options.setdefault("backoff_base", 0.01)
    options.setdefault("sleep", rec.sleep)
    return LLMRouter(providers, list(providers), usage_sink=rec.sink, **options)


async def test_plain_answer_reaches_the_server_and_comes_back(server):
    rec = Recorder()
    server.script(reply("Hi! How can I help?", prompt_tokens=12, completion_tokens=6))
    async with make_router(server, rec=rec, temperature=0.3) as llm:
        result = await llm.complete(HELLO, conversation_id="conv-1")

    assert result == Completion(
        content="Hi! How can I help?", tool_calls=(), provider="p0", model="model-0",
        prompt_tokens=12, completion_tokens=6, finish_reason="stop",
    )
    [body] = server.requests
    assert body["model"] == "model-0"
    assert body["messages"] == HELLO
    assert body["temperature"] == 0.3
    assert "tools" not in body
    [event] = rec.events
    assert (event.provider, event.model, event.outcome) == ("p0", "model-0", "ok")
    assert (event.prompt_tokens, event.completion_tokens) == (12, 6)
    assert event.conversation_id == "conv-1"
    assert event.latency_ms > 0
    assert event.error == ""


async def test_tool_calls_are_parsed_with_raw_arguments(server):
    rec = Recorder()
    spec = {"type": "function", "function": {"name": "calculate", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string"}}}}}
    server.script(tool_calls(("calculate", {"expression": "2+2"}), ("current_time", {})))
    async with make_router(server, rec=rec) as llm:
        result = await llm.complete(HELLO, tools=[spec])

    assert server.requests[0]["tools"] == [spec]
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("calculate", '{"expression": "2+2"}'),
        ("current_time", "{}"),
    ]
    assert all(isinstance(c, ToolCall) and c.id.startswith("call_") for c in result.tool_calls)
    assert len({c.id for c in result.tool_calls}) == 2


async def test_429_is_retried_after_retry_after(server):
    rec = Recorder()
    server.script(status(429, retry_after=0), reply("after the limit"))
    async with make_router(server, rec=rec) as llm:
        result = await llm.complete(HELLO)

    assert result.content == "after the limit"
    assert len(server.requests) == 2
    assert rec.outcomes == [("p0", "rate_limited"), ("p0", "ok")]
    assert rec.sleeps == [0]
    assert "429" in rec.events[0].error


async def test_retry_after_is_honoured_up_to_the_cap(server):
    rec = Recorder()
    server.script(status(429, retry_after=3), status(429, retry_after=100), reply("ok"))
    async with make_router(server, rec=rec, backoff_cap=8.0) as llm:
        await llm.complete(HELLO)
    assert rec.sleeps == [3.0, 8.0]


async def test_500_is_retried_with_growing_jittered_backoff(server):
    rec = Recorder()
    server.script(status(500), status(503), reply("recovered"))
    async with make_router(server, rec=rec, backoff_base=0.1) as llm:
        result = await llm.complete(HELLO)

    assert result.content == "recovered"
    assert rec.outcomes == [("p0", "server_error"), ("p0", "server_error"), ("p0", "ok")]
    first, second = rec.sleeps
    assert 0.05 <= first <= 0.1
    assert 0.1 <= second <= 0.2


async def test_real_sleep_is_used_by_default(server):
    server.script(status(500), reply("slept"))
    rec = Recorder()
    llm = LLMRouter(
        {"p0": ProviderConfig(base_url=server.base_url, model="m")}, ["p0"],
        usage_sink=rec.sink, backoff_base=0.2,
    )
    async with llm:
        started = time.perf_counter()
        await llm.complete(HELLO)
        assert time.perf_counter() - started >= 0.1


async def test_exhausted_retries_fall_back_to_the_next_provider(server, backup):
    rec = Recorder()
    server.script(status(500), status(502), status(500), reply("never reached"))
    backup.script(reply("from the backup"))
    async with make_router(server, backup, rec=rec, max_retries=2) as llm:
        result = await llm.complete(HELLO)

    assert (result.content, result.provider, result.model) == ("from the backup", "p1", "model-1")
    assert len(server.requests) == 3
    assert server.pending == 1
    assert len(backup.requests) == 1
    assert rec.outcomes == [("p0", "server_error")] * 3 + [("p1", "ok")]


async def test_a_hanging_server_times_out_and_falls_back(server, backup):
    rec = Recorder()
    server.script(hang(10))
    backup.script(reply("the backup answered"))
    async with make_router(server, backup, rec=rec, timeout=0.5, max_retries=0) as llm:
        started = time.perf_counter()
        result = await llm.complete(HELLO)
        elapsed = time.perf_counter() - started

    assert result.content == "the backup answered"
    assert rec.outcomes == [("p0", "timeout"), ("p1", "ok")]
    assert 0.4 <= rec.events[0].latency_ms / 1000 < 2
    assert elapsed < 2


async def test_hard_timeout_stops_a_server_that_trickles_bytes(server, backup):
    # Each whitespace byte resets the HTTP read timeout; only the asyncio.wait_for guard helps.
    rec = Recorder()
    server.script(trickle(5, interval=0.1, then=reply("too late")))
    backup.script(reply("on time"))
    async with make_router(server, backup, rec=rec, timeout=0.5, max_retries=0) as llm:
        started = time.perf_counter()
        result = await llm.complete(HELLO)
        elapsed = time.perf_counter() - started

    assert result.content == "on time"
    assert rec.outcomes == [("p0", "timeout"), ("p1", "ok")]
    assert elapsed < 2


async def test_trickled_answer_within_the_timeout_is_accepted(server):
    rec = Recorder()
    server.script(trickle(0.3, interval=0.05, then=reply("slow but fine")))
    async with make_router(server, rec=rec, timeout=3) as llm:
        result = await llm.complete(HELLO)
    assert result.content == "slow but fine"


@pytest.mark.parametrize("code", [400, 401, 404])
async def test_client_errors_are_not_retried_but_fall_back(server, backup, code):
    rec = Recorder()
    server.script(status(code), reply("would have worked on retry"))
    backup.script(reply("backup"))
    async with make_router(server, backup, rec=rec) as llm:
        result = await llm.complete(HELLO)

    assert result.content == "backup"
    assert len(server.requests) == 1
    assert rec.outcomes == [("p0", "error"), ("p1", "ok")]
    assert str(code) in rec.events[0].error
    assert rec.sleeps == []


async def test_all_providers_failing_raises_llm_error(server, backup):
    rec = Recorder()
    server.default = lambda request: status(500)
    backup.default = lambda request: status(503)
    async with make_router(server, backup, rec=rec, max_retries=1) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.complete(HELLO)

    assert isinstance(caught.value.__cause__, openai.InternalServerError)
    assert "503" in str(caught.value)
    assert len(server.requests) == 2
    assert len(backup.requests) == 2
    assert [o for _, o in rec.outcomes] == ["server_error"] * 4


async def test_connection_refused_falls_back(backup):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    rec = Recorder()
    backup.script(reply("alive"))
    providers = {
        "dead": ProviderConfig(base_url=f"http://127.0.0.1:{dead_port}/v1", model="m"),
        "alive": ProviderConfig(base_url=backup.base_url, model="m"),
    }
    async with LLMRouter(
        providers, ["dead", "alive"], usage_sink=rec.sink, max_retries=1, sleep=rec.sleep
    ) as llm:
        result = await llm.complete(HELLO)

    assert result.content == "alive"
    assert rec.outcomes == [
        ("dead", "connection_error"), ("dead", "connection_error"), ("alive", "ok")
    ]


async def test_malformed_response_counts_as_error_and_is_retried(server, backup):
    rec = Recorder()
    server.script(
        raw_json({"id": "x", "object": "chat.completion", "model": "m", "choices": []}),
        raw_json({"id": "y", "object": "chat.completion", "model": "m"}),
    )
    backup.script(reply("well formed"))
    async with make_router(server, backup, rec=rec, max_retries=1) as llm:
        result = await llm.complete(HELLO)

    assert result.content == "well formed"
    assert rec.outcomes == [("p0", "error"), ("p0", "error"), ("p1", "ok")]
    assert "no choices" in rec.events[0].error


async def test_usage_tokens_come_from_the_server_usage(server):
    rec = Recorder()
    server.script(
        status(429, retry_after=0),
        reply("counted", prompt_tokens=321, completion_tokens=45),
    )
    async with make_router(server, rec=rec) as llm:
        result = await llm.complete(HELLO, conversation_id="c-9")

    assert (result.prompt_tokens, result.completion_tokens) == (321, 45)
    failed, ok = rec.events
    assert (failed.prompt_tokens, failed.completion_tokens) == (0, 0)
    assert (ok.prompt_tokens, ok.completion_tokens) == (321, 45)
    assert {e.conversation_id for e in rec.events} == {"c-9"}


async def test_default_usage_is_passed_through_unchanged(server):
    rec = Recorder()
    async with make_router(server, rec=rec) as llm:
        result = await llm.complete([{"role": "user", "content": "one two three"}])
    # The fake counts words: 3 words + 1 per message; "echo: one two three" is 4 words.
    assert result.content == "echo: one two three"
    assert (result.prompt_tokens, result.completion_tokens) == (4, 4)
    assert (rec.events[0].prompt_tokens, rec.events[0].completion_tokens) == (4, 4)


async def test_a_failing_usage_sink_never_breaks_the_call(server, caplog):
    async def broken_sink(event: UsageEvent) -> None:
        raise RuntimeError("database down")

    llm = LLMRouter(
        {"p0": ProviderConfig(base_url=server.base_url, model="m")}, ["p0"],
        usage_sink=broken_sink,
    )
    with caplog.at_level(logging.WARNING, logger="bot.llm"):
        async with llm:
            result = await llm.complete(HELLO)
    assert result.content == "echo: hello there"
    assert any("usage sink failed" in r.getMessage() for r in caplog.records)


async def test_api_key_is_sent_and_never_logged_or_reported(server, backup, caplog):
    rec = Recorder()
    server.script(status(401, message="Incorrect API key provided: sk-secret-123"))
    providers = {
        "keyed": ProviderConfig(
            base_url=server.base_url, model="m", api_key=SecretStr("sk-secret-123")
        ),
        "local": ProviderConfig(base_url=backup.base_url, model="m"),
    }
    with caplog.at_level(logging.DEBUG):
        async with LLMRouter(providers, ["keyed", "local"], usage_sink=rec.sink) as llm:
            await llm.complete(HELLO)

    assert server.request_headers[0]["authorization"] == "Bearer sk-secret-123"
    assert backup.request_headers[0]["authorization"] == "Bearer not-needed"
    assert all("sk-secret" not in e.error for e in rec.events)
    assert all("sk-secret" not in r.getMessage() for r in caplog.records if r.name == "bot.llm")


async def test_provider_timeout_overrides_the_default(server, backup):
    rec = Recorder()
    server.script(hang(10))
    backup.script(reply("fast"))
    providers = {
        "slow": ProviderConfig(base_url=server.base_url, model="m", timeout=0.3),
        "fast": ProviderConfig(base_url=backup.base_url, model="m"),
    }
    async with LLMRouter(
        providers, ["slow", "fast"], usage_sink=rec.sink, timeout=30, max_retries=0
    ) as llm:
        started = time.perf_counter()
        await llm.complete(HELLO)
    assert time.perf_counter() - started < 2
    assert rec.outcomes == [("slow", "timeout"), ("fast", "ok")]


async def test_no_providers_means_not_configured():
    llm = LLMRouter({}, [])
    assert llm.configured is False
    with pytest.raises(LLMError):
        await llm.complete(HELLO)
    await llm.close()


async def test_unknown_provider_in_order_is_refused():
    with pytest.raises(LLMError):
        LLMRouter({}, ["ghost"])


async def test_from_settings_uses_the_configured_endpoint(server, monkeypatch, tmp_path):
    monkeypatch.setenv("KNOWBOT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    settings = Settings(
        llm_base_url=server.base_url, llm_model="local-llama", llm_temperature=0.7,
        llm_max_retries=0,
    )
    llm = LLMRouter.from_settings(settings)
    assert llm.configured and llm.order == ("default",)
    server.script(status(500))
    async with llm:
        with pytest.raises(LLMError):
            await llm.complete(HELLO)
        result = await llm.complete(HELLO)
    assert len(server.requests) == 2  # max_retries=0: no retry after the 500
    assert server.requests[1]["model"] == "local-llama"
    assert server.requests[1]["temperature"] == 0.7
    assert result.content == "echo: hello there"


async def test_from_settings_with_nothing_configured(monkeypatch, tmp_path):
    monkeypatch.setenv("KNOWBOT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "KNOWBOT_LLM_BASE_URL",
                 "KNOWBOT_LLM_API_KEY", "KNOWBOT_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert LLMRouter.from_settings(Settings()).configured is False


async def test_concurrent_calls_share_one_client(server):
    rec = Recorder()
    server.latency = 0.2
    async with make_router(server, rec=rec) as llm:
        started = time.perf_counter()
        results = await asyncio.gather(*(
            llm.complete([{"role": "user", "content": f"q{i}"}]) for i in range(20)
        ))
        elapsed = time.perf_counter() - started
        assert len(llm._clients) == 1
    assert sorted(r.content for r in results) == sorted(f"echo: q{i}" for i in range(20))
    assert elapsed < 1.5  # 20 calls of 0.2 s ran concurrently
    assert llm._clients == {}  # closed


async def test_fake_server_speaks_the_wire_format_to_a_blocking_client(server):
    import httpx

    server.script(tool_calls(("calculate", {"expression": "1+2"})), status(429, retry_after=2))

    def blocking_calls():
        with httpx.Client(base_url=server.base_url, timeout=5) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "add please"}]}
            return http.post("/chat/completions", json=body), http.post("/chat/completions",
                                                                       json=body)

    first, second = await asyncio.to_thread(blocking_calls)
    data = first.json()
    assert data["object"] == "chat.completion"
    assert data["id"] and isinstance(data["created"], int) and data["model"] == "m"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["role"] == "assistant"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "calculate", "arguments": '{"expression": "1+2"}'}
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert second.status_code == 429
    assert second.headers["retry-after"] == "2"
    assert second.json()["error"]["type"] == "rate_limit_exceeded"


async def test_answers_are_read_from_their_json_leniently_and_junk_is_refused(server, backup):
    """A local server's lean answer (no id, usage or object) is fine; unusable bodies are not."""
    rec = Recorder()
    server.script(
        raw_json([{"choices": []}]),
        raw_json({"choices": [{"message": {"content": {"not": "text"}}}]}),
        raw_json({"choices": [{"message": {"content": None, "tool_calls": [{"id": "t1"}]}}]}),
    )
    backup.script(raw_json({"choices": [{"message": {"role": "assistant", "content": "lean"},
                                         "finish_reason": "stop"}]}))
    async with make_router(server, backup, rec=rec, max_retries=2) as llm:
        result = await llm.complete(HELLO)

    assert (result.content, result.provider, result.finish_reason) == ("lean", "p1", "stop")
    assert (result.prompt_tokens, result.completion_tokens) == (0, 0)
    assert rec.outcomes == [("p0", "error")] * 3 + [("p1", "ok")]
    assert ["not a JSON object" in rec.events[0].error, "not text" in rec.events[1].error,
            "no function name" in rec.events[2].error] == [True, True, True]
