"""The Telegram channel: aiogram long polling or a webhook, replies as Telegram HTML.

Long polling is the default (no public URL needed); with KNOWBOT_TELEGRAM_WEBHOOK_URL set the
bot registers POST /telegram/webhook with a secret token and refuses requests without it.
Private chats are always answered; in groups only a command, a mention or a reply to the bot.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiogram import Bot, methods
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.methods.base import Response as TelegramResponse
from aiogram.exceptions import (
    AiogramError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BotCommand, LinkPreviewOptions, ReplyParameters, Update, User
from aiogram.utils.token import TokenValidationError
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from bot.commands import Command
from bot.config import Settings
from bot.errors import ChannelSendError, ConfigError, IngestError, KnowbotError
from bot.lease import Lease, RedisLease
from bot.outbox import RESUME_AT, part_sent, send_context
from bot.types import Attachment, ConversationKey, InboundMessage, Reply
from channels import telegram_inbound as inbound
from channels.telegram_pacing import Pacer
from channels.telegram_render import html_to_plain, render_reply

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bot.runtime import Runtime

log = logging.getLogger(__name__)

# aiogram parses every Bot API answer as `Response[<the method's result type>]`, a pydantic
# generic model that pydantic caches only weakly: each garbage collection may drop it, and
# building it again costs about 2-5 ms of CPU per call. The result types of the methods Knowbot
# calls are kept here for the life of the process.
_RESPONSE_TYPES = tuple(
    TelegramResponse[method.__returning__]
    for method in (methods.SendMessage, methods.SendChatAction, methods.GetChatMember,
                   methods.GetFile, methods.GetUpdates, methods.GetMe, methods.DeleteWebhook,
                   methods.SetWebhook, methods.SetMyCommands)
)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "x-telegram-bot-api-secret-token"
ALLOWED_UPDATES = ["message"]
MAX_UPDATE_BYTES = 1024 * 1024  # an update is a few KB; anything far larger is not Telegram
MAX_SEND_TRIES = 4  # tries of one message part (429s, a migrated group, a markup fallback)
MAX_RETRY_WAIT = 60.0  # seconds of retry_after honoured inside one send before the outbox
TYPING_EVERY = 4.0  # Telegram shows "typing…" for about 5 s
_SECRET_OK = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")

POLL_LEASE_SECONDS = 45.0  # one replica polls; another takes over within this after it dies

def derive_webhook_secret(token: str) -> str:
    """A webhook secret derived from the bot token (HMAC-SHA256, URL-safe base64, 43 chars)."""
    digest = hmac.new(b"knowbot telegram webhook", token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class TelegramChannel:
    """Telegram through aiogram: polling or webhook in, sendMessage out."""

    name = "telegram"

    def __init__(self, settings: Settings, *, poll_timeout: int = 25, pacer: Pacer | None = None,
                 typing_every: float = TYPING_EVERY, lease_check: float = 5.0,
                 poll_lease: float = POLL_LEASE_SECONDS) -> None:
        if settings.telegram_token is None:
            raise ConfigError("KNOWBOT_TELEGRAM_TOKEN: required for the Telegram channel")
        token = settings.telegram_token.get_secret_value()
        api = (TelegramAPIServer.from_base(settings.telegram_api_base)
               if settings.telegram_api_base else PRODUCTION)
        try:
            self.bot = Bot(token, session=AiohttpSession(api=api),
                           default=DefaultBotProperties(parse_mode=ParseMode.HTML))
        except TokenValidationError as exc:
            raise ConfigError("KNOWBOT_TELEGRAM_TOKEN: not a Telegram bot token "
                              "(it looks like 123456:ABC-DEF...)") from exc
        self.settings = settings
        self.tenant = str(self.bot.id)  # the bot's id: the token's numeric prefix
        self.webhook_url = settings.telegram_webhook_url
        secret = (settings.telegram_webhook_secret.get_secret_value()
                  if settings.telegram_webhook_secret else derive_webhook_secret(token))
        if not _SECRET_OK.match(secret):
            raise ConfigError("KNOWBOT_TELEGRAM_WEBHOOK_SECRET: 1-256 characters of A-Z, a-z, "
                              "0-9, _ and -")
        self._secret = secret.encode()
        # Bots may download 20 MB through the Bot API; a team's own server may allow more.
        self.bot_api_limit = settings.telegram_api_base is None
        self.download_limit = (min(settings.ingest_max_bytes, inbound.BOT_API_DOWNLOAD_LIMIT)
                               if self.bot_api_limit else settings.ingest_max_bytes)
        self.poll_timeout = poll_timeout
        self.pacer = pacer or Pacer()
        self.typing_every = typing_every
        self.admins = inbound.AdminCache(self.bot)
        self.runtime: Runtime | None = None
        self._me: User | None = None
        self._owner = uuid.uuid4().hex  # this replica, for the polling lease
        self.lease_check = lease_check
        self.poll_lease = max(poll_lease, poll_timeout * 2 + 5)  # outlives one getUpdates call
        self.polling = False  # this replica holds the polling lease and calls getUpdates
        self._runner: asyncio.Task[None] | None = None
        self._stopped = False
        self._closed = False

    # ---- lifecycle --------------------------------------------------------------------------

    def mount(self, app: "FastAPI", runtime: "Runtime") -> None:
        """Add /start to the commands and, in webhook mode, the POST /telegram/webhook route."""
        self.runtime = runtime
        runtime.engine.commands.add(Command("start", "welcome: what I know and how to add "
                                            "documents", self._start_command))
        if self.webhook_url:
            app.add_api_route(WEBHOOK_PATH, self.webhook, methods=["POST"],
                              include_in_schema=False)

    async def start(self) -> None:
        """Register the commands and the webhook, or start long polling, in the background."""
        self._stopped = self._closed = False
        self._runner = asyncio.create_task(self._run(), name="knowbot:telegram")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop polling and close the HTTP session (the workers have stopped answering first)."""
        self._stopped = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        self._closed = True
        await self.bot.session.close()

    async def wait_idle(self, timeout: float = 30.0) -> int:
        """Wait until this replica answers nothing; return how many answers still were running."""
        if self.runtime is None:
            return 0
        return await self.runtime.workers.wait_idle(timeout)

    async def _run(self) -> None:
        await self._bootstrap()
        if not self.webhook_url:
            await self._poll()

    async def _bootstrap(self) -> None:
        """getMe, setMyCommands and setWebhook/deleteWebhook, retried with a bounded backoff."""
        delay = 1.0
        for attempt in range(8):
            try:
                await self.identity()
                await self._set_commands()
                if self.webhook_url:
                    await self.bot.set_webhook(self.webhook_url,
                                               secret_token=self._secret.decode(),
                                               allowed_updates=ALLOWED_UPDATES)
                    log.info("telegram webhook registered")
                else:
                    await self.bot.delete_webhook(drop_pending_updates=False)
                return
            except TelegramUnauthorizedError:
                log.error("Telegram refused the bot token (KNOWBOT_TELEGRAM_TOKEN)")
                raise
            except AiogramError as exc:
                log.warning("telegram setup failed (try %d): %s", attempt + 1, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        log.error("telegram setup kept failing; continuing without it")

    async def identity(self) -> User:
        """The bot's own user (getMe), fetched once."""
        if self._me is None:
            self._me = await self.bot.get_me()
        return self._me

    async def _set_commands(self) -> None:
        assert self.runtime is not None
        commands: list[BotCommand] = []
        seen: set[str] = set()
        entries = [(c.name, c.help) for c in self.runtime.engine.commands.all()]
        entries += [(t.name, (t.description or t.name).splitlines()[0])
                    for t in self.runtime.registry]
        for name, description in entries:
            if name in seen or not _COMMAND_NAME.match(name) or len(commands) >= 100:
                continue
            seen.add(name)
            description = " ".join(description.split())[:256] or name
            commands.append(BotCommand(command=name, description=description))
        await self.bot.set_my_commands(commands)

    # ---- updates in ---------------------------------------------------------------------------

    async def webhook(self, request: Request) -> Response:
        """POST /telegram/webhook: check the secret token, then answer in the background."""
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            log.warning("telegram webhook call with a wrong secret token refused")
            return Response(status_code=403)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_UPDATE_BYTES:
                    return Response(status_code=413)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            update = Update.model_validate(json.loads(body), context={"bot": self.bot})
        except (ValueError, ValidationError):
            log.warning("telegram webhook body is not an update")
            return Response(status_code=400)
        if self._stopped:
            return Response(status_code=503)  # Telegram delivers it again later
        try:
            await self.take(update)
        except KnowbotError as exc:
            log.warning("telegram update %s not kept (%s): Telegram will resend it",
                        update.update_id, exc)
            return Response(status_code=503)
        return Response(status_code=200)

    def _poll_lease(self) -> Lease | RedisLease:
        assert self.runtime is not None
        seconds = self.poll_lease
        if self.settings.redis_url:
            return RedisLease(self.settings.redis_url, self._owner, seconds,
                              key=f"knowbot:telegram:poller:{self.tenant}")
        return Lease(self.runtime.state, self._owner, seconds, "telegram", f"poller:{self.tenant}")

    async def _poll(self) -> None:
        """Long polling by one replica (a lease); the offset moves past what the inbox holds."""
        lease = self._poll_lease()
        try:
            await self._poll_while(lease)
        finally:
            self.polling = False
            try:
                await lease.release()
            except Exception:  # noqa: BLE001 - shutting down; the lease lapses anyway
                log.debug("could not release the telegram polling lease", exc_info=True)

    async def _poll_while(self, lease: Lease | RedisLease) -> None:
        offset: int | None = None
        delay = 1.0
        polling = False
        while not self._stopped:
            try:
                held = await lease.acquire()
            except Exception as exc:  # noqa: BLE001 - a database or Redis outage: try later
                log.warning("telegram polling lease check failed: %s", exc)
                held = False
            if held != polling:
                log.info("telegram: this replica %s polling", "starts" if held else "stops")
                polling = self.polling = held
                offset = None  # getUpdates without an offset resumes after the confirmed ones
            if not held:
                await asyncio.sleep(self.lease_check)
                continue
            try:
                updates = await self.bot.get_updates(
                    offset=offset, timeout=self.poll_timeout, allowed_updates=ALLOWED_UPDATES,
                    request_timeout=int(self.bot.session.timeout + self.poll_timeout))
            except TelegramUnauthorizedError:
                log.error("Telegram refused the bot token; polling stops")
                return
            except TelegramRetryAfter as exc:
                await asyncio.sleep(min(exc.retry_after, 300))
                continue
            except AiogramError as exc:
                if isinstance(exc, TelegramConflictError):
                    log.warning("getUpdates conflict: another poller or a webhook uses this bot")
                else:
                    log.warning("getUpdates failed: %s; retrying in %.0f s",
                                type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            for update in updates:
                try:
                    await self.take(update)
                except KnowbotError as exc:  # not kept: the offset stays, Telegram resends it
                    log.warning("telegram update %s not kept (%s); retrying", update.update_id,
                                exc)
                    await asyncio.sleep(delay)
                    break
                offset = max(offset or 0, update.update_id + 1)

    async def _examine(self, update: Update) -> tuple[InboundMessage, Any, inbound.Seen] | None:
        """The message an update carries for the bot, or None if it is not addressed to it."""
        message = update.message
        if message is None:
            return None
        try:
            me = await self.identity()
        except AiogramError:
            me = User(id=self.bot.id, is_bot=True, first_name="Knowbot")  # mentions by @name lost
        seen = inbound.examine(message, me)
        if seen is None:
            return None
        chat = message.chat
        group = chat.type in inbound.GROUP_TYPES
        user_id = message.from_user.id if message.from_user else chat.id
        if message.sender_chat is not None and message.sender_chat.id == chat.id:
            user_id = chat.id  # an anonymous admin speaks as the group
        thread = str(message.message_thread_id) if message.is_topic_message else None
        key = ConversationKey("telegram", self.tenant, str(chat.id), str(user_id), thread)
        item = InboundMessage(key=key, message_id=str(update.update_id), text=seen.text,
                              is_group=group, mentions_bot=seen.mentions_bot,
                              received_at=message.date, raw=update)
        return item, message, seen

    async def take(self, update: Update) -> bool:
        """Keep an update addressed to the bot in the inbox; False if ignored or seen before."""
        if self.runtime is None:
            return False
        found = await self._examine(update)
        if found is None:
            return False
        item, message, _ = found
        send = {"reply_to": message.message_id} if item.is_group else {}
        context = {"update": update.model_dump(mode="json", exclude_none=True, by_alias=True),
                   "send": send}
        added = await self.runtime.inbox.put(item, context)
        if not added:
            log.info("telegram update %s already taken: redelivery ignored", update.update_id)
        return added

    async def work(self, item: InboundMessage, context: dict[str, Any]) -> Reply | None:
        """Answer one update from the inbox (called by a worker; the reply goes to the outbox)."""
        assert self.runtime is not None
        update = Update.model_validate(context["update"], context={"bot": self.bot})
        found = await self._examine(update)
        if found is None:
            return None
        _, message, seen = found

        async def answer(msg: InboundMessage) -> Reply:
            typing = asyncio.create_task(self._typing(msg.key))
            try:
                return await self._answer(msg, message, seen)
            finally:
                typing.cancel()

        return await self.runtime.dispatcher.answer(replace(item, raw=update), handler=answer)

    async def _answer(self, msg: InboundMessage, message: Any, seen: inbound.Seen) -> Reply:
        assert self.runtime is not None
        if msg.is_group and message.from_user is not None:
            anonymous = message.sender_chat is not None and message.sender_chat.id == message.chat.id
            admin = anonymous or await self.admins.is_admin(message.chat.id, message.from_user.id)
            msg = replace(msg, is_admin=admin)
        if seen.notice is not None:
            return Reply(seen.notice, kind="notice")
        document = seen.document
        if document is not None:
            allowed = (not msg.is_group or msg.is_admin
                       or self.settings.is_admin("telegram", msg.key.user_id))
            if not allowed:
                return Reply(inbound.NOT_ADMIN, kind="notice")
            refusal = inbound.precheck(document, self.download_limit, self.bot_api_limit)
            if refusal is not None:
                return Reply(refusal, kind="error")
            try:
                data = await inbound.download(self.bot, document, self.download_limit,
                                              self.bot_api_limit)
            except IngestError as exc:
                return Reply(exc.user_message, kind="error")
            name = document.file_name or f"document-{document.file_unique_id}"
            attachment = Attachment(kind="file", name=name, mime_type=document.mime_type or "",
                                    size=len(data), data=data)
            msg = replace(msg, attachments=(attachment,))
        return await self.runtime.engine.handle(msg)

    async def _typing(self, key: ConversationKey) -> None:
        """Show "typing…" until cancelled (when the reply is ready)."""
        thread = int(key.thread_id) if key.thread_id else None
        try:
            while True:
                await self.bot.send_chat_action(chat_id=int(key.chat_id), action="typing",
                                                message_thread_id=thread)
                await asyncio.sleep(self.typing_every)
        except AiogramError as exc:
            log.debug("typing action stopped: %s", type(exc).__name__)

    async def _start_command(self, args: str, message: InboundMessage) -> Reply:
        """/start: a welcome, what this chat's knowledge holds, and how to add documents."""
        assert self.runtime is not None
        titles: list[str] = []
        registry = getattr(self.runtime.knowledge, "registry", None)
        if registry is not None:
            from knowledge.registry import tenant_of

            for kb in await registry.readable(message.key):
                titles += [s.title for s in await registry.sources(tenant_of(message.key), kb)]
        lines = ["Hi! I'm **Knowbot**. I answer questions from your team's documents and "
                 "say where each answer comes from.", ""]
        if titles:
            shown = ", ".join(f"“{t}”" for t in titles[:5])
            more = f" and {len(titles) - 5} more" if len(titles) > 5 else ""
            lines.append(f"I know {len(titles)} document{'s' if len(titles) != 1 else ''} "
                         f"here: {shown}{more}.")
        else:
            lines.append("I don't know any documents here yet.")
        limit = self.download_limit // (1024 * 1024)
        lines += ["", f"**Add a document:** send it to me as a file ({inbound.ACCEPTED}, up to "
                  f"{limit} MB), or send a link."]
        if message.is_group:
            lines.append("In this group, only admins can add documents; mention me or reply to "
                         "me to ask a question.")
        else:
            lines.append("**Ask:** just write your question.")
        lines.append("/help lists every command.")
        return Reply("\n".join(lines), kind="command")

    # ---- replies out -------------------------------------------------------------------------

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        """Send a reply as Telegram HTML, split to 4096 characters, paced, 429s honoured."""
        if self._closed:
            raise ChannelSendError("the Telegram channel is stopped", retryable=True)
        reply_to = send_context().get("reply_to")
        chat_id = int(key.chat_id)
        start = RESUME_AT.get()  # parts an earlier try already sent (an outbox retry)
        parts = render_reply(reply)
        for n, part in enumerate(parts):
            if n < start:
                continue
            try:
                chat_id = await self._send_part(chat_id, key, part, reply_to if n == start else None)
            except ChannelSendError as exc:
                exc.sent_parts = n
                raise
            if n + 1 < len(parts):
                await part_sent(n + 1)

    async def _send_part(self, chat_id: int, key: ConversationKey, text: str,
                         reply_to: int | None) -> int:
        """Send one message; return the chat id it went to (it changes if a group migrated)."""
        thread = int(key.thread_id) if key.thread_id else None
        parse_mode: str | None = ParseMode.HTML
        waited = 0.0
        for _ in range(MAX_SEND_TRIES):
            await self.pacer.wait(chat_id)
            try:
                await self.bot.send_message(
                    chat_id=chat_id, text=text, parse_mode=parse_mode, message_thread_id=thread,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                    reply_parameters=(ReplyParameters(message_id=reply_to,
                                                      allow_sending_without_reply=True)
                                      if reply_to else None))
                return chat_id
            except TelegramRetryAfter as exc:
                if waited + exc.retry_after > MAX_RETRY_WAIT:
                    raise ChannelSendError(f"Telegram asks to wait {exc.retry_after} s",
                                           retryable=True) from exc
                log.info("telegram 429 for chat %s: waiting %s s", chat_id, exc.retry_after)
                waited += exc.retry_after
                self.pacer.hold(chat_id, exc.retry_after)  # the next wait() sleeps it out
            except TelegramMigrateToChat as exc:
                log.info("telegram group %s moved to %s", chat_id, exc.migrate_to_chat_id)
                chat_id = exc.migrate_to_chat_id
            except TelegramBadRequest as exc:
                if parse_mode is not None and "parse entities" in exc.message.lower():
                    log.warning("telegram refused the HTML of a reply; sending it as plain text")
                    parse_mode, text = None, html_to_plain(text)
                    continue
                raise ChannelSendError(f"Telegram refused the message: {exc.message}",
                                       retryable=False) from exc
            except (TelegramForbiddenError, TelegramUnauthorizedError) as exc:
                raise ChannelSendError(f"Telegram refused the message: {exc.message}",
                                       retryable=False) from exc
            except (TelegramNetworkError, TelegramServerError) as exc:
                raise ChannelSendError(f"Telegram unreachable: {exc.message}",
                                       retryable=True) from exc
            except TelegramAPIError as exc:
                raise ChannelSendError(f"Telegram error: {exc.message}", retryable=True) from exc
        raise ChannelSendError("Telegram kept refusing the message", retryable=True)
