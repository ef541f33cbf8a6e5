"""Slack slash commands (/ask and /kb by default): acked at once, answered on the response_url."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.errors import ChannelSendError
from bot.outbox import RESUME_AT, part_sent
from bot.types import ConversationKey, InboundMessage, Reply
from channels.slack_format import SlackMessage, render

if TYPE_CHECKING:
    from channels.slack import SlackChannel

log = logging.getLogger(__name__)

RESPONSE_USES = "slack.response_url"  # namespace counting the uses of each response_url
MAX_USES = 5  # Slack allows 5 responses per response_url ...
WINDOW = 30 * 60  # ... within 30 minutes of the command
MARGIN = 60  # stop a minute early rather than post into a closed window
WORKING = "Working on it…"
COMMAND = "slash_command"  # the send context of a command's answer: where it goes


class SlashCommands:
    """The slash commands of one Slack channel."""

    def __init__(self, channel: "SlackChannel") -> None:
        self.channel = channel

    def _now(self) -> float:
        """Unix seconds on the runtime's clock (the response_url window is wall time)."""
        runtime = self.channel.runtime
        return runtime.state.clock.time() if runtime is not None else time.time()

    async def on_ask(self, ack: AsyncAck, command: dict[str, Any],
                     context: AsyncBoltContext) -> None:
        """The ask command: a question, answered privately unless it starts with `public`."""
        await self._take(ack, command, context, kb=False)

    async def on_kb(self, ack: AsyncAck, command: dict[str, Any],
                    context: AsyncBoltContext) -> None:
        """The kb command: list, search or delete the channel's documents."""
        await self._take(ack, command, context, kb=True)

    async def _take(self, ack: AsyncAck, command: dict[str, Any], context: AsyncBoltContext,
                    kb: bool) -> None:
        issued = self._now()
        text = str(command.get("text") or "").strip()
        first, _, rest = text.partition(" ")
        public = first.lower() == "public"
        if public:
            text = rest.strip()
        if not kb and not text:
            name = self.channel.settings.slack_ask_command
            await ack(text=f"Usage: {name} [public] QUESTION. Add `public` to share the answer "
                           "in the channel.")
            return
        team = str(command.get("team_id") or context.team_id or "")
        channel_id = str(command.get("channel_id") or "")
        user = str(command.get("user_id") or "")
        key = ConversationKey("slack", team, channel_id, user)
        is_group = not channel_id.startswith("D")
        message = InboundMessage(
            key=key, message_id=str(command.get("trigger_id") or f"cmd-{uuid.uuid4().hex}"),
            text=f"/kb {text}".strip() if kb else text, is_group=is_group)
        # In the inbox before Slack hears of it (within its 3 seconds): a replica that dies now
        # leaves the command for another. The answer goes out on the response_url.
        reply_on = {"response_url": str(command.get("response_url") or ""), "public": public,
                    "issued": issued}
        runtime = self.channel.runtime
        assert runtime is not None
        if not await runtime.inbox.put(message, {"command": {"kb": kb}, "send": {
                COMMAND: reply_on}}):
            log.info("Slack command %s already taken: ignored", message.message_id)
        await ack(text=WORKING, response_type="ephemeral")

    async def work(self, message: InboundMessage, context: dict[str, Any]) -> Reply | None:
        """Answer a command from the inbox (the channel's `work` hands it here)."""
        runtime = self.channel.runtime
        assert runtime is not None
        kb = bool(context["command"].get("kb"))
        public = bool(context.get("send", {}).get(COMMAND, {}).get("public"))
        if kb and message.is_group:
            key = message.key
            token = await self.channel.token_for(key.tenant)
            message = replace(message, is_admin=await self.channel.is_admin(
                token, key.tenant, key.user_id))
        reply = await runtime.dispatcher.answer(message)
        if reply is not None and public and not kb:
            reply = replace(reply, text=f"> {message.text}\n\n{reply.text}")
        return reply

    async def respond(self, response_url: str, reply: Reply, public: bool,
                      key: ConversationKey, token: str, issued: float) -> None:
        """Post a reply on the response_url while its uses last, else through the Web API.

        An outbox retry resumes after the parts an earlier try posted (RESUME_AT).
        """
        start = RESUME_AT.get()
        for n, part in enumerate(render(reply)):
            if n < start:
                continue
            body = {"response_type": "in_channel" if public else "ephemeral",
                    "text": part.text, "blocks": part.blocks, "replace_original": False}
            posted = False
            if response_url and await self.take_use(response_url, issued):
                try:
                    client = AsyncWebhookClient(response_url, retry_handlers=[self.channel.retry])
                    answer = await client.send_dict(body)
                    posted = answer.status_code == 200
                    if not posted:
                        log.warning("Slack response_url answered %s", answer.status_code)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    log.warning("Slack response_url failed: %s", type(exc).__name__)
            if not posted:
                await self._fallback(key, token, part, public, sent=n)
            await part_sent(n + 1)

    async def _fallback(self, key: ConversationKey, token: str, part: SlackMessage,
                        public: bool, sent: int) -> None:
        client = self.channel.client
        method = "chat.postMessage" if public else "chat.postEphemeral"
        try:
            if public:
                await client.chat_postMessage(token=token, channel=key.chat_id, text=part.text,
                                              blocks=part.blocks, unfurl_links=False)
            else:
                await client.chat_postEphemeral(token=token, channel=key.chat_id,
                                                user=key.user_id, text=part.text,
                                                blocks=part.blocks)
        except SlackApiError as exc:
            from channels.slack import send_error

            error = send_error(exc, method)  # kept in the outbox when Slack may take it later
            error.sent_parts = sent
            raise error from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ChannelSendError(f"Slack {method} failed: {type(exc).__name__}",
                                   retryable=True, sent_parts=sent) from exc

    async def take_use(self, response_url: str, issued: float) -> bool:
        """Count one use of a response_url; False past 5 uses or 30 minutes (shared by replicas)."""
        runtime = self.channel.runtime
        assert runtime is not None
        state = runtime.state
        name = hashlib.sha256(response_url.encode()).hexdigest()[:40]
        until = issued + WINDOW - MARGIN
        for _ in range(8):  # compare-and-swap, bounded
            now = state.clock.time()
            if now >= until:
                return False
            entry = await state.get(RESPONSE_USES, name)
            if entry is None:
                if await state.swap(RESPONSE_USES, name, 1, 0, ttl=until - now):
                    return True
                continue
            if int(entry.value) >= MAX_USES:
                return False
            if await state.swap(RESPONSE_USES, name, int(entry.value) + 1, entry.version,
                                ttl=until - now):
                return True
        return False
