"""A training session prepared from a `RunRequest`: the text read, the model built, the run
directory claimed and recorded; then trained. The `train` command and `charrnn.train()` are thin
layers over this.

    session = prepare(RunRequest(corpus=["notes.txt"], settings={"max_time": 300}))
    try:
        result = session.execute(reporter)
    finally:
        session.release()
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from charrnn import __version__
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.sources import TextOptions
from charrnn.errors import CharRNNError, InputError, UnknownCharacters, UsageError
from charrnn.records import Result, RunRecord
from charrnn.training import plan
from charrnn.training.request import (
    BUDGETS,
    MODEL_FIELDS,
    TRAIN_FIELDS,
    Plan,
    RunRequest,
    plan_run,
    run_name,
    train_config,
)


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


@dataclass
class TrainingSession:
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
        result = self.trainer.fit()
        if self.dist.world > 1:
            # Release DDP's reducer and wait for every rank before tearing the group down: without
            # this a rank often aborted at exit ("terminate called without an active exception").
            self.trainer.ddp = None
            leave_distributed(clean=True)
        return result

    def release(self) -> None:
        while self._locks:
            self._locks.pop().release()


def prepare(request: RunRequest, progress=None) -> TrainingSession:
    """Read the text and any checkpoint, plan the run, build the model, claim and record the run
    directory. `progress` shows a download or an encoding (display.TransferProgress)."""
    from charrnn.device import resolve_device
    from charrnn.storage import layout
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
            locks.append(layout.claim(layout.writer_dir(request.resume), new=False))
        run = _prepare(request, progress, device, dist, locks)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    run._locks = locks
    return run


def _prepare(request, progress, device, dist, locks) -> TrainingSession:
    from charrnn.device import resolve_precision, seed_everything
    from charrnn.model.network import CharRNN
    from charrnn.storage import checkpoints as ckpt
    from charrnn.storage import layout

    loaded = resumed = None
    if request.resume or request.init_from:
        loaded = ckpt.load(request.resume or request.init_from, device, numbers_only=not request.resume)
    if request.resume:
        run = layout.run_of(loaded.path)
        newest = layout.resolve(run) if (run / layout.CHECKPOINTS).is_dir() else loaded.path
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
    options, data, train_ids, val_ids, val_unknown, val_sha256 = _read_text(request, config, loaded, resumed, progress)
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
        run_dir = layout.run_of(loaded.path)
        if dist.main and (abandoned := layout.discard_abandoned(run_dir)):
            the_plan.notes.append(
                f"removed {len(abandoned)} checkpoint(s) newer than the one resumed from, which the run never "
                f"pointed to (left by a crash before their save completed): {', '.join(abandoned)}"
            )
    else:
        run_dir = request.out or layout.fresh_run_dir(Path("runs"), run_name(request, the_plan.model.cell), dist.main)
        if dist.main:  # one writer per run until released; a run that never saved may start again
            locks.append(layout.claim(run_dir, new=True))
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
        val_sha256=val_sha256,
        tool_version=__version__,
    )
    if dist.main:
        _write_record(run_dir, record, resumed, loaded)
    return TrainingSession(
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
    from_stdin = resumed is not None and not request.corpus and "-" in paths
    again = (
        f"--resume {request.resume}: this run was trained on standard input; pipe the same text in again "
        f"(charrnn train --resume {request.resume} < TEXT)"
    )
    if from_stdin and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError(again)
    try:
        data = load_corpus(paths, options, vocab=vocab, unknown=request.unknown, glob=request.glob, progress=progress)
    except InputError as e:
        if from_stdin and "no text in it" in str(e):
            raise InputError(again) from None
        if isinstance(e, UnknownCharacters) and resumed is not None:  # not its text, whatever --unknown would do
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
        if resumed is not None and resumed.val_sha256 and val.sha256 != resumed.val_sha256:
            where = "standard input" if str(request.val_file) == "-" else request.val_file
            raise InputError(
                f"{where}: the validation text differs from the one this run was validated on, so its figures would "
                "not compare; resume with the same text, or start a new run from it with --init-from"
            )
        if resumed is None and val.sources[0]["sha256"] in {source["sha256"] for source in data.sources}:
            raise UsageError(
                f"--val-file {request.val_file}: this text is also in the training text, so validation would measure "
                "how well the model remembers it; give a file that is not trained on, or leave --val-file out to hold "
                "out the end of the text"
            )
        return options, data, data.ids, val.ids, val.unknown, val.sha256
    return (options, data, *split(data.ids, config.val_fraction, config.val_max_chars), 0, None)


def _write_record(run_dir: Path, record: RunRecord, resumed: RunRecord | None, loaded) -> None:
    from charrnn.storage import checkpoints as ckpt
    from charrnn.storage import layout
    from charrnn.training.metrics import MetricsLog

    run_dir.mkdir(parents=True, exist_ok=True)
    if resumed is None:
        MetricsLog(run_dir).clear()  # left by an attempt that never saved
        ckpt.write_json(run_dir / "run.json", record.to_json())
    else:
        layout.record_resume(run_dir, loaded.manifest.get("step"), resumed.train.to_json(), record.train.to_json())
        # how the last train command ended no longer holds once the run goes on: until this one ends,
        # the kept model is the best pointer's, as `sample` and `eval` read it
        (run_dir / layout.RESULT).unlink(missing_ok=True)


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
    """Where a resumed run finds a file it was trained on: its absolute path as recorded, so that a
    resume from another directory reads the same file and not one of the same name there; the path
    as given where there is none (a name such as `tinyshakespeare`, `-`, an older run)."""
    path, absolute = source["path"], source.get("absolute")
    return absolute if absolute and Path(absolute).exists() else path
