"""A local Telegram Bot API server for tests: aiohttp on 127.0.0.1 in the test's event loop.

It speaks the Bot API's wire format: POST/GET /bot<token>/<method> with JSON, urlencoded or
multipart bodies (aiogram sends form data), answering {"ok": true, "result": ...} or
{"ok": false, "error_code": ..., "description": ..., "parameters": {...}}, and serves file
downloads at /file/bot<token>/<file_path>. getUpdates long-polls the queued updates past
`offset` (confirming the earlier ones, as Telegram does). sendMessage checks Telegram HTML
strictly (allowed tags, balanced nesting, escaped &, < and >) and the 4096-character limit.

    fake = FakeBotAPI(TOKEN); await fake.start()
    fake.push(fake.text_update(chat, user, "hello"))
    await fake.wait_for(lambda: fake.sent(chat["id"]))
    await fake.stop()

Every call is recorded in `fake.calls` (method and parameters as strings).
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

BOT_API_DOWNLOAD_LIMIT = 20 * 1024 * 1024
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
                "blockquote", "tg-spoiler", "span", "tg-emoji"}
_MARKUP = re.compile(
    r"<(?P<close>/?)(?P<tag>[a-zA-Z][a-zA-Z0-9-]*)(?P<attrs>(?:\s+[a-zA-Z-]+=\"[^\"<>]*\")*)\s*>"
    r"|&(?P<entity>#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot);"
    r"|(?P<bad>[<>&])"
)
_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def parse_telegram_html(text: str) -> str:
    """The plain text of Telegram HTML; ValueError (Telegram's wording) when it is not valid."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in _MARKUP.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        if m.group("bad"):
            raise ValueError(f"can't parse entities: unexpected {m.group('bad')!r} at offset "
                             f"{m.start()}")
        if m.group("entity"):
            out.append(html.unescape(m.group(0)))
            continue
        tag = m.group("tag").lower()
        if tag not in ALLOWED_TAGS:
            raise ValueError(f"can't parse entities: unsupported start tag \"{tag}\"")
        if m.group("close"):
            if not stack or stack[-1] != tag:
                raise ValueError(f"can't parse entities: unmatched end tag \"{tag}\"")
            stack.pop()
        else:
            if tag == "a" and "href=" not in m.group("attrs"):
                raise ValueError("can't parse entities: a tag without href")
            if stack and stack[-1] in ("code", "pre") and not (stack[-1] == "pre" and tag == "code"):
                raise ValueError("can't parse entities: entities inside code")
            stack.append(tag)
    out.append(text[pos:])
    if stack:
        raise ValueError(f"can't parse entities: unclosed start tag \"{stack[-1]}\"")
    return "".join(out)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (Telegram's unit)."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    """One request the bot made."""

    method: str
    params: dict[str, str]
    status: int = 200
    at: float = field(default_factory=time.monotonic)

    def json(self, name: str) -> Any:
        """A JSON-serialised parameter, decoded."""
        return json.loads(self.params[name]) if name in self.params else None


@dataclass
class FakeFile:
    """A file the bot can fetch with getFile; `data` None means only its size is known."""

    file_id: str
    path: str
    size: int
    data: bytes | None


def user(uid: int, name: str = "Alice", *, is_bot: bool = False) -> dict[str, Any]:
    """A Bot API User object."""
    return {"id": uid, "is_bot": is_bot, "first_name": name}


def private_chat(uid: int) -> dict[str, Any]:
    """A private chat with a user."""
    return {"id": uid, "type": "private", "first_name": "Alice"}


def group_chat(chat_id: int, title: str = "Team") -> dict[str, Any]:
    """A supergroup."""
    return {"id": chat_id, "type": "supergroup", "title": title}


class FakeBotAPI:
    """The Bot API for one bot token, on loopback, recording every call."""

    def __init__(self, token: str, username: str = "knowbot_test") -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.username = username
        self.calls: list[Call] = []
        self.downloads: list[str] = []
        self.files: dict[str, FakeFile] = {}
        self.members: dict[tuple[int, int], str] = {}
        self.failures: dict[str, deque[tuple[int, str, dict[str, Any] | None]]] = {}
        self.updates: list[dict[str, Any]] = []
        self.confirmed = 0  # getUpdates offset seen: updates below it are gone
        self.webhook_url = ""  # set by setWebhook, reported by getWebhookInfo
        self.webhook_error = ""  # getWebhookInfo's last_error_message, when set
        self._update_ids = itertools.count(5000)
        self._message_ids = itertools.count(100)
        self._sent_ids = itertools.count(9000)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle ----

    async def start(self) -> "FakeBotAPI":
        """Listen on a free loopback port."""
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """What KNOWBOT_TELEGRAM_API_BASE should be."""
        return f"http://127.0.0.1:{self.port}"

    # ---- scripting ----

    def fail(self, method: str, code: int, description: str, **parameters: Any) -> None:
        """Make the next call of `method` fail with this error (parameters: retry_after...)."""
        self.failures.setdefault(method, deque()).append((code, description, parameters or None))

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates."""
        self.updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def message_update(self, chat: dict[str, Any], sender: dict[str, Any], *,
                       text: str | None = None, entities: list[dict[str, Any]] | None = None,
                       caption: str | None = None, document: dict[str, Any] | None = None,
                       reply_to: dict[str, Any] | None = None,
                       update_id: int | None = None) -> dict[str, Any]:
        """An Update with a new Message (not queued; see `push`)."""
        message: dict[str, Any] = {"message_id": next(self._message_ids), "date": int(time.time()),
                                   "chat": chat, "from": sender}
        if text is not None:
            message["text"] = text
            if entities:
                message["entities"] = entities
        if caption is not None:
            message["caption"] = caption
            if entities:
                message["caption_entities"] = entities
        if document is not None:
            message["document"] = document
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        return {"update_id": update_id or next(self._update_ids), "message": message}

    def text_update(self, chat: dict[str, Any], sender: dict[str, Any], text: str, *,
                    mention: bool = False, **kwargs: Any) -> dict[str, Any]:
        """A text message; `mention` puts "@botname " in front, with its entity; commands get theirs."""
        entities: list[dict[str, Any]] = []
        if mention:
            text = f"@{self.username} {text}"
            entities.append({"type": "mention", "offset": 0, "length": len(self.username) + 1})
        elif text.startswith("/"):
            entities.append({"type": "bot_command", "offset": 0,
                             "length": utf16_len(text.split()[0])})
        return self.message_update(chat, sender, text=text, entities=entities, **kwargs)

    def add_document(self, name: str, data: bytes | None = None, *, size: int | None = None,
                     mime: str = "application/octet-stream") -> dict[str, Any]:
        """Register a file and return the Document object a message carries."""
        n = len(self.files) + 1
        file_id = f"BQACAgIAAx{n:04d}"
        size = len(data) if data is not None else int(size or 0)
        self.files[file_id] = FakeFile(file_id, f"documents/file_{n}{_ext(name)}", size, data)
        return {"file_id": file_id, "file_unique_id": f"AgAD{n:04d}", "file_name": name,
                "mime_type": mime, "file_size": size}

    def bot_message(self, chat: dict[str, Any], text: str) -> dict[str, Any]:
        """A Message the bot sent earlier (for replies to it)."""
        return {"message_id": next(self._sent_ids), "date": int(time.time()), "chat": chat,
                "from": self._me(), "text": text}

    # ---- inspection ----

    def calls_of(self, method: str) -> list[Call]:
        """Every call of one method, failed ones included."""
        return [c for c in self.calls if c.method == method]

    def sent(self, chat_id: int | None = None) -> list[Call]:
        """The sendMessage calls that went through (to one chat, if given)."""
        return [c for c in self.calls_of("sendMessage") if c.status == 200
                and (chat_id is None or int(c.params["chat_id"]) == chat_id)]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked after every call); return its value."""
        async def check() -> Any:
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value
        return await asyncio.wait_for(check(), timeout)

    # ---- the API ----

    def _me(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Knowbot",
                "username": self.username, "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False}

    async def _params(self, request: web.Request) -> dict[str, str]:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            if request.content_type == "application/json":
                body = await request.json()
                params.update({k: v if isinstance(v, str) else json.dumps(v)
                               for k, v in body.items()})
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params)
        self.calls.append(call)
        try:
            queued = self.failures.get(method)
            if queued:
                code, description, parameters = queued.popleft()
                call.status = code
                return _error(code, description, parameters)
            handler = getattr(self, f"_m_{method}", None)
            if handler is None:
                call.status = 404
                return _error(404, "Not Found: method not found")
            try:
                result = await handler(params)
            except BadRequest as exc:
                call.status = 400
                return _error(400, f"Bad Request: {exc}")
            return web.json_response({"ok": True, "result": result})
        finally:
            await self._notify()

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        self.downloads.append(path)
        await self._notify()
        found = next((f for f in self.files.values() if f.path == path), None)
        if found is None or found.data is None:
            return web.Response(status=404)
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def _m_getMe(self, params: dict[str, str]) -> Any:
        return self._me()

    async def _m_getUpdates(self, params: dict[str, str]) -> Any:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        if offset:
            self.confirmed = max(self.confirmed, offset)
        self.updates = [u for u in self.updates if u["update_id"] >= self.confirmed]

        def ready() -> list[dict[str, Any]]:
            return [u for u in self.updates if u["update_id"] >= self.confirmed][:limit]

        if not ready() and timeout > 0:
            try:
                await self.wait_for(ready, timeout)
            except asyncio.TimeoutError:
                pass
        return ready()

    async def _m_deleteWebhook(self, params: dict[str, str]) -> Any:
        self.webhook_url = ""
        return True

    async def _m_setWebhook(self, params: dict[str, str]) -> Any:
        if not params.get("url", "").startswith("https://"):
            raise BadRequest("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.match(secret):
            raise BadRequest("secret token contains unallowed characters")
        self.webhook_url = params["url"]
        return True

    async def _m_getWebhookInfo(self, params: dict[str, str]) -> Any:
        info: dict[str, Any] = {"url": self.webhook_url, "has_custom_certificate": False,
                                "pending_update_count": len(self.updates)}
        if self.webhook_error:  # what Telegram shows after its deliveries failed
            info.update(last_error_date=int(time.time()), last_error_message=self.webhook_error)
        return info

    async def _m_setMyCommands(self, params: dict[str, str]) -> Any:
        commands = json.loads(params.get("commands", "[]"))
        if len(commands) > 100:
            raise BadRequest("too many commands")
        for c in commands:
            if not _COMMAND_NAME.match(c.get("command", "")):
                raise BadRequest("BOT_COMMAND_INVALID")
            if not 1 <= len(c.get("description", "")) <= 256:
                raise BadRequest("BOT_COMMAND_DESCRIPTION_INVALID")
        return True

    async def _m_sendChatAction(self, params: dict[str, str]) -> Any:
        if params.get("action") not in {"typing", "upload_document"}:
            raise BadRequest("wrong parameter action in request")
        return True

    async def _m_getChatMember(self, params: dict[str, str]) -> Any:
        chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
        status = self.members.get((chat_id, user_id), "member")
        member: dict[str, Any] = {"status": status, "user": user(user_id)}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":
            member.update({k: False for k in (
                "can_be_edited", "is_anonymous", "can_delete_messages", "can_manage_video_chats",
                "can_restrict_members", "can_promote_members", "can_change_info",
                "can_post_stories", "can_edit_stories", "can_delete_stories",
                "can_send_welcome_messages")})
            member.update(can_manage_chat=True, can_invite_users=True)
        return member

    async def _m_getFile(self, params: dict[str, str]) -> Any:
        found = self.files.get(params.get("file_id", ""))
        if found is None:
            raise BadRequest("invalid file_id")
        if found.size > BOT_API_DOWNLOAD_LIMIT:
            raise BadRequest("file is too big")
        return {"file_id": found.file_id, "file_unique_id": "u" + found.file_id,
                "file_size": found.size, "file_path": found.path}

    async def _m_sendMessage(self, params: dict[str, str]) -> Any:
        text = params.get("text", "")
        if not text:
            raise BadRequest("message text is empty")
        try:
            plain = parse_telegram_html(text) if params.get("parse_mode") == "HTML" else text
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        if utf16_len(plain) > 4096:
            raise BadRequest("message is too long")
        chat_id = int(params["chat_id"])
        chat = private_chat(chat_id) if chat_id > 0 else group_chat(chat_id)
        return {"message_id": next(self._sent_ids), "date": int(time.time()), "chat": chat,
                "from": self._me(), "text": plain}


class BadRequest(Exception):
    """A 400 answer."""


def _error(code: int, description: str, parameters: dict[str, Any] | None = None
           ) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


def _ext(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""
