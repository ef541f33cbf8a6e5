"""The WeChat Official Account channel: GET/POST /wechat, in plaintext, compatible or safe mode.

Every request is checked before anything is stored: the signature (wechatpy), the size, the XML
(no DTD, no entities: defusedxml, before wechatpy parses it) and, in safe mode, the message
signature and decryption of the inner XML, which is checked the same way. The passive reply is
planned by `channels/wechat_planner.py`; other deliveries go through `wechat_delivery.py`.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import struct
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import ParseError

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature

from bot.commands import Command
from bot.config import Settings
from bot.errors import ChannelSendError, ConfigError, IngestError, StorageError
from bot.httpbody import read_bounded
from bot.outbox import send_context
from bot.signing import LinkSigner, signing_key
from bot.types import Attachment, ConversationKey, InboundMessage, Reply
from channels import wechat_text as wt
from channels.wechat_api import DEFAULT_API_BASE, TokenManager, WeChatAPI
from channels.wechat_delivery import Delivery
from channels.wechat_pages import ACCOUNT_KB, WeChatPages
from channels.wechat_planner import Planner, Timings

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

MAX_XML_BYTES = 64 * 1024
PUSH_WINDOW = timedelta(hours=48)  # customer-service messages only this long after the user's last
UNSUPPORTED = {"image": "images", "video": "videos", "shortvideo": "videos",
               "location": "locations", "file": "files", "music": "music"}
_DECRYPT_ERRORS = (InvalidSignatureException, InvalidAppIdException, ValueError, TypeError,
                   KeyError, IndexError, struct.error, binascii.Error, UnicodeDecodeError)


class UnsafeXML(ValueError):
    """XML that is too big, malformed, or declares a DTD or entities."""


def safe_fields(data: bytes) -> dict[str, str]:
    """The child elements of a WeChat <xml> envelope as text; UnsafeXML if it is not safe."""
    if len(data) > MAX_XML_BYTES:
        raise UnsafeXML("too big")
    lowered = data.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise UnsafeXML("a DTD or an entity declaration")
    try:
        root = safe_fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise UnsafeXML(type(exc).__name__) from exc
    if root.tag != "xml":
        raise UnsafeXML("not a WeChat message")
    return {child.tag: (child.text or "") for child in root if len(child) == 0}


def _cdata_safe(text: str) -> str:
    return text.replace("]]>", "]]]]><![CDATA[>")


class WeChatChannel:
    """A WeChat Official Account: webhooks, a delivery planner, pages, and `send`."""

    name = "wechat"

    def __init__(self, settings: Settings, *, timings: Timings | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        if settings.wechat_token is None:
            raise ConfigError("KNOWBOT_WECHAT_TOKEN is not set")
        self.settings = settings
        self.timings = timings or Timings()
        self.app_id = settings.wechat_app_id or ""
        self._token = settings.wechat_token.get_secret_value()
        self._http = http
        self._own_http = http is None
        self.crypto: WeChatCrypto | None = None
        if settings.wechat_aes_key is not None:
            if not self.app_id:
                raise ConfigError("KNOWBOT_WECHAT_AES_KEY needs KNOWBOT_WECHAT_APP_ID")
            self.crypto = WeChatCrypto(self._token, settings.wechat_aes_key.get_secret_value(),
                                       self.app_id)
        self.runtime: "Runtime | None" = None
        self.api: WeChatAPI | None = None
        self.delivery: Delivery | None = None
        self.pages: WeChatPages | None = None
        self.planner: Planner | None = None

    # ---- wiring ---------------------------------------------------------------------

    def mount(self, app: FastAPI, runtime: "Runtime") -> None:
        """Add /wechat, the answer and upload pages, and the /upload command."""
        settings = self.settings
        self.runtime = runtime
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        if self.app_id and settings.wechat_app_secret is not None:
            tokens = TokenManager(runtime.state, self._http, self.app_id,
                                  settings.wechat_app_secret.get_secret_value(),
                                  api_base=settings.wechat_api_base or DEFAULT_API_BASE)
            self.api = WeChatAPI(tokens)
        elif settings.wechat_verified:
            log.warning("KNOWBOT_WECHAT_VERIFIED is set but the AppID or AppSecret is missing: "
                        "no customer-service messages")
        account = self.app_id or "default"
        self.delivery = Delivery(runtime.state, account, self.api, settings.wechat_verified)
        self.pages = WeChatPages(runtime.state,
                                 LinkSigner(signing_key(settings), clock=runtime.state.clock.time),
                                 settings.public_url, account, settings.ingest_max_bytes)
        self.planner = Planner(self.delivery, self.pages, runtime.state, account, self.timings,
                               can_push=self._can_push, signals=runtime.signals)
        runtime.engine.commands.add(Command(
            "upload", "get a private link to upload documents to this account's knowledge base",
            self._upload_command, admin_only=True))
        app.add_api_route("/wechat", self._handshake, methods=["GET"])
        app.add_api_route("/wechat", self._receive, methods=["POST"])
        self.pages.mount(app, runtime.knowledge)  # type: ignore[arg-type]

    async def start(self) -> None:
        """Nothing runs beside the server: WeChat calls in."""

    async def stop(self) -> None:
        """Follow up on answers still in flight and close the HTTP client."""
        if self.planner is not None:
            await self.planner.close()
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    # ---- the webhook ----------------------------------------------------------------

    def _signed(self, request: Request) -> bool:
        q = request.query_params
        signature, timestamp, nonce = q.get("signature"), q.get("timestamp"), q.get("nonce")
        if not (signature and timestamp and nonce):
            return False
        try:
            check_signature(self._token, signature, timestamp, nonce)
        except InvalidSignatureException:
            return False
        return True

    async def _handshake(self, request: Request) -> Response:
        """WeChat's server-verification handshake: echo `echostr` when the signature is right."""
        if not self._signed(request):
            log.warning("WeChat handshake with a bad signature refused")
            return PlainTextResponse("forbidden", status_code=403)
        return PlainTextResponse(request.query_params.get("echostr", ""))

    async def _receive(self, request: Request) -> Response:
        """One message or event from WeChat; the response body is the passive reply."""
        arrived = time.monotonic()
        if not self._signed(request):
            log.warning("WeChat message with a bad signature refused")
            return PlainTextResponse("forbidden", status_code=403)
        body = await read_bounded(request, MAX_XML_BYTES)
        if body is None:
            return PlainTextResponse("too large", status_code=413)
        q = request.query_params
        encrypted = q.get("encrypt_type", "").lower() == "aes"
        try:
            fields = safe_fields(body)
            if encrypted:
                if self.crypto is None:
                    log.warning("an encrypted WeChat message, but KNOWBOT_WECHAT_AES_KEY is unset")
                    return PlainTextResponse("forbidden", status_code=403)
                try:
                    inner = self.crypto.decrypt_message(
                        {"Encrypt": fields.get("Encrypt", "")}, q.get("msg_signature", ""),
                        q.get("timestamp", ""), q.get("nonce", ""))
                except _DECRYPT_ERRORS:
                    log.warning("WeChat message that does not decrypt refused")
                    return PlainTextResponse("forbidden", status_code=403)
                xml = inner.encode()
                fields = safe_fields(xml)
            else:
                xml = body
            message = parse_message(xml.decode())
        except (UnsafeXML, UnicodeDecodeError, KeyError) as exc:
            log.warning("WeChat message refused: %s", exc)
            return PlainTextResponse("bad request", status_code=400)
        if not fields.get("FromUserName") or not fields.get("MsgType"):
            return PlainTextResponse("bad request", status_code=400)
        log.debug("WeChat %s from a user", fields.get("MsgType"))
        text = await self._passive(fields, arrived)
        if not text:
            return PlainTextResponse("success")
        reply = TextReply(source=message.target, target=message.source,
                          content=_cdata_safe(wt.fit(text))).render()
        if encrypted and self.crypto is not None:
            reply = self.crypto.encrypt_message(reply, q.get("nonce", ""), q.get("timestamp"))
        return Response(reply, media_type="application/xml")

    async def _passive(self, fields: dict[str, str], arrived: float) -> str:
        assert self.planner is not None and self.runtime is not None
        openid = fields["FromUserName"]
        key = ConversationKey("wechat", self.app_id or fields.get("ToUserName", ""), openid, openid)
        kind = fields["MsgType"].lower()
        # events carry no MsgId: the sender and time name them (and the event, to tell apart
        # two events of one second)
        msg_id = fields.get("MsgId") or ":".join(
            (openid, fields.get("CreateTime", ""), fields.get("Event", ""),
             fields.get("EventKey", "")))
        is_admin = self.settings.is_admin("wechat", openid)
        fixed: str | None = None
        message: InboundMessage | None = None
        kind_of_work = "ask"
        if kind == "event":
            event = fields.get("Event", "").lower()
            if event == "subscribe":
                fixed = wt.WELCOME
            elif event == "click" and fields.get("EventKey"):
                message = self._message(key, msg_id, _menu_command(fields["EventKey"]), is_admin)
            else:
                return ""  # unsubscribe, VIEW, LOCATION reports and the like need no answer
        elif kind == "text":
            message = self._message(key, msg_id, fields.get("Content", ""), is_admin)
        elif kind == "voice":
            heard = fields.get("Recognition", "").strip()
            if heard:
                message = self._message(key, msg_id, heard, is_admin)
            else:
                fixed = wt.VOICE_UNRECOGNISED
        elif kind == "link":
            url = fields.get("Url", "").strip()
            if not is_admin:
                fixed = wt.LINK_NOT_ADMIN
            else:
                link = Attachment(kind="link", url=url, name=fields.get("Title", "") or url)
                message = InboundMessage(key=key, message_id=msg_id, text=url,
                                         attachments=(link,), is_admin=True)
                kind_of_work = "link"
        else:
            fixed = wt.NOT_SUPPORTED.format(what=UNSUPPORTED.get(kind, "that kind of message"))
        if message is None:
            return await self.planner.respond(openid, msg_id, arrived, fixed=fixed or "")
        inbox = self.runtime.inbox
        context = {"kind": kind_of_work, "send": {"msg_id": msg_id}}
        queued = message

        async def enqueue() -> bool:
            return await inbox.put(queued, context)

        return await self.planner.respond(openid, msg_id, arrived, enqueue=enqueue)

    @staticmethod
    def _message(key: ConversationKey, msg_id: str, text: str, is_admin: bool) -> InboundMessage:
        return InboundMessage(key=key, message_id=msg_id, text=text, is_admin=is_admin)

    async def work(self, message: InboundMessage, context: dict[str, Any]) -> Reply | None:
        """Answer one message from the inbox (a worker calls this; `send` publishes the reply)."""
        assert self.runtime is not None
        handler = self._ingest_link if context.get("kind") == "link" else None
        return await self.runtime.dispatcher.answer(message, handler)

    async def _can_push(self) -> bool:
        """Whether a customer-service message could go out now (an access token to be had)."""
        if self.api is None:
            return False
        try:
            await asyncio.wait_for(self.api.tokens.token(), 3.0)
        except (ChannelSendError, StorageError, TimeoutError) as exc:
            log.warning("no WeChat access token to be had (%s): answers will be held",
                        type(exc).__name__)
            return False
        return True

    async def _ingest_link(self, message: InboundMessage) -> Reply:
        """Fetch an article an admin shared and add it to the account's knowledge base."""
        from knowledge.registry import tenant_of

        service: Any = self.runtime.knowledge if self.runtime is not None else None
        if service is None or not hasattr(service, "ingest_url"):
            return Reply("Adding documents is not switched on in this Knowbot.", kind="notice")
        tenant, key = tenant_of(message.key), message.key
        url = message.attachments[0].url
        await service.registry.ensure_kb(tenant, ACCOUNT_KB, shared=True, created_by=key.user_id)
        try:
            receipt = await service.ingest_url(tenant, ACCOUNT_KB, url, added_by=key.user_id,
                                               shared=True)
        except IngestError as exc:
            return Reply(exc.user_message, kind="error")
        return Reply(receipt.text(), kind="notice")

    async def _upload_command(self, args: str, message: InboundMessage) -> Reply:
        """/upload: a one-time, expiring link to a page where an admin uploads documents."""
        from knowledge.registry import tenant_of

        if message.key.channel != self.name:
            return Reply("/upload is for WeChat; here, send me the file directly.", kind="notice")
        if self.pages is None or self.settings.public_url is None:
            return Reply("Uploading needs KNOWBOT_PUBLIC_URL (the address people reach this "
                         "server at); ask whoever runs Knowbot to set it.", kind="notice")
        link = await self.pages.upload_link(tenant_of(message.key), message.key.user_id)
        return Reply(f"Upload documents for this account's knowledge base here (the link works "
                     f"once, for 30 minutes):\n{link}", kind="command")

    # ---- sending outside a passive reply --------------------------------------------

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        """The answer to a message goes to its requests (the planner); anything else is pushed
        as customer-service messages while allowed, the rest held for the next message."""
        if self.delivery is None or self.pages is None or self.planner is None:
            raise ChannelSendError("the WeChat channel is not running yet", retryable=True)
        if key.channel != self.name or (self.app_id and key.tenant != self.app_id):
            raise ChannelSendError("that conversation is not on this WeChat account",
                                   retryable=False)
        msg_id = send_context().get("msg_id")
        if msg_id:
            try:
                await self.planner.publish(key.chat_id, str(msg_id), reply)
            except StorageError as exc:
                raise ChannelSendError("could not keep the answer for the user",
                                       retryable=True) from exc
            return
        parts = wt.parts_of(reply)
        page_id, url = self.pages.reserve()
        try:
            if len(parts) > 1:
                await self.pages.save(page_id, reply)
            await self.delivery.follow_up(key.chat_id, parts, url if len(parts) > 1 else None)
        except StorageError as exc:
            raise ChannelSendError("could not keep the reply for the user", retryable=True) from exc


    def push_problem(self, key: ConversationKey, at: datetime | None, now: datetime
                     ) -> str | None:
        """Why a job due at `at` may not reach the user on its own (told when it is made at `now`)."""
        if not self.settings.wechat_verified:
            return ("Note: this WeChat account is not verified, so it cannot message you on its "
                    "own. I'll hand the reminder over with your first message after it is due.")
        if at is not None and at - now > PUSH_WINDOW:
            return ("Note: WeChat lets me message you only within 48 hours of your last message. "
                    "If you haven't written to me by then, you'll get it with your next message.")
        return None


def _menu_command(event_key: str) -> str:
    """A menu button's key as a command: "help" or "/help" -> "/help"."""
    name = event_key.strip().lstrip("/")
    return f"/{name}" if name else "/help"
