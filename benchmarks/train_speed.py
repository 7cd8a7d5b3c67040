"""Training throughput: charrnn's training step vs a plain fp32 nn.LSTM loop, and model-FLOP utilisation.

Measured in one run, interleaved, best of N rounds:
- baseline: embedding -> nn.LSTM -> linear, fp32, AdamW, the loop a tutorial writes;
- charrnn: `Trainer.train_step` with `--precision auto` (bf16 autocast where the hardware does bf16
  natively, fp32 otherwise), and with each explicit precision the hardware supports;
- peak: a large fp32 matrix multiply, this machine's practical FLOP/s ceiling.
Model FLOPs per character: 6 x (recurrent and input weights + head), i.e. forward + backward.

    python benchmarks/train_speed.py                    # 2x512 LSTM, batch 64, sequence 128
    python benchmarks/train_speed.py --hidden-size 256 --batch-size 16 --seq-len 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig, TrainConfig
from charrnn.model import CharRNN
from charrnn.train import Trainer, cpu_has_native_bf16

VOCAB = 65


def model_flops_per_char(c: ModelConfig) -> float:
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[c.cell]
    weights = gates * c.hidden_size * (c.embedding_size + c.hidden_size)
    weights += (c.layers - 1) * gates * c.hidden_size * 2 * c.hidden_size
    weights += c.hidden_size * c.vocab_size
    return 6.0 * weights  # 2 FLOPs per multiply-add, x3 for forward + backward


def peak_flops(seconds: float = 2.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        n += 1
    return n * 2 * 2048**3 / (time.perf_counter() - start)


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
    trainer = Trainer(CharRNN(config), ids, ids[:0], train, run_dir, {}, torch.device("cpu"))
    trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * batch * seq / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = ModelConfig(VOCAB, "lstm", args.layers, args.hidden_size, 64, 0.25)
    precisions = ["auto", "fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    peak = peak_flops()
    flops = model_flops_per_char(config)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, "
        f"measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
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
        print(f"| {name} | {best:,.0f} | {best / base:.2f}x | {100 * best * flops / peak:.0f}% |")


if __name__ == "__main__":
    main()
