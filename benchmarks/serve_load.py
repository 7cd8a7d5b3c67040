"""Load test of `charrnn serve` on loopback: many streaming clients at once against one alone.

Starts the server on a free 127.0.0.1 port, then measures, for a 2x512 LSTM (speed does not depend
on training, so a one-step run made here will do):
- one streaming client of --chars characters, and `charrnn sample`'s sampler on the same model
  (in this process, after loading, as the command runs it), in characters per second;
- --clients streaming clients of --chars characters each, started together: aggregate characters per
  second, time to first streamed character (median and worst), failed requests.
Every request and the whole run are bounded in time; nothing leaves the loopback interface.

    python benchmarks/serve_load.py                      # makes a 2x512 run from the built-in corpus
    python benchmarks/serve_load.py --run runs/shakespeare --clients 32 --chars 500
    python benchmarks/serve_load.py --against "--precision fp32"   # and a second server, same rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from charrnn.generation.sampler import Decoding, Request, Sampler
from charrnn.storage import checkpoints as ckpt

TIMEOUT = 120  # seconds for any one measurement


def make_run(folder: Path, corpus: str) -> Path:
    """A 2x512 LSTM run after one training step."""
    run = folder / "lstm-2x512"
    command = [sys.executable, "-m", "charrnn", "train", corpus, "--cell", "lstm", "--layers", "2"]
    command += ["--hidden-size", "512", "--max-steps", "1", "--sample-length", "0", "--quiet", "-o", str(run)]
    subprocess.run(command, check=True)
    return run


def start_server(run: Path, clients: int, extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "serve",
        str(run),
        "--port",
        "0",
        "--max-streams",
        str(max(64, clients)),
        *extra,
    ]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if found:
            return proc, int(found.group(1))
    raise SystemExit("the server did not start")


async def stream(port: int, body: dict) -> dict:
    """One streaming completion over a raw connection: characters, time to the first one, duration."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    status = (await reader.readline()).split()[1]
    chars, first, done = 0, None, False
    while line := await reader.readline():  # chunked SSE: size lines, then whole `data:` events
        if line.startswith(b"data: [DONE]"):
            done = True
        elif line.startswith(b"data: "):
            text = "".join(c["text"] for c in json.loads(line[6:])["choices"])
            if text and first is None:
                first = time.perf_counter()
            chars += len(text)
    writer.close()
    end = time.perf_counter()
    ok = status == b"200" and done and chars == body["max_tokens"]
    return {"ok": ok, "chars": chars, "ttfc": (first or end) - start, "start": start, "first": first, "end": end}


async def clients(port: int, count: int, chars: int) -> list[dict]:
    body = {"prompt": "The ", "max_tokens": chars, "stream": True, "temperature": 0.8}
    return await asyncio.wait_for(asyncio.gather(*(stream(port, body) for _ in range(count))), TIMEOUT)


def sampler_speed(run: Path, chars: int) -> float:
    """What `charrnn sample RUN -n CHARS --prime 'The '` does after loading, in characters per second."""
    loaded = ckpt.load(run, "cpu")
    sampler = Sampler(loaded.model, loaded.vocab)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in sampler.generate(Request(prime="The ", length=chars), Decoding(0.8)):
            pass
    return chars / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run to serve (default: make a one-step 2x512 LSTM run)")
    parser.add_argument("--corpus", default="builtin", help="text for the one-step run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--chars", type=int, default=500, help="characters per client")
    parser.add_argument("--repeats", type=int, default=3, help="best of N rounds")
    parser.add_argument("--against", help="serve arguments of a second server measured in the same rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp), args.corpus)
        servers = [start_server(run, args.clients)]
        if args.against:
            servers.append(start_server(run, args.clients, shlex.split(args.against)))
        try:
            for _, port in servers:
                asyncio.run(clients(port, 2, 50))  # warm-up
            rounds, against = [], []
            for _ in range(args.repeats):  # interleaved, best of N: robust to a shared machine
                one = asyncio.run(clients(servers[0][1], 1, args.chars))[0]
                many = asyncio.run(clients(servers[0][1], args.clients, args.chars))
                alone = sampler_speed(run, args.chars)
                rounds.append((one, many, alone))
                if args.against:
                    against.append(asyncio.run(clients(servers[1][1], args.clients, args.chars)))
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait(timeout=30)
    report(rounds, against, args)


def report(rounds, against, args) -> None:
    def one_rate(one):  # characters per second of a lone stream, first character to last
        return (one["chars"] - 1) / (one["end"] - one["first"])

    def many_rate(many):  # all characters over the wall time from the first request to the last reply
        return sum(r["chars"] for r in many) / (max(r["end"] for r in many) - min(r["start"] for r in many))

    best_one = max(rounds, key=lambda r: one_rate(r[0]))[0]
    best_many = max(rounds, key=lambda r: many_rate(r[1]))[1]
    best_alone = max(r[2] for r in rounds)
    one_wall = best_one["chars"] / (best_one["end"] - best_one["start"])
    failed = sum(not r["ok"] for _, many, _ in rounds for r in many) + sum(not one["ok"] for one, _, _ in rounds)
    failed += sum(not r["ok"] for many in against for r in many)
    ttfc = sorted(r["ttfc"] * 1000 for r in best_many)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; best of {args.repeats}\n"
    )
    print("| measurement | figure |")
    print("|---|---:|")
    print(f"| `charrnn sample` sampler, 1 x {args.chars} chars | {best_alone:,.0f} chars/s |")
    print(
        f"| 1 streaming client, first to last character | {one_rate(best_one):,.0f} chars/s ({one_rate(best_one) / best_alone:.2f}x sample) |"
    )
    print(f"| 1 streaming client, request to last character | {one_wall:,.0f} chars/s |")
    print(
        f"| {args.clients} streaming clients x {args.chars} chars, aggregate | {many_rate(best_many):,.0f} chars/s ({many_rate(best_many) / one_wall:.1f}x one client) |"
    )
    print(
        f"| time to first character with {args.clients} in flight, median / worst | {statistics.median(ttfc):.0f} / {ttfc[-1]:.0f} ms |"
    )
    print(f"| failed requests, all rounds | {failed} |")
    if against:
        other = max(many_rate(many) for many in against)
        print(
            f"| {args.clients} clients, aggregate, server with `{args.against}` | {other:,.0f} chars/s "
            f"(this server: {many_rate(best_many) / other:.2f}x that) |"
        )


if __name__ == "__main__":
    main()
