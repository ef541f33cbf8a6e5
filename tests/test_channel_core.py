"""The pieces every channel shares: state with compare-and-swap, the outbox, signed links, splitting."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.errors import ChannelSendError
from bot.kv import StateStore
from bot.outbox import Outbox
from bot.signing import BadToken, LinkSigner, signing_key
from bot.store import Store
from bot.types import Citation, ConversationKey, Reply
from channels.text import split_text, utf8_len
from conftest import make_settings

KEY = ConversationKey("test", "team-1", "chat-1", "alice", "t-9")


def pinned_clock() -> ManualClock:
    """A clock the test moves by hand, pinned far from any real day (nothing may read the wall)."""
    return ManualClock(datetime(2031, 3, 9, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
async def store(db_url: str):  # type: ignore[no-untyped-def]
    store = await Store.open(db_url)
    try:
        yield store
    finally:
        await store.close()


# ---- state -------------------------------------------------------------------------------------


async def test_state_put_get_and_versions(store: Store) -> None:
    state = StateStore(store)
    assert await state.get("ns", "a") is None
    assert await state.put("ns", "a", {"token": "x"}) == 1
    assert await state.put("ns", "a", {"token": "y"}) == 2
    entry = await state.get("ns", "a")
    assert entry is not None and entry.value == {"token": "y"} and entry.version == 2
    assert await state.get("other", "a") is None


async def test_swap_succeeds_only_from_the_version_read(store: Store) -> None:
    state = StateStore(store)
    assert await state.swap("ns", "k", 1, expect_version=0)
    assert not await state.swap("ns", "k", 2, expect_version=0)  # already there
    assert await state.swap("ns", "k", 3, expect_version=1)
    assert not await state.swap("ns", "k", 4, expect_version=1)  # someone else moved it on
    entry = await state.get("ns", "k")
    assert entry is not None and (entry.value, entry.version) == (3, 2)


async def test_concurrent_swaps_have_one_winner(store: Store) -> None:
    state = StateStore(store)
    await state.put("ns", "counter", 0)
    entry = await state.get("ns", "counter")
    assert entry is not None
    wins = await asyncio.gather(*(state.swap("ns", "counter", n, entry.version) for n in range(8)))
    assert sum(wins) == 1


async def test_writes_from_nothing_at_once_agree(store: Store) -> None:
    """Puts of a new key at once all land, one version each; swaps from nothing: one wins."""
    state = StateStore(store)
    versions = await asyncio.gather(*(state.put("ns", "new", n) for n in range(6)))
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    entry = await state.get("ns", "new")
    assert entry is not None and entry.version == 6 and entry.value == versions.index(6)
    wins = await asyncio.gather(*(state.swap("ns", "fresh", n, expect_version=0)
                                  for n in range(6)))
    assert sum(wins) == 1
    entry = await state.get("ns", "fresh")
    assert entry is not None and (entry.value, entry.version) == (wins.index(True), 1)


async def test_expired_entries_are_gone_and_can_be_replaced(store: Store) -> None:
    clock = pinned_clock()
    state = StateStore(store, clock=clock)
    await state.put("ns", "short", "v", ttl=60)
    assert (await state.get("ns", "short")) is not None
    clock.advance(61)
    assert await state.get("ns", "short") is None
    assert await state.swap("ns", "short", "new", expect_version=0)
    assert (await state.get("ns", "short")).value == "new"  # type: ignore[union-attr]
    await state.put("ns", "gone", 1, ttl=1)
    clock.advance(2)
    assert await state.purge_expired() == 1


async def test_take_hands_a_value_out_once(store: Store) -> None:
    state = StateStore(store)
    await state.put("links", "abc", {"kb": "account"})
    results = await asyncio.gather(*(state.take("links", "abc") for _ in range(5)))
    assert results.count({"kb": "account"}) == 1
    assert results.count(None) == 4


async def test_items_lists_by_prefix_without_wildcards(store: Store) -> None:
    state = StateStore(store)
    for key in ("held:1", "held:2", "held_x", "other"):
        await state.put("ns", key, key)
    assert [k for k, _ in await state.items("ns", "held:")] == ["held:1", "held:2"]
    assert [k for k, _ in await state.items("ns", "held_")] == ["held_x"]  # '_' is literal


# ---- outbox ------------------------------------------------------------------------------------


class FlakyChannel:
    """A channel whose sends fail until told otherwise."""

    name = "flaky"

    def __init__(self, failures: int, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.sent: list[tuple[ConversationKey, Reply]] = []

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ChannelSendError("network down", retryable=self.retryable)
        self.sent.append((key, reply))


REPLY = Reply("The refund window is 14 days [1].",
              citations=(Citation("Refunds", "p. 2", "within 14 days", "https://x/r"),))


async def test_a_failed_send_is_kept_and_retried_with_backoff(store: Store) -> None:
    clock = pinned_clock()
    channel = FlakyChannel(failures=2)
    outbox = Outbox(store, lambda: [channel], clock=clock)  # type: ignore[list-item]
    assert not await outbox.deliver(channel, KEY, REPLY)  # type: ignore[arg-type]
    assert await outbox.pending() == 1
    assert await outbox.retry_due() == 0  # not due yet
    clock.advance(6)
    assert await outbox.retry_due() == 0  # second failure: backed off again
    assert await outbox.pending() == 1
    clock.advance(6)
    assert await outbox.retry_due() == 0  # the next try waits 10 s, not 5
    clock.advance(5)
    assert await outbox.retry_due() == 1
    assert await outbox.pending() == 0
    assert channel.sent == [(KEY, REPLY)]  # the same key and reply, citations included


async def test_the_outbox_survives_a_restart(db_url: str) -> None:
    clock = pinned_clock()
    channel = FlakyChannel(failures=1)
    store = await Store.open(db_url)
    await Outbox(store, lambda: [channel], clock=clock).deliver(channel, KEY, REPLY)  # type: ignore
    await store.close()
    store = await Store.open(db_url)
    try:
        clock.advance(10)
        assert await Outbox(store, lambda: [channel], clock=clock).retry_due() == 1  # type: ignore
        assert channel.sent[0][1].text == REPLY.text
    finally:
        await store.close()


async def test_two_replicas_send_a_kept_reply_once(store: Store) -> None:
    clock = pinned_clock()
    channel = FlakyChannel(failures=1)
    first = Outbox(store, lambda: [channel], clock=clock)  # type: ignore[list-item]
    second = Outbox(store, lambda: [channel], clock=clock)  # type: ignore[list-item]
    await first.deliver(channel, KEY, REPLY)  # type: ignore[arg-type]
    clock.advance(10)
    sent = await asyncio.gather(first.retry_due(), second.retry_due())
    assert sorted(sent) == [0, 1]
    assert len(channel.sent) == 1


async def test_a_permanent_failure_is_not_kept(store: Store) -> None:
    channel = FlakyChannel(failures=1, retryable=False)
    outbox = Outbox(store, lambda: [channel])  # type: ignore[list-item]
    assert not await outbox.deliver(channel, KEY, REPLY)  # type: ignore[arg-type]
    assert await outbox.pending() == 0


async def test_stale_replies_are_dropped(store: Store) -> None:
    clock = pinned_clock()
    channel = FlakyChannel(failures=100)
    outbox = Outbox(store, lambda: [channel], clock=clock)  # type: ignore[list-item]
    await outbox.deliver(channel, KEY, REPLY)  # type: ignore[arg-type]
    clock.advance(3 * 24 * 3600)
    assert await outbox.retry_due() == 0
    assert await outbox.pending() == 0


# ---- signed links ------------------------------------------------------------------------------


def test_signed_tokens_check_purpose_signature_and_expiry(tmp_path: Path) -> None:
    now = [1_000_000.0]
    signer = LinkSigner(b"k" * 32, clock=lambda: now[0])
    token = signer.sign("upload", {"kb": "account", "by": "o123"}, ttl=60)
    assert signer.verify("upload", token) == {"kb": "account", "by": "o123"}
    with pytest.raises(BadToken):
        signer.verify("answer", token)  # made for another page
    body, mac = token.split(".")
    with pytest.raises(BadToken):
        signer.verify("upload", body + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"))
    with pytest.raises(BadToken):
        LinkSigner(b"x" * 32).verify("upload", token)  # another key
    with pytest.raises(BadToken):
        signer.verify("upload", "garbage")
    now[0] += 61
    with pytest.raises(BadToken):
        signer.verify("upload", token)


def test_the_default_key_is_made_once_and_private(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    key = signing_key(settings)
    assert len(key) >= 32 and signing_key(settings) == key
    assert (settings.data_dir / "secret.key").stat().st_mode & 0o077 == 0
    assert signing_key(make_settings(tmp_path, secret_key="s" * 20)) == b"s" * 20


# ---- splitting ---------------------------------------------------------------------------------


def test_split_prefers_paragraphs_then_sentences() -> None:
    paragraphs = ["First paragraph. " * 10, "Second one here. " * 10, "Third. " * 10]
    text = "\n\n".join(p.strip() for p in paragraphs)
    parts = split_text(text, 200)
    assert all(len(p) <= 200 for p in parts)
    assert all(p.endswith(".") for p in parts)  # every cut lands after a sentence
    assert " ".join(parts).split() == text.split()  # nothing lost or added


def test_split_counts_bytes_for_chinese() -> None:
    text = "退款在收到退货后十四天内支付。" * 300
    parts = split_text(text, 2048, utf8_len)
    assert all(utf8_len(p) <= 2048 for p in parts)
    assert all(p.endswith("。") for p in parts)
    assert "".join(parts) == text


def test_split_cuts_a_word_longer_than_the_limit() -> None:
    parts = split_text("x" * 250, 100)
    assert [len(p) for p in parts] == [100, 100, 50]


def test_split_is_bounded() -> None:
    parts = split_text("word " * 10_000, 50, max_parts=5)
    assert len(parts) == 5 and parts[-1].endswith("…") and len(parts[-1]) <= 50


async def test_a_reply_for_a_channel_not_running_here_waits(store: Store) -> None:
    clock = pinned_clock()
    channel = FlakyChannel(failures=0)
    outbox = Outbox(store, lambda: [], clock=clock)  # this replica runs no channel
    await outbox.keep("flaky", KEY, REPLY)
    clock.advance(10)
    assert await outbox.retry_due() == 0
    assert await outbox.pending() == 1  # kept for a replica (or a restart) that runs it
    clock.advance(30)
    assert await Outbox(store, lambda: [channel], clock=clock).retry_due() == 1  # type: ignore
    assert channel.sent == [(KEY, REPLY)]


class PartsChannel:
    """Sends a reply as several messages (split at '|'); the network fails once mid-way."""

    name = "parts"

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.sent: list[str] = []

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        from bot.outbox import RESUME_AT

        for n, part in enumerate(reply.text.split("|")):
            if n < RESUME_AT.get():
                continue
            if n == self.fail_at:
                self.fail_at = -1
                raise ChannelSendError("network down", retryable=True, sent_parts=n)
            self.sent.append(part)


async def test_a_retry_resumes_after_the_parts_already_sent(store: Store) -> None:
    clock = pinned_clock()
    channel = PartsChannel(fail_at=2)
    outbox = Outbox(store, lambda: [channel], clock=clock)  # type: ignore[list-item]
    assert not await outbox.deliver(channel, KEY, Reply("one|two|three|four"))  # type: ignore
    assert channel.sent == ["one", "two"]
    clock.advance(10)
    assert await outbox.retry_due() == 1
    assert channel.sent == ["one", "two", "three", "four"]  # nothing twice


class DyingChannel:
    """A channel whose process 'dies' in the middle of a send (an exception nobody expects)."""

    name = "flaky"

    async def send(self, key: ConversationKey, reply: Reply) -> None:
        raise RuntimeError("killed mid-send")


async def test_a_job_reply_is_written_before_it_is_sent(store: Store) -> None:
    """A reply no inbound message waits for (a reminder) survives a death during its send."""
    clock = pinned_clock()
    outbox = Outbox(store, lambda: [], clock=clock)
    with pytest.raises(RuntimeError):
        await outbox.deliver(DyingChannel(), KEY, REPLY)  # type: ignore[arg-type]
    assert await outbox.pending() == 1
    survivor = FlakyChannel(failures=0)
    after = Outbox(store, lambda: [survivor], clock=clock)  # type: ignore[list-item]
    assert await after.retry_due() == 0  # the dead sender's lease still holds
    clock.advance(31)
    assert await after.retry_due() == 1
    assert survivor.sent == [(KEY, REPLY)] and await after.pending() == 0
