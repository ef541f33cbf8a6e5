"""The model client: OpenAI-compatible providers tried in order, with retries and fallback."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai

from bot.config import ProviderConfig
from bot.errors import LLMError

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

NO_KEY = "not-needed"  # local servers such as Ollama or llama.cpp accept any key


@dataclass(frozen=True)
class UsageEvent:
    """One attempt at one provider: tokens, latency and how it ended."""

    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    outcome: str  # ok | rate_limited | server_error | timeout | connection_error | error
    conversation_id: str = ""
    error: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for; arguments is the raw JSON string it sent."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """One model answer: text and/or tool calls, and where it came from."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    provider: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


UsageSink = Callable[[UsageEvent], Awaitable[None]]


def _http_client(timeout: float) -> Any:
    """openai's aiohttp transport when installed (it scales to many requests in flight), else None."""
    try:
        return openai.DefaultAioHttpClient(timeout=timeout)
    except RuntimeError:  # the aiohttp extra is not installed: the SDK's default client
        return None


class _AttemptFailed(Exception):
    """Internal: one attempt failed; says whether retrying the same provider makes sense."""

    def __init__(
        self, outcome: str, error: str, cause: BaseException, *, retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error
        self.cause = cause
        self.retryable = retryable
        self.retry_after = retry_after


class _MalformedResponse(Exception):
    """Internal: the provider answered 2xx with something that is not a usable completion."""


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """The server's Retry-After (or retry-after-ms) in seconds, if it sent a usable one."""
    headers = getattr(exc.response, "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / divisor
        except ValueError:
            continue  # an HTTP date: rare from model servers; fall back to our own backoff
        if seconds >= 0 and seconds == seconds:  # not NaN
            return seconds
    return None


def _refused(exc: BaseException) -> bool:
    """True when a 'timeout' was really a refused connection (the aiohttp transport maps it so)."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def _classify(exc: BaseException) -> _AttemptFailed:
    """Turn an SDK (or timeout) exception into an outcome, a short safe message and a policy."""
    if isinstance(exc, asyncio.TimeoutError):
        return _AttemptFailed("timeout", "no answer within the time limit", exc, retryable=True)
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return _AttemptFailed("timeout", "request timed out", exc, retryable=True)
    if isinstance(exc, openai.APITimeoutError):
        return _AttemptFailed("connection_error", "could not connect", exc, retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return _AttemptFailed("connection_error", "could not connect", exc, retryable=True)
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        # Only the status code and the class name: an error body may echo part of a key.
        error = f"HTTP {code} ({type(exc).__name__})"
        if code == 429:
            return _AttemptFailed(
                "rate_limited", error, exc, retryable=True, retry_after=_retry_after(exc)
            )
        if code >= 500:
            return _AttemptFailed(
                "server_error", error, exc, retryable=True, retry_after=_retry_after(exc)
            )
        if code == 408:
            return _AttemptFailed("timeout", error, exc, retryable=True)
        return _AttemptFailed("error", error, exc, retryable=False)
    if isinstance(exc, (_MalformedResponse, openai.APIResponseValidationError)):
        return _AttemptFailed("error", f"malformed response: {exc}"[:200], exc, retryable=True)
    return _AttemptFailed("error", type(exc).__name__, exc, retryable=False)


def _parse(body: bytes, provider: str, fallback_model: str) -> Completion:
    """Read a chat completion's JSON into a Completion; raise _MalformedResponse when unusable.

    Read from the body's JSON directly: building the SDK's ChatCompletion model for every answer
    cost more CPU than the rest of the engine's work on a message, and only these fields count.
    """
    try:
        response = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise _MalformedResponse("the body is not JSON") from exc
    if not isinstance(response, dict):
        raise _MalformedResponse("the body is not a JSON object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _MalformedResponse("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _MalformedResponse("no message in the first choice")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _MalformedResponse("message content is not text")
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _MalformedResponse("tool_calls is not a list")
    calls: list[ToolCall] = []
    for index, raw in enumerate(raw_calls):
        function = raw.get("function") if isinstance(raw, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise _MalformedResponse("a tool call has no function name")
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)  # some servers send an object
        call_id = raw.get("id") or f"call_{index}"
        calls.append(ToolCall(id=str(call_id), name=name, arguments=arguments or ""))
    usage = response.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    model = response.get("model")
    finish = choice.get("finish_reason")
    return Completion(
        content=content,
        tool_calls=tuple(calls),
        provider=provider,
        model=model if isinstance(model, str) and model else fallback_model,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        finish_reason=finish if isinstance(finish, str) else None,
    )


def _count(value: Any) -> int:
    """A token count from a usage field (0 when missing or not a number)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


class LLMRouter:
    """Sends chat completions to the configured providers in order, retrying and falling back."""

    def __init__(
        self,
        providers: dict[str, ProviderConfig],
        order: list[str],
        *,
        usage_sink: UsageSink | None = None,
        timeout: float = 60,
        max_retries: int = 2,
        temperature: float = 0.2,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        unknown = [name for name in order if name not in providers]
        if unknown:
            raise LLMError(f"unknown model provider(s) in the order: {', '.join(unknown)}")
        self._providers = dict(providers)
        self._order = list(order)
        self._usage_sink = usage_sink
        self._timeout = timeout
        self._max_retries = max(0, max_retries)
        self._temperature = temperature
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sleep = sleep
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    @classmethod
    def from_settings(cls, settings: Settings, usage_sink: UsageSink | None = None) -> LLMRouter:
        """Build a router from Knowbot's settings."""
        return cls(
            settings.providers(),
            settings.provider_order(),
            usage_sink=usage_sink,
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
            temperature=settings.llm_temperature,
        )

    @property
    def configured(self) -> bool:
        """True when at least one provider is configured; False means Knowbot runs with no LLM."""
        return bool(self._order)

    @property
    def order(self) -> tuple[str, ...]:
        """Provider names in the order they are tried."""
        return tuple(self._order)

    def _timeout_for(self, config: ProviderConfig) -> float:
        return config.timeout if config.timeout else self._timeout

    def _client(self, name: str) -> openai.AsyncOpenAI:
        client = self._clients.get(name)
        if client is None:
            config = self._providers[name]
            api_key = config.api_key.get_secret_value() if config.api_key else ""
            client = openai.AsyncOpenAI(
                api_key=api_key or NO_KEY,
                base_url=config.base_url,
                timeout=self._timeout_for(config),
                max_retries=0,  # retries and fallback are ours
                http_client=_http_client(self._timeout_for(config)),
            )
            self._clients[name] = client
        return client

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number attempt+1: Retry-After, else exponential + jitter."""
        if retry_after is not None:
            return min(retry_after, self._backoff_cap)
        ceiling = min(self._backoff_cap, self._backoff_base * (2**attempt))
        return ceiling * (0.5 + random.random() / 2)

    async def _report(self, event: UsageEvent) -> None:
        if self._usage_sink is None:
            return
        try:
            await self._usage_sink(event)
        except Exception:  # noqa: BLE001 - accounting must never break an answer
            log.warning("usage sink failed for provider %s", event.provider, exc_info=True)

    async def _attempt(
        self,
        name: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        conversation_id: str,
    ) -> Completion:
        """One call to one provider; raises _AttemptFailed on any failure, reports usage."""
        config = self._providers[name]
        kwargs: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "temperature": self._temperature,
        }
        if tools:
            kwargs["tools"] = tools
        started = time.perf_counter()
        try:
            client = self._client(name)
            # The body is plain JSON already: posting it skips the SDK's per-call conversion
            # of every message and tool schema (tens of ms of CPU on long prompts) while keeping
            # its authentication and error mapping; the answer is read from its JSON (_parse).
            async with asyncio.timeout(self._timeout_for(config)):  # no task of its own
                body = await client.post("/chat/completions", body=kwargs, cast_to=bytes)
            completion = _parse(body, name, config.model)
        except (TimeoutError, openai.OpenAIError, _MalformedResponse) as exc:
            failure = _classify(exc)
            latency = (time.perf_counter() - started) * 1000
            await self._report(UsageEvent(
                provider=name, model=config.model, prompt_tokens=0, completion_tokens=0,
                latency_ms=latency, outcome=failure.outcome, conversation_id=conversation_id,
                error=failure.error,
            ))
            raise failure from exc
        latency = (time.perf_counter() - started) * 1000
        await self._report(UsageEvent(
            provider=name, model=config.model, prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens, latency_ms=latency, outcome="ok",
            conversation_id=conversation_id,
        ))
        log.debug("provider %s answered in %.0f ms", name, latency)
        return completion

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        conversation_id: str = "",
    ) -> Completion:
        """Get one completion, retrying 429/5xx/timeouts and falling back across providers."""
        if not self._order:
            raise LLMError("no model provider is configured")
        last: _AttemptFailed | None = None
        for name in self._order:
            for attempt in range(self._max_retries + 1):
                try:
                    return await self._attempt(name, messages, tools, conversation_id)
                except _AttemptFailed as failure:
                    last = failure
                    if not failure.retryable or attempt >= self._max_retries:
                        log.warning(
                            "provider %s failed (%s: %s) after %d attempt(s)",
                            name, failure.outcome, failure.error, attempt + 1,
                        )
                        break
                    delay = self._backoff(attempt, failure.retry_after)
                    log.info(
                        "provider %s: %s (%s); retry %d/%d in %.2fs",
                        name, failure.outcome, failure.error, attempt + 1, self._max_retries,
                        delay,
                    )
                    await self._sleep(delay)
        assert last is not None
        raise LLMError(
            f"every model provider failed; last: {last.outcome} ({last.error})"
        ) from last.cause

    async def close(self) -> None:
        """Close every provider's HTTP client."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("closing a model client failed", exc_info=True)

    async def __aenter__(self) -> LLMRouter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
