"""Start-up time of the commands that only show things: wall time from launch to exit.

Times `charrnn --help`, `charrnn corpus list`, `charrnn plot RUN` (on a metrics file written here)
and `charrnn cache list` (on an empty private cache), each as `python -m charrnn ...` in a fresh
process, in rounds so that a busy moment hits every command alike. The baseline is a bare
`python -c pass` measured in the same rounds: the ratio is how many interpreter start-ups a command
costs. The last column says whether the command imported torch (one extra run with -X importtime).

A second table times how soon `charrnn train TEXT --max-steps 1` starts its first step: the moment
its `start` event reaches stderr (`--log-format jsonl`), less the time a bare `python -c "import
torch"` takes, measured in the same rounds.

    python benchmarks/startup.py                       # this checkout, 20 rounds, a Markdown table
    python benchmarks/startup.py --repo /tmp/before    # another checkout: git worktree add /tmp/before REV
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def commands(run: Path) -> dict[str, list[str]]:
    return {
        "python -c pass": ["-c", "pass"],
        "charrnn --help": ["-m", "charrnn", "--help"],
        "charrnn corpus list": ["-m", "charrnn", "corpus", "list"],
        "charrnn plot RUN": ["-m", "charrnn", "plot", str(run)],
        "charrnn cache list": ["-m", "charrnn", "cache", "list"],
    }


def write_run(folder: Path) -> Path:
    """A run directory with just enough of a metrics.jsonl for `charrnn plot`."""
    run = folder / "run"
    run.mkdir()
    lines = [f'{{"step": {s}, "train_loss": {3.0 - s / 500:.4f}}}' for s in range(10, 1001, 10)]
    lines += [f'{{"step": {s}, "val_loss": {3.1 - s / 500:.4f}}}' for s in range(100, 1001, 100)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def once(python: str, args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    # In a neutral folder: `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH.
    proc = subprocess.run([python, *args], env=env, capture_output=True, cwd=env["CHARRNN_CACHE"])
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stderr.decode()[-2000:]}")
    return elapsed


def imports_torch(python: str, args: list[str], env: dict) -> bool:
    cmd = [python, "-X", "importtime", *args]
    err = subprocess.run(cmd, env=env, capture_output=True, cwd=env["CHARRNN_CACHE"]).stderr.decode()
    return any(line.split("|")[-1].strip() == "torch" for line in err.splitlines() if line.startswith("import time:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout whose charrnn is timed")
    parser.add_argument("--rounds", type=int, default=20, help="runs of each command; the median is shown")
    parser.add_argument("--python", default=sys.executable, help="the interpreter (its environment's packages)")
    args = parser.parse_args()
    repo = args.repo.resolve()
    if not (repo / "charrnn" / "__init__.py").is_file():
        raise SystemExit(f"--repo {repo}: no charrnn/__init__.py there; pass a charrnn checkout")

    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
        env.update(PYTHONPATH=str(repo), CHARRNN_CACHE=str(Path(tmp) / "cache"), COLUMNS="100")
        Path(env["CHARRNN_CACHE"]).mkdir()
        cmds = commands(write_run(Path(tmp)))
        for a in cmds.values():  # warm the disk cache and compile the .pyc files
            once(args.python, a, env)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.rounds):
            for name, a in cmds.items():
                times[name].append(once(args.python, a, env))
        torch = {name: imports_torch(args.python, a, env) for name, a in cmds.items()}
        text = Path(tmp) / "text.txt"
        text.write_text("the cat sat on the mat and ran to see her dog.\n" * 2_000, encoding="utf-8")
        imports, starts = [], []
        for n in range(min(args.rounds, 10)):
            imports.append(once(args.python, ["-c", "import torch"], env))
            starts.append(first_step(args.python, text, Path(tmp) / f"run{n}", env))

    base = statistics.median(times["python -c pass"])
    print(f"{repo} (git {git_rev(repo)}), {args.rounds} rounds, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print()
    print("| command | median | fastest | x python -c pass | imports torch |")
    print("|---|---:|---:|---:|---|")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(
            f"| `{name}` | {median:.3f} s | {min(ts):.3f} s | {median / base:.1f} | {'yes' if torch[name] else 'no'} |"
        )

    print()
    gap = [s - i for s, i in zip(starts, imports)]
    print("| `charrnn train TEXT --max-steps 1` | median | fastest |")
    print("|---|---:|---:|")
    print(f"| `python -c 'import torch'` | {statistics.median(imports):.3f} s | {min(imports):.3f} s |")
    print(f"| the first step starts | {statistics.median(starts):.3f} s | {min(starts):.3f} s |")
    print(f"| first step after import torch | {statistics.median(gap):.3f} s | {min(gap):.3f} s |")


def first_step(python: str, text: Path, run: Path, env: dict) -> float:
    """Seconds from launch until `charrnn train` says it starts its first step."""
    cmd = [python, "-m", "charrnn", "train", str(text), "--max-steps", "1", "-o", str(run)]
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--sample-length", "0", "--log-format", "jsonl"], env=env,
                            cwd=env["CHARRNN_CACHE"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    started = None
    for line in proc.stderr:
        if started is None and b'"event": "start"' in line:
            started = time.perf_counter() - t0
    if proc.wait() != 0 or started is None:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}, no start event")
    return started


def git_rev(repo: Path) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


if __name__ == "__main__":
    main()
