"""Playing WeChat in tests: the platform's API server, and the platform calling Knowbot.

`FakeWeChatAPI` serves `/cgi-bin/token`, `/cgi-bin/stable_token` (the current token, not a new
one) and `/cgi-bin/message/custom/send` on loopback with the
real JSON, and enforces the platform's rules: a valid token, 48 hours and 5 customer-service
messages per user message (45047 past that). `WeChatServer` calls Knowbot's `/wechat` as WeChat
does: it signs each request, encrypts in safe and compatible mode (with wechatpy), times out
after 5 s (scaled in tests) and re-sends the same body, up to 3 requests per message.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpx
import uvicorn
import xmltodict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import WeChatSigner


def bound_socket() -> tuple[socket.socket, str]:
    """A socket bound to a free loopback port, and its base URL (to know it before serving)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def serve(app: Any, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Run an ASGI app (with its lifespan) under uvicorn on a loopback port; yield its URL."""
    if sock is None:
        sock, _ = bound_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=3))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


@dataclass
class FakeWeChatAPI:
    """The WeChat API on loopback: access tokens and customer-service messages."""

    app_id: str = "wx-test-app"
    secret: str = "test-secret"
    expires_in: int = 7200
    token_delay: float = 0.0
    token_hits: int = 0
    stable_hits: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    last_message_at: dict[str, float] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    url: str = ""

    def user_wrote(self, openid: str) -> None:
        """A user sent the account a message: their 48 hours and allowance of 5 start again."""
        self.last_message_at[openid] = time.time()
        self.used[openid] = 0

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (42001)."""
        self.valid_tokens.clear()

    def texts(self, openid: str | None = None) -> list[str]:
        """The contents of the customer-service text messages sent (to one user)."""
        return [m["text"]["content"] for m in self.sent if openid in (None, m["touser"])]

    async def wait_sent(self, count: int, timeout: float = 15.0) -> list[str]:
        """Wait until `count` messages were sent; return their texts."""
        deadline = time.monotonic() + timeout
        while len(self.sent) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.texts()

    async def _token(self, request: Request) -> JSONResponse:
        q = request.query_params
        if q.get("grant_type") != "client_credential":
            return JSONResponse({"errcode": 40002, "errmsg": "invalid grant_type"})
        if q.get("appid") != self.app_id or q.get("secret") != self.secret:
            return JSONResponse({"errcode": 40125, "errmsg": "invalid appsecret"})
        self.token_hits += 1
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        token = f"TOKEN-{uuid.uuid4().hex}"
        self.valid_tokens = {token}  # a new token invalidates the old one, as on WeChat
        return JSONResponse({"access_token": token, "expires_in": self.expires_in})

    async def _stable_token(self, request: Request) -> JSONResponse:
        """POST /cgi-bin/stable_token: the current token, not a new one (unless force_refresh)."""
        body = json.loads(await request.body())
        if body.get("grant_type") != "client_credential":
            return JSONResponse({"errcode": 40002, "errmsg": "invalid grant_type"})
        if body.get("appid") != self.app_id or body.get("secret") != self.secret:
            return JSONResponse({"errcode": 40125, "errmsg": "invalid appsecret"})
        self.stable_hits += 1
        if body.get("force_refresh") or not self.valid_tokens:
            self.valid_tokens = {f"TOKEN-{uuid.uuid4().hex}"}
        return JSONResponse({"access_token": next(iter(self.valid_tokens)),
                             "expires_in": self.expires_in})

    async def _custom_send(self, request: Request) -> JSONResponse:
        token = request.query_params.get("access_token", "")
        if token not in self.valid_tokens:
            self.refused.append(42001)
            return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
        body = json.loads(await request.body())
        openid = body.get("touser", "")
        if time.time() - self.last_message_at.get(openid, 0) > 48 * 3600:
            self.refused.append(45015)
            return JSONResponse({"errcode": 45015, "errmsg": "response out of time limit"})
        if self.used.get(openid, 0) >= 5:
            self.refused.append(45047)
            return JSONResponse({"errcode": 45047, "errmsg": "out of response count limit"})
        if body.get("msgtype") != "text" or not body.get("text", {}).get("content"):
            return JSONResponse({"errcode": 40008, "errmsg": "invalid message type"})
        self.used[openid] = self.used.get(openid, 0) + 1
        self.sent.append({**body, "_at": time.monotonic()})
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    def app(self) -> Starlette:
        """The ASGI app to serve."""
        return Starlette(routes=[
            Route("/cgi-bin/token", self._token, methods=["GET"]),
            Route("/cgi-bin/stable_token", self._stable_token, methods=["POST"]),
            Route("/cgi-bin/message/custom/send", self._custom_send, methods=["POST"]),
        ])


def sign(*values: str) -> str:
    """WeChat's signature: SHA-1 of the sorted values joined."""
    signer = WeChatSigner()
    signer.add_data(*values)
    return signer.signature


@dataclass
class Exchange:
    """What happened to one message: each request's status and the reply WeChat finally got."""

    statuses: list[int | None]  # None: the request timed out
    content: str | None  # the passive reply's text; None if no request got an answer
    raw: str = ""

    @property
    def requests(self) -> int:
        """How many requests WeChat made for this message."""
        return len(self.statuses)


class WeChatServer:
    """Calls Knowbot's /wechat as the WeChat platform does."""

    def __init__(self, base_url: str, token: str, *, app_id: str = "wx-test-app",
                 aes_key: str | None = None, mode: str = "plain", account: str = "gh_test",
                 timeout: float = 5.0, tries: int = 3, api: FakeWeChatAPI | None = None) -> None:
        self.url = base_url.rstrip("/") + "/wechat"
        self.urls = [self.url]  # several replicas behind a balancer: each try goes to the next
        self.token = token
        self.account = account
        self.mode = mode
        self.timeout = timeout
        self.tries = tries
        self.api = api
        self.crypto = WeChatCrypto(token, aes_key, app_id) if aes_key else None
        self._ids = int(time.time() * 1000)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout))

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()

    def next_id(self) -> str:
        """A fresh MsgId."""
        self._ids += 1
        return str(self._ids)

    def xml(self, openid: str, msg_type: str, fields: dict[str, str],
            msg_id: str | None = None) -> str:
        """A message's plaintext XML, as WeChat posts it."""
        nodes = [f"<ToUserName><![CDATA[{self.account}]]></ToUserName>",
                 f"<FromUserName><![CDATA[{openid}]]></FromUserName>",
                 f"<CreateTime>{int(time.time())}</CreateTime>",
                 f"<MsgType><![CDATA[{msg_type}]]></MsgType>"]
        nodes += [f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()]
        if msg_type != "event":
            nodes.append(f"<MsgId>{msg_id or self.next_id()}</MsgId>")
        return "<xml>" + "".join(nodes) + "</xml>"

    def envelope(self, xml: str, openid: str) -> tuple[dict[str, str], bytes]:
        """The query string and body for one message in this server's mode."""
        timestamp, nonce = str(int(time.time())), uuid.uuid4().hex[:10]
        params = {"signature": sign(self.token, timestamp, nonce), "timestamp": timestamp,
                  "nonce": nonce, "openid": openid}
        if self.mode == "plain":
            return params, xml.encode()
        assert self.crypto is not None
        sealed = xmltodict.parse(self.crypto.encrypt_message(xml, nonce, timestamp))["xml"]
        params.update(encrypt_type="aes", msg_signature=sealed["MsgSignature"])
        inner = f"<Encrypt><![CDATA[{sealed['Encrypt']}]]></Encrypt>"
        if self.mode == "compat":  # the plaintext fields and the encrypted copy
            body = xml.replace("</xml>", inner + "</xml>")
        else:
            body = f"<xml><ToUserName><![CDATA[{self.account}]]></ToUserName>{inner}</xml>"
        return params, body.encode()

    async def post(self, params: dict[str, str], body: bytes) -> Exchange:
        """POST one message, re-sending it on each timeout as WeChat does."""
        statuses: list[int | None] = []
        for n in range(self.tries):
            try:
                resp = await self.http.post(self.urls[n % len(self.urls)], params=params,
                                            content=body,
                                            headers={"Content-Type": "text/xml"})
            except httpx.TimeoutException:
                statuses.append(None)
                continue
            statuses.append(resp.status_code)
            if resp.status_code != 200:
                return Exchange(statuses, None, resp.text)
            return Exchange(statuses, self.read_reply(resp.text, params), resp.text)
        return Exchange(statuses, None)

    def read_reply(self, text: str, params: dict[str, str]) -> str | None:
        """The text of a passive reply (decrypted and its signature checked in AES mode)."""
        if text in ("", "success"):
            return ""
        if params.get("encrypt_type") == "aes":
            assert self.crypto is not None
            outer = xmltodict.parse(text)["xml"]
            text = self.crypto.decrypt_message(text, outer["MsgSignature"], outer["TimeStamp"],
                                               outer["Nonce"])
        reply = xmltodict.parse(text)["xml"]
        assert reply["MsgType"] == "text"
        return reply["Content"]

    async def send(self, openid: str, msg_type: str, msg_id: str | None = None,
                   **fields: str) -> Exchange:
        """A user sends the account a message; return what happened."""
        if self.api is not None and msg_type != "event":
            self.api.user_wrote(openid)
        params, body = self.envelope(self.xml(openid, msg_type, fields, msg_id), openid)
        return await self.post(params, body)

    async def text(self, openid: str, content: str, msg_id: str | None = None) -> Exchange:
        """A user sends a text message."""
        return await self.send(openid, "text", msg_id, Content=content)
