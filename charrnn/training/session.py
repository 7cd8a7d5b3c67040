"""Training runs as a library: from what was asked (a `RunRequest`) to what will run (a `Plan`),
then the run itself. The `train` command and `charrnn.train()` are thin layers over this.

    run = prepare(RunRequest(corpus=["notes.txt"], settings={"max_time": 300}))
    try:
        result = run.execute(reporter)
    finally:
        run.release()

`train_config` and `plan_run` are pure functions of typed values (the request, a resumed run's
record, the amount of text, the device), so every decision a run takes before it starts is
unit-tested without a process or a file; `prepare` does the reading and writing around them.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from charrnn import __version__
from charrnn.config import ModelConfig, TrainConfig, parse_duration, plain_number
from charrnn.data.sources import TextOptions
from charrnn.errors import CharRNNError, InputError, Interrupted, UnknownCharacters, UsageError, os_error_message
from charrnn.storage.records import Result, RunRecord
from charrnn.training import plan
from charrnn.training.report import Reporter

MODEL_FIELDS = ("cell", "layers", "hidden_size", "embedding_size", "dropout")
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))
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


def measure_speed(
    request: RunRequest, config: TrainConfig, vocab_size: int, train_ids, device, dist, new_model: bool
) -> float | None:
    """How fast the preset the planner measures (`plan.measured_preset`, with the model flags given)
    trains on this text here, for `--preset auto` on a CPU or a CUDA GPU with a time budget, where
    the choice turns on how often the budget can read the text; None where nothing is chosen from
    it. Under torchrun the processes agree on their mean."""
    from charrnn.data.batches import fit_batch_size
    from charrnn.training.distributed import max_over_ranks, mean_over_ranks
    from charrnn.training.speed import training_speed

    if request.preset != "auto" or device.type not in ("cpu", "cuda") or not config.max_time or not new_model:
        return None
    if device.type == "cuda" and dist.world > 1:  # medium's 16 streams spread over GPUs: not measured
        return None
    given = request.given_settings
    trial_settings = {**plan.PRESETS[plan.measured_preset(device.type)], **given}
    model = ModelConfig(vocab_size, **{k: v for k, v in trial_settings.items() if k in MODEL_FIELDS})
    trial = replace(config, **{k: v for k, v in trial_settings.items() if k in TRAIN_FIELDS})
    trial.batch_size = fit_batch_size(len(train_ids), trial.batch_size, trial.seq_len, dist.world) // dist.world
    if trial.batch_size < 1:
        return None  # too short a text to train on: the plan says so
    _check_memory(model, device)  # a model too large is refused before it is built
    speed = training_speed(model, trial, train_ids, device) or 0.0
    if max_over_ranks(int(speed == 0.0), dist, device):  # diverged somewhere: the run will say so
        return None
    return mean_over_ranks(speed, dist, device) * dist.world


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
    return f"{name}-{cell}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


@dataclass
class Run:
    """A prepared run: the text read, the model built, the run directory claimed and recorded.
    `execute` trains it; `release` lets go of the run directory (call it whatever happens)."""

    request: RunRequest
    plan: Plan
    model: Any  # CharRNN
    data: Any  # corpus.Corpus
    train_ids: Any  # numpy arrays of ids
    val_ids: Any
    run_dir: Path
    record: RunRecord
    device: Any  # torch.device
    dist: Any  # distributed.Dist
    loaded: Any = None  # the checkpoint resumed or fine-tuned from
    trainer: Any = None  # set by execute
    _locks: list = field(default_factory=list)

    def describe(self) -> str:
        """The run's first line: what was chosen and why, the model, the text, the device, the directory."""
        lead = f"{self.plan.why}, " if self.plan.why else ""
        return (
            f"{lead}{self.model.num_parameters():,} parameters, {len(self.data.vocab):,} characters in vocabulary, "
            f"{len(self.train_ids):,} training / {len(self.val_ids):,} validation characters, device {self.device}, "
            f"run {self.run_dir}"
        )

    def execute(self, reporter=None, on_step=None) -> Result:
        from charrnn.training.distributed import leave_distributed
        from charrnn.training.trainer import Trainer

        self.trainer = Trainer(
            self.model, self.train_ids, self.val_ids, self.plan.train, self.run_dir, self.record, self.device,
            reporter, self.dist, on_step,
        )  # fmt: skip
        if self.request.resume:
            self.trainer.resume_from(self.loaded)
            stored = self.loaded.manifest.get("train", {})
            if any(stored.get(b) != getattr(self.plan.train, b) for b in BUDGETS):
                self.trainer.evals_without_improvement = 0  # a new budget is a new schedule: patience starts afresh
        result = self.trainer.run()
        if self.dist.world > 1:
            # Release DDP's reducer and wait for every rank before tearing the group down: without
            # this a rank often aborted at exit ("terminate called without an active exception").
            self.trainer.ddp = None
            leave_distributed(clean=True)
        return result

    def release(self) -> None:
        while self._locks:
            self._locks.pop().release()


def prepare(request: RunRequest, progress=None) -> Run:
    """Read the text and any checkpoint, plan the run, build the model, claim and record the run
    directory. `progress` shows a download or an encoding (display.TransferProgress)."""
    from charrnn.device import resolve_device
    from charrnn.storage import checkpoints as ckpt
    from charrnn.training.distributed import init_distributed

    request.check()
    device = resolve_device(request.device)
    dist = init_distributed(device)
    if dist.world > 1 and any(p == "-" or Path(p).is_fifo() for p in request.corpus):
        raise UsageError(
            f"standard input or a pipe cannot be read by all {dist.world} processes of torchrun; "
            "save the text to a file and pass that"
        )
    locks = []
    try:
        if request.resume and dist.main:  # locked before reading, so that no other writer moves the run on
            locks.append(ckpt.claim(ckpt.writer_dir(request.resume), new=False))
        run = _prepare(request, progress, device, dist, locks)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    run._locks = locks
    return run


def _prepare(request, progress, device, dist, locks) -> Run:
    from charrnn.device import resolve_precision, seed_everything
    from charrnn.model.network import CharRNN
    from charrnn.storage import checkpoints as ckpt

    loaded = resumed = None
    if request.resume or request.init_from:
        loaded = ckpt.load(request.resume or request.init_from, device, numbers_only=not request.resume)
    if request.resume:
        run = ckpt.run_of(loaded.path)
        newest = ckpt.resolve(run) if (run / ckpt.CHECKPOINTS).is_dir() else loaded.path
        if newest.resolve() != loaded.path.resolve():
            # going on from here would branch the run, with checkpoints of the abandoned branch left as its best
            raise UsageError(
                f"--resume {request.resume}: the run has a newer checkpoint ({newest.name}); --resume {run} goes on "
                f"from it, or --init-from {request.resume} -o NEW_RUN starts a new run from this one"
            )
        resumed = RunRecord.from_json(loaded.manifest, loaded.path)
    val_file = request.val_file or (Path(resumed.val_file) if resumed and resumed.val_file else None)
    request = replace(request, val_file=val_file)
    config = train_config(request, resumed)
    options, data, train_ids, val_ids, val_unknown = _read_text(request, config, loaded, resumed, progress)
    the_plan = plan_run(
        request, config, vocab_size=len(data.vocab), train_chars=len(train_ids), device_type=device.type,
        world=dist.world, base_model=loaded.model.config if loaded else None, resumed=resumed,
        speed=measure_speed(request, config, len(data.vocab), train_ids, device, dist, new_model=loaded is None),
    )  # fmt: skip
    if data.unknown:  # fine-tuning with --unknown skip or replace: say how much of the text that touched
        total = len(data.ids) + (data.unknown if request.unknown == "skip" else 0)
        done = (
            "dropped" if request.unknown == "skip" else f"replaced by {data.vocab.chars[data.vocab.replacement_id]!r}"
        )
        the_plan.notes.append(
            f"{data.unknown:,} characters of the text ({data.unknown / total:.1%}) are not in the model's "
            f"vocabulary: {done} (--unknown {request.unknown})"
        )
    if val_unknown:  # --val-file with --unknown skip or replace: validation measures less than the file
        done = "left out" if request.unknown == "skip" else f"scored as {data.vocab.chars[data.vocab.replacement_id]!r}"
        vocabulary = "the model's vocabulary" if loaded else "the training text"
        the_plan.notes.append(
            f"{val_unknown:,} characters of {request.val_file} are not in {vocabulary}: {done} (--unknown {request.unknown})"
        )
    if len(val_ids) == 1 and the_plan.train.val_fraction > 0:  # a held-out part asked for, too short to use
        the_plan.notes.append(
            "the held-out part is 1 character, too little to validate on (a validation predicts each "
            "character from the one before), so this run does not validate; raise --val-fraction or "
            "--val-max-chars, or use --val-fraction 0 to say so"
        )
    if resumed is None:
        seed_everything(the_plan.train.seed)  # a resumed run gets its random states from the checkpoint
    resolve_precision(the_plan.train.precision, device)  # refused before the run directory is made
    if not loaded:
        _check_memory(the_plan.model, device)
    model = loaded.model if loaded else CharRNN(the_plan.model)
    if request.resume:
        run_dir = ckpt.run_of(loaded.path)
    else:
        run_dir = request.out or ckpt.fresh_run_dir(Path("runs"), run_name(request, the_plan.model.cell), dist.main)
        if dist.main:  # one writer per run until released; a run that never saved may start again
            locks.append(ckpt.claim(run_dir, new=True))
    record = RunRecord(
        model=the_plan.model,
        vocab=data.vocab.to_json(),
        text_options=dict(options.__dict__),
        train=the_plan.train,
        corpus=data.describe(),
        preset=the_plan.preset,
        why=resumed.why if resumed else the_plan.why,
        init_from=str(request.init_from) if request.init_from else None,
        val_file=str(val_file) if val_file else None,
        tool_version=__version__,
    )
    if dist.main:
        _write_record(run_dir, record, resumed, loaded)
    return Run(
        request=request, plan=the_plan, model=model, data=data, train_ids=train_ids, val_ids=val_ids,
        run_dir=run_dir, record=record, device=device, dist=dist, loaded=loaded,
    )  # fmt: skip


def _read_text(request, config, loaded, resumed, progress):
    """How the text is read, the corpus, and its training and held-out ids (--val-file's, if given)."""
    from charrnn.data.batches import split
    from charrnn.data.corpus import load_corpus

    if resumed is not None:
        options = TextOptions(**resumed.text_options)
        paths = request.corpus or [_recorded_path(s) for s in resumed.corpus["sources"]]
    else:
        options = request.text
        paths = request.corpus
        if loaded is not None:  # fine-tuning reads the text as the model was trained to
            if options.bytes and loaded.vocab.kind != "bytes":
                raise UsageError(f"{request.init_from}: --bytes needs a byte-level model; this one is character-level")
            options = replace(options, bytes=loaded.vocab.kind == "bytes")
    vocab = loaded.vocab if loaded else None
    differs = (
        f"{request.resume}: the corpus differs from the one this run was trained on; resume with the same text "
        "or start a new run from it with --init-from"
    )
    try:
        data = load_corpus(paths, options, vocab=vocab, unknown=request.unknown, glob=request.glob, progress=progress)
    except UnknownCharacters:  # characters the run never saw: not its text, whatever --unknown would do
        if resumed is not None:
            raise InputError(differs) from None
        raise
    if resumed is not None and data.sha256 != resumed.corpus["sha256"]:
        raise CharRNNError(differs)
    if request.val_file is not None:
        try:
            val = load_corpus(
                [str(request.val_file)], options, vocab=data.vocab, unknown=request.unknown, progress=progress
            )
        except UnknownCharacters as e:  # a new run has no model yet: the vocabulary is the training text's
            vocabulary = "the model's vocabulary" if loaded is not None else "the training text"
            raise UnknownCharacters(str(e).replace("the model's vocabulary", vocabulary)) from None
        if resumed is None and val.sources[0]["sha256"] in {source["sha256"] for source in data.sources}:
            raise UsageError(
                f"--val-file {request.val_file}: this text is also in the training text, so validation would measure "
                "how well the model remembers it; give a file that is not trained on, or leave --val-file out to hold "
                "out the end of the text"
            )
        return options, data, data.ids, val.ids, val.unknown
    return (options, data, *split(data.ids, config.val_fraction, config.val_max_chars), 0)


def _write_record(run_dir: Path, record: RunRecord, resumed: RunRecord | None, loaded) -> None:
    from charrnn.storage import checkpoints as ckpt
    from charrnn.training.metrics import MetricsLog

    run_dir.mkdir(parents=True, exist_ok=True)
    if resumed is None:
        MetricsLog(run_dir).clear()  # left by an attempt that never saved
        ckpt.write_json(run_dir / "run.json", record.to_json())
    else:
        ckpt.record_resume(run_dir, loaded.manifest.get("step"), resumed.train.to_json(), record.train.to_json())


def train(corpus=None, out=None, max_time=None, **options) -> Result:
    """Train a model, as `charrnn train` does, and return how the run ended (`result.run_dir` is
    the run; `charrnn.load(result.run_dir)` its best model).

    `corpus`: a file, a directory, a corpus name, or a list of them (None: the built-in corpus).
    `max_time`: seconds or a duration such as "5m". Other keyword arguments are the options of
    `charrnn train` with underscores: model and training settings (layers=2, hidden_size=256,
    dropout=0.2, lr=3e-3, max_steps=1000, ...), and preset, resume, init_from, val_file, encoding,
    errors, keep_newlines, bytes, glob, unknown, device, and `reporter` (a charrnn Reporter, for
    progress). Raises CharRNNError for bad input, with the message the command line prints."""
    reporter = options.pop("reporter", None)
    options = {k: plain_number(v) for k, v in options.items()}  # numpy numbers, kept in JSON as numbers
    if reporter is not None and not isinstance(reporter, Reporter):
        raise UsageError(f"reporter={reporter!r}: must be a charrnn.training.report.Reporter (or None for no progress)")
    text_keys = {"encoding", "errors", "keep_newlines", "bytes"}
    for key in ("keep_newlines", "bytes"):  # bytes="no" would be true
        if key in options and not isinstance(options[key], bool):
            raise UsageError(f"{key}={options[key]!r}: must be True or False")
    text = TextOptions(**{k: options.pop(k) for k in list(options) if k in text_keys})
    plain = {
        k: options.pop(k)
        for k in list(options)
        if k in ("preset", "resume", "init_from", "val_file", "glob", "unknown", "device")
    }
    for key in ("resume", "init_from", "val_file"):
        if plain.get(key) is not None:
            plain[key] = _path(key, plain[key])
    if plain.get("unknown", "error") not in ("error", "skip", "replace"):
        raise UsageError(f"--unknown {plain['unknown']!r}: use error, skip or replace")
    if not isinstance(plain.get("glob", "*"), str):
        raise UsageError(f"--glob {plain['glob']!r}: must be a str such as '*.txt'")
    if max_time is not None:
        options["max_time"] = parse_duration(plain_number(max_time))
    if corpus is None:
        corpus = []
    elif isinstance(corpus, (list, tuple)):
        corpus = [str(_path("corpus", c)) for c in corpus]
    else:
        corpus = [str(_path("corpus", corpus))]
    out = None if out is None else _path("out", out)
    given = set(options) | set(plain) | {k for k in text_keys if getattr(text, k) != getattr(TextOptions(), k)}
    if out is not None:
        given.add("out")
    request = RunRequest(corpus=corpus, out=out, settings=options, text=text, given=given, **plain)
    try:
        run = prepare(request)
    except OSError as e:  # a file of the text that vanished or cannot be read, as the command says it
        raise InputError(os_error_message(e)) from e
    try:
        return run.execute(reporter)
    except Interrupted as e:
        stopped_by = e.exit_code - 128
    except OSError as e:  # a checkpoint that could not be written: disk full, read-only
        raise CharRNNError(os_error_message(e)) from e
    finally:
        if run.trainer is not None:
            run.trainer.restore_signals()  # the program's own Ctrl-C handling, after a signal too
        run.release()
    # saved; now the signal does to the program what it would have done without the run: SIGTERM
    # (docker stop, systemd) its own handler or the end of the process, Ctrl-C a KeyboardInterrupt
    if stopped_by == signal.SIGTERM:
        signal.raise_signal(signal.SIGTERM)
    raise KeyboardInterrupt


def _path(name: str, value) -> Path:
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise UsageError(f"{name}={value!r}: must be a path, as a str or a pathlib.Path")


# Bytes of training state per parameter: the weights, their gradients, Adam's two moments, the
# weight average and the best model's copy, in 32-bit floats; activations come on top.
TRAINING_BYTES = 6 * 4


def _check_memory(model: ModelConfig, device) -> None:
    """Refuse a model that cannot be trained in this machine's memory at all, with a line that says
    so, before allocating it (which fails with a traceback, or gets the process killed)."""
    import torch

    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, f"the GPU ({device})"
    elif device.type == "cpu" and hasattr(os, "sysconf"):
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    else:
        return
    need = TRAINING_BYTES * model.parameters
    if need > have:
        raise UsageError(
            f"a {model.layers} x {model.hidden_size} {model.cell.upper()} with embedding {model.embedding_size} has "
            f"{model.parameters:,} parameters: training it needs about {need / 1e9:,.1f} GB, more than the "
            f"{have / 1e9:,.1f} GB of {where}; use a smaller --hidden-size, --layers or --embedding-size"
        )


def _recorded_path(source: dict) -> str:
    """Where a resumed run finds a file it was trained on: as given then, or, from another
    directory, its absolute path (a name such as `tinyshakespeare` or `-` is as given)."""
    path, absolute = source["path"], source.get("absolute")
    return absolute if absolute and not Path(path).exists() and Path(absolute).exists() else path
