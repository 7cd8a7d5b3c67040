"""How close can a bounded periodic-validation sample get to the whole held-out loss?

For a trained run and its text: one long-context pass gives every held-out character's loss (32
streams, each read after 1,024 characters of the text before it); then, for each piece layout
(length, warm-up) and each reading budget per validation, 16 shifted systematic samples of pieces
spread evenly over the text give the error of their mean against the whole figure (RMS and worst).
The warm-up's cold-start bias is measured by scoring 200 pieces for real. `--stratified` adds
pieces ordered by a bigram model's loss (a cheap difficulty proxy from the training text) instead of
by position. `--proxies` adds two designs that use n-gram models of the training text (orders 0-2)
as auxiliary variables known for every piece: the order-2 model as a control variate (the sample's
mean, plus the n-gram's whole-text mean minus its sample mean), and a sample balanced on all three
(each piece of the systematic sample swapped within its interval so the sample's n-gram means match
the whole text's).

`--margin` prints the floor that no design passes (how many characters even independent draws need
for two standard errors of 0.01, from the spread of the per-character losses), and how well the
margin that charrnn states beside a sampled validation (two standard errors from neighbouring
pieces' differences, `charrnn.model.scoring.standard_error`) covers the real error: 64 shifted samples
per cell.

`--anchored` tries a difference estimator anchored on one whole scoring during the run: the last
weights' estimate is the anchor checkpoint's whole figure plus the change, on the same pieces, from
the anchor to the last weights. It needs a run that kept the checkpoint of every validation
(`charrnn train FILE --max-time 75 --keep 40`); for each anchor it prints the error of the last
weights' estimate (RMS / worst of 16 shifted samples of charrnn's 1,024 x 256 pieces) and what one
whole scoring costs against the periodic share of the budget.

    python benchmarks/estimate_designs.py runs/vim-docs ../shared/corpora/panel/vim-docs.txt
    python benchmarks/estimate_designs.py runs/vim-docs ../shared/corpora/panel/vim-docs.txt --margin
    python benchmarks/estimate_designs.py runs/vim-docs ../shared/corpora/panel/vim-docs.txt --anchored
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.batches import IGNORE, piece_batches, sample_starts, split
from charrnn.data.corpus import load_corpus
from charrnn.data.sources import TextOptions
from charrnn.device import autocast, resolve_precision
from charrnn.model.scoring import score, standard_error
from charrnn.storage import checkpoints as checkpoint
from charrnn.storage import layout

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


def ngram_loss(train: np.ndarray, val: np.ndarray, vocab: int, order: int) -> np.ndarray:
    """Per-character loss on val[1:] of an n-gram model of the training text (`order` characters of
    context), each order interpolated with the one below it (weight 1 for the lower order)."""
    big, mix = np.uint64(1_000_003), np.uint64(2_654_435_761)  # hashes of contexts and of (context, next)
    t, v = train.astype(np.uint64), val.astype(np.uint64)
    uni = np.bincount(train.astype(np.int64), minlength=vocab) + 0.5
    p = (uni / uni.sum())[val[1:]]
    ctx_t, ctx_v = np.zeros(len(t), np.uint64), np.zeros(len(v), np.uint64)

    def counts(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
        known, n = np.unique(keys, return_counts=True)
        i = np.minimum(np.searchsorted(known, queries), len(known) - 1)
        return np.where(known[i] == queries, n[i], 0)

    with np.errstate(over="ignore"):
        for k in range(1, order + 1):  # the context of position i: characters i-1 back to i-k
            ctx_t[k:] = ctx_t[k:] * big + t[:-k] + np.uint64(1)
            ctx_v[k:] = ctx_v[k:] * big + v[:-k] + np.uint64(1)
            pair = counts(ctx_t[k:] * mix + t[k:], ctx_v[1:] * mix + v[1:])
            p = (pair + p) / (counts(ctx_t[k:], ctx_v[1:]) + 1.0)
    return -np.log(p)


def systematic(pieces: int, k: int, frac: float) -> np.ndarray:
    """k pieces of a partition into `pieces`, evenly spaced from `frac` of the first interval."""
    return np.minimum((frac * pieces / k + np.arange(k) * pieces / k).astype(int), pieces - 1)


def balanced(proxies: np.ndarray, k: int, frac: float) -> np.ndarray:
    """A systematic sample, then each piece swapped for another of its interval while that brings the
    sample's mean proxies (standardised columns) nearer to the whole text's."""
    n = len(proxies)
    edges = (np.arange(k + 1) * n / k).astype(int)
    chosen = systematic(n, k, frac)
    for _ in range(4):
        total = proxies[chosen].sum(0)
        for s in range(k):
            candidates = np.arange(edges[s], max(edges[s + 1], edges[s] + 1))
            cost = np.square((total - proxies[chosen[s]] + proxies[candidates]) / k).sum(1)
            best = candidates[np.argmin(cost)]
            total += proxies[best] - proxies[chosen[s]]
            chosen[s] = best
    return chosen


def designs(piece_loss, proxy: dict, whole_proxy: dict, stratified: bool, proxies: bool) -> dict:
    """Each sample design: a function of (pieces in the sample, shift) giving its estimate."""
    n = len(piece_loss)
    out = {"": lambda k, f: piece_loss[systematic(n, k, f)].mean()}
    if stratified:
        by_bigram = np.argsort(proxy[1], kind="stable")
        out[", bigram-ordered"] = lambda k, f: piece_loss[by_bigram[systematic(n, k, f)]].mean()
    if proxies:

        def control(k: int, f: float) -> float:
            chosen = systematic(n, k, f)
            return piece_loss[chosen].mean() + whole_proxy[2] - proxy[2][chosen].mean()

        columns = np.stack([proxy[o] for o in (0, 1, 2)], 1)
        columns = (columns - columns.mean(0)) / columns.std(0)
        out[", order-2 control variate"] = control
        out[", balanced on orders 0-2"] = lambda k, f: piece_loss[balanced(columns, k, f)].mean()
    return out


def rms_worst(errors: list[float]) -> str:
    return f"{np.sqrt(np.mean(np.square(errors))):.4f} / {np.max(np.abs(errors)):.4f}"


def margin(true: np.ndarray, true_cs: np.ndarray, proxy: np.ndarray) -> None:
    """The floor, then the stated margin against the real error for charrnn's pieces and short ones."""
    spread, rho = true.std(), np.corrcoef(true, proxy)[0, 1]
    need = (2 * spread / 0.01) ** 2
    print(
        f"per-character losses spread {spread:.3f} nats: {need:,.0f} characters drawn independently have two "
        f"standard errors of 0.01; with the order-2 control variate (correlation {rho:.2f}), {need * (1 - rho**2):,.0f}\n"
    )
    print("| pieces x warm-up | read | RMS error | RMS standard error | error within the margin (2 s.e.) |")
    print("|---|---:|---:|---:|---:|")
    for length, warm in ((1024, 256), (128, 128)):
        candidates = np.arange(warm, len(true) - length, length)
        piece_loss = (true_cs[candidates + length] - true_cs[candidates]) / length
        for read in READS:
            k = max(2, round(read / (length + warm)))
            samples = [piece_loss[systematic(len(piece_loss), k, f)] for f in np.linspace(0, 1, 64, endpoint=False)]
            errors = np.array([s.mean() - true.mean() for s in samples])
            errs = np.array([standard_error(s) for s in samples])
            print(
                f"| {length} x {warm} | {read // 1000}K | {np.sqrt(np.mean(errors**2)):.4f} | "
                f"{np.sqrt(np.mean(errs**2)):.4f} | {np.mean(np.abs(errors) <= 2 * errs):.0%} |"
            )


def anchored(run: str, val: np.ndarray, dtype) -> None:
    """The last weights' estimate anchored on each earlier checkpoint's whole figure (see the docstring)."""
    found = layout.list_checkpoints(Path(run))
    loaded = [checkpoint.load(c, "cpu") for c in found]
    steps = [int(ld.manifest["step"]) for ld in loaded]
    cs = np.stack([np.concatenate([[0], np.cumsum(losses(ld.model.eval(), val, dtype))]) for ld in loaded])
    t0 = time.perf_counter()
    score(loaded[-1].model, val, torch.device("cpu"), dtype=dtype)
    whole, budget = time.perf_counter() - t0, json.loads((Path(run) / "run.json").read_text())["train"]["max_time"]
    share = f", {whole / budget:.0%} of the --max-time budget" if budget else ""
    print(f"{len(found)} checkpoints to step {steps[-1]:,}; one whole scoring takes {whole:.1f} s{share}\n")
    length, warm, reads = 1024, 256, READS[:3]
    candidates = np.arange(warm, len(val) - 1 - length, length)
    piece_loss = (cs[:, candidates + length] - cs[:, candidates]) / length  # (checkpoints, pieces)
    truth = cs[:, -1] / (len(val) - 1)
    print("| last weights' estimate | " + " | ".join(f"read {r // 1000}K: RMS / worst" for r in reads) + " |")
    print("|---|" + "---:|" * len(reads))
    rows = {"plain pieces": None} | {
        f"anchored at step {s:,} ({s / steps[-1]:.0%})": a for a, s in enumerate(steps[:-1])
    }
    for name, a in rows.items():
        cells = []
        for read in reads:
            k = max(1, round(read / (length + warm)))
            est = np.stack(
                [
                    piece_loss[:, systematic(len(candidates), k, f)].mean(1)
                    for f in np.linspace(0, 1, 16, endpoint=False)
                ]
            )
            errors = est[:, -1] - truth[-1] if a is None else est[:, -1] - est[:, a] + truth[a] - truth[-1]
            cells.append(rms_worst(errors))
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("text")
    parser.add_argument("--stratified", action="store_true", help="also pieces ordered by a bigram model's loss")
    parser.add_argument("--proxies", action="store_true", help="also n-gram control variates and balanced samples")
    parser.add_argument("--margin", action="store_true", help="the floor for any design, and the stated margin's cover")
    parser.add_argument("--anchored", action="store_true", help="a difference estimator anchored on one whole scoring")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = checkpoint.load(args.run, "cpu", which="best")
    ids = load_corpus([args.text], TextOptions(), vocab=loaded.vocab).ids
    train, val = split(ids, 0.1, 2_000_000)
    val = np.asarray(val, dtype=np.int64)
    model, dtype = loaded.model.eval(), resolve_precision("auto", torch.device("cpu"))
    if args.anchored:
        anchored(args.run, val, dtype)
        return
    true = losses(model, val, dtype)
    true_cs = np.concatenate([[0], np.cumsum(true)])
    whole = score(model, val, torch.device("cpu"), dtype=dtype).nats
    print(f"{args.text}: {len(val):,} held-out characters; long-context mean {true.mean():.4f}, `score` {whole:.4f}\n")
    vocab = len(loaded.vocab.chars)
    if args.margin:
        margin(true, true_cs, ngram_loss(train, val, vocab, 2))
        return
    proxy_cs = {}  # the cumulative loss of n-gram models of orders 0-2, on the held-out text
    if args.stratified or args.proxies:
        proxy_cs = {o: np.concatenate([[0], np.cumsum(ngram_loss(train, val, vocab, o))]) for o in (0, 1, 2)}
    print("| pieces x warm-up | cold bias | " + " | ".join(f"read {r // 1000}K: RMS / worst" for r in READS) + " |")
    print("|---|---:|" + "---:|" * len(READS))
    fracs = np.linspace(0, 1, 16, endpoint=False)  # 16 shifted samples per cell
    for length, warm in LAYOUTS:
        candidates = np.arange(warm, len(val) - 1 - length, length)  # a partition into pieces
        piece_loss = (true_cs[candidates + length] - true_cs[candidates]) / length
        proxy = {o: (cs[candidates + length] - cs[candidates]) / length for o, cs in proxy_cs.items()}
        whole_proxy = {o: cs[-1] / (len(val) - 1) for o, cs in proxy_cs.items()}
        estimates = designs(piece_loss, proxy, whole_proxy, args.stratified, args.proxies)
        bias = cold_bias(model, val, true_cs, length, warm, dtype)
        for name, estimate in estimates.items():
            cells = []
            for read in READS:
                k = max(1, round(read / (length + warm)))
                cells.append(rms_worst([estimate(k, f) - true.mean() for f in fracs]))
            print(f"| {length} x {warm}{name} | {bias:+.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
