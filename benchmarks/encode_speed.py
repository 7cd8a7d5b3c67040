"""Corpus encoding: throughput and peak memory on large generated text, then training on it.

For each size, generates two corpora in a temporary directory: "ascii-heavy" (English-like words,
about 1% non-ASCII characters) and "mixed" (about half the characters Cyrillic, Greek, CJK, emoji).
Each measurement runs in its own process, so peak RSS (ru_maxrss from wait4) belongs to it alone:
- encode: `load_corpus` on a cold cache (both passes, written to the memory-mapped id file);
- first batch: a second `load_corpus` on the warm cache, split, and batch 0 (the time a cached run
  waits before training can start; interpreter and torch start-up are reported separately);
- train: `charrnn train` for a few steps of the default model on the encoded corpus.

    python benchmarks/encode_speed.py                      # 100 MB and 1 GB, prints a Markdown table
    python benchmarks/encode_speed.py --sizes 100          # sizes in MB
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at which but have "
    "an they you were her she there KING HENRY: ROMEO. said would could, their; what? all! when"
).split()
ASCII_HEAVY = WORDS * 6 + ["café", "naïve", "—", "“quoted”", "façade", "Zoë"]
MIXED = WORDS + "Привет мир как дела Ελληνικά κείμενο 日本語 テキスト 中文 文本 😀 é".split() * 3
BLOCK_WORDS = 200_000  # one generated block, about 1 MB; a corpus is a random sequence of 16 blocks


def generate(path: Path, size: int, words: list[str], seed: int = 0) -> None:
    """`size` bytes of text drawn from `words`, written block by block (valid UTF-8, lines of ~12 words)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([w.encode() for w in words], dtype=object)
    blocks = []
    for _ in range(16):
        picked = vocab[rng.integers(0, len(vocab), BLOCK_WORDS)]
        picked[11::12] += b"\n"
        blocks.append(b" ".join(picked) + b"\n")
    written = 0
    with open(path, "wb") as f:
        for i in rng.integers(0, len(blocks), size // len(blocks[0]) + 2):
            block = blocks[i][: size - written]
            if len(block) < len(blocks[i]):  # cut at a character boundary
                block = block[: len(block.decode("utf-8", "ignore").encode())]
            f.write(block)
            written += len(block)
            if written >= size or len(block) < len(blocks[i]):
                break


ENCODE = """
import json, sys, time
from charrnn.data.corpus import load_corpus
t = time.perf_counter()
c = load_corpus([sys.argv[1]])
print(json.dumps({"seconds": time.perf_counter() - t, "characters": len(c), "vocab": len(c.vocab)}))
"""

FIRST_BATCH = """
import json, sys, time
t0 = time.perf_counter()
import torch
from charrnn.data.batches import StreamBatches, split
from charrnn.data.corpus import load_corpus
t1 = time.perf_counter()
c = load_corpus([sys.argv[1]])
train, val = split(c.ids, 0.1)
x, y = StreamBatches(train, 64, 128).batch(0)
print(json.dumps({"seconds": time.perf_counter() - t1, "imports": t1 - t0}))
"""


def measure(args: list[str], env: dict) -> tuple[dict | None, float, float]:
    """Run a child process: (its JSON output if any, wall seconds, its own peak RSS in MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: it returns this child's rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        text = out.read().decode()
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)}\n{err.read().decode()[-2000:]}")
    result = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
    return result, wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="corpus sizes in MB (10^6 bytes), comma-separated")
    parser.add_argument("--kinds", default="ascii-heavy,mixed")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to generate (default: a temp dir, deleted)")
    a = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="charrnn-bench-", dir=a.dir))
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "CHARRNN_CACHE": str(root / "cache"), "NO_COLOR": "1"}
    rows = []
    flags = f"--max-steps {a.train_steps} --val-fraction 0 --eval-every 0 --sample-length 0 --device cpu -q"

    def train_rss(corpus: str, name: str) -> float:
        """Peak RSS of `charrnn train` (default model) for a few steps on `corpus`."""
        cmd = [sys.executable, "-m", "charrnn", "train", corpus, *flags.split(), "-o", str(root / name)]
        return measure(cmd, env)[2]

    try:
        for size_mb in [int(s) for s in a.sizes.split(",")]:
            for kind in a.kinds.split(","):
                path = root / f"{kind}-{size_mb}MB.txt"
                generate(path, size_mb * 10**6, ASCII_HEAVY if kind == "ascii-heavy" else MIXED)
                enc, _, enc_rss = measure([sys.executable, "-c", ENCODE, str(path)], env)
                first, _, _ = measure([sys.executable, "-c", FIRST_BATCH, str(path)], env)
                row = {
                    "corpus": f"{kind} {size_mb} MB",
                    "characters": enc["characters"],
                    "vocab": enc["vocab"],
                    "encode_s": enc["seconds"],
                    "mb_per_s": size_mb / enc["seconds"],
                    "encode_rss_mb": enc_rss,
                    "first_batch_s": first["seconds"],
                    "imports_s": first["imports"],
                    "train_rss_mb": train_rss(str(path), f"{kind}-{size_mb}"),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                path.unlink()
                shutil.rmtree(root / "cache", ignore_errors=True)
        baseline = train_rss("builtin", "builtin")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"| corpus | characters | vocab | encode | throughput | peak RSS encoding | first batch (cached) "
        f"| peak RSS training {a.train_steps} steps |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['characters']:,} | {r['vocab']} | {r['encode_s']:.1f} s "
            f"| {r['mb_per_s']:.0f} MB/s | {r['encode_rss_mb']:.0f} MB "
            f"| {r['first_batch_s']:.3f} s (+{r['imports_s']:.1f} s imports) | {r['train_rss_mb']:.0f} MB |"
        )
    print(f"| builtin 0.47 MB (baseline: the same training on a tiny corpus) | | | | | | | {baseline:.0f} MB |")


if __name__ == "__main__":
    main()
