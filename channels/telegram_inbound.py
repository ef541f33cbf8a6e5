"""Telegram inbound: which messages Knowbot answers, what they say, who is admin, file downloads."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiogram import Bot
from aiogram.exceptions import AiogramError, TelegramBadRequest
from aiogram.types import Document, Message, User

from bot.errors import IngestError
from knowledge.sniff import ACCEPTED

log = logging.getLogger(__name__)

BOT_API_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile: bots may download files up to 20 MB
ADMIN_STATUSES = {"creator", "administrator"}
GROUP_TYPES = {"group", "supergroup"}
# Content people send on purpose that Knowbot cannot read: they get a pointer, not silence.
UNREADABLE = {"sticker", "voice", "audio", "video", "video_note", "animation", "location",
              "venue", "contact", "poll", "dice"}
PHOTO_NOTICE = ("I can't read photos. To add a picture of a document, send the document itself "
                f"as a file instead ({ACCEPTED}).")
UNREADABLE_NOTICE = (f"I read text messages and documents sent as files ({ACCEPTED}). "
                     "Ask me a question in words, or send /help.")
NOT_ADMIN = "Only the admins of this chat can add documents to its knowledge base."


@dataclass(frozen=True)
class Seen:
    """A message Knowbot will answer: its text for the engine and what came with it."""

    text: str
    mentions_bot: bool
    document: Document | None = None
    notice: str | None = None  # answered with this notice instead of going to the engine


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def _strip_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Remove (offset, length) spans given in UTF-16 units, as Telegram's entities count."""
    data = _utf16(text)
    for offset, length in sorted(spans, reverse=True):
        data = data[: offset * 2] + data[(offset + length) * 2:]
    return " ".join(data.decode("utf-16-le", errors="ignore").split())


def examine(message: Message, me: User) -> Seen | None:
    """What Knowbot should do with a message: None when it is not addressed to the bot.

    Private chats: every message. Groups: a command for this bot, a mention of it (by
    @username or a text mention), or a reply to one of its messages, as privacy mode expects.
    """
    if message.from_user is None or message.is_automatic_forward:
        return None
    anonymous_admin = message.sender_chat is not None and message.sender_chat.id == message.chat.id
    if message.from_user.is_bot and not anonymous_admin:
        return None  # never talk to other bots (or to ourselves)
    text = message.text if message.text is not None else (message.caption or "")
    entities = (message.entities if message.text is not None else message.caption_entities) or []
    username = (me.username or "").lower()
    mentioned, command, spans = False, False, []
    for entity in entities:
        if entity.type == "mention":
            if username and entity.extract_from(text)[1:].lower() == username:
                mentioned = True
                spans.append((entity.offset, entity.length))
        elif entity.type == "text_mention":
            if entity.user is not None and entity.user.id == me.id:
                mentioned = True
                spans.append((entity.offset, entity.length))
        elif entity.type == "bot_command" and entity.offset == 0:
            _, _, target = entity.extract_from(text).partition("@")
            if target and target.lower() != username:
                return None  # /command@another_bot
            command = True
    replied = message.reply_to_message
    replied_to_bot = (replied is not None and replied.forum_topic_created is None
                      and replied.from_user is not None and replied.from_user.id == me.id)
    group = message.chat.type in GROUP_TYPES
    if message.chat.type not in GROUP_TYPES | {"private"}:
        return None  # channels: Knowbot does not post there
    if group and not (mentioned or command or replied_to_bot):
        return None
    clean = _strip_spans(text, spans) if spans else text.strip()
    kind = message.content_type
    if message.document is not None:
        return Seen(clean, mentioned, document=message.document)
    if message.photo:
        return Seen(clean, mentioned, notice=PHOTO_NOTICE)
    if message.text is not None:
        return Seen(clean, mentioned)
    if not group and kind in UNREADABLE:
        return Seen(clean, mentioned, notice=UNREADABLE_NOTICE)
    return None  # service messages and the like


class AdminCache:
    """Whether a user is an admin of a group chat (getChatMember), remembered briefly."""

    def __init__(self, bot: Bot, ttl: float = 60.0, max_entries: int = 10_000) -> None:
        self.bot = bot
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: dict[tuple[int, int], tuple[float, bool]] = {}

    async def is_admin(self, chat_id: int, user_id: int) -> bool:
        """True if the user is the creator or an administrator of the chat."""
        now = time.monotonic()
        cached = self._seen.get((chat_id, user_id))
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        try:
            member = await self.bot.get_chat_member(chat_id=chat_id, user_id=user_id)
        except AiogramError as exc:
            log.warning("getChatMember failed for chat %s: %s", chat_id, type(exc).__name__)
            return False
        admin = member.status in ADMIN_STATUSES
        if len(self._seen) >= self.max_entries:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.ttl}
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
        self._seen[(chat_id, user_id)] = (now, admin)
        return admin


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def too_big(name: str, size: int, limit: int, bot_api_limit: bool) -> str:
    """The message for a file over the download limit."""
    if bot_api_limit:
        return (f"“{name}” is {_mb(size)}, but Telegram only lets bots download files up to "
                "20 MB. Please send a smaller file, or send me a link to the document.")
    return (f"“{name}” is {_mb(size)}, over the {limit / (1024 * 1024):.0f} MB limit for "
            "documents. Please send a smaller file, or send me a link to the document.")


def precheck(document: Document, limit: int, bot_api_limit: bool) -> str | None:
    """A refusal for a document that can be refused before downloading it, or None."""
    name = document.file_name or "That file"
    if document.file_size is not None and document.file_size > limit:
        return too_big(name, document.file_size, limit, bot_api_limit)
    major = (document.mime_type or "").split("/", 1)[0].lower()
    if major in {"image", "audio", "video"}:
        return f"“{name}” is {major}, which Knowbot cannot read; accepted types are {ACCEPTED}."
    return None


async def download(bot: Bot, document: Document, limit: int, bot_api_limit: bool,
                   timeout: int = 120) -> bytes:
    """Download a document through getFile and the file path, never more than `limit` bytes."""
    name = document.file_name or "the file"
    try:
        file = await bot.get_file(document.file_id)
    except TelegramBadRequest as exc:
        if "too big" in exc.message.lower():
            raise IngestError(too_big(name, document.file_size or limit + 1, limit, True)) from exc
        raise IngestError(f"I could not download {name} from Telegram. Please send it again.") from exc
    except AiogramError as exc:
        raise IngestError(f"I could not download {name} from Telegram. Please send it again.") from exc
    if file.file_size is not None and file.file_size > limit:
        raise IngestError(too_big(name, file.file_size, limit, bot_api_limit))
    if not file.file_path:
        raise IngestError(f"Telegram did not give me a way to download {name}.")
    url = bot.session.api.file_url(bot.token, file.file_path)  # holds the token: never logged
    data = bytearray()
    try:
        stream = bot.session.stream_content(url, timeout=timeout, chunk_size=65536)
        try:
            async for chunk in stream:
                data += chunk
                if len(data) > limit:
                    raise IngestError(too_big(name, len(data), limit, bot_api_limit))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("download of a document failed: %s", type(exc).__name__)
        raise IngestError(f"I could not download {name} from Telegram. Please send it again.") from exc
    return bytes(data)
