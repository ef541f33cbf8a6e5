"""Chunking: sentences in Chinese and English, structure-aware packing, the three strategies."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import ConfigError
from knowledge.chunking import ChunkSettings, chunk_document, merge_locations, split_sentences
from knowledge.types import Block, Chunk, LoadedDocument

_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]|[^\W\d_]+|\d+|[^\w\s]")


def count(text: str) -> int:
    """A stand-in for the model's tokenizer: one token per CJK character, word, number or mark."""
    return len(_TOKEN.findall(text))


def count_with_start(text: str) -> int:
    """Like a sentencepiece tokenizer: every text spends one token on its start."""
    return count(text) + 1 if text else 0


def count_newlines_heavy(text: str) -> int:
    """A tokenizer whose counts are not additive: line breaks cost three tokens each."""
    return count(text) + 3 * text.count("\n")


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def doc(*blocks: Block) -> LoadedDocument:
    return LoadedDocument(title="Handbook", kind="pdf", blocks=blocks, origin="handbook.pdf")


def chunks_of(*blocks: Block, **kw: object) -> list[Chunk]:
    return chunk_document(doc(*blocks), count, ChunkSettings(**kw))  # type: ignore[arg-type]


# --- sentences ------------------------------------------------------------------------------


def test_chinese_sentences_split_on_full_width_marks_and_keep_their_quotes() -> None:
    text = "他说：“你好。”然后走了！真的吗？！是的；明天见。「好的。」（完）"
    assert split_sentences(text) == ["他说：“你好。”", "然后走了！", "真的吗？！", "是的；", "明天见。", "「好的。」", "（完）"]


def test_english_sentences_respect_abbreviations_numbers_urls_and_file_names() -> None:
    text = (
        "See e.g. the wiki, i.e. the team pages. Pi is 3.14 today. Mr. Smith and Dr. Lee agree. "
        "Bring pens, paper, etc. and a laptop. Visit https://wiki.example.com/vpn?x=1. "
        "Mail it.help@example.com or open report.pdf now. J. R. Tolkien wrote it. Done!"
    )
    assert split_sentences(text) == [
        "See e.g. the wiki, i.e. the team pages.",
        "Pi is 3.14 today.",
        "Mr. Smith and Dr. Lee agree.",
        "Bring pens, paper, etc. and a laptop.",
        "Visit https://wiki.example.com/vpn?x=1.",
        "Mail it.help@example.com or open report.pdf now.",
        "J. R. Tolkien wrote it.",
        "Done!",
    ]


def test_quotes_and_brackets_stay_with_the_english_sentence_they_close() -> None:
    assert split_sentences('He said "Stop." Then he left (quietly.) Why?! Fine...') == [
        'He said "Stop."',
        "Then he left (quietly.)",
        "Why?!",
        "Fine...",
    ]


def test_mixed_chinese_and_english_sentences() -> None:
    text = "我们用Python 3.11开发。It works well! 真的吗？Yes, really. 版本号是v2.5，文件是notes.txt。"
    assert split_sentences(text) == [
        "我们用Python 3.11开发。",
        "It works well!",
        "真的吗？",
        "Yes, really.",
        "版本号是v2.5，文件是notes.txt。",
    ]


def test_newlines_are_soft_boundaries() -> None:
    text = "Steps:\n1. Open the portal\n2. Reset the password\nthen log in again\n\nNext part\n这是一个\n句子。"
    assert split_sentences(text) == [
        "Steps:",
        "1. Open the portal",
        "2. Reset the password\nthen log in again",
        "Next part",
        "这是一个\n句子。",
    ]


_CJK_WORD = st.text(alphabet="忘记密码时请登录自助服务门户通过手机验证重置", min_size=1, max_size=6)
_LATIN_WORD = st.sampled_from(["VPN", "reset", "the", "password", "e.g.", "3.14", "Dr.", "report.pdf", "Wiki", "ok"])
_MARK = st.sampled_from(["。", "！", "？", "；", ".", "!", "?", "”", "」", "）", ",", "，", " ", "\n", "  ", "\n\n"])
_TEXT = st.lists(st.one_of(_CJK_WORD, _LATIN_WORD, _MARK), max_size=40).map("".join)


@given(_TEXT)
@settings(max_examples=100, deadline=None)
def test_no_sentence_is_lost_or_duplicated(text: str) -> None:
    pieces = split_sentences(text)
    assert squash("".join(pieces)) == squash(text)
    assert all(p == p.strip() and p for p in pieces)


# --- paragraph strategy ---------------------------------------------------------------------


def test_a_heading_starts_a_chunk_and_travels_with_its_body() -> None:
    chunks = chunks_of(
        Block("Intro text before any heading.", location="page 1"),
        Block("Setup", kind="heading", location="page 1"),
        Block("VPN", kind="heading", location="page 1", heading_path=("Setup",)),
        Block("Open the portal and reset the password.", location="page 1", heading_path=("Setup", "VPN")),
        Block("Mail", kind="heading", location="page 1", heading_path=("Setup",)),
        Block("Use the web client.", location="page 1", heading_path=("Setup", "Mail")),
    )
    assert [c.text for c in chunks] == [
        "Intro text before any heading.",
        "Setup > VPN\nOpen the portal and reset the password.",
        "Setup > Mail\nUse the web client.",
    ]
    assert [c.location for c in chunks] == ["page 1", "page 1 · Setup > VPN", "page 1 · Setup > Mail"]
    assert chunks[1].heading_path == ("Setup", "VPN")
    assert [c.ordinal for c in chunks] == [0, 1, 2]
    assert all(c.tokens == count(c.text) for c in chunks)


def test_body_blocks_without_a_heading_path_belong_to_the_last_heading() -> None:
    chunks = chunks_of(Block("Refunds", kind="heading"), Block("Refunds take five days."))
    assert [(c.text, c.location) for c in chunks] == [("Refunds\nRefunds take five days.", "Refunds")]


def test_a_heading_with_nothing_under_it_is_kept_as_its_own_chunk() -> None:
    chunks = chunks_of(
        Block("Appendix", kind="heading", location="page 9"),
        Block("Glossary", kind="heading", location="page 9"),
        Block("VPN means virtual private network.", location="page 9", heading_path=("Glossary",)),
    )
    assert [c.text for c in chunks] == ["Appendix", "Glossary\nVPN means virtual private network."]


def test_the_location_is_not_repeated_when_it_already_names_the_heading() -> None:
    chunks = chunks_of(Block("Body.", location="Setup > VPN", heading_path=("Setup", "VPN")))
    assert chunks[0].location == "Setup > VPN"


def test_pages_never_share_a_chunk_and_locations_stay_accurate() -> None:
    chunks = chunks_of(
        Block("First page text.", location="page 3"),
        Block("More on page three.", location="page 3"),
        Block("Second page text.", location="page 4"),
        Block("A slide.", location="slide 2"),
    )
    assert [(c.text, c.location) for c in chunks] == [
        ("First page text.\nMore on page three.", "page 3"),
        ("Second page text.", "page 4"),
        ("A slide.", "slide 2"),
    ]


def test_table_rows_are_packed_whole_and_their_rows_named() -> None:
    rows = [Block(f"item {i} | price {i * 10} | in stock", kind="row", location=f"sheet Prices, row {i}") for i in range(2, 12)]
    chunks = chunks_of(*rows, Block("Other sheet row", kind="row", location="sheet Costs, row 2"), max_tokens=30)
    texts = [c.text for c in chunks]
    assert all(c.tokens <= 30 for c in chunks)
    for row in rows:  # every row sits whole in exactly one chunk
        assert sum(line == row.text for t in texts for line in t.split("\n")) == 1
    assert len(chunks[0].text.split("\n")) > 1
    assert chunks[0].location == "sheet Prices, rows 2-4"
    assert chunks[-1].location == "sheet Costs, row 2"


def test_a_row_longer_than_the_limit_is_split() -> None:
    long_row = " | ".join(f"column {i} value" for i in range(40))
    chunks = chunks_of(Block(long_row, kind="row", location="sheet A, row 2"), max_tokens=20, overlap_tokens=0)
    assert len(chunks) > 1 and all(c.tokens <= 20 for c in chunks)
    assert squash("".join(c.text for c in chunks)) == squash(long_row)


def test_a_long_block_is_split_on_sentences_with_overlap() -> None:
    sentences = [f"Step {i} resets the VPN password." for i in range(30)]
    chunks = chunks_of(Block(" ".join(sentences), location="page 2"), max_tokens=40, overlap_tokens=8)
    assert len(chunks) > 2 and all(c.tokens <= 40 for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        assert split_sentences(after.text)[0] == split_sentences(before.text)[-1]  # one sentence of overlap
    for c in chunks:  # whole sentences only
        assert all(s in sentences for s in split_sentences(c.text))
    assert set(sentences) == {s for c in chunks for s in split_sentences(c.text)}


def test_a_long_chinese_block_splits_after_full_stops_without_spaces() -> None:
    text = "忘记VPN密码时，请登录IT自助服务门户。\n通过手机验证码重置VPN密码。" * 6
    chunks = chunks_of(Block(text, location="page 1"), max_tokens=40, overlap_tokens=10)
    assert len(chunks) > 1 and all(c.tokens <= 40 for c in chunks)
    assert all(c.text.endswith("。") and " " not in c.text and "\n" not in c.text for c in chunks)


def test_a_sentence_longer_than_the_limit_is_cut_by_tokens() -> None:
    text = "密" * 100 + " " + " ".join(["word"] * 100)
    chunks = chunks_of(Block(text), max_tokens=25, overlap_tokens=0)
    assert all(c.tokens <= 25 for c in chunks) and len(chunks) >= 8
    assert squash("".join(c.text for c in chunks)) == squash(text)
    assert all(not c.text.startswith("ord") for c in chunks)  # cut between words


def test_a_tiny_tail_borrows_from_the_chunk_before() -> None:
    sentences = [f"Sentence number {i} is here." for i in range(8)]  # 6 tokens each
    chunks = chunks_of(Block(" ".join(sentences)), max_tokens=42, overlap_tokens=0, min_tokens=10)
    assert [c.tokens for c in chunks] == [36, 12]


def test_whitespace_is_normalised_and_empty_blocks_skipped() -> None:
    chunks = chunks_of(
        Block("   \n\t "),
        Block("Hello \t  world,\r\n  again."),
        Block("这是一个\n很长的句子， 对吧？ 是的。"),
        Block(""),
    )
    assert [c.text for c in chunks] == ["Hello world,\nagain.\n这是一个很长的句子，对吧？是的。"]


def test_an_empty_document_has_no_chunks() -> None:
    assert chunk_document(doc(), count) == []
    assert chunk_document(doc(Block(" ")), count, ChunkSettings(strategy="window")) == []


# --- other strategies -----------------------------------------------------------------------


def test_sentence_strategy_gives_a_sentence_or_a_few_per_chunk() -> None:
    chunks = chunks_of(
        Block("Reset the VPN password from the portal. Then log in. Ok. 然后重新登录VPN客户端。", location="page 1"),
        Block("Another page entirely here.", location="page 2"),
        strategy="sentence",
        min_tokens=4,
    )
    assert [c.text for c in chunks] == [
        "Reset the VPN password from the portal.",
        "Then log in.",
        "Ok. 然后重新登录VPN客户端。",
        "Another page entirely here.",
    ]
    assert [c.location for c in chunks] == ["page 1", "page 1", "page 1", "page 2"]


def test_window_strategy_makes_overlapping_windows_across_pages() -> None:
    blocks = [Block(" ".join(f"p{page}w{i}" for i in range(30)), location=f"page {page}") for page in (3, 4, 5)]
    chunks = chunks_of(*blocks, strategy="window", max_tokens=40, overlap_tokens=10, min_tokens=5)
    assert all(c.tokens <= 40 for c in chunks) and all(c.tokens >= 30 for c in chunks[:-1])
    assert chunks[0].location == "page 3"
    assert any(c.location == "pages 3-4" for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        shared = set(before.text.split()) & set(after.text.split())  # "p3w7" is 4 tokens
        assert 6 <= sum(count(w) for w in shared) <= 16
    words = {w for b in blocks for w in b.text.split()}
    assert words == {w for c in chunks for w in c.text.split()}


def test_merge_locations() -> None:
    assert merge_locations(["page 3", "page 3", "page 4"]) == "pages 3-4"
    assert merge_locations(["sheet Prices, row 7", "sheet Prices, row 9"]) == "sheet Prices, rows 7-9"
    assert merge_locations(["page 2", "slide 5"]) == "page 2; slide 5"
    assert merge_locations(["", "Setup > VPN"]) == "Setup > VPN"
    assert merge_locations([]) == ""


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        ChunkSettings(strategy="words")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ChunkSettings(overlap_tokens=-1)
    assert ChunkSettings(max_tokens=30).overlap == 15  # at most half a chunk


def test_counting_stays_linear() -> None:
    text = " ".join(f"Sentence {i} talks about the VPN. 第{i}句讲的是密码。" for i in range(300))
    blocks = [Block(text[i : i + 900], location=f"page {i // 5000}") for i in range(0, len(text), 900)]
    counted: list[int] = []

    def spy(t: str) -> int:
        counted.append(len(t))
        return count(t)

    for strategy in ("paragraph", "sentence", "window"):
        counted.clear()
        chunk_document(doc(*blocks), spy, ChunkSettings(strategy=strategy))  # type: ignore[arg-type]
        assert sum(counted) <= 4 * len(text), strategy


# --- properties -----------------------------------------------------------------------------

_SENTENCE = st.builds(
    lambda words, end: " ".join(words) + end,
    st.lists(st.one_of(_CJK_WORD, _LATIN_WORD), min_size=1, max_size=4),
    st.sampled_from(["。", "！", "？", "；", "!", "?"]),
)
_PATHS = [(), ("Setup",), ("Setup", "VPN"), ("常见问题",), ("Setup", "VPN", "重置")]
_BLOCK = st.builds(
    Block,
    text=st.tuples(st.sampled_from([" ", "", "\n"]), st.lists(_SENTENCE, max_size=12)).map(lambda t: t[0].join(t[1])),
    kind=st.sampled_from(["paragraph", "paragraph", "heading", "row", "list"]),
    location=st.sampled_from(["page 1", "page 2", "sheet A, row 3", "sheet A, row 4", "slide 2", ""]),
    heading_path=st.sampled_from(_PATHS),
)
_LONG_BLOCK = st.builds(
    Block,
    text=st.lists(st.one_of(_CJK_WORD, _LATIN_WORD, _MARK), max_size=120).map("".join),
    kind=st.sampled_from(["paragraph", "row"]),
    location=st.sampled_from(["page 1", "page 2", ""]),
)
_COUNTERS = st.sampled_from([count, count_with_start, count_newlines_heavy])


def _check_common(chunks: list[Chunk], counter, max_tokens: int) -> None:  # noqa: ANN001
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.tokens == counter(c.text) <= max_tokens
        assert c.text and c.text == c.text.strip()


@given(
    st.lists(_BLOCK, max_size=12),
    st.sampled_from(["paragraph", "sentence"]),
    st.integers(30, 120),
    st.integers(0, 20),
    st.integers(0, 20),
    _COUNTERS,
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_structured_chunks_fit_and_keep_every_sentence(blocks, strategy, max_tokens, overlap, min_tokens, counter) -> None:  # noqa: ANN001
    conf = ChunkSettings(strategy=strategy, max_tokens=max_tokens, overlap_tokens=overlap, min_tokens=min_tokens)
    chunks = chunk_document(doc(*blocks), counter, conf)
    _check_common(chunks, counter, max_tokens)
    squashed = [squash(c.text) for c in chunks]
    for b in blocks:
        for s in split_sentences(b.text):
            if counter(s) <= max_tokens // 2:  # longer ones may be cut by tokens
                assert any(squash(s) in t for t in squashed), s


@given(st.lists(_LONG_BLOCK, max_size=8), st.integers(8, 60), _COUNTERS)
@settings(max_examples=60, deadline=None)
def test_without_headings_or_overlap_the_chunks_are_the_text(blocks, max_tokens, counter) -> None:  # noqa: ANN001
    conf = ChunkSettings(max_tokens=max_tokens, overlap_tokens=0, min_tokens=0)
    chunks = chunk_document(doc(*blocks), counter, conf)
    _check_common(chunks, counter, max_tokens)
    assert "".join(squash(c.text) for c in chunks) == "".join(squash(b.text) for b in blocks)


@given(st.lists(st.one_of(_BLOCK, _LONG_BLOCK), max_size=10), st.integers(8, 80), st.integers(0, 7), _COUNTERS)
@settings(max_examples=60, deadline=None)
def test_windows_fit_and_cover_the_whole_text(blocks, max_tokens, overlap, counter) -> None:  # noqa: ANN001
    conf = ChunkSettings(strategy="window", max_tokens=max_tokens, overlap_tokens=overlap)
    chunks = chunk_document(doc(*blocks), counter, conf)
    _check_common(chunks, counter, max_tokens)
    whole = "".join(squash(b.text) for b in blocks)
    # each window is a piece of the text, later than the one before, leaving no gap; text may
    # repeat, so follow every placement: {start of the last window: how far the windows reach}
    placements = {-1: 0}
    for c in chunks:
        piece, following = squash(c.text), {}
        for start, reach in placements.items():
            at = whole.find(piece, start + 1)
            while 0 <= at <= reach:
                following[at] = max(following.get(at, 0), reach, at + len(piece))
                at = whole.find(piece, at + 1)
        assert following, c.text
        placements = following
    assert max(placements.values()) == len(whole)
