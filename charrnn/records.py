"""The typed records that modules hand each other and that runs keep on disk, free of torch.

- `RunRecord`: how a run was started (run.json, repeated in every checkpoint's manifest).
- `Score`: a loss on some text, in nats, bits per character and perplexity.
- `Kept` and `Result`: how a training session ended and which model it hands back (result.json).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import CharRNNError

# Version of the run and checkpoint formats (run.json, manifest.json); bumped on incompatible changes.
FORMAT_VERSION = 1


@dataclass
class RunRecord:
    """How a run was started: the model, its vocabulary, the settings and the text it reads.

    Written as run.json when the run starts and repeated in each checkpoint's manifest, so that a
    checkpoint folder is self-contained. `train` is the run's own TrainConfig (the trainer records
    there what it decides while running, e.g. the periodic validation sample's size)."""

    model: ModelConfig
    vocab: dict  # corpus.Vocab.to_json()
    text_options: dict  # corpus.TextOptions as a dict
    train: TrainConfig
    corpus: dict  # corpus.Corpus.describe(): sources, characters, sha256
    preset: str | None = None  # what --preset resolved to
    why: str | None = None  # the run's first line on its settings: what the preset chose and why
    init_from: str | None = None
    val_file: str | None = None
    val_sha256: str | None = None  # the --val-file's text, so that a resume validates on the same one
    format_version: int = FORMAT_VERSION
    tool_version: str = ""

    def to_json(self) -> dict:
        data = asdict(self)
        data["model"], data["train"] = self.model.to_json(), self.train.to_json()
        return {"format_version": data.pop("format_version"), "tool_version": data.pop("tool_version"), **data}

    @classmethod
    def from_json(cls, data: dict, source: Path | str = "run.json") -> RunRecord:
        """The record in a run.json or manifest; `source` names the file in the error a user sees."""
        missing = [
            k for k in ("model", "vocab", "train", "text_options", "corpus") if not isinstance(data.get(k), dict)
        ]
        if missing:
            raise CharRNNError(f"{source}: the run record lacks '{missing[0]}'; use another run or --init-from")
        try:  # runs from before --ema trained without an average
            train = TrainConfig.from_json({"ema": 0.0, **data["train"]})
        except (TypeError, ValueError) as e:  # a UsageError names a flag the user never gave: say whose it is
            raise CharRNNError(
                f"{source}: its training settings are not what charrnn writes ({e}); the record is damaged, "
                "use another run or --init-from"
            ) from None
        return cls(
            model=ModelConfig.from_json(data["model"]),
            vocab=data["vocab"],
            text_options=data["text_options"],
            train=train,
            corpus=data["corpus"],
            preset=data.get("preset"),
            why=data.get("why"),
            init_from=data.get("init_from"),
            val_file=data.get("val_file"),
            val_sha256=data.get("val_sha256"),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
            tool_version=str(data.get("tool_version", "")),
        )


@dataclass
class Kept:
    """The model a run hands back (what `sample` and `eval` use): its best validated checkpoint."""

    step: int
    epochs: float
    checkpoint: Path | None
    val: Score | None  # on the whole held-out text, or its start when the time budget ran out
    estimate: float | None  # the periodic estimate it was chosen by
    held_out: int | None = None  # characters of the whole held-out text (what `val` covers when whole)
    estimate_error: float | None = None  # the estimate's standard error, when it came from a sample

    @property
    def partial(self) -> bool:
        """Whether `val` covers less than the whole held-out text (the time budget ran out)."""
        return self.val is not None and self.held_out is not None and self.val.characters < self.held_out


@dataclass
class Result:
    """How a training session ended (result.json)."""

    steps: int
    epochs: float
    elapsed: float  # wall seconds: training, validation and checkpoints
    characters: int
    train_loss: float | None
    val: Score | None  # the kept model on the whole held-out text
    best_val_loss: float | None  # the best periodic estimate
    checkpoint: Path | None  # the last checkpoint (where --resume continues)
    stopped_by: str
    kept: Kept | None = None
    last_estimate: float | None = None  # the last weights' periodic estimate
    run_dir: Path | None = field(default=None, compare=False)
    training_time: float | None = None  # wall seconds when training stopped; the rest: validation and save
    reserve: float | None = None  # what a time budget kept back for that end when training stopped

    @property
    def kept_earlier(self) -> bool:
        """Whether the run handed back an earlier model than its last: validation got worse."""
        return self.kept is not None and self.kept.step < self.steps

    def to_json(self) -> dict:
        kept = self.kept
        return {
            "steps": self.steps,
            "epochs": round(self.epochs, 4),
            "elapsed": round(self.elapsed, 3),
            "stopped_by": self.stopped_by,
            "train_loss": self.train_loss,
            "val_loss": self.val.nats if self.val else None,
            "val_bpc": self.val.bits_per_char if self.val else None,
            "val_characters": self.val.characters if self.val else None,
            "held_out_characters": kept.held_out if kept else None,
            "best_val_estimate": self.best_val_loss,
            "last_val_estimate": self.last_estimate,
            "kept": None
            if kept is None
            else {
                "step": kept.step,
                "epochs": round(kept.epochs, 4),
                "checkpoint": kept.checkpoint.name if kept.checkpoint else None,
                "val_estimate": kept.estimate,
                "val_estimate_standard_error": kept.estimate_error,
            },
            "last_checkpoint": self.checkpoint.name if self.checkpoint else None,
            "training_time": None if self.training_time is None else round(self.training_time, 3),
            "reserve": None if self.reserve is None else round(self.reserve, 3),
        }


SMALL_TEXT_EPOCHS = 10  # passes over the text from which a run that got worse is told its text is small...


EARLY_BEST = 0.75  # ...when its best model came at most this far into its steps


RESERVE_SAID = 0.2  # a reserve for the end of a timed run this share of the run or more is said in its summary


def outcome(summary: dict) -> str | None:
    """One line on how a run ended, from its result.json; None when nothing needs saying."""
    return "; ".join(line for line in (_reserve_cut(summary), _kept_earlier(summary)) if line) or None


def _reserve_cut(summary: dict) -> str | None:
    """When a time budget stopped training well before its end to leave time for the last scoring
    of the held-out text: what it kept, what the end took, and why that may have been."""
    trained, reserve = summary.get("training_time"), summary.get("reserve")
    if summary.get("stopped_by") != "max_time" or trained is None or reserve is None:
        return None
    if reserve < RESERVE_SAID * (trained + reserve):
        return None
    took = summary["elapsed"] - trained
    line = (
        f"training stopped at {trained:.0f} s of the time budget, to keep {reserve:.0f} s for the end of the run "
        f"(the last scoring of all the held-out text, and the last save), which took {took:.0f} s"
    )
    if took < reserve / 2:  # measured slow, found fast: the load changed after the last measure
        return line + ": scoring was slower when the run last measured it (another program using the CPU?)"
    return line + ": the held-out text is large for this budget; a smaller --val-max-chars leaves more time to training"


def _kept_earlier(summary: dict) -> str | None:
    kept = summary.get("kept")
    if not kept or kept["step"] >= summary["steps"]:
        return None
    early = "stopped early: " if summary.get("stopped_by") == "patience" else ""
    line = (
        f"{early}validation was best at step {kept['step']:,} (epoch {kept['epochs']:.1f}) and no better after "
        "it; kept that model: sample, eval and surprise use it"
    )
    # only when the best came well before the end: a last validation or two a hair worse is noise,
    # and then a shorter budget would have trained less, not as well sooner
    if summary["epochs"] >= SMALL_TEXT_EPOCHS and kept["step"] <= EARLY_BEST * summary["steps"]:
        line += (
            f". The run read the text {summary['epochs']:.0f} times: it is small for this budget "
            "(docs/training.md, 'Small texts'); a shorter --max-time would do as well, sooner"
        )
    return line


@dataclass(frozen=True)
class Score:
    nats: float  # mean cross-entropy per predicted character
    characters: int  # characters predicted (the first character of a text has no context)
    error: float | None = None  # standard error, when `nats` estimates a text's loss from a sample of it
    pieces: tuple[float, ...] = field(default=(), repr=False)  # the sample's loss on each of its pieces

    @property
    def bits_per_char(self) -> float:
        return self.nats / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nats, 700.0))

    def to_json(self) -> dict:
        return {
            "nats": self.nats,
            "bits_per_char": self.bits_per_char,
            "perplexity": self.perplexity,
            "characters": self.characters,
            **({} if self.error is None else {"standard_error": self.error}),
        }


@dataclass(frozen=True)
class Info:
    """What a checkpoint and its run hold: the fields (and JSON keys) of `charrnn info --json`."""

    checkpoint: Path
    model: ModelConfig
    parameters: int
    vocab_size: int
    vocab: str  # the characters, "" for a byte-level model
    vocab_kind: str  # "chars" or "bytes"
    corpus: dict
    step: int
    epoch: float
    training_seconds: float | None
    train_loss: float | None
    val_loss: float | None
    val_standard_error: float | None  # val_loss's, when it was estimated from a sample of the held-out text
    best_val_loss: float | None
    best_val_standard_error: float | None  # likewise, best_val_loss's
    checkpoints: list[str]
    latest: str | None
    best: str | None
    result: dict | None  # how the run's last training session ended (result.json)
    tool_version: str | None
    format_version: int | None
    train: dict  # the training settings
    why: str | None = None  # the run's first line on its settings: what the preset chose and why

    @classmethod
    def from_json(cls, data: dict) -> Info:
        known = {f.name: data.get(f.name) for f in fields(cls)}
        return cls(**{**known, "checkpoint": Path(data["checkpoint"]), "model": ModelConfig.from_json(data["model"])})

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**data, "checkpoint": str(self.checkpoint), "model": self.model.to_json()}
