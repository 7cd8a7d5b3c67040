"""`charrnn eval` alone and next to a busy program (a 2-thread torch matrix loop, as an analysis
script would be), for one or more source trees; `--threads 1` beside them as the known workaround.

Each row is a real CLI process; rows are interleaved over `--repeats` rounds and the median kept.
The ratio is each row's time against the same tree's time alone, measured in the same run.

    python benchmarks/busy_eval.py runs/vim-docs text.txt --tree /tmp/before --tree .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUSY = "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def eval_seconds(tree: Path, run: str, text: str, threads: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "charrnn", *threads, "eval", run, text, "--json"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("text")
    parser.add_argument("--tree", action="append", type=Path, required=True, help="a charrnn source tree")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = [(tree, busy, threads) for busy in (False, True) for tree in args.tree for threads in ("all", "1")]
    times: dict = {row: [] for row in rows}
    for _ in range(args.repeats):
        for tree, busy, threads in rows:
            program = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
            try:
                time.sleep(2 if busy else 0)  # the busy program up and running
                flags = ["--threads", "1"] if threads == "1" else []
                times[tree, busy, threads].append(eval_seconds(tree, args.run, args.text, flags))
            finally:
                if program:
                    program.kill()
                    program.wait()
    print("| tree | threads | alone | next to a busy program | ratio |")
    print("|---|---|---:|---:|---:|")
    for tree in args.tree:
        for threads in ("all", "1"):
            alone = statistics.median(times[tree, False, threads])
            busy = statistics.median(times[tree, True, threads])
            label = "1 (`--threads 1`)" if threads == "1" else "all (default)"
            print(f"| {tree} | {label} | {alone:.1f} s | {busy:.1f} s | {busy / alone:.2f}x |")


if __name__ == "__main__":
    main()
