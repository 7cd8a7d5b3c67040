"""How long a stream of `charrnn serve` waits between two characters while a maximum-size /v1/score runs.

Starts the server on a free 127.0.0.1 port (one per source tree given with --tree, each run with that
tree's code) and measures, for a 2x512 LSTM (speed does not depend on training, so a one-step run
made here will do), best of --repeats rounds:
- the largest gap between two events of one streaming completion alone (the baseline);
- the largest gap between two events of a streaming completion while a 16,384-character text
  (--max-prompt's default) with per_char is scored, from the score's request to its reply, and
  how long the score took;
- the same while a completion of one character after a 16,384-character prompt is made.
Ratios are against the baseline of the same server, and against the first tree's figure. Every
request and the whole run are bounded in time; nothing leaves the loopback interface.

    python benchmarks/score_gap.py                                   # this checkout
    python benchmarks/score_gap.py --tree /tmp/before --tree .       # before and after a change
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_load import make_run

TIMEOUT = 120  # seconds for any one measurement
SCORED = 16_384  # characters of the text scored: --max-prompt's default


def start_server(run: Path, tree: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    command = [sys.executable, "-m", "charrnn", "serve", str(run), "--port", "0", "--max-tokens", "100000"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=tree)
    for line in proc.stderr:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if found:
            return proc, int(found.group(1))
    raise SystemExit(f"the server of {tree} did not start")


async def post(port: int, path: str, body: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    return reader, writer


async def stream_times(port: int, chars: int, stop: asyncio.Event, started: asyncio.Event) -> list[float]:
    """The arrival time of each event with text of a streaming completion, until it ends or `stop`."""
    body = {"prompt": "The ", "max_tokens": chars, "stream": True, "temperature": 0.8}
    reader, writer = await post(port, "/v1/completions", body)
    times = []
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line or line.startswith(b"data: [DONE]"):
                break
            if line.startswith(b"data: ") and any(c["text"] for c in json.loads(line[6:])["choices"]):
                times.append(time.perf_counter())
                started.set()
    finally:
        writer.close()
    return times


async def answered(port: int, path: str, body: dict) -> float:
    """Seconds until a request is answered whole."""
    start = time.perf_counter()
    reader, writer = await post(port, path, body)
    status = (await reader.readline()).split()[1]
    await reader.read()
    writer.close()
    if status != b"200":
        raise SystemExit(f"{path} answered {status.decode()}")
    return time.perf_counter() - start


def largest_gap(times: list[float], start: float = -1.0, end: float = float("inf")) -> float:
    """The largest gap between consecutive times, of those gaps that end after `start` and begin before `end`."""
    gaps = [b - a for a, b in zip(times, times[1:]) if b > start and a < end]
    return max(gaps, default=float("nan"))


async def alone(port: int, chars: int) -> float:
    done = asyncio.Event()
    times = await asyncio.wait_for(stream_times(port, chars, done, asyncio.Event()), TIMEOUT)
    return largest_gap(times)


async def beside(port: int, path: str, body: dict) -> tuple[float, float]:
    """The stream's largest gap while another request is answered, and that request's time."""
    stop, started = asyncio.Event(), asyncio.Event()
    streaming = asyncio.create_task(stream_times(port, 100_000, stop, started))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    begin = time.perf_counter()
    seconds = await asyncio.wait_for(answered(port, path, body), TIMEOUT)
    await asyncio.sleep(0.2)  # the stream's first event after it
    stop.set()
    times = await asyncio.wait_for(streaming, TIMEOUT)
    return largest_gap(times, begin, begin + seconds), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run to serve (default: make a one-step 2x512 LSTM run)")
    parser.add_argument("--corpus", default="builtin", help="text for the one-step run")
    parser.add_argument("--tree", type=Path, action="append", help="source tree to serve with (repeatable)")
    parser.add_argument("--chars", type=int, default=1000, help="characters of the stream alone")
    parser.add_argument("--repeats", type=int, default=3, help="best of N rounds")
    args = parser.parse_args()
    trees = args.tree or [Path(".")]
    text = ("The quick brown fox jumps over the lazy dog. " * (SCORED // 40 + 1))[:SCORED]
    with tempfile.TemporaryDirectory() as tmp:
        run = (args.run or make_run(Path(tmp), args.corpus)).resolve()
        results = []
        for tree in trees:
            proc, port = start_server(run, tree)
            try:
                asyncio.run(alone(port, 50))  # warm-up
                rounds = []
                for _ in range(args.repeats):
                    base = asyncio.run(alone(port, args.chars))
                    scored = asyncio.run(beside(port, "/v1/score", {"text": text, "per_char": True}))
                    primed = asyncio.run(beside(port, "/v1/completions", {"prompt": text, "max_tokens": 1}))
                    rounds.append((base, *scored, *primed))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            results.append((tree, *(min(r[i] for r in rounds) for i in range(5))))
    report(results, args)


def report(results, args) -> None:
    print(f"{os.cpu_count()} CPUs; best of {args.repeats}; beside a stream: a {SCORED:,}-character text\n")
    print(
        "| code | largest gap, stream alone | during a score (per_char) | score time | during a prompt's priming | priming time |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    first = results[0]
    for tree, base, scoring, score_time, priming, prime_time in results:
        print(
            f"| {tree} | {base * 1000:.0f} ms | {gap(scoring, base, first[2])} | {score_time:.2f} s "
            f"| {gap(priming, base, first[4])} | {prime_time:.2f} s |"
        )


def gap(value: float, alone: float, first: float) -> str:
    """A gap in milliseconds, with its ratios to the stream alone and to the first tree's."""
    return f"{value * 1000:,.0f} ms ({value / alone:.1f}x alone, {value / first:.3f}x first)"


if __name__ == "__main__":
    main()
