"""Scoring (validation, `charrnn eval`) characters per second against training characters per second
of the same model, measured in one process on tiny-shakespeare.

Rows: the presets' models. Columns: training (the CLI's training step, the preset's batch), scoring
as charrnn scores now (up to 64 streams from the text's length, chunks of 64, the run's precision),
scoring as it did before (the training batch's 16 streams, chunks of 256), and the loss difference
between scoring in the run's precision and in fp32.

    python benchmarks/score_speed.py
    python benchmarks/score_speed.py --preset small --steps 100 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from charrnn.config import PRESETS, ModelConfig, TrainConfig
from charrnn.data.batches import split
from charrnn.data.corpus import load_corpus
from charrnn.data.sources import TextOptions
from charrnn.device import resolve_precision, seed_everything
from charrnn.model.network import CharRNN
from charrnn.model.scoring import score
from charrnn.training.trainer import Trainer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
MODEL_FIELDS = {"layers", "hidden_size", "embedding_size", "dropout"}


def measure(preset: str, steps: int, repeats: int, corpus: Path, tmp: Path) -> dict:
    data = load_corpus([str(corpus)], TextOptions())
    train_ids, val_ids = split(data.ids, 0.1)
    settings = PRESETS[preset]
    seed_everything(0)
    model = CharRNN(ModelConfig(len(data.vocab), **{k: v for k, v in settings.items() if k in MODEL_FIELDS}))
    config = TrainConfig(**{k: v for k, v in settings.items() if k not in MODEL_FIELDS}, max_steps=10**9)
    cpu = torch.device("cpu")
    trainer = Trainer(model, train_ids, val_ids, config, tmp, None, cpu)
    dtype = resolve_precision("auto", cpu)
    for _ in range(10):
        trainer.train_step()
    best = {"train": 0.0, "score": 0.0, "before": 0.0}
    for _ in range(repeats):  # best of N: the machine is shared and noisy
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        best["train"] = max(best["train"], steps * config.batch_size * config.seq_len / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        now = score(trainer.shipped, val_ids, cpu, dtype=dtype)
        best["score"] = max(best["score"], len(val_ids) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        score(trainer.shipped, val_ids, cpu, streams=config.batch_size, seq_len=256, dtype=dtype, warmup_batches=1)
        best["before"] = max(best["before"], len(val_ids) / (time.perf_counter() - t0))
    fp32 = score(trainer.shipped, val_ids, cpu, dtype=torch.float32)
    return {**best, "dtype": str(dtype).split(".")[-1], "loss": now.nats, "fp32_loss": fp32.nats}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=["small", "medium"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {cap}")
    print(
        "| model | training chars/s | scoring chars/s | ratio | before (16 streams x 256) | ratio | loss - fp32 loss |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for preset in args.preset or ["small", "medium"]:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(preset, args.steps, args.repeats, args.corpus, Path(tmp))
        print(
            f"| {preset} ({r['dtype']}) | {r['train']:,.0f} | {r['score']:,.0f} | {r['score'] / r['train']:.1f}x "
            f"| {r['before']:,.0f} | {r['before'] / r['train']:.1f}x | {r['loss'] - r['fp32_loss']:+.5f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
