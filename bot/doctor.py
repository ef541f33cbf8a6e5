"""`knowbot doctor`: check the settings and everything they point at, one line per check.

Every check is harmless: it reads, or makes the smallest call the service offers (SELECT 1,
PING, listing collections, a one-token completion, Slack auth.test, Telegram getMe and
getWebhookInfo, WeChat's stable access token, which does not replace the running one). A failed
check says what to do about it. Output names settings and hosts, never a secret's value.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from bot.config import DEFAULT_PROVIDER, Settings
from bot.errors import KnowbotError

TIMEOUT = 10.0  # seconds one check may take
MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "--  "}


@dataclass(frozen=True)
class Result:
    """One check: its status (ok, warn, fail, skip), what was found and what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The check as one line of output."""
        text = f"{MARKS[self.status]}  {self.name}: {self.detail}"
        return f"{text} -> {self.fix}" if self.fix else text


def _hide(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return first[:200] or type(cause).__name__


# ---- checks -------------------------------------------------------------------------------


async def check_settings(settings: Settings) -> list[Result]:
    """The settings load and every enabled channel has what it needs."""
    from bot.app import enabled_channels

    results = [Result("settings", "ok", f"loaded (data dir {settings.data_dir})")]
    try:
        channels = enabled_channels(settings)
    except KnowbotError as exc:
        return results + [Result("channels", "fail", str(exc), "set the missing setting")]
    names = ", ".join(c.name for c in channels) or "none (only the terminal)"
    results.append(Result("channels", "ok", names))
    if settings.database_url and settings.secret_key is None:
        results.append(Result("secret key", "warn", "KNOWBOT_SECRET_KEY is not set: each "
                              "replica keeps its own random key, so a link signed by one fails "
                              "on another", "set KNOWBOT_SECRET_KEY to the same value everywhere"))
    results += _console_checks(settings)
    return results


def _console_checks(settings: Settings) -> list[Result]:
    """The web console: on, and reachable through the links /console sends."""
    if not settings.console_enabled:
        return []
    found = []
    password = settings.console_password
    if password is not None and len(password.get_secret_value()) < 12:
        found.append(Result("console", "warn", "KNOWBOT_CONSOLE_PASSWORD is shorter than 12 "
                            "characters", "use a longer one (sign-in allows 5 wrong tries per "
                            "address in 15 minutes)"))
    if settings.admins and not settings.public_url:
        found.append(Result("console", "warn", "KNOWBOT_PUBLIC_URL is not set: the sign-in "
                            f"links /console sends point to http://{settings.host}:"
                            f"{settings.port}", "set KNOWBOT_PUBLIC_URL to the HTTPS address"))
    if not found:
        how = "password" if (password or settings.console_password_hash) else "chat links"
        found.append(Result("console", "ok", f"on at /console (sign-in by {how})"))
    return found


async def check_database(settings: Settings) -> Result:
    """The database answers and its schema is up to date."""
    from sqlalchemy.engine import make_url

    from bot.db import schema_revisions

    url = settings.resolved_database_url
    where = make_url(url).render_as_string(hide_password=True)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and \
            not Path(parsed.database).exists():
        return Result("database", "ok", f"{where} (not created yet: made on first start)")
    try:
        current, head = await asyncio.to_thread(schema_revisions, url, 5.0)
    except KnowbotError as exc:
        return Result("database", "fail", str(exc).replace("KNOWBOT_DATABASE_URL: ", ""),
                      "check KNOWBOT_DATABASE_URL and that the server runs and is reachable")
    if current == head:
        return Result("database", "ok", f"{where}, schema at {head}")
    if settings.migrate_on_start:
        return Result("database", "ok", f"{where}, schema at {current or 'none'} (migrated to "
                      f"{head} at start-up)")
    return Result("database", "fail", f"{where}: schema at {current or 'none'}, Knowbot needs "
                  f"{head}", "run `knowbot migrate`")


async def check_redis(settings: Settings) -> Result:
    """Redis answers PING."""
    if not settings.redis_url:
        return Result("redis", "skip", "not configured (rate limits and the scheduler lease "
                      "live in the database)")
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        await client.ping()
        info = await client.info("server")
        return Result("redis", "ok", f"{_hide(settings.redis_url)} answers "
                      f"(Redis {info.get('redis_version', '?')})")
    except (RedisError, OSError) as exc:
        return Result("redis", "fail", f"{_hide(settings.redis_url)}: {_reason(exc)}",
                      "check KNOWBOT_REDIS_URL and that Redis runs and is reachable")
    finally:
        await client.aclose()


async def check_vectors(settings: Settings) -> Result:
    """The Qdrant server answers (or the embedded store's folder is usable)."""
    if not settings.qdrant_url:
        folder = Path(settings.data_dir) / "qdrant"
        where = folder if folder.exists() else Path(settings.data_dir)
        while not where.exists() and where != where.parent:
            where = where.parent
        if not os.access(where, os.W_OK):
            return Result("vector store", "fail", f"cannot write {where}",
                          "make KNOWBOT_DATA_DIR writable for this user")
        return Result("vector store", "ok", f"Qdrant Edge in {folder} (one process at a time)")

    def probe() -> str:
        from qdrant_client import QdrantClient

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        client = QdrantClient(url=settings.qdrant_url, api_key=key, timeout=5)
        try:
            names = {c.name for c in client.get_collections().collections}
        finally:
            client.close()
        state = "exists" if settings.qdrant_collection in names else "made on first ingest"
        return f"{settings.qdrant_url} answers; collection {settings.qdrant_collection} {state}"

    try:
        return Result("vector store", "ok", await asyncio.to_thread(probe))
    except Exception as exc:  # noqa: BLE001 - qdrant-client raises many kinds; all are a finding
        text = _reason(exc)
        fix = ("check KNOWBOT_QDRANT_API_KEY" if "401" in text or "403" in text
               else "check KNOWBOT_QDRANT_URL and that the server runs and is reachable")
        return Result("vector store", "fail", f"{settings.qdrant_url}: {text}", fix)


async def check_embedding(settings: Settings) -> Result:
    """The embedding model is built (or where it will be), and loads."""
    from bot.runtime import DEFAULT_EMBEDDING_MODEL

    models = settings.resolved_models_dir
    if settings.embedding_model != DEFAULT_EMBEDDING_MODEL:
        return Result("embedding model", "ok", f"{settings.embedding_model} (fetched into "
                      f"{models} on first use unless already there)")
    from knowledge.e5_convert import MANIFEST_FILE
    from knowledge.embedder import Embedder, default_model_dir

    built = default_model_dir(models)
    if not (built / MANIFEST_FILE).is_file():
        return Result("embedding model", "warn", f"not built yet in {models} (it is built on "
                      "first use, a few seconds)", "run `knowbot models build` to build it now")
    try:
        await asyncio.to_thread(Embedder.default, settings.data_dir, models_dir=models)
    except KnowbotError as exc:
        return Result("embedding model", "fail", str(exc), "run `knowbot models build`")
    return Result("embedding model", "ok", f"{settings.embedding_model}, built in {models}, loads")


def _provider_setting(name: str, field: str) -> str:
    if name == DEFAULT_PROVIDER:
        return f"KNOWBOT_LLM_{field.upper()}"
    return f"llm_providers.{name}.{field}"


async def check_providers(settings: Settings) -> list[Result]:
    """Each model provider answers one tiny request."""
    import openai

    providers = settings.providers()
    if not providers:
        return [Result("model", "skip", "none configured: questions get extractive answers")]
    results = []
    for name in settings.provider_order():
        config = providers[name]
        base = config.base_url or "https://api.openai.com/v1"
        label = f"model {name}" if len(providers) > 1 else "model"
        client = openai.AsyncOpenAI(
            api_key=config.api_key.get_secret_value() if config.api_key else "not-needed",
            base_url=config.base_url, timeout=TIMEOUT, max_retries=0)
        started = time.perf_counter()
        try:
            await client.chat.completions.create(
                model=config.model, max_tokens=1,
                messages=[{"role": "user", "content": "Reply with one word: ok"}])
        except openai.APIConnectionError as exc:
            results.append(Result(label, "fail", f"could not connect to {base} ({_reason(exc)})",
                                  f"check {_provider_setting(name, 'base_url')}"))
        except openai.AuthenticationError:
            results.append(Result(label, "fail", f"{base} refused the API key (HTTP 401)",
                                  f"check {_provider_setting(name, 'api_key')}"))
        except openai.NotFoundError:
            results.append(Result(label, "fail", f"{base} answered HTTP 404 for model "
                                  f"{config.model!r}",
                                  f"check {_provider_setting(name, 'model')} and that "
                                  f"{_provider_setting(name, 'base_url')} ends in /v1"))
        except openai.APIStatusError as exc:
            results.append(Result(label, "fail", f"{base} answered HTTP {exc.status_code}",
                                  "see the provider's status page or try again"))
        except openai.OpenAIError as exc:
            results.append(Result(label, "fail", f"{base}: {type(exc).__name__}",
                                  f"check {_provider_setting(name, 'base_url')}"))
        else:
            ms = (time.perf_counter() - started) * 1000
            results.append(Result(label, "ok", f"{config.model} at {base} answered in {ms:.0f} ms"))
        finally:
            await client.close()
    return results


@dataclass(frozen=True)
class _SlackAnswer:
    """What one Slack Web API call gave: the response, Slack's error code, or why it failed."""

    response: Any = None
    error: str = ""  # Slack's error code (invalid_auth, not_authed, ...)
    unreachable: str = ""  # the transport failure when Slack was not reached


async def _slack_call(settings: Settings, token: str, method: str) -> _SlackAnswer:
    """One harmless Slack Web API call with `token`."""
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    from channels.slack import api_base_of

    client = AsyncWebClient(token=token, base_url=api_base_of(settings), timeout=int(TIMEOUT))
    try:
        return _SlackAnswer(response=await client.api_call(method))
    except SlackApiError as exc:
        error = exc.response.get("error", "error") if exc.response is not None else "error"
        return _SlackAnswer(error=str(error))
    except Exception as exc:  # noqa: BLE001 - aiohttp and OS errors: Slack not reachable
        return _SlackAnswer(unreachable=f"could not reach {api_base_of(settings)} "
                                        f"({type(exc).__name__})")
    finally:
        session = getattr(client, "session", None)
        if session is not None:
            await session.close()


async def check_slack(settings: Settings) -> list[Result]:
    """Slack accepts the bot token (auth.test) and the app token (apps.connections.open)."""
    results = []
    if settings.slack_bot_token is None:
        if settings.slack_client_id:
            results.append(Result("slack", "ok", "OAuth mode: each workspace's token comes with "
                                  "its install (/slack/install)"))
    else:
        answer = await _slack_call(settings, settings.slack_bot_token.get_secret_value(),
                                   "auth.test")
        found = answer.response
        results.append(_slack_result(
            "slack", answer, "bot", "check KNOWBOT_SLACK_BOT_TOKEN (the xoxb-... token of the "
            "installed app)", lambda: f"workspace {found.get('team')} ({found.get('team_id')}) "
            f"as @{found.get('user')}"))
    if settings.slack_app_token is not None:
        # Asking for a Socket Mode URL connects nothing: the running server's sockets stay.
        answer = await _slack_call(settings, settings.slack_app_token.get_secret_value(),
                                   "apps.connections.open")
        results.append(_slack_result(
            "slack socket mode", answer, "app", "check KNOWBOT_SLACK_APP_TOKEN (an xapp-... "
            "token with connections:write)", lambda: "the app token may open a connection"))
    return results


def _slack_result(name: str, answer: Any, which: str, fix: str, ok: Callable[[], str]) -> Result:
    """One line for one Slack token check: unreachable, refused, or fine."""
    if answer.unreachable:
        return Result(name, "fail", answer.unreachable,
                      "check the network or KNOWBOT_SLACK_API_BASE")
    if answer.error:
        return Result(name, "fail", f"Slack refused the {which} token ({answer.error})", fix)
    return Result(name, "ok", ok())


async def check_telegram(settings: Settings) -> list[Result]:
    """Telegram accepts the bot token (getMe) and, with a webhook, reports no delivery errors."""
    if settings.telegram_token is None:
        return []
    from aiogram.exceptions import AiogramError, TelegramUnauthorizedError

    from channels.telegram import TelegramChannel

    try:
        channel = TelegramChannel(settings)
    except KnowbotError as exc:
        return [Result("telegram", "fail", str(exc), "check KNOWBOT_TELEGRAM_TOKEN")]
    try:
        me = await channel.bot.get_me()
        results = [Result("telegram", "ok", f"bot @{me.username} ({me.id})")]
        if settings.telegram_webhook_url:
            info = await channel.bot.get_webhook_info()
            if info.last_error_message:
                results.append(Result("telegram webhook", "warn", "Telegram's last delivery "
                                      f"failed: {info.last_error_message}", "check that "
                                      "KNOWBOT_TELEGRAM_WEBHOOK_URL reaches this server"))
            elif info.url != settings.telegram_webhook_url:
                results.append(Result("telegram webhook", "ok", "registered when the server "
                                      "starts"))
            else:
                results.append(Result("telegram webhook", "ok", f"registered, "
                                      f"{info.pending_update_count} update(s) pending"))
        return results
    except TelegramUnauthorizedError:
        return [Result("telegram", "fail", "Telegram refused the bot token (401)",
                       "check KNOWBOT_TELEGRAM_TOKEN (from @BotFather)")]
    except (AiogramError, OSError) as exc:
        return [Result("telegram", "fail", f"could not reach the Bot API ({type(exc).__name__})",
                       "check the network or KNOWBOT_TELEGRAM_API_BASE")]
    finally:
        await channel.bot.session.close()


async def check_wechat(settings: Settings) -> Result | None:
    """WeChat hands out an access token for the AppID and AppSecret (the stable one)."""
    if settings.wechat_token is None:
        return None
    if not settings.wechat_app_id or settings.wechat_app_secret is None:
        return Result("wechat", "fail", "KNOWBOT_WECHAT_APP_ID and KNOWBOT_WECHAT_APP_SECRET are "
                      "needed", "set them (the account's developer settings)")
    import httpx

    from channels.wechat_api import DEFAULT_API_BASE

    base = settings.wechat_api_base or DEFAULT_API_BASE
    body = {"grant_type": "client_credential", "appid": settings.wechat_app_id,
            "secret": settings.wechat_app_secret.get_secret_value(), "force_refresh": False}
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            data = (await http.post(f"{base}/cgi-bin/stable_token", json=body)).json()
    except (httpx.HTTPError, ValueError) as exc:
        return Result("wechat", "fail", f"could not reach {base} ({type(exc).__name__})",
                      "check the network or KNOWBOT_WECHAT_API_BASE")
    if isinstance(data, dict) and data.get("access_token"):
        return Result("wechat", "ok", f"account {settings.wechat_app_id} has an access token")
    code = data.get("errcode") if isinstance(data, dict) else None
    fix = ("add this server's IP address to the account's IP whitelist" if code == 40164
           else "check KNOWBOT_WECHAT_APP_ID and KNOWBOT_WECHAT_APP_SECRET")
    return Result("wechat", "fail", f"WeChat refused the access-token request (errcode {code})",
                  fix)


async def check_public_urls(settings: Settings) -> list[Result]:
    """The public address answers as this Knowbot, as far as this machine can tell."""
    import httpx

    urls = []
    if settings.public_url:
        urls.append(("public url", "KNOWBOT_PUBLIC_URL", settings.public_url.rstrip("/")))
    if settings.telegram_webhook_url:
        urls.append(("telegram webhook url", "KNOWBOT_TELEGRAM_WEBHOOK_URL",
                     settings.telegram_webhook_url))
    results = []
    for label, setting, url in urls:
        parts = urlsplit(url)
        if parts.scheme != "https":
            results.append(Result(label, "fail" if "telegram" in label else "warn",
                                  f"{url} is not HTTPS; the platforms call HTTPS addresses only",
                                  f"put an HTTPS proxy in front and set {setting}"))
            continue
        origin = f"{parts.scheme}://{parts.netloc}"
        probe = f"{origin}/healthz" if "telegram" in label else f"{url}/healthz"
        try:
            async with httpx.AsyncClient(timeout=5, follow_redirects=False) as http:
                response = await http.get(probe)
        except httpx.ConnectError as exc:
            kind = "does not resolve" if "name" in str(exc).lower() else "is not reachable"
            results.append(Result(label, "warn", f"{origin} {kind} from here",
                                  "check DNS and the proxy; this machine may not reach its own "
                                  "public address, so test from outside too"))
            continue
        except httpx.HTTPError as exc:
            results.append(Result(label, "warn", f"{probe}: {type(exc).__name__}",
                                  "check the proxy in front of Knowbot"))
            continue
        try:
            version = response.json().get("version") if response.status_code == 200 else None
        except ValueError:
            version = None
        if version:
            results.append(Result(label, "ok", f"{origin} answers as Knowbot {version}"))
        else:
            results.append(Result(label, "warn", f"{probe} answered HTTP {response.status_code}, "
                                  "not as Knowbot", "check where the proxy forwards /healthz"))
    return results


def _preload(settings: Settings) -> None:
    """Import the client libraries the checks will use, before their time limits start.

    A check's limit is for the network; on a busy machine importing qdrant-client or aiogram
    alone can take longer than that.
    """
    names = ["openai", "httpx"]
    if settings.redis_url:
        names.append("redis.asyncio")
    if settings.qdrant_url:
        names.append("qdrant_client")
    if settings.telegram_token:
        names.append("aiogram")
    if settings.slack_bot_token:
        names.append("slack_sdk.web.async_client")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:  # the check itself says what is missing
            pass


async def _bounded(name: str, check: Awaitable[Any]) -> list[Result]:
    try:
        found = await asyncio.wait_for(check, TIMEOUT + 5)
    except asyncio.TimeoutError:
        return [Result(name, "fail", f"no answer within {TIMEOUT + 5:g} s", "check the network")]
    if found is None:
        return []
    return found if isinstance(found, list) else [found]


async def run_doctor(settings: Settings) -> list[Result]:
    """Run every check (the independent ones at once); results in a fixed order."""
    checks: list[tuple[str, Callable[[Settings], Awaitable[Any]]]] = [
        ("settings", check_settings), ("database", check_database), ("redis", check_redis),
        ("vector store", check_vectors), ("embedding model", check_embedding),
        ("model", check_providers), ("slack", check_slack), ("telegram", check_telegram),
        ("wechat", check_wechat), ("public url", check_public_urls),
    ]
    await asyncio.to_thread(_preload, settings)
    found = await asyncio.gather(*(_bounded(name, fn(settings)) for name, fn in checks))
    return [result for group in found for result in group]
