"""How close can a bounded periodic-validation sample get to the whole held-out loss?

For a trained run and its text: one long-context pass gives every held-out character's loss (32
streams, each read after 1,024 characters of the text before it); then, for each piece layout
(length, warm-up) and each reading budget per validation, 16 shifted systematic samples of pieces
spread evenly over the text give the error of their mean against the whole figure (RMS and worst).
The warm-up's cold-start bias is measured by scoring 200 pieces for real. `--stratified` adds
pieces ordered by a bigram model's loss (a cheap difficulty proxy from the training text) instead of
by position.

    python benchmarks/estimate_designs.py runs/vim-docs ../shared/corpora/panel/vim-docs.txt
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import checkpoint
from charrnn.batches import IGNORE, piece_batches, sample_starts, split
from charrnn.corpus import TextOptions, load_corpus
from charrnn.evaluate import autocast, score
from charrnn.trainer import resolve_precision

LAYOUTS = ((64, 128), (128, 128), (128, 256), (256, 256), (512, 256), (1024, 256))
READS = (30_000, 50_000, 100_000, 200_000, 400_000)


def losses(model, val: np.ndarray, dtype, streams: int = 32, warm: int = 1024, chunk: int = 256) -> np.ndarray:
    """Loss of predicting val[i + 1] from everything before it (at least `warm` characters of context)."""
    n, cpu = len(val), torch.device("cpu")
    seg = -(-(n - 1) // streams)
    out, state = np.full(n - 1, np.nan), None
    begins = np.arange(streams)[:, None] * seg
    for off in range(-warm, seg, chunk):
        pos = begins + off + np.arange(chunk)[None, :]
        ok = (pos >= 0) & (pos < n - 1)
        p = np.where(ok, pos, 0)
        x, y = torch.from_numpy(val[p]), torch.from_numpy(np.where(ok, val[p + 1], IGNORE))
        with autocast(cpu, dtype):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="none")
        keep = ok & (pos >= begins)
        out[pos[keep]] = loss.view(y.shape).numpy()[keep]
    return np.where(np.isnan(out), np.nanmean(out), out)


def cold_bias(model, val, true_cs, length: int, warm: int, dtype, pieces: int = 200) -> float:
    """Mean loss of pieces read after only `warm` characters, minus their long-context loss."""
    starts = sample_starts(len(val), pieces, length, warm)
    total, count, state = 0.0, 0, None
    for x, y in piece_batches(val, starts, length, 64, warm):
        with autocast(torch.device("cpu"), dtype):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum").item()
        count += int((y != IGNORE).sum())
    return total / count - float(np.mean((true_cs[starts + length] - true_cs[starts]) / length))


def bigram_loss(train: np.ndarray, val: np.ndarray, vocab: int) -> np.ndarray:
    """Per-character loss of an add-one-half bigram model of the training text, on val[1:]."""
    t = train.astype(np.int64)
    uni = np.bincount(t, minlength=vocab) + 0.5
    codes, counts = np.unique(t[:-1] * vocab + t[1:], return_counts=True)
    q = val[:-1] * vocab + val[1:]
    i = np.minimum(np.searchsorted(codes, q), len(codes) - 1)
    c = np.where(codes[i] == q, counts[i], 0)
    return -np.log((c + 0.5 * vocab * uni[val[1:]] / uni.sum()) / (uni[val[:-1]] + 0.5 * vocab))


def errors(piece_loss: np.ndarray, order: np.ndarray, k: int, target: float) -> tuple[float, float]:
    """RMS and worst error of 16 shifted systematic samples of k pieces taken along `order`."""
    errs = []
    for frac in np.linspace(0, 1, 16, endpoint=False):
        idx = order[np.minimum((frac * len(order) / k + np.arange(k) * len(order) / k).astype(int), len(order) - 1)]
        errs.append(piece_loss[idx].mean() - target)
    return float(np.sqrt(np.mean(np.square(errs)))), float(np.max(np.abs(errs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("text")
    parser.add_argument("--stratified", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = checkpoint.load(args.run, "cpu", which="best")
    ids = load_corpus([args.text], TextOptions(), vocab=loaded.vocab).ids
    train, val = split(ids, 0.1, 2_000_000)
    val = np.asarray(val, dtype=np.int64)
    model, dtype = loaded.model.eval(), resolve_precision("auto", torch.device("cpu"))
    true = losses(model, val, dtype)
    true_cs = np.concatenate([[0], np.cumsum(true)])
    whole = score(model, val, torch.device("cpu"), dtype=dtype).nats
    print(f"{args.text}: {len(val):,} held-out characters; long-context mean {true.mean():.4f}, `score` {whole:.4f}\n")
    proxy_cs = np.concatenate([[0], np.cumsum(bigram_loss(train, val, len(loaded.vocab.chars)))])
    print("| pieces x warm-up | cold bias | " + " | ".join(f"read {r // 1000}K: RMS / worst" for r in READS) + " |")
    print("|---|---:|" + "---:|" * len(READS))
    for length, warm in LAYOUTS:
        candidates = np.arange(warm, len(val) - 1 - length, length)  # a partition into pieces
        piece_loss = (true_cs[candidates + length] - true_cs[candidates]) / length
        orders = {"spread": np.arange(len(candidates))}
        if args.stratified:
            proxy = (proxy_cs[candidates + length] - proxy_cs[candidates]) / length
            orders["bigram-ordered"] = np.argsort(proxy, kind="stable")
        bias = cold_bias(model, val, true_cs, length, warm, dtype)
        for name, order in orders.items():
            cells = []
            for read in READS:
                k = max(1, round(read / (length + warm)))
                rms, worst = errors(piece_loss, order, k, true.mean())
                cells.append(f"{rms:.4f} / {worst:.4f}")
            label = f"{length} x {warm}" + ("" if name == "spread" else f", {name}")
            print(f"| {label} | {bias:+.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
