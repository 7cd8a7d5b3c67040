"""Configuration: the typed description of a model and of a training run.

Plain dataclasses with no heavy imports, so the command line can show their defaults instantly.
Each field is the `--flag` of the same name and the JSON key of the same name in run files.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields

from charrnn import choices
from charrnn.errors import UsageError


def parse_duration(value: str | float | None) -> float | None:
    """Seconds from 90, '90', '90s', '5m', '1h', '1h30m'."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{value!r} is not a duration; use seconds or 90s, 5m, 1h, 1h30m")
    if not isinstance(value, str):
        return float(value)
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"'{value}' is not a duration; use seconds or 90s, 5m, 1h, 1h30m")
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)


MODEL, TRAINING, VALIDATION = "Model", "Training", "Validation and checkpoints"


def setting(default, help: str, panel: str = TRAINING):
    """A field that is also a `charrnn train` flag: its help, and the panel of the help it is shown in."""
    return field(default=default, metadata={"help": help, "panel": panel})


class JsonConfig:
    """To and from the JSON stored in runs; unknown keys (from other versions) are ignored."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    vocab_size: int
    cell: str = setting("lstm", "Recurrent cell (default: lstm).", MODEL)
    # Sized for a few minutes on a CPU: at a fixed time budget a 1x512 LSTM taking many small steps
    # beats 2x256 and 2x512 ones (docs/design.md).
    layers: int = setting(1, "Recurrent layers (default: from --preset).", MODEL)
    hidden_size: int = setting(512, "Units per layer (default: from --preset).", MODEL)
    embedding_size: int = setting(64, "Character embedding size (default: from --preset).", MODEL)
    dropout: float = setting(0.1, "Dropout between layers and before the head (default: from --preset).", MODEL)

    def __post_init__(self) -> None:
        choices.check(self.cell, choices.Cell, "--cell")
        for name in ("vocab_size", "layers", "hidden_size", "embedding_size"):
            if problem := value_problem(getattr(self, name), *RANGES.get(name, (1, None)), integer=True):
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {problem}")
        if problem := value_problem(self.dropout, *RANGES["dropout"]):
            raise UsageError(f"--dropout {self.dropout!r}: {problem}")

    @property
    def parameters(self) -> int:
        """How many parameters the model has (what CharRNN.num_parameters counts), without building it."""
        gates, h = {"lstm": 4, "gru": 3, "rnn": 1}[self.cell], self.hidden_size
        layers = sum(gates * h * (inputs + h + 2) for inputs in [self.embedding_size] + [h] * (self.layers - 1))
        return self.vocab_size * self.embedding_size + layers + (h + 1) * self.vocab_size


@dataclass
class TrainConfig(JsonConfig):
    """Training settings; each field is the `--flag` of the same name."""

    # Many small steps learn fastest per second on a CPU: 16 streams x 64 characters, a high peak rate.
    batch_size: int = setting(16, "Parallel streams per batch (default: from --preset).")
    seq_len: int = setting(64, "Characters per stream per batch, the truncated BPTT length (default: from --preset).")
    lr: float = setting(6e-3, "Peak learning rate, AdamW (default: from --preset).")
    # The cosine decays to lr * min_lr_ratio. It stops at 0.3 of the peak rather than near 0 because
    # the weights are averaged (ema): a rate kept high explores, and the average of what it explores
    # generalises better than weights annealed to a standstill (docs/design.md).
    min_lr_ratio: float = setting(
        0.3, "Where the cosine decay of the learning rate ends, as a fraction of --lr (default: from --preset)."
    )
    # None: WARMUP_STEPS, at most a tenth of a step budget; a number as given
    warmup_steps: int | None = setting(
        None, "Linear warm-up steps (default: 20, at most a tenth of a --max-steps budget)."
    )
    # the schedule's horizon in steps; None: the step, epoch or time budget
    decay_steps: int | None = setting(None, "Steps over which the cosine decay runs (default: the budget).")
    weight_decay: float = setting(0.01, "AdamW weight decay on weight matrices (default: from --preset).")
    # Validate, save and sample an exponential moving average of the weights with this decay (0: the
    # raw weights). The decay warms up as min(ema, (1 + step) / (10 + step)): the average covers
    # about the last tenth of a run of any length, up to the ~1/(1 - ema) steps that the cap allows.
    ema: float = setting(
        0.999,
        "Validate, save and sample a moving average of the weights with this decay, e.g. 0.999; "
        "0 = the raw weights (default: from --preset).",
    )
    grad_clip: float = setting(1.0, "Gradient-norm clip (0 = off; default: 1.0).")
    max_steps: int | None = setting(None, "Stop after this many steps.")
    # seconds of wall time: training, validation and checkpoints together
    max_time: float | None = setting(
        None,
        "Time budget: 600, 90s, 5m, 1h (default: 3m if no other budget). It covers training, validation "
        "and checkpoints; start-up and the final sample come on top.",
    )
    epochs: float | None = setting(None, "Stop after this many passes over the text.")
    # Validate every N steps; None: about EVALS_PER_RUN times per --max-time budget (so a fast
    # model is not validated hundreds of times), else every 100 steps. 0: only at the end.
    eval_every: int | None = setting(
        None,
        "Validate (and save) every N steps (default: 20 times in a --max-time budget, else every 100 "
        "steps); 0 = only at the end.",
        VALIDATION,
    )
    # Periodic validation scores a fixed sample of this many held-out characters (the whole held-out
    # text at the end). None: sized from the measured scoring speed to EVAL_SHARE of the budget.
    eval_chars: int | None = setting(
        None,
        "Held-out characters scored by each periodic validation, a fixed sample (default: sized so that "
        "validation takes about 8% of the budget); the end of the run scores all of them.",
        VALIDATION,
    )
    log_every: int = setting(10, "Log every N steps (default: 10).", VALIDATION)
    save_every: int | None = setting(None, "Also save every N steps.", VALIDATION)  # None: at evaluations and the end
    save_every_minutes: float | None = setting(None, "Also save every N minutes.", VALIDATION)
    keep: int = setting(3, "Newest checkpoints to keep; the best is always kept (default: 3).", VALIDATION)
    # Stop after this many evaluations without a better validation loss. None: with a time budget,
    # the evaluations of a quarter of it (AUTO_PATIENCE), else never; 0: never.
    patience: int | None = setting(
        None,
        "Stop after this many evaluations without improvement (default: 5, a quarter of a --max-time "
        "budget, once the text has been read once; none with a step or epoch budget); 0 = never.",
    )
    val_fraction: float = setting(0.1, "Held-out tail of the text for validation (default: 0.1).", VALIDATION)
    # a cap on the held-out tail, so that the final validation stays quick
    val_max_chars: int = setting(2_000_000, "At most this many held-out characters (default: 2,000,000).", VALIDATION)
    seed: int = setting(1337, "Random seed (default: 1337).")
    precision: str = setting("auto", "auto (the default) uses bf16 where the hardware supports it natively.")

    def __post_init__(self) -> None:
        choices.check(self.precision, choices.Precision, "--precision")
        for name, (low, high) in RANGES.items():  # what the command's flags check, for the Python API too
            if name not in TRAIN_FIELDS:
                continue
            value = getattr(self, name)
            if value is not None and (problem := value_problem(value, low, high, integer=name in INTEGERS)):
                raise UsageError(f"--{name.replace('_', '-')} {value!r}: {problem}")
        check_seed(self.seed)
        if self.max_steps is None and self.max_time is None and self.epochs is None:
            self.max_time = 180.0  # a default budget: about three minutes, then a usable model
        if self.eval_every is None and self.max_time is None:
            self.eval_every = 100

    @property
    def eval_by_time(self) -> bool:
        """Validate at even intervals of the time budget rather than every N steps."""
        return self.eval_every is None and self.max_time is not None

    @property
    def auto_patience(self) -> int | None:
        """--patience as it applies: automatic with a time budget, off when 0."""
        if self.patience is None:
            return AUTO_PATIENCE if self.eval_by_time else None
        return self.patience or None


# The range of each numeric training setting: (lowest, highest); a lowest of 0.0 in a float excludes
# 0 itself (a budget of nothing); None: no bound.
RANGES = {
    "layers": (1, None),
    "hidden_size": (1, None),
    "embedding_size": (1, None),
    "dropout": (0, 0.99),
    "ema": (0, 0.9999),
    "batch_size": (1, None),
    "seq_len": (1, None),
    "lr": (0, None),
    "min_lr_ratio": (0, 1),
    "warmup_steps": (0, None),
    "decay_steps": (1, None),
    "weight_decay": (0, None),
    "grad_clip": (0, None),
    "max_steps": (1, None),
    "max_time": (0.0, None),
    "epochs": (0.0, None),
    "eval_every": (0, None),
    "eval_chars": (1, None),
    "log_every": (1, None),
    "save_every": (1, None),
    "save_every_minutes": (0, None),
    "keep": (1, None),
    "patience": (0, None),
    "val_fraction": (0, 0.5),
    "val_max_chars": (1, None),
}
INTEGERS = {f.name for f in fields(TrainConfig) if f.type in ("int", "int | None")}
MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))


def in_range(value, low, high, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    if (isinstance(value, float) and not math.isfinite(value)) or value < low or (high is not None and value > high):
        return False
    return not (isinstance(low, float) and value == 0)


def value_problem(value, low, high, integer: bool = False) -> str | None:
    """What is wrong with a setting's value (a number of the wrong kind, or out of range), or None."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return f"must be a {'whole ' if integer else ''}number, not {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None if in_range(value, low, high, integer) else range_words(low, high, integer)


def plain_number(value):
    """A numpy scalar (settings read with numpy or pandas) as the Python number it holds."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool) and hasattr(value, "item"):
        return value.item()
    return value


def range_words(low, high, integer: bool = False) -> str:
    if high is not None:
        return f"must be a number from {low} to {high}"
    if isinstance(low, float):
        return "must be more than 0"
    return f"must be a whole number, at least {low}" if integer else f"must be at least {low}"


def check_seed(seed, flag: str = "--seed") -> None:
    """A random seed torch takes: a larger one overflows it (a negative one counts from 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise UsageError(f"{flag} {seed!r}: must be a whole number from -2**63 to 2**64 - 1")


WARMUP_STEPS = 20  # the default warm-up
EVALS_PER_RUN = 20  # with a time budget, validate about this many times...
EVAL_SHARE = 0.08  # ...on a sample sized to use this share of the budget in all...
# ...and at least every this many passes over a small text: a 10 KB text at 3 minutes was validated
# every 12 passes, and its best model (at about 12 passes) was the first validation's, by luck
PASSES_PER_EVAL = 2
AUTO_PATIENCE = 5  # stop when a quarter of them (a quarter of the budget; 10 passes of a small text) brought nothing


# ---------------------------------------------------------------------------------------------
# Presets: model and training settings sized for a budget. `small` is the dataclass defaults.
# Every CPU preset comes from benchmarks/quality_at_budget.py runs on tiny-shakespeare
# (docs/design.md); training/plan.py chooses between them; flags override a preset.
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    "small": {
        "layers": 1,
        "hidden_size": 512,
        "embedding_size": 64,
        "dropout": 0.1,
        "batch_size": 16,
        "seq_len": 64,
        "lr": 6e-3,
        "min_lr_ratio": 0.3,
        "weight_decay": 0.01,
        "ema": 0.999,
    },
    "medium": {
        "layers": 2,
        "hidden_size": 512,
        "embedding_size": 64,
        "dropout": 0.25,
        "batch_size": 16,
        "seq_len": 64,
        "lr": 4e-3,
        "min_lr_ratio": 0.3,
        "weight_decay": 0.1,
        "ema": 0.999,
    },
    "large": {
        "layers": 2,
        "hidden_size": 512,
        "embedding_size": 64,
        "dropout": 0.25,
        "batch_size": 64,
        "seq_len": 128,
        "lr": 2e-3,
        "min_lr_ratio": 0.1,
        "weight_decay": 0.01,
        "ema": 0.0,  # the classic configuration, as char-rnn trains it; not measured with averaging
    },
}
