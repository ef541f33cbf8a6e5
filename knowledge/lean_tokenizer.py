"""multilingual-e5-small's tokenizer in about 55 MB instead of about 290 MB, with the same token ids.

The Hugging Face `tokenizers` library holds XLM-R's 250,002-piece Unigram vocabulary in a trie of
hash maps: loading `tokenizer.json` costs about 290 MB of resident memory. The vocabulary is a
SentencePiece model to begin with (Hugging Face converted it), so it is turned back into one
here: the same pieces with the same scores, in the same order (so the ids are the same), and the
same precompiled character map. The `sentencepiece` library keeps it in a double-array trie.

What `tokenizer.json` does around the Unigram model is done here as it does it:

- added tokens (`<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>`) are found in the raw text first; the
  text between them is tokenized piece by piece, each as a text of its own;
- each piece is normalised with the precompiled map, runs of spaces become one, and a leading
  "▁" is added unless the text starts with a space. SentencePiece's `remove_extra_whitespaces`
  does the same except that it also drops a trailing space, which Hugging Face keeps as a token
  of its own ("▁"): that one is put back when the normalised text ends with a space;
- one quirk: Hugging Face's precompiled normaliser looks a grapheme (a character and the
  combining marks after it, under 6 bytes) up as a whole, and when the first character alone has
  a mapping it replaces the whole grapheme by that mapping, dropping the marks ("\ufffd\u05b0"
  becomes one space); SentencePiece maps each character. The marks are dropped here the same way;
- `<s>` ... `</s>` around the whole, truncation of the content to `max_length - 2`, and padding to
  the longest of a batch with `<pad>` (attention mask 0), on the right.

`tests/test_embedding.py` checks the ids against `tokenizers` on a large mixed Chinese and English
sample. `LeanTokenizer` gives fastembed the part of the `tokenizers.Tokenizer` interface it calls
(`encode_batch`, returning encodings with `ids` and `attention_mask`), so fastembed still does the
embedding (the ONNX session, pooling and normalisation).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bot.errors import ConfigError

SP_MODEL_FILE = "sentencepiece.model"
SP_META_FILE = "sentencepiece.json"
_META_VERSION = 1


@dataclass(frozen=True)
class LeanEncoding:
    """What fastembed reads of a `tokenizers.Encoding`."""

    ids: list[int]
    attention_mask: list[int]

    def __len__(self) -> int:
        return len(self.ids)


_patterns: tuple[re.Pattern[str], re.Pattern[str]] | None = None
_patterns_lock = threading.Lock()
_MARKS = ("Mn", "Mc", "Me")  # what extends a grapheme, with ZWJ (U+200D)
_CONTROLS = ("Cc", "Cf", "Zl", "Zp")  # after which a grapheme always ends


def _grapheme_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(any combining mark, a character that is no control followed by combining marks)."""
    global _patterns
    with _patterns_lock:
        if _patterns is None:
            marks = _ranges(lambda c: unicodedata.category(c) in _MARKS or c == "\u200d")
            stops = _ranges(lambda c: unicodedata.category(c) in _MARKS + _CONTROLS
                            and c not in "\u200c\u200d")
            _patterns = (re.compile(f"[{marks}]"), re.compile(f"([^{stops}])([{marks}]+)"))
        return _patterns


def _ranges(keep: Callable[[str], bool]) -> str:
    """A regular-expression character class body of the code points `keep` selects."""
    parts: list[str] = []
    start = last = -2
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF or not keep(chr(code)):
            continue
        if code != last + 1:
            if start >= 0:
                parts.append(_span(start, last))
            start = code
        last = code
    parts.append(_span(start, last))
    return "".join(parts)


def _span(start: int, end: int) -> str:
    return re.escape(chr(start)) + ("" if end == start else "-" + re.escape(chr(end)))


def _expected_layout(spec: dict[str, Any]) -> str | None:
    """None if `tokenizer.json` is the XLM-R layout rebuilt here; otherwise what differs."""
    model = spec.get("model") or {}
    if model.get("type") != "Unigram" or model.get("byte_fallback"):
        return f"model {model.get('type')!r}"
    normalizer = spec.get("normalizer") or {}
    steps = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else None
    if (not steps or len(steps) != 2 or steps[0].get("type") != "Precompiled"
            or steps[1] != {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}):
        return "normalizer"
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace" or pre.get("replacement") != "\u2581" or not (
            pre.get("add_prefix_space") or pre.get("prepend_scheme") == "always"):
        return "pre-tokenizer"
    post = spec.get("post_processor") or {}
    single = post.get("single") or []
    if post.get("type") != "TemplateProcessing" or [
            next(iter(s.values())).get("id") for s in single] != ["<s>", "A", "</s>"]:
        return "post-processor"
    return None


def build_sentencepiece(tokenizer_json: Path, directory: Path) -> bool:
    """Write `sentencepiece.model` and `sentencepiece.json` for `tokenizer_json` into `directory`.

    Returns False (writing nothing) when the tokenizer is not the layout this module rebuilds or
    the `sentencepiece` package is missing: the embedder then uses `tokenizer.json` as before.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        return False
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    if _expected_layout(spec) is not None:
        return False
    vocab = spec["model"]["vocab"]
    unk_id = int(spec["model"].get("unk_id", 3))
    added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}
    special = {content for content, i in added.items() if i < len(vocab) and vocab[i][0] == content}
    kinds = pb.ModelProto.SentencePiece
    proto = pb.ModelProto()
    for i, (piece, score) in enumerate(vocab):
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, float(score)
        if i == unk_id:
            entry.type = kinds.UNKNOWN
        elif piece in special:
            entry.type = kinds.CONTROL  # never matched in text: added tokens are split off first
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.UNIGRAM
    trainer.vocab_size = len(vocab)
    trainer.unk_id, trainer.byte_fallback = unk_id, False
    # ids of specials are where the vocabulary has them (no -1 "unused" ids are allowed twice)
    trainer.bos_id = added.get("<s>", -1)
    trainer.eos_id = added.get("</s>", -1)
    trainer.pad_id = added.get("<pad>", -1)
    norm = proto.normalizer_spec
    norm.name = "knowbot_precompiled"
    norm.precompiled_charsmap = base64.b64decode(
        spec["normalizer"]["normalizers"][0]["precompiled_charsmap"])
    norm.add_dummy_prefix = True
    norm.remove_extra_whitespaces = True
    norm.escape_whitespaces = True
    space = next((i for i, (piece, _) in enumerate(vocab) if piece == "\u2581"), None)
    if space is None or "<s>" not in added or "</s>" not in added or "<pad>" not in added:
        return False
    meta = {"version": _META_VERSION, "added_tokens": added, "space_id": space,
            "bos_id": added["<s>"], "eos_id": added["</s>"], "pad_id": added["<pad>"]}
    directory = Path(directory)
    (directory / SP_MODEL_FILE).write_bytes(proto.SerializeToString())
    (directory / SP_META_FILE).write_text(json.dumps(meta, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    return True


def available(directory: Path) -> bool:
    """Whether `directory` holds a lean tokenizer this version can load."""
    try:
        meta = json.loads((Path(directory) / SP_META_FILE).read_text(encoding="utf-8"))
        import sentencepiece  # noqa: F401
    except (OSError, ValueError, ImportError):
        return False
    return (Path(directory) / SP_MODEL_FILE).is_file() and meta.get("version") == _META_VERSION


class LeanTokenizer:
    """XLM-R's tokenizer on sentencepiece, as fastembed and the embedder call it."""

    def __init__(self, directory: Path, max_length: int = 512) -> None:
        """Load `sentencepiece.model` and its `sentencepiece.json` from `directory`."""
        import sentencepiece as spm

        directory = Path(directory)
        try:
            meta = json.loads((directory / SP_META_FILE).read_text(encoding="utf-8"))
            model = (directory / SP_MODEL_FILE).read_bytes()
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"Could not load the tokenizer in {directory}: {exc}") from exc
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(model)
        only_map = pb.ModelProto()
        only_map.normalizer_spec.CopyFrom(proto.normalizer_spec)
        del proto
        # the precompiled map alone: whether a text ends with a space once normalised
        self._normalizer = spm.SentencePieceNormalizer(
            model_proto=only_map.SerializeToString(), add_dummy_prefix=False,
            escape_whitespaces=False, remove_extra_whitespaces=False)
        self._added: dict[str, int] = {str(k): int(v) for k, v in meta["added_tokens"].items()}
        self._split = re.compile("(" + "|".join(
            re.escape(t) for t in sorted(self._added, key=len, reverse=True)) + ")")
        self.space_id = int(meta["space_id"])
        self.bos_id, self.eos_id = int(meta["bos_id"]), int(meta["eos_id"])
        self.pad_id = int(meta["pad_id"])
        self.max_length = max_length
        self._any_mark, self._graphemes = _grapheme_patterns()
        self._lock = threading.Lock()  # the normalizer is not documented as thread-safe

    def _grapheme(self, found: re.Match[str]) -> str:
        whole, first = found.group(0), found.group(1)
        if len(whole.encode("utf-8")) >= 6:
            return whole
        with self._lock:
            mapped = self._normalizer.normalize(first)
        return mapped if mapped != first else whole

    def _segment(self, text: str) -> list[int]:
        if self._any_mark.search(text):
            text = self._graphemes.sub(self._grapheme, text)
        ids = self._sp.encode(text)
        with self._lock:
            normalized = self._normalizer.normalize(text)
        if normalized.endswith(" "):  # Hugging Face keeps a trailing space as a token
            ids.append(self.space_id)
        return ids

    def ids(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The token ids of `text`, untruncated; with `<s>` and `</s>` if asked."""
        if any(t in text for t in self._added):
            ids: list[int] = []
            for part in self._split.split(text):
                if part in self._added:
                    ids.append(self._added[part])
                elif part:
                    ids.extend(self._segment(part))
        else:
            ids = self._segment(text)
        return [self.bos_id, *ids, self.eos_id] if add_special_tokens else ids

    def encode(self, text: str, add_special_tokens: bool = True) -> LeanEncoding:
        """One text as the model takes it: specials, truncated to `max_length`."""
        ids = self.ids(text)
        if add_special_tokens:
            ids = [self.bos_id, *ids[:max(0, self.max_length - 2)], self.eos_id]
        return LeanEncoding(ids, [1] * len(ids))

    def encode_batch(self, texts: Sequence[str]) -> list[LeanEncoding]:
        """Texts as the model takes them, padded with `<pad>` to the longest (mask 0)."""
        encoded = [self.encode(t) for t in texts]
        longest = max((len(e) for e in encoded), default=0)
        return [e if len(e) == longest else
                LeanEncoding(e.ids + [self.pad_id] * (longest - len(e)),
                             e.attention_mask + [0] * (longest - len(e)))
                for e in encoded]
