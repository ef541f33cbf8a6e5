"""Who may use the web console: the password, one-time chat links, sessions, CSRF, login limits.

Everything a replica must share lives in the state store (bot/kv.py): sessions (under the
SHA-256 of their cookie value, so the database never holds a usable cookie), the one-time link
ids (taken once, so a link works on one replica only once), and the count of wrong passwords.
Every comparison of a secret is constant-time; no secret (password, session id, CSRF token,
link token) is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from bot.signing import BadToken, LinkSigner, signing_key

if TYPE_CHECKING:
    from bot.clock import Clock
    from bot.config import Settings
    from bot.kv import StateStore
    from bot.types import InboundMessage

log = logging.getLogger(__name__)

SESSION_COOKIE = "kb_session"
LOGIN_CSRF_COOKIE = "kb_csrf_login"
SESSIONS = "console-session"
LINKS = "console-link"
LOGINS = "console-login"
LINK_PURPOSE = "console-link"

# scrypt: 2**14 x 8 x 128 bytes = 16 MiB of memory and some 50 ms a try
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_PER_ADDRESS = 5  # wrong passwords from one address within the window
LOGIN_OVERALL = 50  # wrong passwords from everywhere within the window (stops spraying)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- the password ------------------------------------------------------------------------------

def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """scrypt with a random salt, with its parameters: `scrypt$N$r$p$SALT$HASH`."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32,
                            maxmem=256 * 1024 * 1024)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_hash(password: str, encoded: str) -> bool:
    """Whether `password` matches a hash from `hash_password` (constant-time; False if malformed)."""
    parts = encoded.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, want = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return False
    if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16 and want):
        return False  # bounded: a crafted hash cannot make a sign-in take minutes
    got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want),
                         maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(got, want)


def password_hash_valid(encoded: str) -> bool:
    """Whether a configured hash has the form `hash_password` makes."""
    parts = encoded.strip().split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(parts[1:])


def check_password(settings: "Settings", given: str) -> bool:
    """The console password (or its hash) matches; False when neither is configured."""
    if not given or len(given) > 1024:
        return False
    ok = False
    if settings.console_password is not None:
        want = hashlib.sha256(settings.console_password.get_secret_value().encode()).digest()
        ok = hmac.compare_digest(hashlib.sha256(given.encode()).digest(), want)
    if not ok and settings.console_password_hash is not None:
        ok = verify_hash(given, settings.console_password_hash.get_secret_value())
    return ok


def password_configured(settings: "Settings") -> bool:
    """A console password or hash is set."""
    return settings.console_password is not None or settings.console_password_hash is not None


# ---- who is signed in, and what they may see -----------------------------------------------------

@dataclass
class Grant:
    """What a sign-in gives: who, and the reach ("all", or some tenants and maybe chats)."""

    admin: str
    scope: str  # "all" | "tenant"
    tenants: list[str] = field(default_factory=list)
    chats: list[str] | None = None  # with scope "tenant": only these chats (a group's admin)

    def may_see(self, tenant: str, chat_id: str | None = None) -> bool:
        """Whether this admin may see the tenant (and, when given, the chat)."""
        if self.scope == "all":
            return True
        if tenant not in self.tenants:
            return False
        return self.chats is None or chat_id is None or chat_id in self.chats

    @property
    def whole_tenant(self) -> bool:
        """The admin sees everything of their tenants (not only some chats)."""
        return self.scope == "all" or self.chats is None


@dataclass
class Session(Grant):
    """A signed-in admin: the grant, the session id (cookie) and its CSRF token."""

    id: str = ""
    csrf: str = ""


def grant_for(message: "InboundMessage", settings: "Settings") -> Grant | None:
    """What `/console` typed in chat gives: a Knowbot admin everything, a chat admin their part.

    A Slack workspace admin (or owner) gets that workspace; a Telegram group admin only that
    group (the Telegram tenant is the bot, shared by every group it is in).
    """
    key = message.key
    who = f"{key.channel}:{key.user_id}"
    if settings.is_admin(key.channel, key.user_id):
        return Grant(who, "all")
    if not message.is_admin:
        return None
    tenant = f"{key.channel}:{key.tenant}"
    if key.channel == "slack":
        return Grant(who, "tenant", [tenant])
    return Grant(who, "tenant", [tenant], [key.chat_id])


class Sessions:
    """Console sessions in the state store, under the SHA-256 of the cookie value."""

    def __init__(self, state: "StateStore", lifetime: timedelta) -> None:
        self.state = state
        self.lifetime = lifetime

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    async def create(self, grant: Grant) -> Session:
        """A new session for the grant (random id and CSRF token)."""
        session = Session(grant.admin, grant.scope, list(grant.tenants),
                          list(grant.chats) if grant.chats is not None else None,
                          id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32))
        value = {k: v for k, v in asdict(session).items() if k != "id"}
        await self.state.put(SESSIONS, self._key(session.id), value, ttl=self.lifetime)
        log.info("console: %s signed in (scope %s)", grant.admin, grant.scope)
        return session

    async def get(self, session_id: str | None) -> Session | None:
        """The live session with this cookie value, or None."""
        if not session_id or len(session_id) > 128:
            return None
        entry = await self.state.get(SESSIONS, self._key(session_id))
        if entry is None or not isinstance(entry.value, dict):
            return None
        v = entry.value
        return Session(str(v.get("admin", "")), str(v.get("scope", "tenant")),
                       list(v.get("tenants") or []), v.get("chats"), id=session_id,
                       csrf=str(v.get("csrf", "")))

    async def end(self, session_id: str) -> None:
        """Sign out."""
        await self.state.delete(SESSIONS, self._key(session_id))


def csrf_ok(expected: str, given: str | None) -> bool:
    """Constant-time check of a CSRF token."""
    return bool(expected) and given is not None and hmac.compare_digest(
        expected.encode(), given.encode())


# ---- one-time links --------------------------------------------------------------------------

class LinkRefused(Exception):
    """A console link that cannot be used: `reason` is "expired", "used" or "bad"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Links:
    """Signed, expiring links whose id is taken once from the state store."""

    def __init__(self, settings: "Settings", state: "StateStore", clock: "Clock") -> None:
        self.settings = settings
        self.state = state
        self.signer = LinkSigner(signing_key(settings), clock=clock.time)
        self.ttl = settings.console_link_minutes * 60

    async def issue(self, grant: Grant) -> str:
        """A token for one sign-in with this grant."""
        jti = secrets.token_urlsafe(16)
        await self.state.put(LINKS, jti, asdict(grant), ttl=self.ttl)
        return self.signer.sign(LINK_PURPOSE, {"j": jti}, self.ttl)

    async def redeem(self, token: str) -> Grant:
        """The grant of a good, unused, unexpired link; LinkRefused otherwise."""
        try:
            payload = self.signer.verify(LINK_PURPOSE, token)
        except BadToken as exc:
            raise LinkRefused("expired" if str(exc) == "expired" else "bad") from None
        jti = payload.get("j")
        if not isinstance(jti, str):
            raise LinkRefused("bad")
        value = await self.state.take(LINKS, jti)
        if not isinstance(value, dict):
            raise LinkRefused("used")
        return Grant(str(value["admin"]), str(value["scope"]), list(value.get("tenants") or []),
                     value.get("chats"))

    def url(self, token: str) -> str:
        """The link people open (KNOWBOT_PUBLIC_URL, else this server's own address)."""
        base = self.settings.public_url
        if not base:
            host = self.settings.host if self.settings.host not in ("0.0.0.0", "::", "") \
                else "127.0.0.1"
            base = f"http://{host}:{self.settings.port}"
        return f"{base.rstrip('/')}/console/link?t={token}"


# ---- wrong passwords -------------------------------------------------------------------------

class LoginLimiter:
    """Wrong passwords per client address and overall within a window, in the state store."""

    def __init__(self, state: "StateStore", clock: "Clock", *, per_address: int = LOGIN_PER_ADDRESS,
                 overall: int = LOGIN_OVERALL, window: timedelta = LOGIN_WINDOW) -> None:
        self.state = state
        self.clock = clock
        self.per_address = per_address
        self.overall = overall
        self.window = window.total_seconds()

    def _recent(self, value: Any) -> list[float]:
        now = self.clock.time()
        return sorted(t for t in (value or []) if isinstance(t, (int, float))
                      and now - t < self.window)

    def _wait(self, times: list[float], limit: int) -> float:
        if len(times) < limit:
            return 0.0
        return times[-limit] + self.window - self.clock.time()

    async def blocked(self, address: str) -> int | None:
        """Minutes to wait before trying again, or None when a try is allowed."""
        wait = 0.0
        for key, limit in ((f"addr:{address}", self.per_address), ("all", self.overall)):
            entry = await self.state.get(LOGINS, key)
            if entry is not None:
                wait = max(wait, self._wait(self._recent(entry.value), limit))
        return max(1, math.ceil(wait / 60)) if wait > 0 else None

    async def failed(self, address: str) -> None:
        """Count one wrong password from `address`."""
        for key, limit in ((f"addr:{address}", self.per_address), ("all", self.overall)):
            for _ in range(20):  # compare-and-swap: concurrent failures are all counted
                entry = await self.state.get(LOGINS, key)
                times = self._recent(entry.value if entry else None)
                times = (times + [self.clock.time()])[-limit:]
                if await self.state.swap(LOGINS, key, times, entry.version if entry else 0,
                                         ttl=self.window):
                    break

    async def succeeded(self, address: str) -> None:
        """A right password: that address starts afresh."""
        await self.state.delete(LOGINS, f"addr:{address}")


def is_loopback(host: str | None) -> bool:
    """Whether a host name or address is this machine."""
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---- the /console chat command ---------------------------------------------------------------

def console_command(settings: "Settings", state: "StateStore", clock: "Clock",
                    deliver: Any = None) -> Any:
    """`/console`: a Knowbot admin or a chat admin gets a one-time sign-in link.

    In a private chat the link is the reply. In a group it is sent to the admin privately
    (through `deliver`, the runtime's, to the chat that is the user's own) so nobody else in
    the group can use it first; the group is told where it went.
    """
    from bot.commands import Command
    from bot.types import ConversationKey, Reply

    links = Links(settings, state, clock)

    async def handle(args: str, message: "InboundMessage") -> Reply:
        grant = grant_for(message, settings)
        if grant is None:
            where = ("" if message.is_group else
                     " A workspace's or group's admin sends it in a channel or group they "
                     "administer.")
            return Reply("Only admins can use /console." + where, kind="notice")
        token = await links.issue(grant)
        minutes = settings.console_link_minutes
        reach = ("everything" if grant.scope == "all" else
                 "this workspace" if grant.chats is None else "this chat")
        text = (f"Your sign-in link to the Knowbot console ({reach}); it works once, within "
                f"{minutes:g} minutes:\n{links.url(token)}")
        if not message.is_group:
            return Reply(text, kind="command")
        key = message.key
        private = ConversationKey(key.channel, key.tenant, key.user_id, key.user_id)
        if deliver is None:
            return Reply("Send /console to me in a private chat to get a sign-in link.",
                         kind="notice")
        sent = await deliver(private, Reply(text, kind="command"))
        if sent:
            return Reply("I sent you a sign-in link to the console in a private message.",
                         kind="command")
        return Reply("I could not send you a private message yet: start a private chat with "
                     "me, then send /console here again.", kind="notice")

    # not admin_only: a chat admin is known only where they administer (grant_for decides)
    return Command("console", "a one-time sign-in link to the web console (admins)", handle)
