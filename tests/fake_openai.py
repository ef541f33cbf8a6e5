"""A scriptable, local OpenAI-compatible Chat Completions server for tests and benchmarks.

It speaks the real wire format on 127.0.0.1 (uvicorn + Starlette in a background thread with its
own event loop), so it works the same from sync tests, async tests and standalone scripts:

    with FakeOpenAI() as server:
        server.script(status(429, retry_after=0), reply("Hello!"))
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...
        assert len(server.requests) == 2

    async with FakeOpenAI(latency=1.0) as server:   # every answer takes 1 s (asyncio sleep)
        ...

Import it as `fake_openai` in tests (pytest puts tests/ on sys.path) or as `tests.fake_openai`
from a script run at the repo root; use one name per process, since steps are checked by class.

Each request takes the next scripted step; when none are left, `default(request_json)` decides
(by default: echo the last user message). Every request body is recorded in `server.requests`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# ---- scripted steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyStep:
    """Answer with text (finish_reason "stop")."""

    content: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ToolCallsStep:
    """Answer with tool calls (finish_reason "tool_calls"); arguments are raw JSON strings."""

    calls: tuple[tuple[str, str], ...]
    content: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class StatusStep:
    """Answer with an HTTP error status and an OpenAI-style error body."""

    code: int
    retry_after: float | None = None
    message: str = ""


@dataclass(frozen=True)
class RawStep:
    """Answer with this exact JSON body (e.g. a malformed completion)."""

    body: Any
    code: int = 200


@dataclass(frozen=True)
class HangStep:
    """Accept the request and say nothing for `seconds` (then a 504); released by stop()."""

    seconds: float


@dataclass(frozen=True)
class DelayStep:
    """Wait `seconds` (asyncio sleep), then run another step."""

    seconds: float
    then: Step


@dataclass(frozen=True)
class TrickleStep:
    """Send a byte of whitespace every `interval` for `seconds`, then the `then` step's body.

    Defeats a per-read timeout: only a total (hard) timeout stops a client waiting on it.
    """

    seconds: float
    then: Step
    interval: float = 0.1


Step = ReplyStep | ToolCallsStep | StatusStep | RawStep | HangStep | DelayStep | TrickleStep
Responder = Callable[[dict[str, Any]], Step | Awaitable[Step]]


def reply(
    text: str | None, *, prompt_tokens: int | None = None, completion_tokens: int | None = None
) -> ReplyStep:
    """A text answer (None: echo the last user message); tokens default to word counts."""
    return ReplyStep(text, prompt_tokens, completion_tokens)


def tool_calls(
    *calls: tuple[str, dict[str, Any] | str],
    content: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> ToolCallsStep:
    """Tool calls in one turn, each (name, arguments dict or raw JSON string)."""
    encoded = tuple(
        (name, args if isinstance(args, str) else json.dumps(args)) for name, args in calls
    )
    return ToolCallsStep(encoded, content, prompt_tokens, completion_tokens)


def raw_arguments(name: str, arguments: str) -> ToolCallsStep:
    """One tool call whose arguments string is sent verbatim (e.g. broken JSON)."""
    return ToolCallsStep(((name, arguments),))


def status(code: int, *, retry_after: float | None = None, message: str = "") -> StatusStep:
    """An HTTP error, with a Retry-After header (seconds) when given."""
    return StatusStep(code, retry_after, message)


def raw_json(body: Any, code: int = 200) -> RawStep:
    """This exact JSON body, e.g. {"choices": []} for a malformed completion."""
    return RawStep(body, code)


def hang(seconds: float) -> HangStep:
    """Accept and never answer (for `seconds`, then a 504)."""
    return HangStep(seconds)


def delay(seconds: float, then: Step | None = None) -> DelayStep:
    """Answer after `seconds` with `then` (default: an echo reply)."""
    return DelayStep(seconds, then if then is not None else ReplyStep(None))


def trickle(seconds: float, then: Step | None = None, interval: float = 0.1) -> TrickleStep:
    """Keep the response alive with whitespace for `seconds`, then answer with `then`."""
    return TrickleStep(seconds, then if then is not None else ReplyStep(None), interval)


def last_user_text(request: dict[str, Any]) -> str:
    """The text of the last user message in a Chat Completions request body."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def echo(request: dict[str, Any]) -> Step:
    """The default responder: repeat the last user message."""
    return reply(f"echo: {last_user_text(request)}")


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        return _count_words(value.get("text") or value.get("content") or "")
    return 0


def prompt_word_count(request: dict[str, Any]) -> int:
    """The default prompt_tokens: words in every message's content, plus 1 per message."""
    messages = request.get("messages") or []
    return sum(_count_words(m.get("content")) + 1 for m in messages if isinstance(m, dict))


# ---- the server -------------------------------------------------------------------------------


@dataclass
class _Shared:
    """State touched from both the test's thread and the server's thread (under a lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    steps: deque[Step] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


class FakeOpenAI:
    """A local OpenAI-compatible server: script steps, point a client at base_url, read requests."""

    def __init__(
        self,
        *,
        default: Responder = echo,
        latency: float = 0.0,
        model: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.default = default
        self.latency = latency
        self.model = model
        self.host = host
        self._port = port
        self._shared = _Shared()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ])

    # -- scripting and inspection --

    def script(self, *steps: Step) -> FakeOpenAI:
        """Queue steps; each request consumes the next one."""
        with self._shared.lock:
            self._shared.steps.extend(steps)
        return self

    @property
    def pending(self) -> int:
        """How many scripted steps are not consumed yet."""
        with self._shared.lock:
            return len(self._shared.steps)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every chat request body received so far, in arrival order (a copy)."""
        with self._shared.lock:
            return list(self._shared.requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The headers of every chat request, parallel to `requests` (names lower-cased)."""
        with self._shared.lock:
            return list(self._shared.headers)

    def reset(self) -> None:
        """Forget scripted steps and recorded requests."""
        with self._shared.lock:
            self._shared.steps.clear()
            self._shared.requests.clear()
            self._shared.headers.clear()

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        return self._port

    @property
    def base_url(self) -> str:
        """The URL to hand to an OpenAI client, ending in /v1."""
        return f"http://{self.host}:{self._port}/v1"

    # -- lifecycle --

    def start(self, timeout: float = 10.0) -> FakeOpenAI:
        """Start listening in a background thread; returns once requests are accepted."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off",
            backlog=4096, timeout_graceful_shutdown=2, timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"fake-openai-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"fake OpenAI server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start in time")
            time.sleep(0.005)
        return self

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._released = asyncio.Event()
        try:
            assert self._server is not None
            loop.run_until_complete(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
        finally:
            sock.close()
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Release hanging requests, shut the server down and wait for its thread."""
        if self._thread is None or self._server is None:
            return
        loop, released = self._loop, self._released
        if loop is not None and released is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(released.set)
            except RuntimeError:  # the loop closed in between
                pass
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeOpenAI:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- HTTP handlers (run in the server's thread and loop) --

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model or "fake-model", "object": "model", "created": 0, "owned_by": "fake"}
        ]})

    async def _chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening any more
        except ValueError:
            return self._error_response(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return self._error_response(400, "the request body must be a JSON object")
        with self._shared.lock:
            self._shared.requests.append(body)
            self._shared.headers.append({k.lower(): v for k, v in request.headers.items()})
            step = self._shared.steps.popleft() if self._shared.steps else None
        if step is None:
            step = self.default(body)
            if inspect.isawaitable(step):
                step = await step
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        return await self._respond(step, body)

    async def _respond(self, step: Step, body: dict[str, Any]) -> Response:
        if isinstance(step, DelayStep):
            await asyncio.sleep(step.seconds)
            return await self._respond(step.then, body)
        if isinstance(step, HangStep):
            assert self._released is not None
            try:
                await asyncio.wait_for(self._released.wait(), step.seconds)
            except TimeoutError:
                pass
            return self._error_response(504, "the fake server hung on purpose")
        if isinstance(step, TrickleStep):
            return self._trickle(step, body)
        if isinstance(step, StatusStep):
            headers = {}
            if step.retry_after is not None:
                headers["retry-after"] = f"{step.retry_after:g}"
            return self._error_response(step.code, step.message, headers)
        if isinstance(step, RawStep):
            return JSONResponse(step.body, status_code=step.code)
        if isinstance(step, (ReplyStep, ToolCallsStep)):
            return JSONResponse(self.completion_body(step, body))
        raise TypeError(f"not a fake OpenAI step: {step!r}")

    def _trickle(self, step: TrickleStep, body: dict[str, Any]) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            end = time.monotonic() + step.seconds
            released = self._released
            while time.monotonic() < end and not (released is not None and released.is_set()):
                yield b" "  # leading whitespace is valid JSON
                await asyncio.sleep(step.interval)
            then = step.then
            if isinstance(then, (ReplyStep, ToolCallsStep)):
                yield json.dumps(self.completion_body(then, body)).encode()
            elif isinstance(then, RawStep):
                yield json.dumps(then.body).encode()
            else:
                yield json.dumps({"error": {"message": "trickle ended"}}).encode()

        return StreamingResponse(chunks(), media_type="application/json")

    def _error_response(
        self, code: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        kind = {
            400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
            404: "not_found_error", 429: "rate_limit_exceeded",
        }.get(code, "server_error" if code >= 500 else "invalid_request_error")
        error = {
            "message": message or f"fake server error {code}",
            "type": kind,
            "param": None,
            "code": kind if code in (401, 429) else None,
        }
        return JSONResponse({"error": error}, status_code=code, headers=headers)

    def completion_body(self, step: ReplyStep | ToolCallsStep, request: dict[str, Any]) -> dict:
        """The chat.completion JSON for a reply or tool-calls step, answering `request`."""
        message: dict[str, Any] = {"role": "assistant", "content": step.content}
        if isinstance(step, ToolCallsStep):
            message["tool_calls"] = [
                {
                    "id": f"call_{next(self._ids)}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for name, arguments in step.calls
            ]
            finish = "tool_calls"
            generated = sum(len(a) // 4 + 1 for _, a in step.calls)
        else:
            if step.content is None:
                message["content"] = echo(request).content  # type: ignore[union-attr]
            finish = "stop"
            generated = _count_words(message["content"])
        prompt = step.prompt_tokens if step.prompt_tokens is not None else prompt_word_count(
            request
        )
        completion = step.completion_tokens if step.completion_tokens is not None else generated
        return {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model or str(request.get("model") or "fake-model"),
            "choices": [{
                "index": 0, "message": message, "finish_reason": finish, "logprobs": None,
            }],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
