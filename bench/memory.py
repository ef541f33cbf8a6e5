"""Resident memory of the knowledge base's models, one fresh process per configuration.

    HF_HUB_OFFLINE=1 python bench/memory.py [--models DIR] [--docs 12] [--questions 20]

The first configuration is Knowbot as it was before issue 3's memory work: e5's 4-bit MatMulNBits
layers turned back into fp32 MatMuls (the model as built before), and a second copy of the
tokenizer for counting tokens (about 280 MB). The second is Knowbot before this one: the Hugging
Face tokenizer (`tokenizer.json`, about 290 MB), one onnxruntime session with its memory arena and
batches of 32 chunks. For a before/after in one run. Each configuration runs in a child process of
its own (so nothing is shared or freed between
them): import Knowbot's knowledge modules, load e5, then the cross-lingual model (USE
multilingual v3), then the CC-CEDICT dictionary, then ingest `--docs` documents of the bench
corpus through `KnowledgeService.ingest_bytes` (Qdrant Edge + SQLite in a temporary folder)
and answer `--questions` of its questions with `search_scope`. Printed per stage: VmRSS, and at
the end the peak (VmHWM). This is the knowledge side of `knowbot serve` (the web app, channels
and workers add their own, which this does not count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {
    "as before: fp32 e5 layers, two tokenizers, + cross-lingual":
        {"xl": True, "dictionary": False, "fp32": True, "own_tokenizer": True},
    "before: HF tokenizer, one session with arena, batches of 32, all models":
        {"xl": True, "dictionary": True, "hf_tokenizer": True},
    "e5 only": {"xl": False, "dictionary": False},
    "e5 + cross-lingual": {"xl": True, "dictionary": False},
    "e5 + cross-lingual + dictionary (default)": {"xl": True, "dictionary": True},
}


def fp32_copy(model_dir: Path, target: Path) -> Path:
    """The built e5 model with its MatMulNBits nodes turned back into fp32 MatMuls (what
    knowledge/e5_convert.py built before format 2), for the comparison."""
    import shutil

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from knowledge.e5_convert import DATA_FILE, MODEL_FILE

    model = onnx.load(str(model_dir / MODEL_FILE))
    inits = {i.name: i for i in model.graph.initializer}
    nodes, dropped = [], set()
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        packed = numpy_helper.to_array(inits[node.input[1]])
        scales = numpy_helper.to_array(inits[node.input[2]])
        rows, blocks, _ = packed.shape
        values = np.stack([packed & 15, packed >> 4], axis=-1).reshape(rows, blocks, 32)
        weight = ((values.astype(np.float32) - 8) * scales.reshape(rows, blocks, 1)).reshape(rows, -1)
        name = node.input[1] + ".fp32"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
        nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output),
                                      name=node.name))
        dropped.update(node.input[1:3])
    kept = [i for i in model.graph.initializer if i.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    target.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.name not in (MODEL_FILE, DATA_FILE):
            shutil.copy(path, target / path.name)
    onnx.save_model(model, str(target / MODEL_FILE), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
    return target


def load_fp32(models: Path) -> object:
    """An Embedder on the fp32 copy (the e5 build itself is left as it is)."""
    from knowledge import embedder as emb

    built = emb.ensure_e5_model(models / emb.E5_DIR_NAME)
    target = fp32_copy(built, Path(tempfile.mkdtemp(prefix="knowbot-mem-fp32-")) / emb.E5_DIR_NAME)
    for lean in target.glob("sentencepiece.*"):  # as before: fastembed's own tokenizer
        lean.unlink()
    return _plain_embedder(target, "fp32 comparison")


def _plain_embedder(target: Path, description: str) -> object:
    """An Embedder on the e5 build in `target` with fastembed's own tokenizer and one session,
    in batches of 32 (how Knowbot embedded before the lean tokenizer)."""
    from knowledge import embedder as emb

    emb._register_custom_model(emb.E5_MODEL_NAME, dim=384, model_file=emb.MODEL_FILE,
                               additional_files=[emb.DATA_FILE], pooling="mean", normalize=True,
                               description=description)
    e5 = emb.Embedder(emb.Embedder._load(emb.E5_MODEL_NAME, target.parent, None, target),
                      model_name=emb.E5_MODEL_NAME, dim=384,
                      tokenizer_path=target / emb.TOKENIZER_FILE,
                      query_prefix=emb.E5_QUERY_PREFIX, passage_prefix=emb.E5_PASSAGE_PREFIX,
                      max_length=emb._max_length(target))
    e5.passage_budget = 0
    return e5


def load_plain(models: Path) -> object:
    """An Embedder as before the lean tokenizer: fastembed's own tokenizer and single session
    (arena on), batches of 32 (the e5 build itself is left as it is)."""
    import shutil

    from knowledge import embedder as emb

    built = emb.ensure_e5_model(models / emb.E5_DIR_NAME)
    target = Path(tempfile.mkdtemp(prefix="knowbot-mem-plain-")) / emb.E5_DIR_NAME
    shutil.copytree(built, target, ignore=shutil.ignore_patterns("sentencepiece.*"))
    return _plain_embedder(target, "as before")


def status(field: str) -> float:
    """A /proc/self/status field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def child(config: dict[str, bool], models: Path, docs: int, questions: int) -> dict:
    """Load, ingest and search as `config` says; return RSS per stage and the peak."""
    stages: dict[str, float] = {}
    from bench.corpus import KBS, build
    from bot.config import Settings
    from bot.store import Store
    from knowledge.crosslingual import USE_MODEL, load_crosslingual
    from knowledge.edge_store import EdgeStore
    from knowledge.embedder import Embedder
    from knowledge.service import KnowledgeService

    stages["imports"] = status("VmRSS")
    if config.get("fp32"):
        e5 = load_fp32(models)
    elif config.get("hf_tokenizer"):
        e5 = load_plain(models)
    else:
        e5 = Embedder.default(models)
    e5.share_tokenizer = not config.get("own_tokenizer")  # type: ignore[attr-defined]
    e5.embed_query("warm up")
    stages["e5 loaded"] = status("VmRSS")
    xl = load_crosslingual(USE_MODEL, models, models_dir=models) if config["xl"] else None
    if xl is not None:
        stages["cross-lingual loaded"] = status("VmRSS")
    with tempfile.TemporaryDirectory(prefix="knowbot-mem-") as root:
        settings = Settings(data_dir=Path(root), database_url=None, qdrant_url=None,
                            knowledge_dictionary=config["dictionary"],
                            knowledge_crosslingual_model=USE_MODEL if xl is not None else "off")
        store = await Store.open(settings.resolved_database_url)
        service = KnowledgeService(settings, store,
                                   lambda dim: EdgeStore(Path(root) / "qdrant", dim),
                                   lambda: e5, dim=e5.dim,
                                   crosslingual_factory=(lambda: xl) if xl is not None else None)
        if config["dictionary"]:
            await service.dictionary()
            stages["dictionary loaded"] = status("VmRSS")
        corpus = build(20251125, 0.1)
        for doc in corpus.docs[:docs]:
            await service.ingest_bytes("acme", doc.kb, doc.data, doc.filename, shared=True)
        stages[f"{docs} documents ingested"] = status("VmRSS")
        asked = (corpus.questions({("en", "en"): 5, ("zh", "zh"): 5, ("en", "zh"): 5,
                                   ("zh", "en"): 5}) + corpus.unanswerable())[:questions]
        for q in asked:
            await service.search_scope("acme", list(KBS), q.text)
        stages[f"{len(asked)} questions answered"] = status("VmRSS")
        await service.close()
        await store.close()
    stages["peak (VmHWM)"] = status("VmHWM")
    return stages


def main() -> None:
    """Run every configuration in a child process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="where the e5 model is built")
    parser.add_argument("--docs", type=int, default=12)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--only", action="append", default=[],
                        help="run only the configurations whose name contains this (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = Path(args.models or tempfile.mkdtemp(prefix="knowbot-mem-models-"))
    if args.child:
        result = asyncio.run(child(CONFIGS[args.child], models, args.docs, args.questions))
        print("RESULT " + json.dumps(result))
        return
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"resident memory (MB) per configuration, one process each; load average {load}")
    for name in CONFIGS:
        if args.only and not any(part in name for part in args.only):
            continue
        out = subprocess.run([sys.executable, __file__, "--child", name, "--models", str(models),
                              "--docs", str(args.docs), "--questions", str(args.questions)],
                             capture_output=True, text=True, check=True).stdout
        stages = json.loads(next(line for line in out.splitlines()
                                 if line.startswith("RESULT "))[7:])
        print(f"{name}:")
        for stage, mb in stages.items():
            print(f"  {stage:<32} {mb:7.0f} MB")
    print(f"load average {Path('/proc/loadavg').read_text().split()[0]} at the end")


if __name__ == "__main__":
    main()
