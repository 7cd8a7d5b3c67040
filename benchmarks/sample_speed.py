"""Sampling speed at batch size 1: charrnn's sampler vs the naive nn.<cell>-per-character loop.

Also times the step's matrix-vector products alone (no gates, no sampling), the floor any
implementation of the same maths pays. All three are measured in the same run, interleaved, so the
ratios hold even on a noisy shared machine.

    python benchmarks/sample_speed.py            # prints a Markdown table
    python benchmarks/sample_speed.py --device cuda
    python benchmarks/sample_speed.py --prime 200000   # reading a long prime: in pieces vs one call
    python benchmarks/sample_speed.py --load    # loading a checkpoint: with the output probe vs without
"""

from __future__ import annotations

import argparse
import time

import torch

from charrnn.data.vocab import Vocab
from charrnn.generation import sampler as sample
from charrnn.generation.sampler import Decoding, Request, Sampler
from charrnn.model.network import CharRNN, ModelConfig

CONFIGS = [("lstm", 2, 512), ("gru", 2, 512), ("lstm", 3, 1024)]
VOCAB = Vocab("".join(chr(c) for c in range(32, 97)))  # 65 characters, like tiny-shakespeare


def naive(model: CharRNN, n: int, device) -> float:
    """What a straightforward sampler does: call the nn module once per character."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.zeros(1, 1, dtype=torch.long, device=device)
    state = None
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            logits, state = model(x, state)
            x = torch.multinomial(torch.softmax(logits[:, -1], -1), 1, generator=g)
    _sync(device)
    return n / (time.perf_counter() - start)


def fast(model: CharRNN, n: int, device) -> float:
    sampler = Sampler(model, VOCAB, device)
    start = time.perf_counter()
    for _ in sampler.generate(Request(length=n, seed=0), Decoding(1.0)):
        pass
    _sync(device)
    return n / (time.perf_counter() - start)


def matvec_only(model: CharRNN, n: int, device) -> float:
    """Only the step's matrix-vector products: the memory-bound floor of the step."""
    c = model.config
    rnn = model.rnn
    mats = [getattr(rnn, f"weight_hh_l{i}").detach().t().contiguous() for i in range(c.layers)]
    mats += [getattr(rnn, f"weight_ih_l{i}").detach().t().contiguous() for i in range(1, c.layers)]
    head = model.head.weight.detach().t().contiguous()
    h = torch.zeros(1, c.hidden_size, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            for w in mats:
                torch.mm(h, w)
            torch.mm(h, head)
    _sync(device)
    return n / (time.perf_counter() - start)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def prime_seconds(model: CharRNN, prime: str, device, chunk: int) -> float:
    """Seconds `Sampler.feed` takes to read `prime`, PRIME_CHUNK characters a call (`chunk`)."""
    sample.PRIME_CHUNK, kept = chunk, sample.PRIME_CHUNK
    try:
        sampler = Sampler(model, VOCAB, torch.device(device))
        start = time.perf_counter()
        with torch.no_grad():
            sampler.feed(prime)
        return time.perf_counter() - start
    finally:
        sample.PRIME_CHUNK = kept


def prime_table(chars: int, repeats: int, device) -> None:
    prime = "".join(VOCAB.chars[i % len(VOCAB.chars)] for i in range(chars))
    print(f"| model | one call (s) | {sample.PRIME_CHUNK:,} a call (s) | pieces / one call |")
    print("|---|---:|---:|---:|")
    for cell, layers, hidden in CONFIGS[:2]:
        model = CharRNN(ModelConfig(len(VOCAB), cell, layers, hidden, 64, 0.0)).to(device).eval()
        whole = min(prime_seconds(model, prime, device, chars + 2) for _ in range(repeats))
        pieces = min(prime_seconds(model, prime, device, sample.PRIME_CHUNK) for _ in range(repeats))
        print(f"| {layers}x{hidden} {cell.upper()} | {whole:.2f} | {pieces:.2f} | {pieces / whole:.2f}x |", flush=True)


def load_table(repeats: int) -> None:
    """What `checkpoint.load` costs with its check that the model's output is a number (one step of
    every symbol, side by side) against the same load without it, interleaved, best of `repeats`."""
    import tempfile
    from pathlib import Path
    from unittest import mock

    from charrnn.config import TrainConfig
    from charrnn.records import RunRecord
    from charrnn.storage import checkpoints as checkpoint
    from charrnn.training.trainer import Trainer

    print("| model, vocabulary | load without the probe (s) | with it (s) | with / without |")
    print("|---|---:|---:|---:|")
    for (cell, layers, hidden), vocab in [
        (CONFIGS[0], VOCAB),
        (CONFIGS[2], VOCAB),
        (CONFIGS[2], Vocab("".join(map(chr, range(0x100, 0x100 + 1500))))),
    ]:
        with tempfile.TemporaryDirectory() as folder:
            model = CharRNN(ModelConfig(len(vocab), cell, layers, hidden, 64, 0.0))
            config = TrainConfig(batch_size=1, seq_len=1, max_steps=1, eval_every=0)
            record = RunRecord(model.config, vocab.to_json(), {}, config, {})
            ids = torch.arange(len(vocab)).numpy()
            Trainer(model, ids, ids[:2], config, Path(folder), record, torch.device("cpu")).save()
            times = {"without": [], "with": []}
            for _ in range(repeats):
                t0 = time.perf_counter()
                with mock.patch.object(checkpoint, "_outputs_numbers", lambda *a: True):
                    checkpoint.load(folder)
                times["without"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                checkpoint.load(folder)
                times["with"].append(time.perf_counter() - t0)
            without, with_probe = min(times["without"]), min(times["with"])
            print(
                f"| {layers}x{hidden} {cell.upper()}, {len(vocab):,} characters | {without:.3f} | {with_probe:.3f} | "
                f"{with_probe / without:.2f}x |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chars", type=int, default=2000, help="characters per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="best of N interleaved rounds")
    parser.add_argument("--prime", type=int, help="time reading a prime of this many characters instead")
    parser.add_argument("--load", action="store_true", help="time loading a checkpoint, with and without its probe")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}\n")
    if args.prime:
        return prime_table(args.prime, args.repeats, args.device)
    if args.load:
        return load_table(args.repeats)
    print(
        "| model | naive nn loop (chars/s) | charrnn sampler (chars/s) | speed-up | matvec floor (chars/s) | sampler / floor |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for cell, layers, hidden in CONFIGS:
        model = CharRNN(ModelConfig(len(VOCAB), cell, layers, hidden, 64, 0.0)).to(args.device).eval()
        rounds = {"naive": [], "fast": [], "floor": []}
        for _ in range(args.repeats):  # interleaved, best of N: robust to a noisy machine
            rounds["naive"].append(naive(model, args.chars // 4, args.device))
            rounds["fast"].append(fast(model, args.chars, args.device))
            rounds["floor"].append(matvec_only(model, args.chars, args.device))
        best = {k: max(v) for k, v in rounds.items()}
        print(
            f"| {layers}x{hidden} {cell.upper()} | {best['naive']:,.0f} | {best['fast']:,.0f} | "
            f"{best['fast'] / best['naive']:.1f}x | {best['floor']:,.0f} | {best['floor'] / best['fast']:.2f}x slower |",
            flush=True,
        )


if __name__ == "__main__":
    main()
