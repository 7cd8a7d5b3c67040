"""Validation loss after a fixed training-time budget on tiny-shakespeare, for named settings.

Each entry runs the real `charrnn train` command with `--max-time BUDGET` and `--eval-every 0` (the
budget is the run's wall time: training, the last validation and the save; the figures in
benchmarks/README.md were measured when it counted training time only) and reads the final
validation loss (nats per character over the whole held-out 10%, hidden state carried) from the
run's metrics.jsonl. Runs are sequential: on a 2-core
machine two trainings at once would each get half the machine; nothing else may run meanwhile.

    python benchmarks/quality_at_budget.py --budget 75 --budget 600
    python benchmarks/quality_at_budget.py --budget 600 --only "preset medium" --only "medium, no averaging"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from charrnn.training import metrics

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"

SETTINGS = {
    # The reference point: a plain 2x512 LSTM as most char-rnn tutorials train it
    # (the same settings as `--preset large`, meant for GPUs).
    "baseline 2x512": [
        "--hidden-size",
        "512",
        "--layers",
        "2",
        "--batch-size",
        "64",
        "--seq-len",
        "128",
        "--lr",
        "2e-3",
        "--dropout",
        "0.25",
    ],
    # The presets (charrnn/config.py); with no flags `--preset auto` picks small on a CPU below
    # 4 minutes and medium from 4 minutes on (with at least 500k characters of text).
    "preset small": ["--preset", "small"],
    "preset medium": ["--preset", "medium"],
    # The presets as they were before weight averaging: the raw weights, the rate decayed to a tenth.
    "small, no averaging": ["--preset", "small", "--ema", "0", "--min-lr-ratio", "0.1"],
    "medium, no averaging": ["--preset", "medium", "--ema", "0", "--min-lr-ratio", "0.1"],
}


def run(name: str, flags: list[str], budget: float, corpus: Path, workdir: Path) -> dict:
    out = workdir / f"{name.replace(' ', '_')}-{budget:g}"
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus),
        "--max-time",
        str(budget),
        "--eval-every",
        "0",
        "--sample-length",
        "0",
        "--quiet",
        "-o",
        str(out),
        *flags,
    ]
    subprocess.run(cmd, check=True)
    records = metrics.read(out)
    final = [r for r in records if "val_loss" in r][-1]
    steps = [r for r in records if "train_loss" in r]
    speed = sum(r["chars_per_sec"] for r in steps[1:]) / max(1, len(steps) - 1)
    return {
        "name": name,
        "budget": budget,
        "val_loss": final["val_loss"],
        "steps": final["step"],
        "chars": final["tokens"],
        "chars_per_sec": speed,
        "flags": " ".join(flags) or "(none)",
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| settings | budget | validation loss (nats/char) | steps | characters seen | chars/s | flags |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['budget']:g} s | **{r['val_loss']:.4f}** | {r['steps']:,} | {r['chars']:,} | "
            f"{r['chars_per_sec']:,.0f} | `{r['flags']}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, action="append", help="seconds of training (repeatable)")
    parser.add_argument("--only", action="append", help="run only these settings (repeatable)")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    budgets = args.budget or [75.0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            for name, flags in SETTINGS.items():
                if args.only and name not in args.only:
                    continue
                rows.append(run(name, flags, budget, args.corpus, Path(tmp)))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
