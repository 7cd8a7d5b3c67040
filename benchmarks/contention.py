"""Scoring and training speed alone and with a second copy running at once, under OpenMP wait policies.

A torch process on a 2-core machine runs 2 OpenMP threads. By default libgomp's threads spin for a
while at every barrier before they sleep; when another busy process shares the cores, a spinning
thread holds a core that the thread it waits for needs. This measures what that costs: each worker
runs in its own process (the wait policy is read when the OpenMP runtime loads), first alone, then
two at once, for each policy (or thread count). The model is the `small` preset's on tiny-shakespeare (speed does not
depend on training), in the precision `auto` picks.

    python benchmarks/contention.py
    python benchmarks/contention.py --policies default PASSIVE --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def worker(kind: str, seconds: float) -> None:
    """Score or train for about `seconds`; print characters per second as JSON."""
    import tempfile

    import torch

    from charrnn.config import PRESETS, ModelConfig, TrainConfig
    from charrnn.data.batches import split
    from charrnn.data.corpus import load_corpus
    from charrnn.data.sources import TextOptions
    from charrnn.device import resolve_precision, seed_everything
    from charrnn.model.network import CharRNN
    from charrnn.model.scoring import score
    from charrnn.training.trainer import Trainer

    data = load_corpus([str(CORPUS)], TextOptions())
    train_ids, val_ids = split(data.ids, 0.1)
    fields = {"layers", "hidden_size", "embedding_size", "dropout"}
    settings = PRESETS["small"]
    seed_everything(0)
    model = CharRNN(ModelConfig(len(data.vocab), **{k: v for k, v in settings.items() if k in fields}))
    cpu = torch.device("cpu")
    dtype = resolve_precision("auto", cpu)
    chars, start = 0, time.perf_counter()
    if kind == "score":
        piece = val_ids[:50_000]
        while time.perf_counter() - start < seconds:
            score(model, piece, cpu, dtype=dtype)
            chars += len(piece)
    else:
        config = TrainConfig(**{k: v for k, v in settings.items() if k not in fields}, max_steps=10**9)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(model, train_ids, val_ids, config, Path(tmp), None, cpu)
            trainer.train_step()  # kernels set up outside the timing
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                trainer.train_step()
                chars += config.batch_size * config.seq_len
    print(json.dumps({"chars_per_sec": chars / (time.perf_counter() - start)}))


def run_workers(kind: str, policy: str, copies: int, seconds: float) -> float:
    """Characters per second of each of `copies` workers started together (their mean)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    if policy.startswith("spin:"):  # libgomp spins this many times at a barrier, then sleeps
        env["GOMP_SPINCOUNT"] = policy[5:]
    elif policy.startswith("threads:"):  # fewer threads than cores: no one waits at a barrier for long
        env["OMP_NUM_THREADS"] = policy[8:]
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--worker", kind, "--seconds", str(seconds)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    rates = [json.loads(p.communicate(timeout=600)[0])["chars_per_sec"] for p in procs]
    return statistics.mean(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--policies", nargs="+", default=["default", "PASSIVE"], help="default, PASSIVE, ACTIVE or spin:N"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="each worker's measuring time")
    parser.add_argument("--repeats", type=int, default=2, help="median of N rounds, policies interleaved")
    parser.add_argument("--worker", choices=["score", "train"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seconds)
        return
    results: dict[tuple, list[float]] = {}
    for _ in range(args.repeats):
        for kind in ("score", "train"):
            for copies in (1, 2):
                for policy in args.policies:
                    rate = run_workers(kind, policy, copies, args.seconds)
                    results.setdefault((kind, copies, policy), []).append(rate)
    base = args.policies[0]
    print(f"{os.cpu_count()} CPUs; median of {args.repeats}; chars/s per process (ratio to {base} alone)\n")
    print("| work | policy | alone | two at once |")
    print("|---|---|---:|---:|")
    for kind in ("score", "train"):
        reference = statistics.median(results[(kind, 1, base)])
        for policy in args.policies:
            alone, pair = (statistics.median(results[(kind, n, policy)]) for n in (1, 2))
            print(
                f"| {kind} | {policy} | {alone:,.0f} ({alone / reference:.2f}x) | {pair:,.0f} ({pair / reference:.2f}x) |"
            )


if __name__ == "__main__":
    main()
