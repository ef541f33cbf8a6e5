"""The Slack channel: Events API and slash commands through slack-bolt (HTTP or Socket Mode).

HTTP mode takes everything on POST /slack/events, each request checked against the signing
secret by Bolt before anything else runs. Socket Mode (KNOWBOT_SLACK_APP_TOKEN) needs no public
URL. With KNOWBOT_SLACK_CLIENT_ID/_SECRET, workspaces install through Bolt's OAuth flow
(/slack/install) and their installations live in Knowbot's database; otherwise one workspace
uses KNOWBOT_SLACK_BOT_TOKEN. The Slack team id is the tenant of every conversation.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import Response

from bot.config import Settings
from bot.errors import ChannelSendError, ConfigError, IngestError, KnowbotError
from bot.outbox import RESUME_AT, send_context
from bot.tokens import message_tokens
from bot.types import ConversationKey, InboundMessage, Reply
from channels.slack_commands import COMMAND, SlashCommands
from channels.slack_files import MAX_FILES, RateLimitRetry, Sleep, fetch_file
from channels.slack_format import CONFIRM_ACTION, render
from channels.slack_oauth import StateInstallationStore, StateOAuthStateStore

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bot.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://slack.com/api/"
BOT_SCOPES = ["app_mentions:read", "channels:history", "chat:write", "commands", "files:read",
              "groups:history", "im:history", "im:read", "im:write", "mpim:history", "users:read"]
MAX_BODY = 1024 * 1024  # the largest request body taken on /slack/events
ADMIN_CACHE_SECONDS = 300.0
THREAD_MESSAGES = 30  # earlier thread messages read as context (conversations.replies)
THREAD_CHARS = 6000  # and at most this much of their text
IGNORED_SUBTYPES = {"bot_message", "message_changed", "message_deleted", "message_replied",
                    "channel_join", "channel_leave", "thread_broadcast"}
RETRYABLE_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                    "request_timeout", "team_added_to_org"}

_USER_LINK = re.compile(r"<@([A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL_LINK = re.compile(r"<#([A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!([^>|]+)(?:\|([^>]*))?>")
_URL_LINK = re.compile(r"<((?:https?|mailto):[^>|]+)(?:\|[^>]*)?>")


def plain_text(text: str, bot_user_id: str | None) -> str:
    """A Slack message's text as plain words: the bot's mention removed, links unwrapped."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text)
    text = _USER_LINK.sub(lambda m: "@" + (m.group(2) or m.group(1)), text)
    text = _CHANNEL_LINK.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SPECIAL.sub(lambda m: "@" + (m.group(2) or m.group(1)).lstrip("@"), text)
    text = _URL_LINK.sub(lambda m: m.group(1), text)
    return html.unescape(text).strip()


def api_base_of(settings: Settings) -> str:
    """The Web API base URL, with the trailing slash slack_sdk expects."""
    base = settings.slack_api_base or DEFAULT_API_BASE
    return base if base.endswith("/") else base + "/"


def send_error(exc: SlackApiError, what: str) -> ChannelSendError:
    """A ChannelSendError for a failed Web API call: retryable for rate limits and outages."""
    response = exc.response
    status = getattr(response, "status_code", 0) or 0
    error = str(response.get("error", "")) if response is not None else ""
    retryable = status == 429 or status >= 500 or error in RETRYABLE_ERRORS
    return ChannelSendError(f"Slack {what} failed: {error or status}", retryable=retryable)


class SlackChannel:
    """Knowbot in Slack: mentions and DMs answered in threads, slash commands, files to ingest."""

    name = "slack"

    def __init__(self, settings: Settings, *, sleep: Sleep = asyncio.sleep,
                 max_rate_limit_wait: float = 30.0) -> None:
        if settings.slack_signing_secret is None and settings.slack_app_token is None:
            raise ConfigError("Slack needs KNOWBOT_SLACK_SIGNING_SECRET (HTTP mode) or "
                              "KNOWBOT_SLACK_APP_TOKEN (Socket Mode)")
        oauth = bool(settings.slack_client_id and settings.slack_client_secret)
        if not oauth and settings.slack_bot_token is None:
            raise ConfigError("Slack needs KNOWBOT_SLACK_BOT_TOKEN, or KNOWBOT_SLACK_CLIENT_ID "
                              "and KNOWBOT_SLACK_CLIENT_SECRET for multi-workspace installs")
        self.settings = settings
        self.api_base = api_base_of(settings)
        self.retry = RateLimitRetry(max_retry_count=2, max_wait=max_rate_limit_wait, sleep=sleep)
        self.client = AsyncWebClient(base_url=self.api_base, retry_handlers=[
            AsyncConnectionErrorRetryHandler(), self.retry])
        self.oauth = bool(settings.slack_client_id and settings.slack_client_secret)
        self.runtime: "Runtime | None" = None
        self.bolt: AsyncApp | None = None
        self.installations: StateInstallationStore | None = None
        self.commands = SlashCommands(self)
        self.http: httpx.AsyncClient | None = None
        # One aiohttp session for every Web API call while running: without one, slack_sdk
        # opens a session, a connection (and a TLS handshake) for each call and closes it.
        self._session: aiohttp.ClientSession | None = None
        self._socket: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._admins: dict[tuple[str, str], tuple[float, bool]] = {}

    # ---- setup -------------------------------------------------------------------------------

    def mount(self, app: "FastAPI", runtime: "Runtime") -> None:
        """Build the Bolt app and add /slack/events (and the OAuth install routes)."""
        self.runtime = runtime
        secret = self.settings.slack_signing_secret
        app_token = self.settings.slack_app_token
        if secret is None and app_token is None:
            raise ConfigError("Slack needs KNOWBOT_SLACK_SIGNING_SECRET (HTTP mode) or "
                              "KNOWBOT_SLACK_APP_TOKEN (Socket Mode)")
        self.bolt = self._build_bolt(secret.get_secret_value() if secret else "")
        handler = AsyncSlackRequestHandler(self.bolt)

        async def events(request: Request) -> Response:
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY:
                return Response("payload too large", status_code=413)
            body = bytearray()  # read with a bound even without a Content-Length (chunked)
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return Response("payload too large", status_code=413)
            request._body = bytes(body)  # what Bolt's adapter reads with request.body()
            return await handler.handle(request)

        if secret is not None:
            app.add_route("/slack/events", events, methods=["POST"])
        if self.oauth and self.bolt.oauth_flow is not None:
            flow = self.bolt.oauth_flow
            app.add_route(flow.install_path, handler.handle, methods=["GET"])
            app.add_route(flow.redirect_uri_path, handler.handle, methods=["GET"])

    def _build_bolt(self, signing_secret: str) -> AsyncApp:
        assert self.runtime is not None
        settings = self.settings
        if self.oauth:
            from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings

            self.installations = StateInstallationStore(self.runtime.state)
            origin = self.api_base.rsplit("/api/", 1)[0] if "/api/" in self.api_base else None
            public = (settings.public_url or "").rstrip("/")
            oauth = AsyncOAuthSettings(
                client_id=settings.slack_client_id,
                client_secret=settings.slack_client_secret.get_secret_value(),  # type: ignore
                scopes=BOT_SCOPES, user_scopes=[],
                redirect_uri=f"{public}/slack/oauth_redirect" if public else None,
                authorization_url=f"{origin}/oauth/v2/authorize" if origin else None,
                installation_store=self.installations,
                state_store=StateOAuthStateStore(self.runtime.state),
                installation_store_bot_only=True,
                logger=log,
            )
            bolt = AsyncApp(client=self.client, signing_secret=signing_secret,
                            oauth_settings=oauth, installation_store=self.installations,
                            installation_store_bot_only=True, logger=log, name="knowbot",
                            process_before_response=True)
            bolt.enable_token_revocation_listeners()  # uninstalls forget the workspace's token
        else:
            if settings.slack_bot_token is None:
                raise ConfigError("Slack needs KNOWBOT_SLACK_BOT_TOKEN, or a client id and "
                                  "secret for multi-workspace installs")
            token = settings.slack_bot_token.get_secret_value()
            client = AsyncWebClient(token=token, base_url=self.api_base,
                                    retry_handlers=self.client.retry_handlers)
            bolt = AsyncApp(client=client, signing_secret=signing_secret, logger=log,
                            name="knowbot", process_before_response=True)
        # Listeners only put the event in the inbox (one write, deduped by event id), so Bolt
        # runs them before it responds: the ack comes after the event is safe, stays fast, and
        # a failure to keep it is a 500 that Slack retries. Workers answer it after the ack.
        bolt.event("app_mention")(self._on_mention)
        bolt.event({"type": "message", "subtype": (None, "file_share")})(self._on_message)
        bolt.event("message")(self._on_other)  # edits, deletions, bots: acknowledged, ignored
        bolt.action(re.compile(f"^{CONFIRM_ACTION}_\\d$"))(self._on_confirm)
        bolt.command(settings.slack_ask_command)(self.commands.on_ask)
        bolt.command(settings.slack_kb_command)(self.commands.on_kb)
        return bolt

    async def start(self) -> None:
        """Open the download client, and connect to Socket Mode when an app token is set."""
        self.http = httpx.AsyncClient(timeout=self.settings.ingest_fetch_timeout,
                                      follow_redirects=True, max_redirects=3)
        # the session slack_sdk would make per call, made once (its timeout is the clients')
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.client.timeout))
        for client in self._web_clients():
            client.session = self._session
        if self.settings.slack_app_token is not None and self.bolt is not None:
            from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

            self._socket = AsyncSocketModeHandler(
                self.bolt, self.settings.slack_app_token.get_secret_value(),
                web_client=AsyncWebClient(base_url=self.api_base, session=self._session,
                                          retry_handlers=self.client.retry_handlers))
            self._connecting = asyncio.create_task(self._connect(self._socket),
                                                   name="knowbot:slack:socket")

    async def _connect(self, socket: Any) -> None:
        """Connect Socket Mode, retrying with a bounded backoff: a network blip at start-up
        must not stop the server (the SDK reconnects by itself once connected)."""
        delay = 1.0
        while True:
            try:
                await socket.connect_async()
                log.info("Slack Socket Mode connected")
                return
            except SlackApiError as exc:
                if exc.response.get("error") in ("invalid_auth", "not_allowed_token_type",
                                                 "token_revoked", "account_inactive"):
                    log.error("Slack refused KNOWBOT_SLACK_APP_TOKEN (%s); Socket Mode is off",
                              exc.response.get("error"))
                    return
                log.warning("Slack Socket Mode connect failed (%s); retrying in %.0f s",
                            exc.response.get("error"), delay)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.warning("Slack Socket Mode connect failed (%s); retrying in %.0f s",
                            type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def stop(self, timeout: float = 30.0) -> None:
        """Disconnect Socket Mode and finish the answers in flight."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
            self._connecting = None
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        if self._session is not None:
            for client in self._web_clients():
                client.session = None  # a call after the stop makes its own session again
            await self._session.close()
            self._session = None

    def _web_clients(self) -> list[AsyncWebClient]:
        """The Web API clients this channel calls through: its own, and Bolt's (the same
        one with OAuth; with one bot token, Bolt's own client holding that token)."""
        clients = [self.client]
        bolt_client = self.bolt.client if self.bolt is not None else None
        if isinstance(bolt_client, AsyncWebClient) and bolt_client is not self.client:
            clients.append(bolt_client)
        return clients

    # ---- tokens and people -------------------------------------------------------------------

    async def token_for(self, team_id: str) -> str:
        """The bot token of a workspace (its installation, or the configured token)."""
        if self.installations is not None:
            bot = await self.installations.async_find_bot(enterprise_id=None, team_id=team_id)
            if bot is None or not bot.bot_token:
                raise ChannelSendError(f"Knowbot is not installed in Slack team {team_id}",
                                       retryable=False)
            return bot.bot_token
        if self.settings.slack_bot_token is None:
            raise ChannelSendError("no Slack bot token is configured", retryable=False)
        return self.settings.slack_bot_token.get_secret_value()

    async def is_admin(self, token: str, team_id: str, user_id: str) -> bool:
        """True for a Knowbot admin or a workspace admin/owner (users.info, cached briefly)."""
        if self.settings.is_admin("slack", user_id):
            return True
        now = time.monotonic()
        cached = self._admins.get((team_id, user_id))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            found = await self.client.users_info(token=token, user=user_id)
            user = found.get("user") or {}
            admin = bool(user.get("is_admin") or user.get("is_owner"))
        except SlackApiError as exc:
            log.warning("users.info failed: %s", exc.response.get("error"))
            return False
        if len(self._admins) >= 1000:
            self._admins.clear()
        self._admins[(team_id, user_id)] = (now + ADMIN_CACHE_SECONDS, admin)
        return admin

    # ---- events ------------------------------------------------------------------------------

    async def _on_other(self, event: dict[str, Any]) -> None:
        log.debug("Slack message event %s ignored", event.get("subtype"))

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any],
                          context: AsyncBoltContext) -> None:
        await self._take_event(body, event, context)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any],
                          context: AsyncBoltContext) -> None:
        if event.get("channel_type") != "im":
            return  # in channels Knowbot answers only when mentioned (app_mention)
        await self._take_event(body, event, context)

    async def _on_confirm(self, ack: Any, body: dict[str, Any], action: dict[str, Any],
                          context: AsyncBoltContext) -> None:
        """A "Confirm" button under an answer: runs `/confirm CODE` as that person, there."""
        await ack()
        code = str(action.get("value") or "")
        team = str((body.get("team") or {}).get("id") or context.team_id or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        user = str((body.get("user") or {}).get("id") or "")
        posted = body.get("message") or {}
        thread = str(posted.get("thread_ts") or posted.get("ts") or "")
        if not (code.isdigit() and team and channel and user and thread):
            return
        key = ConversationKey("slack", team, channel, user, thread)
        message = InboundMessage(key=key, message_id=f"action:{body.get('trigger_id') or code}",
                                 text=f"/confirm {code}", is_group=not channel.startswith("D"))
        await self._keep(message, {"files": []})

    def _ignored(self, event: dict[str, Any], context: AsyncBoltContext) -> bool:
        user = event.get("user")
        return (not user or bool(event.get("bot_id")) or event.get("subtype") in IGNORED_SUBTYPES
                or user in (context.bot_user_id, context.get("bot_user_id"))
                or "edited" in event)

    async def _take_event(self, body: dict[str, Any], event: dict[str, Any],
                          context: AsyncBoltContext) -> None:
        if self._ignored(event, context):
            return
        team = str(body.get("team_id") or context.team_id or "")
        event_id = str(body.get("event_id") or f"{event.get('channel')}:{event.get('ts')}")
        channel = str(event.get("channel", ""))
        is_group = event.get("channel_type") != "im" and not channel.startswith("D")
        key = ConversationKey("slack", team, channel, str(event["user"]),
                              str(event.get("thread_ts") or event.get("ts")))
        message = InboundMessage(
            key=key, message_id=event_id, text=plain_text(str(event.get("text") or ""),
                                                          context.bot_user_id),
            is_group=is_group, mentions_bot=event.get("type") == "app_mention")
        files = [f.get("id") for f in event.get("files") or () if f.get("id")][:MAX_FILES]
        thread = {k: event[k] for k in ("ts", "thread_ts") if event.get(k)}
        await self._keep(message, {"files": files, "thread": thread})

    async def _keep(self, message: InboundMessage, context: dict[str, Any]) -> None:
        """Put an event in the inbox before Bolt acks it (process_before_response)."""
        assert self.runtime is not None
        if not await self.runtime.inbox.put(message, context):
            log.info("Slack event %s already taken: redelivery ignored", message.message_id)

    async def work(self, message: InboundMessage, context: dict[str, Any]) -> Reply | None:
        """Answer one event from the inbox: fetch its files, run it through the dispatcher."""
        assert self.runtime is not None
        if "command" in context:  # a slash command, answered on its response_url
            return await self.commands.work(message, context)
        key = message.key
        token = await self.token_for(key.tenant)
        file_ids = list(context.get("files") or ())
        message = replace(message, raw={"event": context.get("thread") or {}})
        if message.is_group:
            message = replace(message, is_admin=await self.is_admin(token, key.tenant,
                                                                    key.user_id))
        await self._thread_context(message, token)
        problem: Reply | None = None
        if file_ids:
            # the engine refuses a non-admin's file in a channel: don't download it then
            allowed = not message.is_group or message.is_admin
            try:
                attachments = tuple([
                    await fetch_file(self.client, self._http(), token, file_id,
                                     max_bytes=self.settings.ingest_max_bytes,
                                     api_base=self.api_base, download=allowed)
                    for file_id in file_ids])
                message = replace(message, attachments=attachments)
            except IngestError as exc:
                problem = Reply(exc.user_message, kind="error")

        async def refuse(_: InboundMessage) -> Reply:
            assert problem is not None
            return problem

        # through the dispatcher either way: rate limit, one error boundary
        return await self.runtime.dispatcher.answer(message, refuse if problem else None)

    async def _thread_context(self, message: InboundMessage, token: str) -> None:
        """Put a thread's earlier messages into the conversation's memory the first time."""
        assert self.runtime is not None
        key, event = message.key, (message.raw or {}).get("event", {})
        thread_ts = event.get("thread_ts")
        if not thread_ts or thread_ts == event.get("ts"):
            return
        store = self.runtime.store
        if await store.has_messages(key):
            return  # Knowbot already took part in this thread: its memory has it
        try:
            found = await self.client.conversations_replies(
                token=token, channel=key.chat_id, ts=thread_ts, limit=THREAD_MESSAGES)
        except SlackApiError as exc:
            log.info("thread context unavailable: %s", exc.response.get("error"))
            return
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # the earlier messages are context, not the question: answer without them
            log.warning("thread context unavailable: conversations.replies failed (%s)",
                        type(exc).__name__)
            return
        lines: list[str] = []
        for item in (found.get("messages") or [])[:THREAD_MESSAGES]:
            if item.get("ts") == event.get("ts"):
                continue
            text = plain_text(str(item.get("text") or ""), None)
            if text:
                who = "Knowbot" if item.get("bot_id") else f"@{item.get('user', 'someone')}"
                lines.append(f"{who}: {text}")
        context = "\n".join(lines)[-THREAD_CHARS:]
        if context:
            turn = f"Earlier messages in this Slack thread:\n{context}"
            try:
                await store.add_messages(key, [("user", turn, message_tokens("user", turn))],
                                         user_id=key.user_id)
            except KnowbotError:
                log.warning("could not keep the thread context of %s", key.chat_id)

    def _http(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=self.settings.ingest_fetch_timeout,
                                          follow_redirects=True, max_redirects=3)
        return self.http

    # ---- sending -----------------------------------------------------------------------------

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        """Post a reply in the conversation's thread as Block Kit messages (429s waited out)."""
        token = await self.token_for(key.tenant)
        command = send_context().get(COMMAND)
        if command is not None:  # a slash command's answer: on its response_url
            await self.commands.respond(str(command.get("response_url") or ""), reply,
                                        bool(command.get("public")), key, token,
                                        float(command.get("issued") or 0))
            return
        start = RESUME_AT.get()  # messages an earlier try already posted (an outbox retry)
        for n, message in enumerate(render(reply)):
            if n < start:
                continue
            try:
                await self.client.chat_postMessage(
                    token=token, channel=key.chat_id, thread_ts=key.thread_id,
                    text=message.text, blocks=message.blocks, unfurl_links=False)
            except SlackApiError as exc:
                error = send_error(exc, "chat.postMessage")
                error.sent_parts = n
                raise error from exc
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise ChannelSendError(f"Slack chat.postMessage failed: {type(exc).__name__}",
                                       retryable=True, sent_parts=n) from exc
        log.debug("Slack reply sent to %s (%d chars)", key.chat_id, len(reply.text))
