"""`charrnn train FILE --max-time B` with no other flags, on the texts of the corpus panel.

Each row is one real CLI process (one at a time: on a 2-core machine two would each get half of
it). It records the wall time of the whole command, what `--preset auto` chose (the run's first
line), the validation loss of the model that `sample` uses (the kept model, scored on the whole
held-out text), the best estimate the run saw, the last weights' estimate, epochs and steps.
`--grid NAME=FLAGS` adds rows with those flags, for the oracle that auto is judged against.
Rows are appended to a JSON-lines file as they finish, so a long panel can be run in parts.

    python benchmarks/panel.py --budget 75 --budget 180                 # every text, auto
    python benchmarks/panel.py --text vim-manual-100k --budget 180 \\
        --grid "1x512 d0.1=--preset small" --grid "1x256 d0.3=--preset small --hidden-size 256 --dropout 0.3"
    python benchmarks/panel.py --table panel.jsonl                      # print the markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn.training import metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"
TEXTS = {
    "vim-manual-100k": SHARED / "panel" / "vim-manual-100k.txt",
    "builtin": None,  # charrnn's built-in corpus: `charrnn train` with no file
    "tinyshakespeare": SHARED / "tinyshakespeare.txt",
    "vim-docs": SHARED / "panel" / "vim-docs.txt",
    "perl-modules": SHARED / "panel" / "perl-modules.txt",
}


def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} cores"


def run(text: str, budget: float, name: str, flags: list[str], workdir: Path) -> dict:
    out = workdir / f"{text}-{budget:g}-{name.replace(' ', '_')}"
    corpus = [str(TEXTS[text])] if TEXTS[text] else []
    cmd = [sys.executable, "-m", "charrnn", "train", *corpus, "--max-time", f"{budget:g}", "-o", str(out)]
    cmd += ["--log-format", "plain", "--sample-length", "0", *flags]
    threads = os.environ.get("OMP_NUM_THREADS")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    first = next((line for line in proc.stderr.splitlines() if "preset" in line or "parameters" in line), "")
    result = json.loads((out / "result.json").read_text())
    started = metrics.read(out)
    steps = [r for r in started if "train_loss" in r]
    kept_step = (result.get("kept") or {}).get("step")
    kept_eval = next((r for r in started if "val_loss" in r and r["step"] == kept_step), {})
    return {
        "text": text,
        "budget": budget,
        "settings": name,
        "flags": " ".join(flags),
        "command": "charrnn train " + " ".join(shlex.quote(c) for c in cmd[4:]),
        "wall_seconds": round(wall, 1),
        "start_up_seconds": round(wall - result["elapsed"], 1),
        "chose": re.sub(r", [\d,]+ parameters.*", "", first.removeprefix("charrnn: ")),
        "kept_val": result["val_loss"],
        "best_estimate": result["best_val_estimate"],
        "best_estimate_error": kept_eval.get("val_standard_error"),  # None: scored whole
        "last_estimate": result["last_val_estimate"],
        "kept_step": kept_step,
        "steps": result["steps"],
        "epochs": result["epochs"],
        "stopped_by": result["stopped_by"],
        "chars_per_sec": round(sum(r["chars_per_sec"] for r in steps[-20:]) / max(len(steps[-20:]), 1)),
        "machine": machine() + (f", {threads} thread(s) per run" if threads else ""),
    }


def margin(row: dict) -> str:
    """The best estimate's stated margin (two standard errors), when it came from a sample."""
    error = row.get("best_estimate_error")
    return f" ±{2 * error:.3f}" if error is not None else ""


def table(rows: list[dict]) -> str:
    lines = [
        "| text | budget | settings | kept model (what sample uses) | best estimate | last estimate | epochs | steps "
        "| stopped by | wall time | auto chose |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['text']} | {r['budget']:g} s | {r['settings']} | {r['kept_val']:.4f} | {r['best_estimate']:.4f}{margin(r)} "
            f"| {r['last_estimate']:.4f} | {r['epochs']:.1f} | {r['steps']:,} | {r['stopped_by']} "
            f"| {r['wall_seconds']:.0f} s | {r['chose']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", action="append", choices=list(TEXTS), help="panel texts (default: all)")
    parser.add_argument("--budget", action="append", type=float, help="seconds (repeatable)")
    parser.add_argument("--grid", action="append", default=[], help="NAME=FLAGS: also run these settings")
    parser.add_argument("--no-auto", action="store_true", help="only the --grid rows")
    parser.add_argument("--out", type=Path, default=Path("panel.jsonl"), help="JSON lines to append rows to")
    parser.add_argument("--table", type=Path, help="print the table of a JSON-lines file and exit")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    settings = [] if args.no_auto else [("auto", [])]
    settings += [(g.split("=", 1)[0], shlex.split(g.split("=", 1)[1])) for g in args.grid]
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.text or list(TEXTS):
            for budget in args.budget or [75.0, 180.0]:
                for name, flags in settings:
                    row = run(text, budget, name, flags, Path(tmp))
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(table([row]).splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
