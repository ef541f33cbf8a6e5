"""Benchmark of the conversation core against a model endpoint simulated at a fixed 1 s latency.

Prints two figures from one run (the goals come from the issue):

- the engine's own overhead per message: wall time of `dispatcher.process` minus the time spent
  inside `LLMRouter.complete` (goal: median under 5 ms with 10,000 messages of history stored);
- the wall time for 1,000 conversations sending one message at once (goal: under 3 s).

The path is the real one: dispatcher -> engine -> memory -> store (SQLite file, the embedded
default) -> the openai client over HTTP to `tests/fake_openai.py`. The fake server runs in a
child process by default so that its own CPU work (pure-Python HTTP) does not share this
process's GIL; `--server-thread` runs it in a thread of this process instead, as the tests do.

    python bench/core.py [--messages N] [--kb-messages N] [--concurrent N] [--history N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

LATENCY = 1.0  # seconds the fake model takes to answer (asyncio sleep in the server)
OVERHEAD_GOAL_MS = 5.0
CONCURRENT_GOAL_S = 3.0
OWN_CPU_GOAL_MS = 1.5

WORDS = (
    "refund policy invoice travel hotel expense budget report quarter deadline customer order "
    "shipping warehouse contract renewal laptop password reset vacation approval manager "
    "onboarding security badge office meeting agenda roadmap release bug ticket deploy server "
    "database backup migration pricing discount partner supplier audit compliance training"
).split()


# ---- timing what happens inside one message ------------------------------------------------


@dataclass
class Acc:
    """Seconds one message spent in each instrumented place."""

    model: float = 0.0  # inside LLMRouter.complete (the figure the goal subtracts)
    model_cpu: float = 0.0  # event-loop thread CPU inside complete (meaningful when sequential)
    model_calls: int = 0
    prompt_messages: int = 0  # messages in the last prompt sent
    http: float = 0.0  # inside the HTTP client's send (network + fake server)
    usage: float = 0.0  # Store.record_usage (runs inside complete)
    db: float = 0.0  # every other Store call
    knowledge: float = 0.0  # KnowledgeSearch.search
    db_calls: dict[str, float] = field(default_factory=dict)


CURRENT: contextvars.ContextVar[Acc | None] = contextvars.ContextVar("bench_acc", default=None)
HTTP_SPANS: list[tuple[float, float]] = []  # (start, end) of every HTTP send, perf_counter


def _timed(func: Callable[..., Awaitable[Any]], record: Callable[[Acc, float], None]):
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await func(*args, **kwargs)
        finally:
            acc = CURRENT.get()
            if acc is not None:
                record(acc, time.perf_counter() - started)

    return wrapper


def _timed_model(func: Callable[..., Awaitable[Any]]):
    @functools.wraps(func)
    async def wrapper(messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return await func(messages, *args, **kwargs)
        finally:
            acc = CURRENT.get()
            if acc is not None:
                acc.model += time.perf_counter() - started
                acc.model_cpu += time.thread_time() - cpu
                acc.model_calls += 1
                acc.prompt_messages = len(messages)

    return wrapper


def _add_db(name: str) -> Callable[[Acc, float], None]:
    def add(acc: Acc, s: float) -> None:
        acc.db += s
        acc.db_calls[name] = acc.db_calls.get(name, 0.0) + s

    return add


def instrument(runtime: Any) -> None:
    """Wrap the router's complete, the store's methods, the knowledge search and HTTP sends."""
    llm = runtime.llm
    llm.complete = _timed_model(llm.complete)  # the engine and the summarizer share this object
    store = runtime.store
    for name in ("claim_inbound", "finish_inbound", "recall", "add_messages", "set_summary"):
        setattr(store, name, _timed(getattr(store, name), _add_db(name)))
    store.record_usage_many = _timed(store.record_usage_many,
                                     lambda a, s: setattr(a, "usage", a.usage + s))
    knowledge = runtime.engine.deps.knowledge
    knowledge.search = _timed(
        knowledge.search, lambda a, s: setattr(a, "knowledge", a.knowledge + s)
    )
    _instrument_http()


def _instrument_http() -> None:
    """Time every send of the HTTP client class the openai SDK uses (class-level, this process)."""
    import openai

    for klass in openai.DefaultAsyncHttpxClient.__mro__:
        if "send" in vars(klass):
            break
    original = klass.send
    if getattr(original, "_bench", False):
        return

    @functools.wraps(original)
    async def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            ended = time.perf_counter()
            HTTP_SPANS.append((started, ended))
            acc = CURRENT.get()
            if acc is not None:
                acc.http += ended - started

    send._bench = True  # type: ignore[attr-defined]
    klass.send = send  # type: ignore[method-assign]


# ---- the fake model server ------------------------------------------------------------------


def serve_fake(latency: float) -> None:
    """Child-process mode: run the fake server, print its URL, stop when stdin closes."""
    from fake_openai import FakeOpenAI

    logging.basicConfig(level=logging.WARNING)
    server = FakeOpenAI(latency=latency, model="bench").start()
    print(server.base_url, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


class ModelServer:
    """The fake OpenAI server at a fixed latency, in a child process or in a thread."""

    def __init__(self, latency: float, in_thread: bool) -> None:
        self.latency = latency
        self.in_thread = in_thread
        self._proc: subprocess.Popen[str] | None = None
        self._server: Any = None
        self.base_url = ""

    def __enter__(self) -> "ModelServer":
        if self.in_thread:
            from fake_openai import FakeOpenAI

            self._server = FakeOpenAI(latency=self.latency, model="bench").start()
            self.base_url = self._server.base_url
        else:
            self._proc = subprocess.Popen(
                [sys.executable, __file__, "--serve-fake", str(self.latency)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert self._proc.stdout is not None
            self.base_url = self._proc.stdout.readline().strip()
            if not self.base_url.startswith("http"):
                raise RuntimeError("the fake model server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


# ---- seeding -----------------------------------------------------------------------------------


def sentence(rng: random.Random, low: int, high: int) -> str:
    """Some plausible chat text."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


async def seed_history(store: Any, plan: list[tuple[Any, int]], rng: random.Random) -> int:
    """Store `count` alternating user/assistant turns for each (key, count), in batches."""
    from bot.tokens import message_tokens

    total = 0
    for key, count in plan:
        done = 0
        while done < count:
            batch = []
            for i in range(done, min(count, done + 500)):
                role = "user" if i % 2 == 0 else "assistant"
                text = sentence(rng, 4, 20) if role == "user" else sentence(rng, 10, 70)
                batch.append((role, text, message_tokens(role, text)))
            await store.add_messages(key, batch, user_id=key.user_id)
            done += len(batch)
        total += count
    return total


def history_plan(history: int, keys: dict[str, Any]) -> list[tuple[Any, int]]:
    """A realistic mix: two long conversations (measured), a warm-up one, many short ones."""
    from bot.types import ConversationKey

    main = int(history * 0.30)
    kb = int(history * 0.30)
    warm = int(history * 0.04)
    rest = history - main - kb - warm
    plan = [(keys["main"], main), (keys["kb"], kb), (keys["warm"], warm)]
    n_short = max(1, rest // 20)
    for i in range(n_short):
        count = rest // n_short + (1 if i < rest % n_short else 0)
        plan.append((ConversationKey("slack", "T-bench", f"C{i:04d}", f"U{i:04d}"), count))
    return plan


# ---- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    """One message: wall time and where it went."""

    total: float
    cpu: float  # event-loop thread CPU for the whole message (meaningful when sequential)
    acc: Acc

    @property
    def overhead(self) -> float:
        """Wall time minus the time inside LLMRouter.complete (the goal's definition)."""
        return self.total - self.acc.model

    @property
    def overhead_net(self) -> float:
        """Wall time minus only the HTTP round trips (counts SDK and usage-record work too)."""
        return self.total - self.acc.http


async def send_one(runtime: Any, key: Any, text: str, message_id: str) -> Sample:
    """Process one message through the dispatcher, timing it."""
    from bot.types import InboundMessage

    acc = Acc()
    CURRENT.set(acc)  # each gathered task has its own context copy
    message = InboundMessage(key=key, message_id=message_id, text=text)
    started, cpu = time.perf_counter(), time.thread_time()
    reply = await runtime.dispatcher.process(message)
    total, cpu = time.perf_counter() - started, time.thread_time() - cpu
    CURRENT.set(None)
    if reply is None or reply.kind == "error":
        raise RuntimeError(f"message {message_id} did not get an answer: {reply!r}")
    return Sample(total, cpu, acc)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def stats_ms(values: list[float]) -> dict[str, float]:
    """median, p90, p99, mean and max, in milliseconds."""
    ms = [v * 1000 for v in values]
    return {
        "median": statistics.median(ms), "p90": pct(ms, 90), "p99": pct(ms, 99),
        "mean": statistics.fmean(ms), "max": max(ms),
    }


def fmt(stats: dict[str, float]) -> str:
    """One line of statistics."""
    return "  ".join(f"{k} {v:7.2f}" for k, v in stats.items())


async def sequential(runtime: Any, key: Any, n: int, rng: random.Random, tag: str) -> list[Sample]:
    """N messages one after the other in one long conversation."""
    samples = []
    for i in range(n):
        words = " ".join(rng.sample(WORDS, 5))
        samples.append(await send_one(runtime, key, f"what about {words}?", f"{tag}-{i}"))
    return samples


def med_ms(values: list[float]) -> float:
    """The median, in milliseconds."""
    return statistics.median(values) * 1000


def report_sequential(title: str, samples: list[Sample], results: dict[str, Any]) -> None:
    """Print the overhead figures of one sequential run."""
    over = stats_ms([s.overhead for s in samples])
    net = stats_ms([s.overhead_net for s in samples])
    calls = sum(s.acc.model_calls for s in samples)
    met = over["median"] < OVERHEAD_GOAL_MS
    names = sorted({n for s in samples for n in s.acc.db_calls})
    per_call = ", ".join(
        f"{n} {med_ms([s.acc.db_calls.get(n, 0.0) for s in samples]):.2f}" for n in names
    )
    print(f"\nsequential, {title}: {len(samples)} messages, {calls} model calls "
          f"({calls - len(samples)} of them memory summaries), prompts of "
          f"{statistics.median(s.acc.prompt_messages for s in samples):.0f} messages (median)")
    print(f"  overhead = wall - time in LLMRouter.complete, ms: {fmt(over)}")
    print(f"    goal: median < {OVERHEAD_GOAL_MS:g} ms -> {'MET' if met else 'NOT MET'}")
    print(f"    medians: store calls {med_ms([s.acc.db for s in samples]):.2f} ms "
          f"({per_call}), knowledge search {med_ms([s.acc.knowledge for s in samples]):.2f}"
          f" ms, the rest (engine code, scheduling) "
          f"{med_ms([s.overhead - s.acc.db - s.acc.knowledge for s in samples]):.2f} ms")
    print(f"    event-loop CPU outside complete(): median "
          f"{med_ms([s.cpu - s.acc.model_cpu for s in samples]):.2f} ms")
    print(f"  inside complete(), medians: on the wire (HTTP) {med_ms([s.acc.http for s in samples]):.1f}"
          f" ms; not on the wire: openai SDK "
          f"{med_ms([s.acc.model - s.acc.http - s.acc.usage for s in samples]):.2f} ms, usage "
          f"record (Store.record_usage) {med_ms([s.acc.usage for s in samples]):.2f} ms; "
          f"event-loop CPU {med_ms([s.acc.model_cpu for s in samples]):.2f} ms")
    print(f"  overhead counting those too (wall - HTTP round trips), ms: {fmt(net)}")
    results[title] = (over, met, net)


async def concurrent(runtime: Any, n: int, rng: random.Random) -> dict[str, Any]:
    """N distinct conversations, one message each, all at once."""
    from bot.types import ConversationKey

    keys = [ConversationKey("telegram", "bench-bot", f"chat-{i}", f"user-{i}") for i in range(n)]
    texts = [f"hello, what is the {' '.join(rng.sample(WORDS, 4))}?" for _ in range(n)]
    HTTP_SPANS.clear()
    started, cpu, pcpu = time.perf_counter(), time.thread_time(), time.process_time()
    outcomes = await asyncio.gather(
        *(send_one(runtime, k, t, f"conc-{i}") for i, (k, t) in enumerate(zip(keys, texts))),
        return_exceptions=True,
    )
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
    pcpu = time.process_time() - pcpu
    samples = [o for o in outcomes if isinstance(o, Sample)]
    failures = [o for o in outcomes if not isinstance(o, Sample)]
    if not samples:
        raise RuntimeError(f"every message failed, e.g. {failures[0]!r}")
    spans = [(a - started, b - started) for a, b in HTTP_SPANS] or [(float("nan"),) * 2]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return {
        "n": n, "wall": wall, "cpu": cpu, "process_cpu": pcpu, "samples": samples,
        "failures": failures,
        "http_calls": len(HTTP_SPANS), "peak_http": peak,
        "first_send": min(a for a, _ in spans), "last_send": max(a for a, _ in spans),
        "last_http_end": max(b for _, b in spans),
        "http_median": statistics.median(b - a for a, b in spans),
        "http_max": max(b - a for a, b in spans),
    }


async def sdk_cpu_per_call(runtime: Any, n: int) -> float:
    """CPU ms of one model call made by the openai SDK alone (the router's own client).

    The same client, transport and a prompt of the size the engine sends, against the same
    fake server (its CPU is in another process), 50 calls in flight: what the model client
    costs, to tell it apart from Knowbot's own work per message.
    """
    if n <= 0:
        return 0.0
    llm = runtime.llm
    name = llm.order[0]
    client = llm._client(name)
    model = llm._providers[name].model
    prompt = [{"role": "system", "content": "You are Knowbot. " * 40}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "some earlier turn " * 12}
        for i in range(12)]
    body = {"model": model, "messages": prompt, "temperature": 0.2}
    gate = asyncio.Semaphore(50)

    async def call() -> None:
        async with gate:
            await client.post("/chat/completions", body=body, cast_to=bytes)

    await asyncio.gather(*(call() for _ in range(min(50, n))))  # warm: connections open
    started = time.process_time()
    await asyncio.gather(*(call() for _ in range(n)))
    return (time.process_time() - started) / n * 1000


# ---- main ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    """The whole benchmark."""
    from bot.config import Settings
    from bot.runtime import Runtime
    from bot.types import ConversationKey
    from conftest import WordKnowledge

    rng = random.Random(7)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="knowbot-bench-") as tmp, \
            ModelServer(LATENCY, args.server_thread) as server:
        os.chdir(tmp)  # no knowbot.toml of the developer's is read
        knowledge = WordKnowledge()
        keys = {
            "main": ConversationKey("slack", "T-bench", "C-main", "U-main"),
            "kb": ConversationKey("slack", "T-bench", "C-kb", "U-kb"),
            "warm": ConversationKey("slack", "T-bench", "C-warm", "U-warm"),
        }
        for i in range(args.passages):
            knowledge.add("C-kb", f"Handbook-{i // 10}.pdf", f"page {i}", sentence(rng, 40, 90))
        settings = Settings(
            data_dir=Path(tmp) / "data", llm_base_url=server.base_url, llm_model="bench",
            llm_max_retries=0, rate_limit_per_minute=1_000_000,
        )
        runtime = await Runtime.start(settings, knowledge=knowledge)
        try:
            seeded_at = time.perf_counter()
            seeded = await seed_history(runtime.store, history_plan(args.history, keys), rng)
            seed_s = time.perf_counter() - seeded_at
            print(f"Knowbot core benchmark: model latency {LATENCY:g} s (fake server in "
                  f"{'a thread of this process' if args.server_thread else 'a child process'}), "
                  f"SQLite at {settings.resolved_database_url}, event loop "
                  f"{type(asyncio.get_running_loop()).__module__.split('.')[0]}")
            print(f"seeded {seeded} messages in {seed_s:.1f} s: {keys['main'].conversation_id()} "
                  f"and {keys['kb'].conversation_id()} have "
                  f"{await runtime.store.count_messages(keys['main'])} and "
                  f"{await runtime.store.count_messages(keys['kb'])}, the rest over "
                  f"{len(history_plan(args.history, keys)) - 3} short conversations; "
                  f"memory budget {settings.memory_token_budget} tokens")
            instrument(runtime)

            # Warm up the code paths (imports, connection pools, the first summary) unmeasured.
            await sequential(runtime, keys["warm"], 3, rng, "warm")

            main = await sequential(runtime, keys["main"], args.messages, rng, "main")
            report_sequential("no knowledge base", main, results)
            if args.kb_messages:
                kbs = await sequential(runtime, keys["kb"], args.kb_messages, rng, "kb")
                report_sequential(f"with knowledge search ({args.passages} passages)",
                                  kbs, results)

            conc = await concurrent(runtime, args.concurrent, rng)
            samples = conc["samples"]
            ratio = conc["wall"] / LATENCY
            met = conc["wall"] < CONCURRENT_GOAL_S and not conc["failures"]
            print(f"\n{conc['n']} conversations at once (one message each, new conversations):")
            print(f"  wall {conc['wall']:.2f} s = {ratio:.2f}x the model latency; goal "
                  f"< {CONCURRENT_GOAL_S:g} s -> {'MET' if met else 'NOT MET'}")
            print(f"  HTTP requests: {conc['http_calls']}, first sent at "
                  f"{conc['first_send']:.2f} s, last sent at {conc['last_send']:.2f} s, at most "
                  f"{conc['peak_http']} in flight; round trip median {conc['http_median']:.2f} s"
                  f", max {conc['http_max']:.2f} s; last answer at {conc['last_http_end']:.2f} s")
            if conc["failures"]:
                kinds = sorted({f"{type(f).__name__}: {f}"[:120] for f in conc["failures"]})
                print(f"  {len(conc['failures'])} of {conc['n']} messages FAILED: {'; '.join(kinds)}")
            per_msg_cpu = conc["cpu"] / conc["n"] * 1000
            per_msg_all = conc["process_cpu"] / conc["n"] * 1000
            calls = conc["http_calls"] / max(1, len(samples))
            sdk = await sdk_cpu_per_call(runtime, args.sdk_calls)
            own = per_msg_all - sdk * calls
            print(f"  CPU per message: {per_msg_all:.2f} ms in all threads (event loop "
                  f"{per_msg_cpu:.2f} ms, the database thread the rest); wall ~ {LATENCY:g} s + "
                  f"N x that (3 s needs < {(CONCURRENT_GOAL_S - LATENCY) / conc['n'] * 1000:.1f}"
                  " ms)")
            print(f"  of which the model client (the openai SDK posting a prompt and reading the "
                  f"answer, {sdk:.2f} ms a call, timed alone in this run) x {calls:.2f} calls; "
                  f"Knowbot's own: {own:.2f} ms; goal < {OWN_CPU_GOAL_MS:g} ms -> "
                  f"{'MET' if own < OWN_CPU_GOAL_MS else 'NOT MET'}")
            results["own_cpu"] = (own, sdk, per_msg_all)
            print(f"  per message under load, medians: wall - complete() "
                  f"{med_ms([s.overhead for s in samples]):.0f} ms, of which in store calls "
                  f"{med_ms([s.acc.db for s in samples]):.0f} ms; usage record "
                  f"{med_ms([s.acc.usage for s in samples]):.0f} ms")
            results["concurrent"] = (conc, ratio, met)
        finally:
            await runtime.close()
            os.chdir(cwd)
    total = time.perf_counter() - t0

    rows = [(t, v) for t, v in results.items() if t not in ("concurrent", "own_cpu")]
    print("\nsummary, ms per message" + " " * 25 + "median     p90     p99    mean   goal")
    print("  engine overhead = wall - time in LLMRouter.complete")
    for title, (over, met, _) in rows:
        print(f"    {title:<44}{over['median']:7.2f} {over['p90']:7.2f} {over['p99']:7.2f} "
              f"{over['mean']:7.2f}   <{OVERHEAD_GOAL_MS:g} ms {'MET' if met else 'NOT MET'}")
    print("  wall - HTTP round trips only (adds SDK work and usage record)")
    for title, (_, _, net) in rows:
        print(f"    {title:<44}{net['median']:7.2f} {net['p90']:7.2f} {net['p99']:7.2f} "
              f"{net['mean']:7.2f}")
    own, sdk, per_msg_all = results["own_cpu"]
    print(f"  CPU per message at 1,000 at once: {per_msg_all:.2f} ms; Knowbot's own (less the "
          f"openai SDK's {sdk:.2f} ms a call) {own:.2f} ms{' ' * 10}<{OWN_CPU_GOAL_MS:g} ms "
          f"{'MET' if own < OWN_CPU_GOAL_MS else 'NOT MET'}")
    conc, ratio, met = results["concurrent"]
    print(f"  {conc['n']} conversations at once: wall {conc['wall']:.2f} s = {ratio:.2f}x the "
          f"model latency{' ' * 8}<{CONCURRENT_GOAL_S:g} s {'MET' if met else 'NOT MET'}")
    print(f"  (benchmark ran {total:.0f} s; with {args.messages} samples p99 is about the max)")


def main() -> None:
    """Command line entry."""
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-fake":
        serve_fake(float(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50,
                        help="sequential measured messages (default 50)")
    parser.add_argument("--kb-messages", type=int, default=10,
                        help="sequential messages with knowledge search (default 10; 0 skips)")
    parser.add_argument("--passages", type=int, default=60,
                        help="passages in the in-memory knowledge base (default 60)")
    parser.add_argument("--concurrent", type=int, default=1000,
                        help="conversations sending at once (default 1000)")
    parser.add_argument("--history", type=int, default=10_000,
                        help="messages of history seeded into the database (default 10000)")
    parser.add_argument("--sdk-calls", type=int, default=500,
                        help="model calls timed alone to tell the SDK's CPU apart (default 500)")
    parser.add_argument("--server-thread", action="store_true",
                        help="run the fake model server in a thread of this process")
    parser.add_argument("--asyncio", action="store_true",
                        help="run on asyncio's own event loop, not the server's (uvloop)")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("KNOWBOT_")] + [
        "OPENAI_API_KEY", "OPENAI_BASE_URL"
    ]:
        os.environ.pop(name, None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from bot.eventloop import loop_factory  # as `knowbot serve` runs

    with asyncio.Runner(loop_factory=None if args.asyncio else loop_factory()) as runner:
        runner.run(run(args))


if __name__ == "__main__":
    main()
