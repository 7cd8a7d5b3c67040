"""What a moving average of the weights (`--ema`) gains at a time budget, measured within one run.

Trains a preset on tiny-shakespeare for `--budget` seconds (as `charrnn train --max-time` does,
without periodic validation) while keeping one exponential moving average of the weights per
`--decay`, then scores the raw weights and every average on the whole validation text. All of them come from the
same run, so the differences are free of run-to-run noise (about +-0.01 nats at a budget here).
The averages are updated inside the timed step, so the run takes a few more seconds per step than
a run with one average would; the raw weights pay that too.

    python benchmarks/weight_average.py --budget 600 --preset medium --decay 0.99 --decay 0.998
    python benchmarks/weight_average.py --budget 600 --set min_lr_ratio=0.3
    python benchmarks/weight_average.py --budget 600 --decay 0.999 --decay 0.9995@5    # DECAY@WARMUP

An average's decay is capped at (1 + step) / (WARMUP + step) (`charrnn.training.trainer.WeightAverage`; 10
unless given), so it averages about the last 1 / (WARMUP - 1) of the run. The preset's own `--ema`
is switched off here: the trained weights stay raw and every average is this script's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from charrnn.config import PRESETS, ModelConfig, TrainConfig
from charrnn.data.batches import split
from charrnn.data.corpus import corpus_from_text
from charrnn.device import seed_everything
from charrnn.model.network import CharRNN
from charrnn.training.averaging import WeightAverage
from charrnn.training.trainer import Trainer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
INTEGERS = ("layers", "hidden_size", "embedding_size", "batch_size", "seq_len", "warmup_steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training")
    parser.add_argument("--preset", default="medium", choices=sorted(PRESETS))
    parser.add_argument("--decay", action="append", help="an average's DECAY or DECAY@WARMUP (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a preset value")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    decays = args.decay or ["0.99", "0.995", "0.998", "0.999"]

    corpus = corpus_from_text(args.corpus.read_text())
    train_ids, val_ids = split(corpus.ids, 0.1)
    preset = {**PRESETS[args.preset], **{k: float(v) for k, v in (s.split("=") for s in args.set)}}
    preset.update({k: int(v) for k, v in preset.items() if k in INTEGERS}, ema=0.0)
    model_fields = set(ModelConfig.__dataclass_fields__)
    seed_everything(1337)
    model = CharRNN(ModelConfig(len(corpus.vocab), **{k: v for k, v in preset.items() if k in model_fields}))
    config = TrainConfig(
        **{k: v for k, v in preset.items() if k not in model_fields}, max_time=args.budget, eval_every=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        averages = [WeightAverage(model, *map(float, d.split("@"))) for d in decays]
        spent = [0.0]

        def update_averages(trainer: Trainer) -> None:
            t0 = time.perf_counter()
            for average in averages:
                average.update(trainer.model, trainer.step)
            spent[0] += time.perf_counter() - t0

        trainer = Trainer(
            model, train_ids, val_ids, config, Path(tmp), None, torch.device("cpu"), on_step=update_averages
        )
        result = trainer.fit()
        raw = result.val.nats
        print(
            f"preset {args.preset} {' '.join(args.set)}, {args.budget:g} s, {result.steps:,} steps, final training loss "
            f"{result.train_loss:.4f}; updating the {len(averages)} averages took {spent[0]:.1f} s of it\n"
        )
        print("| weights | validation loss (nats/char) | vs raw |")
        print("|---|---:|---:|")
        print(f"| raw | {raw:.4f} | |")
        for decay, average in zip(decays, averages):
            nats = trainer.evaluate(model=average.model).nats
            print(f"| average, decay {decay} | {nats:.4f} | {nats - raw:+.4f} |")


if __name__ == "__main__":
    main()
