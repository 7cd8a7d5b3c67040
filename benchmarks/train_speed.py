"""Training throughput: charrnn's training step vs a plain fp32 nn.LSTM loop, and model-FLOP utilisation.

Measured in one run, interleaved, best of N rounds:
- baseline: embedding -> nn.LSTM -> linear, fp32, AdamW, the loop a tutorial writes;
- charrnn: `Trainer.train_step` with `--precision auto` (bf16 autocast where the hardware does bf16
  natively, fp32 otherwise), and with each explicit precision the hardware supports;
- peak: a large matrix multiply in fp32 and in bf16, this machine's practical FLOP/s ceilings.
Model FLOPs per character: 6 x (recurrent and input weights + head), i.e. forward + backward.

With --curve N it then trains the same model on tiny-shakespeare for N steps in fp32 and in each
reduced precision from the same seed and data, and prints the loss curves side by side: a faster
step is only a win if the loss per step stays the same.

    python benchmarks/train_speed.py                    # 2x512 LSTM, batch 64, sequence 128
    python benchmarks/train_speed.py --curve 300
    python benchmarks/train_speed.py --hidden-size 256 --batch-size 16 --seq-len 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batches import split
from charrnn.data.corpus import corpus_from_text
from charrnn.device import cpu_has_native_bf16, seed_everything
from charrnn.model.network import CharRNN
from charrnn.training.trainer import Trainer

VOCAB = 65
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def model_flops_per_char(c: ModelConfig) -> float:
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[c.cell]
    weights = gates * c.hidden_size * (c.embedding_size + c.hidden_size)
    weights += (c.layers - 1) * gates * c.hidden_size * 2 * c.hidden_size
    weights += c.hidden_size * c.vocab_size
    return 6.0 * weights  # 2 FLOPs per multiply-add, x3 for forward + backward


def peak_flops(dtype: torch.dtype = torch.float32, seconds: float = 2.0) -> float:
    """The faster of two 2048 x 2048 matrix multiplies: torch.mm (MKL for fp32, which can take a
    slower path on AMD CPUs) and oneDNN's, the library behind the fused LSTM kernels."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    candidates = [lambda: torch.mm(a, b)]
    if torch.backends.mkldnn.is_available():
        a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
        candidates.append(lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn))
    rates = []
    for multiply in candidates:
        multiply()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(candidates):
            multiply()
            n += 1
        rates.append(n * 2 * 2048**3 / (time.perf_counter() - start))
    return max(rates)


def baseline(config: ModelConfig, batch: int, seq: int, steps: int) -> float:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(VOCAB, config.embedding_size)
    rnn = torch.nn.LSTM(
        config.embedding_size, config.hidden_size, config.layers, batch_first=True, dropout=config.dropout
    )
    head = torch.nn.Linear(config.hidden_size, VOCAB)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    data = torch.randint(0, VOCAB, (batch, seq + 1))
    state = None

    def step():
        nonlocal state
        out, state = rnn(emb(data[:, :-1]), state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(head(out).flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq / (time.perf_counter() - start)


def charrnn_step(config: ModelConfig, batch: int, seq: int, steps: int, precision: str, run_dir: Path) -> float:
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, VOCAB, size=batch * seq * (steps + 2) + 1).astype(np.uint8)
    train = TrainConfig(batch_size=batch, seq_len=seq, max_steps=10**9, precision=precision, eval_every=0)
    trainer = Trainer(CharRNN(config), ids, ids[:0], train, run_dir, None, torch.device("cpu"))
    trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * batch * seq / (time.perf_counter() - start)


def loss_curves(config: ModelConfig, batch: int, seq: int, steps: int, precisions: list[str], run_dir: Path) -> None:
    """Train from the same seed on the same text in each precision; print loss every steps/10."""
    corpus = corpus_from_text(CORPUS.read_text())
    train_ids, val_ids = split(corpus.ids, 0.1)
    config = replace(config, vocab_size=len(corpus.vocab))
    curves, finals = {}, {}
    for p in precisions:
        seed_everything(0)
        train = TrainConfig(batch_size=batch, seq_len=seq, max_steps=steps, precision=p, eval_every=0, lr=2e-3)
        trainer = Trainer(CharRNN(config), train_ids, val_ids, train, run_dir / p, None, torch.device("cpu"))
        curves[p] = [trainer.train_step() for _ in range(steps)]
        finals[p] = trainer.evaluate().nats  # whole validation text, in the precision trained in
    window = max(1, steps // 10)
    print(f"\nTraining loss (mean over {window} steps) and final validation loss, same seed and batches:\n")
    print("| steps | " + " | ".join(f"--precision {p}" for p in precisions) + " |")
    print("|---:|" + "---:|" * len(precisions))
    for end in range(window, steps + 1, window):
        cells = [f"{np.mean(curves[p][end - window : end]):.4f}" for p in precisions]
        print(f"| {end - window + 1}-{end} | " + " | ".join(cells) + " |")
    print("| validation | " + " | ".join(f"{finals[p]:.4f}" for p in precisions) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--curve", type=int, default=0, help="then compare loss curves over this many steps")
    args = parser.parse_args()
    config = ModelConfig(VOCAB, "lstm", args.layers, args.hidden_size, 64, 0.25)
    bf16 = cpu_has_native_bf16()
    precisions = ["auto", "fp32"] + (["bf16"] if bf16 else [])
    peak = peak_flops()
    peak_bf16 = peak_flops(torch.bfloat16) if bf16 else None
    flops = model_flops_per_char(config)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {bf16}, "
        f"measured matmul peak fp32 {peak / 1e9:.0f} GFLOP/s"
        + (f", bf16 {peak_bf16 / 1e9:.0f} GFLOP/s" if peak_bf16 else "")
    )
    print(
        f"{args.layers}x{args.hidden_size} LSTM, batch {args.batch_size}, sequence {args.seq_len}, "
        f"{flops / 1e6:.1f} MFLOP per character\n"
    )
    results: dict[str, list[float]] = {"baseline fp32 nn.LSTM loop": []} | {
        f"charrnn --precision {p}": [] for p in precisions
    }
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            results["baseline fp32 nn.LSTM loop"].append(baseline(config, args.batch_size, args.seq_len, args.steps))
            for p in precisions:
                results[f"charrnn --precision {p}"].append(
                    charrnn_step(config, args.batch_size, args.seq_len, args.steps, p, Path(tmp))
                )
    base = max(results["baseline fp32 nn.LSTM loop"])
    print(f"| training loop | chars/s (best of {args.repeats}) | vs baseline | model FLOP utilisation |")
    print("|---|---:|---:|---:|")
    for name, values in results.items():
        best = max(values)
        # utilisation against the peak of the precision the loop computes in
        limit = peak_bf16 if peak_bf16 and "fp32" not in name else peak
        print(f"| {name} | {best:,.0f} | {best / base:.2f}x | {100 * best * flops / limit:.0f}% |")
    if args.curve:
        with tempfile.TemporaryDirectory() as tmp:
            loss_curves(config, args.batch_size, args.seq_len, args.curve, ["fp32"] + precisions[2:], Path(tmp))


if __name__ == "__main__":
    main()
