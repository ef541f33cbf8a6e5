"""A local Slack Web API on 127.0.0.1 for tests: Slack's JSON bodies, bearer tokens, recorded calls.

    async with FakeSlack() as slack:
        slack.add_workspace("T1", "xoxb-1", bot_user_id="UBOT1")
        file_id = slack.add_file("T1", "policy.md", b"# Policy ...", "text/markdown")
        slack.rate_limit("chat.postMessage", retry_after=3)   # the next call gets a 429
        ... point slack_sdk at slack.api_base ...
        posts = await slack.wait_for("chat.postMessage", 1)

Methods live at /api/<method> and accept form, JSON or query parameters, like Slack's. Tokens
come in `Authorization: Bearer` (or a `token` parameter); an unknown one gets `invalid_auth`.
Private file URLs need the owning workspace's bot token (without it Slack answers a login page).
`response_url(name)` gives a URL whose posts are recorded in `responses`. Socket Mode:
`add_app_token(token)`, then apps.connections.open hands out a WebSocket URL on this server;
`push(envelope)` sends an envelope to the connected app and `acks` records its acknowledgements.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Call:
    """One Web API call as the server saw it."""

    method: str
    token: str | None
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    peer: Any = None  # the client's (host, port): one per TCP connection


@dataclass
class Workspace:
    """A workspace the fake knows: its bot token and bot user."""

    team_id: str
    token: str
    bot_user_id: str
    bot_id: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)


class FakeSlack:
    """The fake Slack server: start it with `async with`, script it, then read `calls`."""

    def __init__(self, client_id: str = "1111.2222", client_secret: str = "oauth-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.workspaces: dict[str, Workspace] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.file_data: dict[str, tuple[str, bytes]] = {}
        self.oauth_codes: dict[str, tuple[str, str, str]] = {}  # code -> team, token, bot user
        self.calls: list[Call] = []
        self.downloads: list[tuple[str, str | None]] = []  # file id, bearer token
        self.responses: list[dict[str, Any]] = []  # posts to response URLs, with "_name"
        self._limits: dict[str, list[float]] = {}
        self.app_tokens: set[str] = set()
        self.threads: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.acks: list[dict[str, Any]] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._ts = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- scripting --

    def add_workspace(self, team_id: str, token: str, bot_user_id: str = "UBOT",
                      bot_id: str = "BBOT") -> Workspace:
        """Make a workspace whose bot token is `token`."""
        ws = Workspace(team_id, token, bot_user_id, bot_id)
        self.workspaces[token] = ws
        return ws

    def add_user(self, team_id: str, user_id: str, *, is_admin: bool = False,
                 is_owner: bool = False) -> None:
        """A person in a workspace, as users.info reports them."""
        for ws in self.workspaces.values():
            if ws.team_id == team_id:
                ws.users[user_id] = {"id": user_id, "team_id": team_id, "name": user_id.lower(),
                                     "is_admin": is_admin, "is_owner": is_owner, "is_bot": False}

    def add_file(self, team_id: str, name: str, data: bytes, mimetype: str,
                 size: int | None = None) -> str:
        """A file shared in a workspace; returns its id (its URL needs that team's token)."""
        file_id = f"F{len(self.files) + 1:04d}"
        url = f"{self.base_url}/files-pri/{team_id}-{file_id}/{name}"
        self.files[file_id] = {
            "id": file_id, "name": name, "title": name, "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1], "size": len(data) if size is None else size,
            "mode": "hosted", "url_private": url, "url_private_download": url + "?download=1",
            "_team": team_id,
        }
        self.file_data[file_id] = (team_id, data)
        return file_id

    def add_oauth_code(self, code: str, team_id: str, token: str, bot_user_id: str) -> None:
        """A code that oauth.v2.access exchanges for an installation of `team_id`."""
        self.oauth_codes[code] = (team_id, token, bot_user_id)

    def add_thread(self, team_id: str, channel: str, thread_ts: str,
                   messages: list[dict[str, Any]]) -> None:
        """A thread's messages (parent first), as conversations.replies returns them."""
        self.threads[(team_id, channel, thread_ts)] = messages

    def add_app_token(self, token: str) -> None:
        """An app-level token (xapp-...) that may open Socket Mode connections."""
        self.app_tokens.add(token)

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until an app holds a Socket Mode connection."""
        await self._wait(lambda: bool(self._sockets), lambda: None, timeout)

    async def push(self, envelope: dict[str, Any]) -> None:
        """Send a Socket Mode envelope (events_api, slash_commands) to the connected app."""
        await self._sockets[-1].send_json(envelope)

    async def wait_acks(self, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the app acknowledged `count` envelopes."""
        return await self._wait(lambda: len(self.acks) >= count, lambda: list(self.acks), timeout)

    def rate_limit(self, method: str, retry_after: float, times: int = 1) -> None:
        """The next `times` calls of `method` (or posts to a response URL: "response") get 429."""
        self._limits.setdefault(method, []).extend([retry_after] * times)

    def response_url(self, name: str) -> str:
        """A response_url whose posts are recorded under `name`."""
        return f"{self.base_url}/response/{name}"

    # -- reading --

    def called(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, method: str, count: int = 1, timeout: float = 30.0) -> list[Call]:
        """Wait until `method` was called `count` times; return those calls."""
        return await self._wait(lambda: len(self.called(method)) >= count,
                                lambda: self.called(method), timeout)

    async def wait_responses(self, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until `count` posts reached response URLs."""
        return await self._wait(lambda: len(self.responses) >= count,
                                lambda: list(self.responses), timeout)

    async def _wait(self, done: Any, result: Any, timeout: float) -> Any:
        assert self._changed is not None
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(done), timeout)
        return result()

    # -- the server --

    async def __aenter__(self) -> "FakeSlack":
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/files-pri/{ref}/{name}", self._download)
        app.router.add_post("/response/{name}", self._response)
        app.router.add_get("/link", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        """What KNOWBOT_SLACK_API_BASE is set to."""
        return f"{self.base_url}/api/"

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        return params

    def _limited(self, method: str) -> web.Response | None:
        waits = self._limits.get(method)
        if waits:
            wait = waits.pop(0)
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(int(wait))})
        return None

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else params.pop("token", None)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.calls.append(Call(method, token, params, peer=peer))
        await self._notify()
        limited = self._limited(method)
        if limited is not None:
            return limited
        if method == "oauth.v2.access":
            return web.json_response(self._oauth(request, params))
        if method == "apps.connections.open":
            if token not in self.app_tokens:
                return web.json_response({"ok": False, "error": "invalid_auth"})
            url = self.base_url.replace("http://", "ws://") + "/link?ticket=t1"
            return web.json_response({"ok": True, "url": url})
        ws = self.workspaces.get(token or "")
        if ws is None:
            return web.json_response({"ok": False, "error": "not_authed" if not token
                                      else "invalid_auth"})
        return web.json_response(self._method(ws, method, params))

    def _method(self, ws: Workspace, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "url": f"https://{ws.team_id.lower()}.slack.com/",
                    "team": ws.team_id, "user": "knowbot", "team_id": ws.team_id,
                    "user_id": ws.bot_user_id, "bot_id": ws.bot_id, "is_enterprise_install": False}
        if method in ("chat.postMessage", "chat.postEphemeral"):
            if not params.get("channel"):
                return {"ok": False, "error": "channel_not_found"}
            blocks = params.get("blocks")
            if isinstance(blocks, str):
                params["blocks"] = json.loads(blocks)
            if len(params.get("blocks") or []) > 50:
                return {"ok": False, "error": "invalid_blocks"}
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            if method == "chat.postEphemeral":
                return {"ok": True, "message_ts": ts}
            return {"ok": True, "channel": params["channel"], "ts": ts,
                    "message": {"type": "message", "text": params.get("text", ""),
                                "bot_id": ws.bot_id, "user": ws.bot_user_id, "ts": ts}}
        if method == "files.info":
            file = self.files.get(str(params.get("file")))
            if file is None or file["_team"] != ws.team_id:
                return {"ok": False, "error": "file_not_found"}
            return {"ok": True, "file": {k: v for k, v in file.items() if not k.startswith("_")}}
        if method == "conversations.replies":
            thread = self.threads.get((ws.team_id, str(params.get("channel")),
                                       str(params.get("ts"))))
            if thread is None:
                return {"ok": False, "error": "thread_not_found"}
            limit = int(params.get("limit") or 1000)
            return {"ok": True, "messages": thread[:limit], "has_more": len(thread) > limit}
        if method == "users.info":
            user = ws.users.get(str(params.get("user")))
            if user is None:
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "user": user}
        return {"ok": False, "error": "unknown_method"}

    def _oauth(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        import base64

        auth = request.headers.get("Authorization", "")
        client = (params.get("client_id"), params.get("client_secret"))
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            client = (user, password)
        if client != (self.client_id, self.client_secret):
            return {"ok": False, "error": "invalid_client_id"}
        found = self.oauth_codes.pop(str(params.get("code")), None)
        if found is None:
            return {"ok": False, "error": "invalid_code"}
        team_id, token, bot_user = found
        self.add_workspace(team_id, token, bot_user_id=bot_user, bot_id="B" + team_id)
        return {"ok": True, "app_id": "A0KNOWBOT", "authed_user": {"id": "UINSTALLER"},
                "scope": "chat:write,files:read", "token_type": "bot", "access_token": token,
                "bot_user_id": bot_user, "team": {"id": team_id, "name": f"Team {team_id}"},
                "enterprise": None, "is_enterprise_install": False}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        team_id, _, file_id = request.match_info["ref"].partition("-")
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        self.downloads.append((file_id, token))
        await self._notify()
        ws = self.workspaces.get(token or "")
        stored = self.file_data.get(file_id)
        if ws is None or stored is None or stored[0] != ws.team_id or team_id != ws.team_id:
            # Slack answers a sign-in page, not an error status, when the token may not read it
            return web.Response(text="<!DOCTYPE html><html>Sign in to Slack</html>",
                                content_type="text/html")
        return web.Response(body=stored[1], content_type="application/octet-stream")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": 1,
                            "connection_info": {"app_id": "A0KNOWBOT"},
                            "debug_info": {"host": "fake", "approximate_connection_time": 3600}})
        self._sockets.append(ws)
        await self._notify()
        try:
            async for msg in ws:
                if msg.type == web.WSMsgType.TEXT:
                    self.acks.append(json.loads(msg.data))
                    await self._notify()
        finally:
            self._sockets.remove(ws)
        return ws

    async def _response(self, request: web.Request) -> web.Response:
        limited = self._limited("response")
        if limited is not None:
            return limited
        body = await request.json()
        body["_name"] = request.match_info["name"]
        self.responses.append(body)
        await self._notify()
        return web.Response(text="ok")
