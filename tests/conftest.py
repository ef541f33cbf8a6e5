"""Shared fixtures: settings in a temporary data dir, databases, and a `bot` to talk to."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from bot.clock import SYSTEM_CLOCK, Clock
from bot.config import Settings
from bot.knowledge import KnowledgeSearch
from bot.runtime import Runtime
from bot.types import ConversationKey, InboundMessage, Passage, Reply

PG_ADMIN_URL = os.environ.get("KNOWBOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("KNOWBOT_TEST_REQUIRE_POSTGRES") == "1"

_ENV_KEYS = [k for k in os.environ if k.startswith("KNOWBOT_") and not k.startswith("KNOWBOT_TEST_")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read the developer's own Knowbot or OpenAI settings."""
    for key in _ENV_KEYS + ["OPENAI_API_KEY", "OPENAI_BASE_URL"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    """Whether the PostgreSQL server for the scale-out tests answers."""
    ok = _pg_available()
    if not ok and REQUIRE_PG:
        pytest.fail(f"PostgreSQL is required for this run but {PG_ADMIN_URL} does not answer")
    return ok


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"knowbot_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on the embedded SQLite default and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'knowbot.db'}"
    return request.getfixturevalue("pg_url")


class WordKnowledge:
    """A small in-memory KnowledgeSearch for engine tests: scores passages by shared words.

    The real hybrid search lives in the knowledge package; the engine only sees this interface.
    """

    def __init__(self) -> None:
        self.docs: dict[str, list[Passage]] = {}
        self.queries: list[tuple[ConversationKey, str]] = []

    def add(self, chat_id: str, source: str, location: str, text: str) -> None:
        """Add a passage readable by one chat."""
        self.docs.setdefault(chat_id, []).append(Passage(text=text, source=source, location=location))

    @staticmethod
    def _words(text: str) -> set[str]:
        return {w for w in re.findall(r"\w+", text.lower()) if len(w) > 2} | set(
            re.findall(r"[\u4e00-\u9fff]", text)
        )

    async def search(self, key: ConversationKey, query: str, top_k: int = 5,
                     kb: str | None = None) -> list[Passage]:
        """Passages of this chat sharing words with the query, best first."""
        self.queries.append((key, query))
        words = self._words(query)
        scored = []
        for p in self.docs.get(key.chat_id, []):
            score = len(words & self._words(p.text))
            if score:
                scored.append((score, p))
        scored.sort(key=lambda sp: -sp[0])
        return [Passage(p.text, p.source, p.location, float(s)) for s, p in scored[:top_k]]


class ChatBot:
    """Talks to a running Knowbot the way a chat would."""

    def __init__(self, runtime: Runtime, chat: str = "chat-1", user: str = "alice") -> None:
        self.runtime = runtime
        self.chat = chat
        self.user = user
        self._n = 0

    def key(self, chat: str | None = None, user: str | None = None) -> ConversationKey:
        """The conversation key of a chat and user on the test channel."""
        return ConversationKey("test", "team-1", chat or self.chat, user or self.user)

    async def say(self, text: str, *, chat: str | None = None, user: str | None = None,
                  message_id: str | None = None, is_admin: bool = False) -> Reply:
        """Send a message and return Knowbot's reply."""
        self._n += 1
        message = InboundMessage(
            key=self.key(chat, user), message_id=message_id or f"m{self._n}-{uuid.uuid4().hex[:6]}",
            text=text, is_admin=is_admin,
        )
        reply = await self.runtime.dispatcher.process(message)
        assert reply is not None, "a new message must get a reply"
        return reply


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings in a temporary data dir, with no model unless given."""
    values: dict[str, object] = {"data_dir": tmp_path / "data"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def knowledge() -> WordKnowledge:
    """An in-memory knowledge base for engine tests."""
    return WordKnowledge()


@pytest.fixture
async def bot(tmp_path: Path, knowledge: WordKnowledge) -> AsyncIterator[ChatBot]:
    """A Knowbot with no language model, on SQLite in a temporary data dir."""
    runtime = await Runtime.start(make_settings(tmp_path), knowledge=knowledge)
    try:
        yield ChatBot(runtime)
    finally:
        await runtime.close()


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The real offline embedding model, built once per test run."""
    from knowledge.embedder import Embedder

    return Embedder.default(tmp_path_factory.mktemp("models"))


async def start_knowledge_bot(tmp_path: Path, embedder: object, clock: Clock = SYSTEM_CLOCK,
                              **overrides: object) -> Runtime:
    """A Runtime with the real knowledge base (Qdrant Edge in the data dir, the real model)."""
    return await Runtime.start(make_settings(tmp_path, **overrides), embedder=embedder,
                               clock=clock)


async def start_bot(tmp_path: Path, knowledge: KnowledgeSearch | None = None,
                    **overrides: object) -> ChatBot:
    """Start a Knowbot with the given settings (the caller closes bot.runtime)."""
    runtime = await Runtime.start(make_settings(tmp_path, **overrides), knowledge=knowledge)
    return ChatBot(runtime)
