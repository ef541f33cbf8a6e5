"""The web console's back end over real HTTP: `create_app` served by uvicorn on 127.0.0.1 in the
test's own event loop, the real runtime (SQLite, Qdrant Edge, e5 and the cross-lingual model),
an httpx client that keeps cookies as a browser does, and the scripted OpenAI-compatible server
for the model. Sign-in (password, hash, one-time chat links), sessions, CSRF, the login limit,
tenant scoping, knowledge, the bench, conversations, usage, the playground, deleting a user."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import uvicorn

from bot.app import create_app
from bot.clock import ManualClock
from bot.console.auth import Grant, Links, grant_for, hash_password, verify_hash
from bot.runtime import Runtime
from bot.types import ConversationKey, InboundMessage
from conftest import make_settings
from fake_openai import FakeOpenAI, reply, status, tool_calls

PASSWORD = "correct horse battery staple"
VPN = ("# VPN access\n\nIf you forgot your VPN password, open the self-service portal at "
       "id.example.com, choose Reset password and confirm with the code sent to your phone. "
       "The new password works after five minutes.\n")
PARKING = ("# Parking\n\nThe garage under building B has 40 spaces for staff. Register your "
           "licence plate with reception; guests get a day pass at the front desk.\n")
KNOWBOT = str(Path(sys.executable).parent / "knowbot")


@asynccontextmanager
async def console_server(tmp_path: Path, embedder: Any, clock: ManualClock | None = None,
                         channels: Any = None, **overrides: Any
                         ) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The server app on a free loopback port; a client with a cookie jar; the runtime."""
    overrides.setdefault("scheduler_enabled", False)
    settings = make_settings(tmp_path, **overrides)
    clock = clock or ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc))

    async def factory(s: Any) -> Runtime:
        return await Runtime.start(s, embedder=embedder, clock=clock)

    app = create_app(settings, runtime_factory=factory,
                     channels=channels(settings) if channels else [])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(600):
            if server.started:
                break
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client, app.state.runtime
    finally:
        server.should_exit = True
        await task
        sock.close()


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the server logged (the test's own HTTP client logs its cookies at DEBUG)."""
    return "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records
                     if not r.name.startswith(("httpx", "httpcore")))


def _form_csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, password: str = PASSWORD) -> httpx.Response:
    """Open the sign-in page and post the form, as a browser does."""
    page = await client.get("/console/login")
    assert page.status_code == 200
    return await client.post("/console/login", data={"password": password,
                                                      "csrf": _form_csrf(page)})


async def me(client: httpx.AsyncClient) -> dict[str, Any]:
    found = await client.get("/console/api/me")
    assert found.status_code == 200, found.text
    return found.json()


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


async def chat_link(runtime: Runtime, key: ConversationKey, *, is_admin: bool = False,
                    is_group: bool = False) -> str:
    """Type /console in a chat; the link in the reply."""
    message = InboundMessage(key=key, message_id=f"m-{uuid.uuid4().hex}", text="/console",
                             is_admin=is_admin, is_group=is_group)
    answer = await runtime.dispatcher.process(message)
    assert answer is not None
    found = re.search(r"https?://\S+/console/link\?t=\S+", answer.text)
    assert found is not None, answer.text
    return found.group(0)


async def issue(runtime: Runtime, grant: Grant) -> str:
    """The link /console sends for this grant (what the chat command does)."""
    links = Links(runtime.settings, runtime.state, runtime.clock)
    return links.url(await links.issue(grant))


def _path(url: str) -> str:
    return url[url.index("/console/"):]


async def upload(client: httpx.AsyncClient, csrf: str, tenant: str, kb: str, name: str,
                 text: str) -> dict[str, Any]:
    got = await client.post("/console/api/upload", params={"tenant": tenant, "kb": kb,
                                                           "name": name},
                            content=text.encode(), headers={"X-CSRF-Token": csrf,
                                                            "Content-Type": "text/markdown"})
    events = ndjson(got)
    assert events[-1]["ok"] is True, events
    return events[-1]["receipt"]


# ---- sign-in ------------------------------------------------------------------------------------

async def test_password_sign_in_session_cookie_csrf_and_the_login_limit(
        tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc))
    async with console_server(tmp_path, embedder, clock, console_password=PASSWORD) as (client, _):
        assert (await client.get("/console/api/me")).status_code == 401  # no session
        assert (await client.get("/console/", follow_redirects=False)).headers["location"] \
            == "/console/login"
        # a form without its double-submitted token is refused before the password is looked at
        refused = await client.post("/console/login", data={"password": PASSWORD, "csrf": "x"})
        assert refused.status_code == 403
        wrong = await sign_in(client, "not the password")
        assert wrong.status_code == 401 and "not right" in wrong.text
        ok = await sign_in(client)
        assert ok.status_code == 303 and ok.headers["location"] == "/console/"
        cookie = next(c for c in ok.headers.get_list("set-cookie") if c.startswith("kb_session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain http on loopback; anywhere else it is Secure
        who = await me(client)
        assert who["scope"] == "all" and who["admin"] == "password" and "console:local" in who["tenants"]
        index = await client.get("/console/")
        assert index.status_code == 200 and "<html" in index.text
        session_id = client.cookies["kb_session"]

        # CSRF: every non-GET call needs the session's token
        assert (await client.post("/console/api/bench", json={"query": "vpn"})).status_code == 403
        bad = await client.post("/console/api/bench", json={"query": "vpn"},
                                headers={"X-CSRF-Token": "guess"})
        assert bad.status_code == 403 and "CSRF" in bad.json()["error"]
        assert (await client.delete("/console/api/users", params={
            "tenant": "console:local", "user": "x"})).status_code == 403

        # sign out: the session is gone on the server, not only in this browser
        out = await client.post("/console/logout", headers={"X-CSRF-Token": who["csrf"]})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        async with httpx.AsyncClient(base_url=str(client.base_url),
                                     cookies={"kb_session": session_id}) as stolen:
            assert (await stolen.get("/console/api/me")).status_code == 401

        # five wrong passwords in 15 minutes: the sixth try, even the right one, is refused
        other = httpx.AsyncClient(base_url=str(client.base_url))
        async with other:
            for _ in range(4):
                assert (await sign_in(other, "guess")).status_code == 401
            clock.advance(timedelta(minutes=10))
            assert (await sign_in(other, "guess")).status_code == 401
            blocked = await sign_in(other)
            assert blocked.status_code == 429
            assert "too many attempts, try again in 5 minutes" in blocked.text.lower()
            clock.advance(timedelta(minutes=3))
            assert "try again in 2 minutes" in (await sign_in(other)).text
            clock.advance(timedelta(minutes=2, seconds=1))  # the first four fall out of the window
            assert (await sign_in(other)).status_code == 303
    logged = server_log(caplog)
    assert "signed in" in logged
    for secret in (PASSWORD, session_id, who["csrf"]):
        assert secret not in logged


async def test_a_password_hash_signs_in_and_the_plain_password_is_not_needed(
        tmp_path: Path, embedder: Any) -> None:
    encoded = hash_password(PASSWORD)
    assert encoded.startswith("scrypt$16384$8$1$") and verify_hash(PASSWORD, encoded)
    assert not verify_hash("other", encoded) and not verify_hash(PASSWORD, "scrypt$1$2$3")
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc))
    async with console_server(tmp_path, embedder, clock, console_password_hash=encoded,
                              console_session_hours=2) as (client, _):
        assert (await sign_in(client, "almost " + PASSWORD)).status_code == 401
        assert (await sign_in(client)).status_code == 303
        assert (await me(client))["scope"] == "all"
        clock.advance(timedelta(hours=2, seconds=1))  # the session ends with its lifetime
        assert (await client.get("/console/api/me")).status_code == 401


def test_hash_password_prints_a_hash_the_console_accepts(tmp_path: Path) -> None:
    done = subprocess.run([KNOWBOT, "console", "hash-password"], input=PASSWORD + "\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert verify_hash(PASSWORD, done.stdout.strip())
    short = subprocess.run([KNOWBOT, "console", "hash-password"], input="abc\n",
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least 8" in short.stderr


async def test_without_a_password_or_admins_the_console_says_how_to_switch_it_on(
        tmp_path: Path, embedder: Any) -> None:
    async with console_server(tmp_path, embedder) as (client, runtime):
        page = await client.get("/console/login")
        assert page.status_code == 404 and "KNOWBOT_CONSOLE_PASSWORD" in page.text
        assert "<form" not in page.text
        assert (await client.get("/console/api/me")).status_code == 404
        assert runtime.engine.commands.get("console") is None


async def test_a_chat_link_signs_in_once_and_expires(
        tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc))
    root = ConversationKey("test", "team-1", "root", "root")
    async with console_server(tmp_path, embedder, clock, admins=["test:root"],
                              public_url="https://kb.example.com/") as (client, runtime):
        page = await client.get("/console/login")
        assert "<form" not in page.text and "/console" in page.text  # no password: a link only
        nobody = ConversationKey("test", "team-1", "bob", "bob")
        refused = await runtime.dispatcher.process(InboundMessage(
            key=nobody, message_id="m-bob", text="/console"))
        assert refused is not None and "Only admins" in refused.text

        link = await chat_link(runtime, root)
        assert link.startswith("https://kb.example.com/console/link?t=")
        opened = await client.get(_path(link))
        assert opened.status_code == 303 and opened.headers["location"] == "/console/"
        assert (await me(client))["scope"] == "all" and (await me(client))["admin"] == "test:root"
        again = await httpx.AsyncClient(base_url=str(client.base_url)).get(_path(link))
        assert again.status_code == 403 and "already used" in again.text

        late = await chat_link(runtime, root)
        clock.advance(timedelta(minutes=10, seconds=1))
        expired = await httpx.AsyncClient(base_url=str(client.base_url)).get(_path(late))
        assert expired.status_code == 403 and "expired" in expired.text
        forged = late[:-3] + ("AAA" if not late.endswith("AAA") else "BBB")
        bad = await httpx.AsyncClient(base_url=str(client.base_url)).get(_path(forged))
        assert bad.status_code == 403 and "not valid" in bad.text

        # a group: the link goes to the admin privately, never into the group
        group = ConversationKey("test", "team-1", "group-1", "root")
        said = await runtime.dispatcher.process(InboundMessage(
            key=group, message_id="m-group", text="/console", is_group=True))
        assert said is not None and "console/link" not in said.text
        assert "private" in said.text
    logged = server_log(caplog)
    assert "link was refused (used)" in logged
    assert link.split("t=", 1)[1] not in logged and late.split("t=", 1)[1] not in logged


async def test_a_slack_workspace_admin_gets_a_private_link_to_their_workspace_only(
        tmp_path: Path, embedder: Any) -> None:
    from channels.slack import SlackChannel
    from fake_slack import FakeSlack
    from webapp import SLACK_SECRET, post_slack, slack_mention

    token = "xoxb-console-test"
    async with FakeSlack() as slack:
        slack.add_workspace("T1", token, bot_user_id="UBOT")
        slack.add_user("T1", "U1")
        slack.add_user("T1", "UADMIN", is_admin=True)
        async with console_server(tmp_path, embedder, channels=lambda s: [SlackChannel(s)],
                                  console_password=PASSWORD, slack_bot_token=token,
                                  slack_signing_secret=SLACK_SECRET,
                                  slack_api_base=slack.api_base) as (client, runtime):
            for user in ("U1", "UADMIN"):  # typed in a channel of the workspace
                sent = await post_slack(client, slack_mention("T1", user, "C1", "<@UBOT> /console"))
                assert sent.status_code == 200
            posts = await slack.wait_for("chat.postMessage", 3)
            said = {(p.params["channel"], p.params.get("text", "")) for p in posts}
            texts = " ".join(text for _, text in said)
            private = [text for channel, text in said if channel == "UADMIN"]
            assert len(private) == 1 and "/console/link?t=" in private[0]  # to the admin only
            assert "Only admins" in texts and "sent you a sign-in link" in texts
            assert sum("/console/link" in text for _, text in said) == 1  # never in C1
            link = re.search(r"https?://\S+/console/link\?t=[\w.\-]+", private[0])
            assert link is not None
            assert (await client.get(_path(link.group(0)))).status_code == 303
            who = await me(client)
            assert who == {**who, "scope": "tenant", "tenants": ["slack:T1"], "chats": None,
                           "admin": "slack:UADMIN"}


# ---- tenant scoping ---------------------------------------------------------------------------

async def test_a_scoped_admin_gets_404_for_another_tenants_data(tmp_path: Path,
                                                              embedder: Any) -> None:
    async with console_server(tmp_path, embedder, console_password=PASSWORD) as (client, runtime):
        assert (await sign_in(client)).status_code == 303
        csrf = (await me(client))["csrf"]
        mine = await upload(client, csrf, "slack:T1", "default", "parking.md", PARKING)
        theirs = await upload(client, csrf, "slack:T2", "default", "vpn.md", VPN)
        group_kb = await upload(client, csrf, "telegram:bot1", "chat--1002", "vpn.md", VPN)
        for key in (ConversationKey("slack", "T1", "C1", "U1"),
                    ConversationKey("slack", "T2", "C9", "U9")):
            answer = await runtime.dispatcher.process(InboundMessage(
                key=key, message_id=f"m-{key.tenant}", text="where can I park?"))
            assert answer is not None
        t2_conv = ConversationKey("slack", "T2", "C9", "U9").conversation_id()

        scoped = httpx.AsyncClient(base_url=str(client.base_url))
        async with scoped:
            link = await issue(runtime, Grant("slack:U1", "tenant", ["slack:T1"]))
            assert (await scoped.get(_path(link))).status_code == 303
            scsrf = (await me(scoped))["csrf"]
            # its own tenant works
            listing = (await scoped.get("/console/api/kbs")).json()
            assert [(k["tenant"], k["name"], k["shared"], k["chats"]) for k in listing] == [
                ("slack:T1", "default", True, ["C1"])]  # shared: every chat that talked
            own = await scoped.get("/console/api/sources", params={"tenant": "slack:T1",
                                                                   "kb": "default"})
            assert own.status_code == 200 and own.json()[0]["id"] == mine["source_id"]
            # another tenant, by changing the query: 404 everywhere, nothing revealed
            t2 = {"tenant": "slack:T2"}
            probes = [
                scoped.get("/console/api/kbs", params=t2),
                scoped.get("/console/api/sources", params={**t2, "kb": "default"}),
                scoped.get(f"/console/api/sources/{theirs['source_id']}/chunks", params=t2),
                scoped.get(f"/console/api/sources/{theirs['source_id']}/chunks",
                           params={"tenant": "slack:T1"}),
                scoped.get(f"/console/api/conversations/{t2_conv}"),
                scoped.get("/console/api/conversations", params=t2),
                scoped.get("/console/api/usage", params=t2),
                scoped.delete(f"/console/api/sources/{theirs['source_id']}",
                              params={**t2, "kb": "default"}, headers={"X-CSRF-Token": scsrf}),
                scoped.post("/console/api/bench", json={"query": "vpn", "tenant": "slack:T2"},
                            headers={"X-CSRF-Token": scsrf}),
                scoped.post("/console/api/upload", params={**t2, "kb": "default", "name": "x.md"},
                            content=b"# x\n\nhello", headers={"X-CSRF-Token": scsrf}),
                scoped.delete("/console/api/users", params={**t2, "user": "U9"},
                              headers={"X-CSRF-Token": scsrf}),
            ]
            for probe in await asyncio.gather(*probes):
                assert probe.status_code == 404, (probe.request.url, probe.text)
                assert probe.json() == {"error": "not found"}
            listed = (await scoped.get("/console/api/conversations")).json()
            assert [c["tenant"] for c in listed] == ["slack:T1"]
            playground = await scoped.post("/console/api/playground", json={"message": "hi"},
                                           headers={"X-CSRF-Token": scsrf})
            assert playground.status_code == 403

        # a Telegram group's admin: that group's own knowledge base only, not the bot's others
        group = httpx.AsyncClient(base_url=str(client.base_url))
        async with group:
            # what /console in that group gives its admin (sent to them privately)
            key = ConversationKey("telegram", "bot1", "-1001", "5")
            grant = grant_for(InboundMessage(key=key, message_id="g", text="/console",
                                             is_admin=True, is_group=True), runtime.settings)
            assert grant == Grant("telegram:5", "tenant", ["telegram:bot1"], ["-1001"])
            link = await issue(runtime, grant)
            assert (await group.get(_path(link))).status_code == 303
            assert (await group.get("/console/api/kbs", params={"tenant": "telegram:bot1"})
                    ).json() == []
            for probe in (
                    await group.get("/console/api/sources", params={"tenant": "telegram:bot1",
                                                                    "kb": "chat--1002"}),
                    await group.get(f"/console/api/sources/{group_kb['source_id']}/chunks",
                                    params={"tenant": "telegram:bot1"})):
                assert probe.status_code == 404
            gcsrf = (await me(group))["csrf"]
            added = await upload(group, gcsrf, "telegram:bot1", "chat--1001", "p.md", PARKING)
            kbs = (await group.get("/console/api/kbs", params={"tenant": "telegram:bot1"})).json()
            assert [(k["name"], k["shared"], k["chats"]) for k in kbs] == [
                ("chat--1001", False, ["-1001"])]
            assert added["chunks"] >= 1


# ---- knowledge, bench, conversations -----------------------------------------------------------

async def test_upload_sources_chunks_bench_and_delete(tmp_path: Path, embedder: Any) -> None:
    async with console_server(tmp_path, embedder, console_password=PASSWORD,
                              ingest_max_bytes=4096) as (client, _):
        assert (await sign_in(client)).status_code == 303
        csrf = (await me(client))["csrf"]
        got = await client.post("/console/api/upload",
                                params={"tenant": "console:local", "kb": "default",
                                        "name": "vpn.md"},
                                content=VPN.encode(), headers={"X-CSRF-Token": csrf})
        events = ndjson(got)
        assert events[0]["progress"][0] <= events[0]["progress"][1]
        receipt = events[-1]["receipt"]
        assert events[-1]["ok"] and receipt["status"] == "added" and "VPN access" in receipt["message"]
        await upload(client, csrf, "console:local", "default", "parking.md", PARKING)
        big = await client.post("/console/api/upload", params={"tenant": "console:local",
                                                               "name": "big.txt"},
                                content=b"x" * 5000, headers={"X-CSRF-Token": csrf})
        assert big.status_code == 413 and "limit" in big.json()["error"]
        refused = ndjson(await client.post(
            "/console/api/upload", params={"tenant": "console:local", "name": "blank.md"},
            content=b"   \n", headers={"X-CSRF-Token": csrf}))
        assert refused[-1]["ok"] is False and refused[-1]["error"]

        kbs = (await client.get("/console/api/kbs", params={"tenant": "console:local"})).json()
        assert kbs[0]["name"] == "default" and kbs[0]["sources"] == 2 and kbs[0]["shared"]
        sources = (await client.get("/console/api/sources", params={
            "tenant": "console:local", "kb": "default"})).json()
        vpn = next(s for s in sources if s["title"] == "VPN access")
        assert vpn["kind"] == "markdown" and vpn["lang"] == "en" and vpn["chunks"] >= 1
        assert vpn["origin"] == "vpn.md" and vpn["url"] is None and vpn["recrawled_at"] is None
        assert vpn["added_by"] == "console:password" and vpn["added_at"].endswith("+00:00")
        chunks = (await client.get(f"/console/api/sources/{vpn['id']}/chunks",
                                   params={"tenant": "console:local"})).json()
        assert "self-service portal" in chunks[0]["text"] and chunks[0]["ordinal"] == 0
        assert set(chunks[0]) == {"ordinal", "text", "location"}
        assert (await client.get("/console/api/sources/nope/chunks",
                                 params={"tenant": "console:local"})).status_code == 404
        recrawl = ndjson(await client.post(f"/console/api/sources/{vpn['id']}/recrawl",
                                           params={"tenant": "console:local", "kb": "default"},
                                           headers={"X-CSRF-Token": csrf}))
        assert recrawl[-1]["ok"] is False and "not a link" in recrawl[-1]["error"]

        # the bench: a question in Chinese about the English document
        bench = await client.post("/console/api/bench", headers={"X-CSRF-Token": csrf}, json={
            "query": "我忘记了VPN密码，怎么重置？", "tenant": "console:local", "kb": "default"})
        assert bench.status_code == 200, bench.text
        found = bench.json()
        first = found["passages"][0]
        assert first["source"] == "VPN access" and first["rank"] == 1 and first["kept"]
        scores = first["scores"]
        assert isinstance(scores["dense"], float) and isinstance(scores["xling"], float)
        assert scores["fused"] > 0 and (scores["bm25"] is None or scores["bm25"] >= 0)
        assert found["gate"]["kept"] >= 1 and "answered" in found["gate"]["reason"]
        assert "self-service portal" in found["answer"]
        assert all(p["scores"]["fused"] >= q["scores"]["fused"]
                   for p, q in zip(found["passages"], found["passages"][1:]))
        unrelated = (await client.post("/console/api/bench", headers={"X-CSRF-Token": csrf},
                                       json={"query": "Who won the football World Cup in 1998?",
                                             "tenant": "console:local"})).json()
        assert unrelated["gate"]["kept"] == 0 and "declined" in unrelated["gate"]["reason"]
        assert unrelated["passages"] and not any(p["kept"] for p in unrelated["passages"])
        assert "could not find" in unrelated["answer"]

        # delete it: gone from the sources and from search
        deleted = await client.delete(f"/console/api/sources/{vpn['id']}", params={
            "tenant": "console:local", "kb": "default"}, headers={"X-CSRF-Token": csrf})
        assert deleted.json() == {"id": vpn["id"], "title": "VPN access"}
        again = await client.delete(f"/console/api/sources/{vpn['id']}", params={
            "tenant": "console:local", "kb": "default"}, headers={"X-CSRF-Token": csrf})
        assert again.status_code == 404
        after = (await client.post("/console/api/bench", headers={"X-CSRF-Token": csrf}, json={
            "query": "How do I reset my VPN password?", "tenant": "console:local"})).json()
        assert all(p["source"] != "VPN access" for p in after["passages"])


async def test_playground_streams_tool_calls_then_a_cited_answer_kept_in_the_conversation(
        tmp_path: Path, embedder: Any) -> None:
    async with FakeOpenAI() as model:
        async with console_server(tmp_path, embedder, console_password=PASSWORD,
                                  llm_base_url=model.base_url, llm_api_key="k",
                                  llm_model="fake", knowledge_translate=False
                                  ) as (client, runtime):
            assert (await sign_in(client)).status_code == 303
            csrf = (await me(client))["csrf"]
            await upload(client, csrf, "console:local", "default", "vpn.md", VPN)
            model.script(tool_calls(("calculate", {"expression": "5*60"})),
                         reply("Open the self-service portal and choose Reset password [1]. "
                               "It works after 300 seconds."))
            got = await client.post("/console/api/playground", headers={"X-CSRF-Token": csrf},
                                    json={"message": "How do I reset my VPN password?"})
            events = ndjson(got)
            assert events[0] == {"tool": {"name": "calculate",
                                          "arguments": '{"expression": "5*60"}'}}
            assert events[1]["tool_result"]["name"] == "calculate"
            assert "300" in events[1]["tool_result"]["result"]
            answer = events[-1]
            assert "self-service portal" in answer["answer"]
            assert answer["citations"][0]["source"] == "VPN access"

            listed = (await client.get("/console/api/conversations",
                                       params={"channel": "console", "q": "VPN"})).json()
            assert [c["id"] for c in listed] == [answer["conversation"]]
            assert listed[0]["messages"] == 2 and "300 seconds" in listed[0]["last"]
            assert (await client.get("/console/api/conversations",
                                     params={"q": "no such words"})).json() == []
            conv = (await client.get(f"/console/api/conversations/{answer['conversation']}")
                    ).json()
            question, said = conv["messages"]
            assert question["role"] == "user" and question["citations"] == []
            assert said["citations"][0]["source"] == "VPN access" and said["error"] is None
            assert said["tools"] == [{"name": "calculate", "arguments": '{"expression": "5*60"}',
                                      "result": said["tools"][0]["result"]}]

            # the model fails: the page is told, and the conversation keeps what went wrong
            model.script(*[status(500)] * 10)
            failed = ndjson(await client.post("/console/api/playground",
                                              headers={"X-CSRF-Token": csrf},
                                              json={"message": "How do I reset it again?"}))
            assert "error" in failed[-1]
            conv = (await client.get(f"/console/api/conversations/{answer['conversation']}")
                    ).json()
            assert conv["messages"][-1]["error"] and conv["messages"][-1]["citations"]

            await runtime.usage.flush()
            usage = (await client.get("/console/api/usage", params={"days": 7})).json()
            (row,) = [r for r in usage["rows"] if r["tenant"] == "console:local"]
            assert row["channel"] == "console" and row["provider"] == "default"
            assert row["calls"] >= 5 and row["errors"] >= 3 and row["prompt_tokens"] > 0
            assert row["latency_ms_avg"] > 0
            assert usage["backlog"] == {"inbox": {"queued": 0, "running": 0, "dead": 0},
                                        "outbox": 0}
            assert usage["quotas"] == []


async def test_deleting_a_users_data(tmp_path: Path, embedder: Any) -> None:
    async with console_server(tmp_path, embedder, console_password=PASSWORD,
                              scheduler_enabled=True) as (client, runtime):
        assert (await sign_in(client)).status_code == 303
        csrf = (await me(client))["csrf"]
        group = [ConversationKey("slack", "T1", "C1", user) for user in ("U1", "U2")]
        own = ConversationKey("slack", "T1", "D1", "U1")
        for n, key in enumerate(group + [own]):
            done = await runtime.dispatcher.process(InboundMessage(
                key=key, message_id=f"m{n}", text=f"note number {n} from {key.user_id}"))
            assert done is not None
        job = await runtime.dispatcher.process(InboundMessage(
            key=own, message_id="job", text="/remind in 2 hours call the dentist"))
        assert job is not None and "dentist" in str(await runtime.scheduler.all_jobs())  # type: ignore[union-attr]

        by_chat = (await client.get("/console/api/conversations", params={
            "tenant": "slack:T1", "chat": "D1"})).json()
        assert [(c["chat_id"], c["messages"]) for c in by_chat] == [("D1", 2)]
        gone = await client.delete("/console/api/users", params={
            "channel": "slack", "tenant": "slack:T1", "user": "U1"},
            headers={"X-CSRF-Token": csrf})
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"messages": 4, "conversations": 1, "jobs": 1}
        left = (await client.get("/console/api/conversations", params={"tenant": "slack:T1"})
                ).json()
        assert [c["chat_id"] for c in left] == ["C1"] and left[0]["messages"] == 2
        conv = (await client.get(f"/console/api/conversations/{left[0]['id']}")).json()
        assert {m["user_id"] for m in conv["messages"]} == {"U2"}
        assert await runtime.scheduler.all_jobs() == []  # type: ignore[union-attr]
        mismatch = await client.delete("/console/api/users", params={
            "channel": "telegram", "tenant": "slack:T1", "user": "U1"},
            headers={"X-CSRF-Token": csrf})
        assert mismatch.status_code == 400


def test_an_access_log_line_never_shows_a_link_token(tmp_path: Path) -> None:
    import io

    from bot.logs import make_handler

    out = io.StringIO()
    handler = make_handler(make_settings(tmp_path), out)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET",
                                                           "/console/link?t=abc.def-_", "1.1",
                                                           303), None)
    handler.emit(record)
    assert "abc.def" not in out.getvalue() and "/console/link?t=***" in out.getvalue()


async def test_a_link_opened_from_a_chat_app_moves_on_from_its_own_page(
        tmp_path: Path, embedder: Any) -> None:
    async with console_server(tmp_path, embedder, admins=["test:root"]) as (client, runtime):
        link = await chat_link(runtime, ConversationKey("test", "team-1", "root", "root"))
        # a click in Slack's or Telegram's web app is a cross-site navigation: no redirect (the
        # browser would not send the SameSite=Strict cookie along it), a page that moves on
        opened = await client.get(_path(link), headers={"Sec-Fetch-Site": "cross-site"})
        assert opened.status_code == 200 and "kb_session" in opened.cookies
        assert 'http-equiv="refresh" content="0;url=/console/"' in opened.text
        assert (await me(client))["admin"] == "test:root"


async def test_the_console_store_queries_on_sqlite_and_postgresql(db_url: str) -> None:
    from bot.store import Store

    store = await Store.open(db_url)
    try:
        a = ConversationKey("slack", "T:1", "C1", "U1")  # a ':' inside is escaped in the id
        b = ConversationKey("slack", "T:1", "C1", "U2")
        other = ConversationKey("telegram", "bot", "-5", "U1")
        await store.add_messages(a, [("user", "Where is the 50% OFF code?", 5),
                                     ("assistant", "Here", 1)], user_id="U1",
                                 meta=[None, {"citations": [{"source": "Promo"}],
                                              "tools": [{"name": "calc"}]}])
        await store.add_messages(b, [("user", "thanks", 1)], user_id="U2")
        await store.add_messages(other, [("user", "hello", 1)], user_id="U1")
        await store.set_summary(a, "U1 asked for a code", 5, 1)
        found = await store.conversations(tenant="slack:T:1", text="50% off")
        assert [(c["tenant"], c["chat_id"], c["messages"], c["last"]) for c in found] == [
            ("slack:T:1", "C1", 3, "thanks")]
        assert await store.conversations(tenant="slack:T:1", text="70% off") == []
        assert [c["channel"] for c in await store.conversations(tenants=["telegram:bot"])] == [
            "telegram"]
        assert await store.conversations(tenants=[]) == []
        conv = await store.conversation(a.conversation_id())
        assert conv is not None and conv["summary"] == "U1 asked for a code"
        assert [m["citations"] for m in conv["messages"]] == [[], [{"source": "Promo"}], []]
        assert conv["messages"][1]["tools"] == [{"name": "calc"}]
        done = await store.forget_user("slack", "T:1", "U1")
        assert done == {"messages": 2, "conversations": 0, "affected": [a.conversation_id()]}
        conv = await store.conversation(a.conversation_id())
        assert conv is not None and conv["summary"] == "" and len(conv["messages"]) == 1
        assert len((await store.conversation(other.conversation_id()) or {})["messages"]) == 1
        assert (await store.forget_user("slack", "T:1", "U2"))["conversations"] == 1
        assert await store.conversation(a.conversation_id()) is None
    finally:
        await store.close()


async def test_a_link_added_from_the_console_is_recrawled_on_request(tmp_path: Path,
                                                                  embedder: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse as Page
    from starlette.routing import Route

    from loopback import serve_in_thread

    body = {"text": "<html><head><title>Parking</title></head><body><h1>Parking</h1><p>"
                    + PARKING.split("\n\n", 1)[1] + "</p></body></html>"}

    async def page(request: Any) -> Page:
        return Page(body["text"])

    site = Starlette(routes=[Route("/parking", page)])
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc))
    with serve_in_thread(site) as base:
        async with console_server(tmp_path, embedder, clock, console_password=PASSWORD,
                                  ingest_allow_hosts=["127.0.0.1"]) as (client, _):
            assert (await sign_in(client)).status_code == 303
            csrf = (await me(client))["csrf"]
            url = f"{base}/parking"
            added = ndjson(await client.post("/console/api/link", json={"url": url}, params={
                "tenant": "console:local", "kb": "web"}, headers={"X-CSRF-Token": csrf}))
            assert added[-1]["ok"] and added[-1]["receipt"]["status"] == "added"
            (source,) = (await client.get("/console/api/sources", params={
                "tenant": "console:local", "kb": "web"})).json()
            assert source["url"] == url and source["recrawled_at"] is None
            clock.advance(timedelta(hours=1))
            body["text"] = body["text"].replace("40 spaces", "60 spaces")
            again = ndjson(await client.post(f"/console/api/sources/{source['id']}/recrawl",
                                             params={"tenant": "console:local", "kb": "web"},
                                             headers={"X-CSRF-Token": csrf}))
            assert again[-1]["ok"] and again[-1]["receipt"]["status"] == "updated"
            (after,) = (await client.get("/console/api/sources", params={
                "tenant": "console:local", "kb": "web"})).json()
            assert after["recrawled_at"] == "2026-12-01T10:00:00+00:00"
            chunks = (await client.get(f"/console/api/sources/{source['id']}/chunks",
                                       params={"tenant": "console:local"})).json()
            assert "60 spaces" in " ".join(c["text"] for c in chunks)
            assert "40 spaces" not in " ".join(c["text"] for c in chunks)


async def test_the_admin_api_shares_the_consoles_operations(tmp_path: Path, embedder: Any) -> None:
    token = "admin-token-for-the-test-0123456789"
    async with console_server(tmp_path, embedder, admin_token=token) as (client, runtime):
        auth = {"Authorization": f"Bearer {token}"}
        assert (await client.post("/api/bench", json={"query": "vpn"})).status_code == 401
        added = await client.post("/api/ingest/file", params={"name": "vpn.md"}, headers=auth,
                                  content=VPN.encode())
        receipt = ndjson(added)[-1]["receipt"]
        chunks = (await client.get(f"/api/sources/{receipt['source_id']}/chunks",
                                   headers=auth)).json()
        assert "self-service portal" in chunks[0]["text"]
        bench = (await client.post("/api/bench", headers=auth, json={
            "query": "How do I reset my VPN password?"})).json()
        assert bench["passages"][0]["source"] == "VPN access" and bench["gate"]["kept"] >= 1
        asked = (await client.post("/api/ask", headers=auth, json={
            "question": "How do I reset my VPN password?", "user": "ops"})).json()
        assert asked["citations"][0]["source"] == "VPN access"
        (conv,) = (await client.get("/api/conversations", headers=auth,
                                    params={"tenant": "console:local"})).json()
        detail = (await client.get(f"/api/conversations/{conv['id']}", headers=auth)).json()
        assert detail["messages"][1]["citations"][0]["source"] == "VPN access"
        assert (await client.get("/api/backlog", headers=auth)).json()["outbox"] == 0
        gone = (await client.delete("/api/users", headers=auth, params={
            "tenant": "console:local", "user": "ops"})).json()
        assert gone == {"messages": 2, "conversations": 1, "jobs": 0}


async def test_two_replicas_share_links_sessions_and_the_login_limit(tmp_path: Path,
                                                                    embedder: Any) -> None:
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc))
    shared = {"admins": ["test:root"], "console_password": PASSWORD}
    async with console_server(tmp_path, embedder, clock, **shared) as (a, runtime_a), \
            console_server(tmp_path, embedder, clock, **shared) as (b, runtime_b):
        assert runtime_a is not runtime_b and a.base_url != b.base_url
        link = await chat_link(runtime_a, ConversationKey("test", "team-1", "root", "root"))
        assert (await b.get(_path(link))).status_code == 303  # made on one, used on the other
        assert (await a.get(_path(link))).status_code == 403  # and only once, anywhere
        async with httpx.AsyncClient(base_url=str(a.base_url),
                                     cookies={"kb_session": b.cookies["kb_session"]}) as same:
            assert (await me(same))["admin"] == "test:root"  # the session is known to both
        for _ in range(5):
            assert (await sign_in(a, "guess")).status_code == 401
        assert (await sign_in(b)).status_code == 429


async def test_doctor_reports_the_console(tmp_path: Path) -> None:
    from bot.doctor import check_settings

    assert not [r for r in await check_settings(make_settings(tmp_path)) if r.name == "console"]
    short = [r for r in await check_settings(make_settings(
        tmp_path, console_password="short", admins=["slack:U1"])) if r.name == "console"]
    assert [r.status for r in short] == ["warn", "warn"]
    assert "12 characters" in short[0].detail and "KNOWBOT_PUBLIC_URL" in short[1].detail
    (ok,) = [r for r in await check_settings(make_settings(
        tmp_path, console_password_hash=hash_password(PASSWORD))) if r.name == "console"]
    assert ok.status == "ok" and "password" in ok.detail


async def test_with_a_model_the_bench_shows_the_translated_search_the_chat_makes_too(
        tmp_path: Path, embedder: Any) -> None:
    async with FakeOpenAI() as model:
        async with console_server(tmp_path, embedder, console_password=PASSWORD,
                                  llm_base_url=model.base_url, llm_api_key="k",
                                  llm_model="fake") as (client, _):
            assert (await sign_in(client)).status_code == 303
            csrf = (await me(client))["csrf"]
            await upload(client, csrf, "console:local", "default", "vpn.md", VPN)
            model.script(reply("How do I reset my VPN password?"))  # the translation
            found = (await client.post("/console/api/bench", headers={"X-CSRF-Token": csrf},
                                       json={"query": "我忘记了VPN密码，怎么重置？",
                                             "tenant": "console:local"})).json()
            queries = [p["query"] for p in found["passages"]]
            assert queries[0] == "我忘记了VPN密码，怎么重置？"
            assert "How do I reset my VPN password?" in queries
            assert "'How do I reset my VPN password?': answered" in found["gate"]["reason"]
            assert found["gate"]["kept"] == 1  # the same passage from both: quoted once
            assert found["answer"].count("self-service portal") == 1
            assert len(model.requests) == 1  # the bench asks no more of the model than that
