"""Slack installations and OAuth states in Knowbot's database (bot/kv.py), for Bolt's OAuth flow."""

from __future__ import annotations

import logging
import secrets
from typing import Any, Optional

from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore

from bot.kv import StateStore

log = logging.getLogger(__name__)

INSTALLS = "slack.install"
STATES = "slack.oauth_state"


def _team(enterprise_id: Optional[str], team_id: Optional[str],
          is_enterprise_install: Optional[bool] = False) -> str:
    return f"{enterprise_id or '-'}:{'-' if is_enterprise_install else team_id or '-'}"


def _fields(obj: object) -> dict[str, Any]:
    """An installation or bot as JSON-ready data (Bolt's own stores write `__dict__`)."""
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


class StateInstallationStore(AsyncInstallationStore):
    """Bolt's installation store over Knowbot's shared state: every replica sees every workspace."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    @property
    def logger(self) -> logging.Logger:
        """The logger Bolt uses for this store."""
        return log

    async def async_save(self, installation: Installation) -> None:
        """Save an installation (and its bot) for its workspace and its installing user."""
        team = _team(installation.enterprise_id, installation.team_id,
                     installation.is_enterprise_install)
        data = _fields(installation)
        await self.state.put(INSTALLS, f"{team}:installer", data)
        await self.state.put(INSTALLS, f"{team}:installer:{installation.user_id or '-'}", data)
        await self.async_save_bot(installation.to_bot())
        log.info("Slack installation saved for team %s", team)

    async def async_save_bot(self, bot: Bot) -> None:
        """Save the bot token of a workspace."""
        if bot.bot_token is None:
            return
        team = _team(bot.enterprise_id, bot.team_id, bot.is_enterprise_install)
        await self.state.put(INSTALLS, f"{team}:bot", _fields(bot))

    async def async_find_bot(self, *, enterprise_id: Optional[str], team_id: Optional[str],
                             is_enterprise_install: Optional[bool] = False) -> Optional[Bot]:
        """The bot installation of a workspace, or None."""
        entry = await self.state.get(INSTALLS,
                                     f"{_team(enterprise_id, team_id, is_enterprise_install)}:bot")
        if entry is None and enterprise_id is not None and team_id is not None:
            # a workspace of an org-wide install
            entry = await self.state.get(INSTALLS, f"{_team(enterprise_id, None, True)}:bot")
        return Bot(**entry.value) if entry is not None else None

    async def async_find_installation(
        self, *, enterprise_id: Optional[str], team_id: Optional[str],
        user_id: Optional[str] = None, is_enterprise_install: Optional[bool] = False,
    ) -> Optional[Installation]:
        """The latest installation of a workspace (or of one user in it), with the latest bot."""
        team = _team(enterprise_id, team_id, is_enterprise_install)
        key = f"{team}:installer" if user_id is None else f"{team}:installer:{user_id}"
        entry = await self.state.get(INSTALLS, key)
        if entry is None:
            return None
        installation = Installation(**entry.value)
        bot = await self.async_find_bot(enterprise_id=enterprise_id, team_id=team_id,
                                        is_enterprise_install=is_enterprise_install)
        if bot is not None and bot.bot_token != installation.bot_token:
            installation.bot_id, installation.bot_user_id = bot.bot_id, bot.bot_user_id
            installation.bot_token, installation.bot_scopes = bot.bot_token, bot.bot_scopes
            installation.bot_refresh_token = bot.bot_refresh_token
            installation.bot_token_expires_at = bot.bot_token_expires_at
        return installation

    async def async_delete_bot(self, *, enterprise_id: Optional[str],
                               team_id: Optional[str]) -> None:
        """Forget a workspace's bot token (the app was uninstalled or its tokens revoked)."""
        await self.state.delete(INSTALLS, f"{_team(enterprise_id, team_id)}:bot")

    async def async_delete_installation(self, *, enterprise_id: Optional[str],
                                        team_id: Optional[str],
                                        user_id: Optional[str] = None) -> None:
        """Forget a workspace's installations (all of them, or one user's)."""
        team = _team(enterprise_id, team_id)
        if user_id is not None:
            await self.state.delete(INSTALLS, f"{team}:installer:{user_id}")
            return
        for key, _ in await self.state.items(INSTALLS, f"{team}:installer"):
            await self.state.delete(INSTALLS, key)


class StateOAuthStateStore(AsyncOAuthStateStore):
    """One-time OAuth `state` values in the database, so the callback may hit any replica."""

    def __init__(self, state: StateStore, expiration_seconds: int = 600) -> None:
        self.state = state
        self.expiration_seconds = expiration_seconds

    @property
    def logger(self) -> logging.Logger:
        """The logger Bolt uses for this store."""
        return log

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        """A new random state value, valid for `expiration_seconds`."""
        value = secrets.token_urlsafe(24)
        await self.state.put(STATES, value, True, ttl=self.expiration_seconds)
        return value

    async def async_consume(self, state: str) -> bool:
        """True once for a state that was issued and has not expired."""
        return bool(await self.state.take(STATES, state))
