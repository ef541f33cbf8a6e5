"""Resident memory of the knowledge base's models, one fresh process per configuration.

    HF_HUB_OFFLINE=1 python bench/memory.py [--models DIR] [--docs 12] [--questions 20]

Each configuration runs in a child process of its own (so nothing is shared or freed between
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
    "e5 only": {"xl": False, "dictionary": False},
    "e5 + cross-lingual": {"xl": True, "dictionary": False},
    "e5 + cross-lingual + dictionary (default)": {"xl": True, "dictionary": True},
}


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
    e5 = Embedder.default(models)
    e5.embed_query("warm up")
    stages["e5 loaded"] = status("VmRSS")
    xl = load_crosslingual(USE_MODEL, models) if config["xl"] else None
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
        out = subprocess.run([sys.executable, __file__, "--child", name, "--models", str(models),
                              "--docs", str(args.docs), "--questions", str(args.questions)],
                             capture_output=True, text=True, check=True).stdout
        stages = json.loads(next(line for line in out.splitlines()
                                 if line.startswith("RESULT "))[7:])
        print(f"{name}:")
        for stage, mb in stages.items():
            print(f"  {stage:<32} {mb:7.0f} MB")


if __name__ == "__main__":
    main()
