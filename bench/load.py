"""Load on the webhooks of every channel against several `knowbot serve` replicas.

Starts the loopback platforms (Telegram Bot API, Slack Web API, WeChat API) and a scripted model
that answers in 1 s, then two replicas on PostgreSQL and Redis, and drives Telegram webhook
updates, Slack events and WeChat messages (each a new conversation, round-robin over the
replicas) at a fixed total rate. Prints, per channel: acknowledgement latency p50/p99 (the
webhook's HTTP answer; for WeChat the passive reply, which carries the answer, so its figure
includes the model's second), answers delivered, lost and duplicated; each replica's peak RSS,
its CPU per answered message and the database transactions per answered message.

The platforms and the model run in a child process of their own and the load generator in this
one, so neither takes the other's event loop; all of them share the machine's cores with the
replicas, PostgreSQL and Redis: compare figures from one run. `--profile DIR` samples every
replica with py-spy while the load runs (raw flamegraph files in DIR) and prints where their
CPU went.

    python bench/load.py [--rate 200] [--seconds 60] [--replicas 2] [--workers 256] [--quick]
        [--profile DIR] [--channels telegram,slack,wechat]

Needs PostgreSQL (KNOWBOT_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test,
where it makes and drops a database of its own) and Redis (KNOWBOT_BENCH_REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import httpx  # noqa: E402

from channels.telegram import derive_webhook_secret  # noqa: E402
from fake_telegram import FakeBotAPI, parse_telegram_html, private_chat, user  # noqa: E402
from fake_wechat import WeChatServer  # noqa: E402
from replicas import (TG_TOKEN, WECHAT_APP, WECHAT_TOKEN, Platforms, Replica,  # noqa: E402
                      slack_event, slack_headers, stop_all)

ACK_GOAL_MS = 50.0
CHANNELS = ("telegram", "slack", "wechat")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stat_cpu(stat: Path) -> float:
    """User + system CPU seconds from a /proc `stat` file (a process's or a thread's); raises
    OSError, IndexError or ValueError when it is gone or unreadable."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (from /proc)."""
    try:
        return _stat_cpu(Path(f"/proc/{pid}/stat"))
    except (OSError, IndexError, ValueError):
        return float("nan")


def _thread_cpu(pid: int) -> dict[str, float]:
    """A process's CPU so far by kind of thread: the event loop (the main thread), the
    database lane's threads (named knowbot-db-N), and the others."""
    found = {"event loop": 0.0, "database lane": 0.0, "other threads": 0.0}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            used = _stat_cpu(task / "stat")
            name = (task / "comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            continue
        kind = ("event loop" if task.name == str(pid) else
                "database lane" if name.startswith("knowbot-db") else "other threads")
        found[kind] += used
    return found


def _machine_cpu(replicas: list[int], platforms: int | None) -> dict[str, float]:
    """CPU seconds so far of everything on the machine, by who used it: the replicas, the
    platforms' process (the fake platforms and the model), this load generator, PostgreSQL,
    Redis, and everything else (other work on a shared machine); with the machine's total busy
    time from /proc/stat. So a run shows whether the rate it asked for fits the machine at all."""
    tick = os.sysconf("SC_CLK_TCK")
    found = dict.fromkeys(("replicas", "platforms and model", "load generator", "PostgreSQL",
                           "Redis", "everything else", "machine busy"), 0.0)
    mine = {os.getpid(): "load generator", **{p: "replicas" for p in replicas}}
    if platforms:
        mine[platforms] = "platforms and model"
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            used = _stat_cpu(proc / "stat")
            name = (proc / "comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            continue
        pid = int(proc.name)
        kind = mine.get(pid) or ("PostgreSQL" if name in ("postgres", "postmaster") else
                                 "Redis" if name.startswith("redis-server") else "everything else")
        found[kind] += used
    try:
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        found["machine busy"] = (sum(map(int, cpu)) - int(cpu[3]) - int(cpu[4])) / tick
    except (OSError, IndexError, ValueError):
        found["machine busy"] = float("nan")
    return found


def _transactions(admin_url: str, database: str) -> int:
    """Transactions committed or rolled back in the database so far (PostgreSQL's counters)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


def _inbox(url: str) -> str:
    """The replicas' inbox at the end, by status (what is still queued or running is late, not
    lost; dead entries were given up and their senders told)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT status, count(*) FROM inbox_entry GROUP BY status "
                            "ORDER BY status").fetchall()
    return ", ".join(f"{status} {count}" for status, count in rows) or "empty"


def _held(url: str) -> int:
    """WeChat answers held for their person's next message (a push that could not be made,
    or no request left to carry them): not lost, but not delivered within the run."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT value FROM state_entry WHERE namespace LIKE 'wechat:held:%'"
                            ).fetchall()
    return sum(len([item for item in json.loads(value) if item.get("parts")])
               for (value,) in rows)


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---- the platforms' process ----------------------------------------------------------------


def _openid(n: int) -> str:
    return f"o-user-{n:03d}"  # as WeChatUser names conversation n


def _delivered(platforms: Platforms) -> dict[str, Any]:
    """What the platforms were sent: message numbers per channel, WeChat pushes with times."""
    return {
        "telegram": [i for call in platforms.telegram.calls_of("sendMessage")
                     for i in _ids(parse_telegram_html(call.params["text"]))],
        "slack": [i for call in platforms.slack.called("chat.postMessage")
                  for i in _ids(str(call.params.get("text", "")))],
        "wechat_pushed": [[m["touser"], m["text"]["content"], m["_at"]]
                          for m in platforms.wechat.sent],
    }


async def _serve_platforms(latency: float, conversations: int, database_url: str,
                           redis_url: str, extra: dict[str, str]) -> None:
    """Child mode: run the platforms and the model, print the replicas' settings and the
    control URL as one JSON line, answer /delivered, stop when stdin closes."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fake_wechat import serve

    async with Platforms(model_latency=latency) as platforms:
        for n in range(conversations):  # every WeChat user "wrote": their 48 hours are open
            platforms.wechat.user_wrote(_openid(n))

        async def delivered(request: Any) -> JSONResponse:
            return JSONResponse(_delivered(platforms))

        control = Starlette(routes=[Route("/delivered", delivered)])
        async with serve(control) as url:
            env = platforms.env(database_url, redis_url, **extra)
            print(json.dumps({"env": env, "control": url}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class RemotePlatforms:
    """The platforms' child process, seen from the load generator."""

    def __init__(self, latency: float, conversations: int, database_url: str, redis_url: str,
                 **extra: str) -> None:
        self._argv = [sys.executable, __file__, "--serve-platforms",
                      json.dumps([latency, conversations, database_url, redis_url, extra])]
        self._proc: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}
        self.control = ""
        self.wechat = _PushedWeChat()
        self.client = httpx.AsyncClient(timeout=30)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> "RemotePlatforms":
        self._proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("{"):
            self.__exit__()
            raise RuntimeError("the platforms' process did not start")
        started = json.loads(line)
        self.env, self.control = started["env"], started["control"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    async def delivered(self) -> dict[str, Any]:
        seen = (await self.client.get(self.control + "/delivered")).json()
        self.wechat.sent = [{"touser": who, "text": {"content": text}, "_at": at}
                            for who, text, at in seen["wechat_pushed"]]
        return seen


class _PushedWeChat:
    """The WeChat API's customer-service messages, as last fetched from the child."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []


# ---- the load ---------------------------------------------------------------------------


class _Sender:
    """Posts to the replicas as a load balancer does: round robin, a request a replica does not
    take (refused, 5xx, timed out) goes to the next one. One aiohttp session with no connection
    limit: httpx's pool slows down with the number of requests waiting in it (at 200/s it, not
    the replicas, became the bottleneck)."""

    def __init__(self, replicas: list[Replica]) -> None:
        import aiohttp

        self.replicas = replicas
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._errors = (aiohttp.ClientError, asyncio.TimeoutError)
        self._timeout = aiohttp.ClientTimeout

    async def close(self) -> None:
        await self.session.close()

    async def post(self, first: int, path: str, body: bytes, headers: dict[str, str], *,
                   params: dict[str, str] | None = None, timeout: float = 10.0,
                   tries: int = 0) -> str:
        for n in range(tries or len(self.replicas) * 3):
            replica = self.replicas[(first + n) % len(self.replicas)]
            try:
                async with self.session.post(replica.url + path, data=body, headers=headers,
                                             params=params,
                                             timeout=self._timeout(total=timeout)) as response:
                    text = await response.text()
                    if response.status == 200:
                        return text
                    if response.status < 500:
                        raise AssertionError(f"{path}: {response.status} {text[:200]}")
            except self._errors:
                if tries:  # WeChat: a try that timed out is over; the next goes at once
                    continue
                await asyncio.sleep(0.1)
        raise AssertionError(f"no replica took {path}")


class _WeChatPerson:
    """One WeChat user: the message POSTed up to 3 times, 5 s apart at most, each try to the
    next replica, until one answers (as `replicas.WeChatUser`, on the bench's sender)."""

    def __init__(self, wx: WeChatServer, n: int) -> None:
        self.wx = wx
        self.openid = _openid(n)
        self.replies: list[tuple[str, float]] = []

    async def say(self, sender: _Sender, text: str, n: int) -> None:
        xml = self.wx.xml(self.openid, "text", {"Content": text})
        params, body = self.wx.envelope(xml, self.openid)
        reply = await sender.post(n, "/wechat", body, {"Content-Type": "text/xml"},
                                  params=params, timeout=5.0, tries=3)
        content = self.wx.read_reply(reply, params)
        if content:
            self.replies.append((content, time.monotonic()))


async def _drive(args: argparse.Namespace, replicas: list[Replica], platforms: RemotePlatforms
                 ) -> dict[str, dict[str, list[float] | int]]:
    sender = _Sender(replicas)
    secret = {"X-Telegram-Bot-Api-Secret-Token": derive_webhook_secret(TG_TOKEN),
              "Content-Type": "application/json"}
    updates = FakeBotAPI(TG_TOKEN)  # only builds Telegram's update JSON; not served here
    wx = WeChatServer(replicas[0].url, WECHAT_TOKEN, app_id=WECHAT_APP)  # builds WeChat's XML
    channels = args.channels
    acks: dict[str, list[float]] = {c: [] for c in channels}
    failed = {c: 0 for c in channels}
    people: dict[int, _WeChatPerson] = {}
    total = int(args.rate * args.seconds)

    async def one(n: int) -> None:
        channel = channels[n % len(channels)]
        text = f"load message {n} here"
        started = time.perf_counter()
        try:
            if channel == "telegram":
                chat = 10_000 + n
                update = updates.text_update(private_chat(chat), user(chat), text)
                await sender.post(n, "/telegram/webhook", json.dumps(update).encode(), secret)
            elif channel == "slack":
                raw = slack_event(n, text, f"EvLoad{n:07d}")
                await sender.post(n, "/slack/events", raw.encode(), slack_headers(raw))
            else:
                person = people[n] = _WeChatPerson(wx, n)
                await person.say(sender, text, n)
        except AssertionError:
            failed[channel] += 1
            return
        acks[channel].append((time.perf_counter() - started) * 1000)

    start = time.perf_counter()
    tasks = []
    late = 0.0  # how far behind its schedule the generator fell at worst
    for n in range(total):
        delay = start + n / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
        tasks.append(asyncio.create_task(one(n)))
    sent_for = time.perf_counter() - start
    await asyncio.gather(*tasks)
    acked_for = time.perf_counter() - start
    await sender.close()
    await wx.close()

    async def delivered() -> dict[str, list[int]]:
        remote = await platforms.delivered()
        seen: dict[str, list[int]] = {"telegram": remote["telegram"], "slack": remote["slack"],
                                      "wechat": []}
        pushed: dict[str, list[str]] = collections.defaultdict(list)
        for m in platforms.wechat.sent:
            pushed[m["touser"]].append(m["text"]["content"])
        for person in people.values():
            for text in [t for t, _ in person.replies] + pushed.get(person.openid, []):
                seen["wechat"] += _ids(text)
        return seen

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(len(set(v)) for v in (await delivered()).values()) >= total:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)
    seen = await delivered()
    results: dict[str, dict[str, list[float] | int]] = {}
    for n, channel in enumerate(channels):
        expected = {i for i in range(total) if i % len(channels) == n}
        got = seen[channel]
        results[channel] = {"acks": acks[channel], "sent": len(expected), "failed": failed[channel],
                            "delivered": len(expected & set(got)),
                            "lost": len(expected - set(got)),
                            "duplicated": len(got) - len(set(got))}
    print(f"sent {total} messages in {sent_for:.1f} s ({total / sent_for:.0f}/s, asked "
          f"{args.rate:.0f}/s; the generator fell {late * 1000:.0f} ms behind at worst); the "
          f"last acknowledgement came {acked_for:.1f} s after the first send")
    return results


def _ids(text: str) -> list[int]:
    words = text.split()
    return [int(words[i + 2]) for i, w in enumerate(words[:-2])
            if w == "load" and words[i + 1] == "message" and words[i + 2].isdigit()]


def _report(results: dict[str, dict[str, list[float] | int]], rss: list[float],
            cpu: list[float], idle: list[float], xacts: float, idle_xacts: float,
            by_thread: dict[str, float] | None = None,
            machine: dict[str, float] | None = None, seconds: float = 0.0) -> None:
    """Print the figures (before the teardown, which can be slow after an overload)."""
    print(f"{'channel':<9} {'ack p50':>9} {'ack p99':>9} {'sent':>6} {'delivered':>9} "
          f"{'missing':>7} {'dup':>4} {'unacked':>7}")
    for channel, r in results.items():
        acks = r["acks"]
        assert isinstance(acks, list)
        print(f"{channel:<9} {_pct(acks, 0.5):>7.1f}ms {_pct(acks, 0.99):>7.1f}ms {r['sent']:>6} "
              f"{r['delivered']:>9} {r['lost']:>7} {r['duplicated']:>4} {r['failed']:>7}")
    print("missing: not delivered 60 s after the last acknowledgement (see the inbox line for where they "
          "are); unacked: requests no replica answered (for WeChat, all 3 tries timed out, "
          "after which the answer is pushed)")
    wechat = results["wechat"]["acks"] if "wechat" in results else []
    assert isinstance(wechat, list)
    print(f"goals: Telegram/Slack ack p99 < {ACK_GOAL_MS:.0f} ms; WeChat passive reply p99 < "
          f"model 1000 ms + {ACK_GOAL_MS:.0f} ms (measured {_pct(wechat, 0.99):.0f} ms, median "
          f"{statistics.median(wechat) if wechat else float('nan'):.0f} ms); 0 lost; 0 duplicated")
    print("peak RSS per replica: " + ", ".join(f"{m:.0f} MB" for m in rss))
    answered = sum(int(r["delivered"]) for r in results.values())
    print(f"replicas' CPU per answered message: {sum(cpu) / max(1, answered) * 1000:.2f} ms "
          f"(their CPU during the run, less what they use idle: "
          + ", ".join(f"{c:.1f} s" for c in cpu) + f"; idle {', '.join(f'{i * 100:.0f}%' for i in idle)}"
          " of a core)")
    if by_thread:
        print("of which, per answered message: " + ", ".join(
            f"{kind} {seconds / max(1, answered) * 1000:.2f} ms"
            for kind, seconds in by_thread.items()) + " (idle use not taken off)")
    if machine and seconds > 0:
        cores = os.cpu_count() or 1
        print(f"the machine during the run ({cores} cores x {seconds:.0f} s): busy "
              f"{machine['machine busy'] / seconds / cores * 100:.0f}%; per answered message "
              + ", ".join(f"{kind} {used / max(1, answered) * 1000:.2f} ms"
                          for kind, used in machine.items() if kind != "machine busy")
              + " (exited processes are not counted in 'everything else')")
    print(f"database transactions per answered message: {xacts / max(1, answered):.1f} "
          f"(PostgreSQL's counters, less the {idle_xacts:.1f}/s the replicas make idle; the "
          "statistics collector may lag a little)")


async def main(args: argparse.Namespace) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    admin_url = os.environ.get("KNOWBOT_BENCH_POSTGRES_URL",
                               "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("KNOWBOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"knowbot_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        if os.environ.get("KNOWBOT_BENCH_LOG_SQL"):  # every statement into the server's log
            conn.execute(f'ALTER DATABASE "{name}" SET log_statement = \'all\'')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    total = int(args.rate * args.seconds)
    try:
        with tempfile.TemporaryDirectory() as tmp, RemotePlatforms(
                1.0, total, url, redis_url, KNOWBOT_WORKERS=str(args.workers),
                KNOWBOT_RATE_LIMIT_PER_MINUTE="1000", KNOWBOT_LOG_LEVEL="WARNING") as platforms:
            replicas = [Replica(f"replica-{n}", platforms.env, Path(tmp) / f"data-{n}")
                        for n in range(args.replicas)]
            for replica in replicas:
                replica.start()
            profilers: list[subprocess.Popen[bytes]] = []
            try:
                await asyncio.gather(*(r.ready() for r in replicas))
                pids = [r.proc.pid for r in replicas if r.proc is not None]
                await asyncio.sleep(3)  # start-up work (the reindex check, first polls)
                idle_from = [_cpu_seconds(p) for p in pids]
                idle_xacts_from = _transactions(admin_url, name)
                await asyncio.sleep(3)
                idle = [(_cpu_seconds(p) - c) / 3 for p, c in zip(pids, idle_from)]
                idle_xacts = (_transactions(admin_url, name) - idle_xacts_from) / 3
                cpu_from = [_cpu_seconds(p) for p in pids]
                threads_from = [_thread_cpu(p) for p in pids]
                xacts_from = _transactions(admin_url, name)
                machine_from = _machine_cpu(pids, platforms.pid)
                if args.profile:
                    profilers = _profile(args.profile, pids, args.seconds)
                drive_from = time.perf_counter()
                results = await _drive(args, replicas, platforms)
                busy_for = time.perf_counter() - drive_from
                machine = {kind: used - machine_from[kind]
                           for kind, used in _machine_cpu(pids, platforms.pid).items()}
                xacts = _transactions(admin_url, name) - xacts_from - idle_xacts * busy_for
                cpu = [_cpu_seconds(p) - c - i * busy_for
                       for p, c, i in zip(pids, cpu_from, idle)]
                rss = [_peak_rss_mb(p) for p in pids]
                by_thread = {kind: sum(_thread_cpu(p)[kind] - before[kind]
                                       for p, before in zip(pids, threads_from))
                             for kind in threads_from[0]} if pids else None
                _report(results, rss, cpu, idle, xacts, idle_xacts, by_thread, machine,
                        busy_for)
                print(f"inbox at the end: {_inbox(url)}; WeChat answers held for the "
                      f"person's next message: {_held(url)}")
                if profilers:
                    for proc in profilers:
                        await asyncio.to_thread(proc.wait, 60)
                    _print_profile(args.profile)
            finally:
                print("stopping the replicas and the platforms", flush=True)
                for proc in profilers:
                    if proc.poll() is None:
                        proc.kill()
                await stop_all(replicas)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _profile(folder: str, pids: list[int], seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy on each replica for the length of the load (GIL-holding samples only)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration",
                              str(max(1, int(seconds))), "--rate", "250", "--gil",
                              "--nonblocking", "--format", "raw", "--output",
                              str(Path(folder) / f"replica-{n}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n, pid in enumerate(pids)]


def _print_profile(folder: str, top: int = 25) -> None:
    """Where the replicas' CPU went: the share of samples inside each Knowbot function (and its
    callees), and the library functions most often on top of the stack."""
    inside: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for path in sorted(Path(folder).glob("replica-*.txt")):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")"
                      for f in stack.split(";") if " (" in f]
            if frames:
                leaves[frames[-1]] += n
            for frame in set(frames):
                if any(f"({part}/" in frame for part in ("bot", "channels", "knowledge", "plugins")):
                    inside[frame] += n
    if not total:
        print("profile: no samples")
        return
    print(f"profile: {total} samples holding the GIL, in {folder}; share of them inside:")
    for frame, n in inside.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("on top of the stack:")
    for frame, n in leaves.most_common(top // 2):
        print(f"  {100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second in all")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=256, help="KNOWBOT_WORKERS per replica")
    parser.add_argument("--quick", action="store_true", help="30 messages/s for 10 s")
    parser.add_argument("--profile", metavar="DIR", help="py-spy every replica during the load")
    parser.add_argument("--channels", default=",".join(CHANNELS),
                        help="the channels to drive, comma-separated (default: all three)")
    parser.add_argument("--serve-platforms", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve_platforms:
        latency, conversations, database_url, redis_url, extra = json.loads(parsed.serve_platforms)
        from bot.eventloop import loop_factory

        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_serve_platforms(latency, conversations, database_url, redis_url, extra))
        raise SystemExit(0)
    if parsed.quick:
        parsed.rate, parsed.seconds = 30.0, 10.0
    parsed.channels = tuple(c for c in parsed.channels.split(",") if c)
    if not parsed.channels or set(parsed.channels) - set(CHANNELS):
        parser.error(f"--channels: one or more of {', '.join(CHANNELS)}")
    from bot.eventloop import loop_factory  # the generator's own overhead is in every latency

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main(parsed))
