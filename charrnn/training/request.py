"""From what was asked (a `RunRequest`) to what a training session will be (a `Plan`).

`train_config` and `plan_run` are pure functions of typed values (the request, a resumed run's
record, the amount of text, the device), so every decision taken before training starts is
unit-tested without a process or a file."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from charrnn import choices
from charrnn.config import MODEL_FIELDS, TRAIN_FIELDS, ModelConfig, TrainConfig
from charrnn.data.sources import TextOptions
from charrnn.errors import CharRNNError, UsageError
from charrnn.records import RunRecord
from charrnn.training import plan

BUDGETS = ("max_steps", "max_time", "epochs")


# a resumed run keeps its directory and the way its text was read; these only shape new runs
# (and which text is trained on and which held out: changing that would make the run's validations
# incomparable and its resume inexact)
NEW_RUN_ONLY = (
    "preset",
    "out",
    "encoding",
    "errors",
    "keep_newlines",
    "bytes",
    "val_fraction",
    "val_max_chars",
    "batch_size",  # the streams, the place in the text and the carried state belong to the old sizes
    "seq_len",
    "seed",  # a resumed run continues its own random streams, from the checkpoint
    "val_file",
)


@dataclass
class RunRequest:
    """What the user asked for. `settings` holds the model and training settings given explicitly
    (the rest come from the preset, or from the run being resumed); `given` names every option
    given explicitly, settings or not, so that a resumed run can refuse the ones that only shape
    new runs."""

    corpus: list[str] = field(default_factory=list)  # files, directories, '-', corpus names; [] = built-in
    out: Path | None = None
    preset: str = "auto"
    settings: dict = field(default_factory=dict)
    resume: Path | None = None
    init_from: Path | None = None
    val_file: Path | None = None
    text: TextOptions = TextOptions()
    glob: str = "*"
    unknown: str = "error"
    device: str = "auto"
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.settings) - set(MODEL_FIELDS) - set(TRAIN_FIELDS)
        if unknown:
            raise UsageError(f"unknown setting '{sorted(unknown)[0]}'; see charrnn train --help")
        self.given = frozenset(self.given) | set(self.settings)
        choices.check(self.preset, choices.Preset, "--preset")
        choices.check(self.unknown, choices.Unknown, "--unknown")

    @property
    def given_settings(self) -> dict:
        """The model and training settings given explicitly, with their values."""
        return {k: v for k, v in self.settings.items() if v is not None}

    def check(self) -> None:
        """Refuse combinations that cannot work, before anything is read."""
        if self.resume and self.init_from:
            raise UsageError(
                "--resume and --init-from exclude each other: resume continues a run, init-from starts a new one"
            )
        if self.val_file and (
            split_flags := [name for name in ("val_fraction", "val_max_chars") if name in self.given]
        ):
            raise UsageError(
                f"--{split_flags[0].replace('_', '-')} sets how much of the training text is held out, and --val-file "
                "holds out a file instead: give one of them"
            )
        validated = self.settings.get("val_fraction", TrainConfig.val_fraction) > 0 or self.val_file
        if self.settings.get("patience") is not None and not validated:
            raise UsageError("--patience needs validation, and --val-fraction 0 leaves none: drop one of them")
        if self.resume and (ignored := [name for name in NEW_RUN_ONLY if name in self.given]):
            raise UsageError(
                f"--{ignored[0].replace('_', '-')} applies to new runs; a resumed run keeps its own settings and directory"
            )


@dataclass
class Plan:
    """What a run will be: its model and settings, what the preset chose and why, and notes for the user."""

    model: ModelConfig
    train: TrainConfig
    preset: str | None  # what --preset resolved to (a resumed run keeps its own)
    why: str = ""  # the preset's choice in words, for the run's first line
    notes: list[str] = field(default_factory=list)


def train_config(request: RunRequest, resumed: RunRecord | None = None) -> TrainConfig:
    """The training settings before the preset fills in what nobody gave. A resumed run keeps its
    stored settings except the ones given now; a new budget replaces the old ones (resuming with
    --max-steps 5000 means "train until step 5000", whatever the first run's budget was)."""
    given = {k: v for k, v in request.settings.items() if k in TRAIN_FIELDS and v is not None}
    if resumed is None:
        return TrainConfig(**given)
    stored = resumed.train.to_json()
    if set(BUDGETS) & set(given):
        stored.update(dict.fromkeys(BUDGETS))
    return TrainConfig.from_json({**stored, **given})


def plan_run(
    request: RunRequest,
    config: TrainConfig,
    *,
    vocab_size: int,
    train_chars: int,
    device_type: str = "cpu",
    world: int = 1,
    base_model: ModelConfig | None = None,
    resumed: RunRecord | None = None,
    speed: float | None = None,
) -> Plan:
    """The model and settings of a run, from the request, the training settings so far
    (`train_config`), the size of the text and the device. `base_model` is the model of the
    checkpoint resumed or fine-tuned from; `speed` how fast `plan.measured_preset` trains here (see
    `measure_speed`). Pure: reads nothing, writes nothing."""
    given = request.given_settings
    config = replace(config)
    if resumed is not None:  # a resumed run keeps the settings it was started with
        _refuse_model_changes(given, base_model, f"{request.resume}", "resumed")
        chosen, why, model_settings = resumed.preset, "", {}
    else:
        if request.preset == "auto":
            choice = plan.choose(device_type, config.max_time, train_chars, speed)
        else:
            choice = plan.named(request.preset)
        for key, value in choice.settings.items():  # settings given explicitly win
            if key in TRAIN_FIELDS and key not in given:
                setattr(config, key, value)
        model_settings = {k: v for k, v in choice.settings.items() if k in MODEL_FIELDS}
    notes = _fit_batch(request, config, train_chars, world)
    if resumed is None:
        # the first line names what the run will use: the flags given, a fine-tuned model's own size
        # and a batch lowered for a short text override the preset's
        used = {**given, **({k: getattr(base_model, k) for k in MODEL_FIELDS} if base_model else {})}
        if notes:
            used["batch_size"] = config.batch_size
        shown = replace(choice, settings={k: used.get(k, v) for k, v in choice.settings.items()})
        chosen, why = choice.preset, shown.describe()
        # what auto chose for this text and budget, and a flag replaced: say so, or the reason misleads
        adjusted = choice.decided()
        if overridden := [k for k, v in adjusted.items() if k in given and given[k] != v]:
            why += "; " + ", ".join(
                f"--{k.replace('_', '-')} {given[k]} given (auto: {adjusted[k]})" for k in overridden
            )
    if base_model is not None:
        if resumed is None:
            _refuse_model_changes(given, base_model, f"{request.init_from}", "fine-tuned")
        model = base_model
    else:
        model = ModelConfig(vocab_size, **{**model_settings, **{k: v for k, v in given.items() if k in MODEL_FIELDS}})
    return Plan(model, config, chosen, why, notes)


def _refuse_model_changes(given: dict, base: ModelConfig | None, source: str, how: str) -> None:
    changed = [k for k in MODEL_FIELDS if k in given and base is not None and given[k] != getattr(base, k)]
    if not changed:
        return
    flags = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
    if how == "resumed":
        verb = "differ" if len(changed) > 1 else "differs"
        raise UsageError(
            f"{source}: {flags} {verb} from the run being resumed; use --init-from to start a new run from it"
        )
    raise UsageError(f"{source}: {flags} cannot change when fine-tuning a model")


def _fit_batch(request: RunRequest, config: TrainConfig, train_chars: int, world: int) -> list[str]:
    """Lower the batch size so that every stream holds a full sequence; refuse a text too short for one."""
    from charrnn.data.batches import fit_batch_size

    fitted = fit_batch_size(train_chars, config.batch_size, config.seq_len, world)
    if fitted < 1:
        need = config.seq_len * world + 1
        total = need if request.val_file is not None else math.ceil(need / (1 - config.val_fraction))
        raise CharRNNError(
            f"{', '.join(request.corpus) or 'corpus'}: {train_chars:,} training characters are too few for sequence "
            f"length {config.seq_len}; need at least {need:,} for training ({total:,} in all with --val-fraction "
            f"{config.val_fraction}): use more text or a lower --seq-len"
        )
    if fitted == config.batch_size:
        return []
    note = f"text is short: batch size lowered from {config.batch_size} to {fitted} so that every stream holds a full sequence"
    config.batch_size = fitted
    return [note]


def run_name(request: RunRequest, cell: str, now: float | None = None) -> str:
    """The name of a new run's directory under runs/: the corpus, the cell and the time."""
    paths = request.corpus
    name = "stdin" if paths[:1] == ["-"] else Path(paths[0]).stem if paths else "builtin"
    name = re.sub(r"[\s\x00-\x1f\x7f]+", "-", name).strip("-") or "text"  # a name a shell takes unquoted
    return f"{name}-{cell}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
