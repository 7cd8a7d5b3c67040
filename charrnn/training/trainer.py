"""The training loop: stateful truncated BPTT with AdamW, warm-up + cosine decay, clipping,
periodic validation, checkpoints and signal handling. Runs unchanged under `torchrun` (DDP).

Library code: it reports progress through a `Reporter` and never prints.
"""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import EVAL_SHARE, EVALS_PER_RUN, PASSES_PER_EVAL, ModelConfig, TrainConfig
from charrnn.data.batches import StreamBatches
from charrnn.errors import CharRNNError, Interrupted, UsageError
from charrnn.model.network import CharRNN, detach, state_from_tensors, state_tensors
from charrnn.model.scoring import Pieces, autocast, score, score_pieces, standard_error
from charrnn.storage import checkpoints as checkpoint
from charrnn.storage.records import Kept, Result, RunRecord, Score
from charrnn.training.budget import Budget, Position
from charrnn.training.distributed import (
    Dist,
    agree_on_stop,
    check_ranks_agree,
    gather_streams,
    max_floats_over_ranks,
    max_over_ranks,
    mean_over_ranks,
    rank_seed,
)
from charrnn.training.metrics import MetricsLog
from charrnn.training.report import Reporter
from charrnn.training.threads import ThreadGovernor

# A timed run's last scoring stops at this multiple of --max-time; what it scored by then is reported.
OVERRUN = 1.05

# ---------------------------------------------------------------------------------------------
# Devices and precision
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if not isinstance(name, str):
        raise UsageError(f"device={name!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available to PyTorch; use --device cpu")
    if name.startswith("cuda") and "LOCAL_RANK" in os.environ:
        # under torchrun one GPU per process, even for cuda:N (which would put every rank on one GPU);
        # CUDA_VISIBLE_DEVICES chooses the GPUs
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple's MPS backend is not available; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or (device.type == "cpu" and device.index):
        raise UsageError(f"--device {name}: not a device charrnn runs on; use auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_native_bf16() -> bool:
    try:  # without the flag, emulated bf16 (slower than fp32) counts as supported
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older PyTorch, which did not count emulation
        return torch.cuda.is_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: `auto` picks bf16 on a CPU that does it natively; on CUDA fp16 with loss
    scaling where there are tensor cores (autocast runs cuDNN's LSTM in fp16 whatever dtype is
    asked for, so fp16 is what a GPU really runs); else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16 if torch.cuda.get_device_capability(device) >= (7, 0) else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise UsageError(f"--precision {name}: use auto, fp32, bf16 or fp16")
    if name == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on this device")
    if name == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        # oneDNN's bf16 LSTM refuses to run without native bf16 instructions (AVX-512 BF16 / AMX)
        raise UsageError("--precision bf16: this CPU has no native bf16 support; use --precision fp32 (or auto)")
    if name == "bf16" and device.type == "cuda" and not cuda_has_native_bf16():
        raise UsageError("--precision bf16: this GPU has no native bf16; use --precision fp16 (or auto)")
    return dtypes[name]


def needs_loss_scaling(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether gradients pass through fp16 and need a GradScaler so that small ones do not
    underflow: with fp16, and on CUDA with bf16 too, since autocast casts cuDNN's RNN to fp16
    (aten/src/ATen/cudnn/AutocastRNN.cpp hard-codes kHalf; benchmarks/gpu_check.py probes it)."""
    return dtype == torch.float16 or (device.type == "cuda" and dtype == torch.bfloat16)


SPEED_STEPS = 4  # timed steps per thread count when a run measures its speed before it plans...
SPEED_SECONDS = 1.0  # ...fewer (2 at least) where a model this large takes longer

# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), kept in a copy of the
    model. Late in training the raw weights jitter around a minimum; their average lies nearer to
    it and generalises better (benchmarks/README.md, "Weight averaging and the learning-rate floor")."""

    def __init__(self, model: CharRNN, decay: float, warmup: float = 10.0):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.model.rnn.flatten_parameters()  # a copy loses cuDNN's one weight buffer (no-op on a CPU)
        self.params = list(self.model.parameters())
        self.decay = decay
        self.warmup = warmup  # decay <= (1 + step) / (warmup + step): about the last 1/(warmup - 1) of a run

    @torch.no_grad()
    def update(self, model: CharRNN, step: int) -> None:
        """Move the average towards `model` after training step `step` (1, 2, ...)."""
        weight = 1 - min(self.decay, (1 + step) / (self.warmup + step))
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], weight)  # one launch on a GPU


class Trainer:
    """Owns the model, optimizer, data cursor and carried hidden state for one training run.

    `on_step`, if given, is called with the trainer after every training step (benchmarks use it
    to follow the weights)."""

    def __init__(
        self,
        model: CharRNN,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        config: TrainConfig,
        run_dir: Path,
        record: RunRecord | None,
        device: torch.device,
        reporter: Reporter | None = None,
        dist: Dist = Dist(),
        on_step: Callable[[Trainer], None] | None = None,
    ):
        self.config = config
        self.device = device
        self.dtype = resolve_precision(config.precision, device)
        self.run_dir = run_dir
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.record = record
        self.reporter = reporter or Reporter()
        self.dist = dist
        self.on_step = on_step
        if config.batch_size % dist.world:
            raise UsageError(f"--batch-size {config.batch_size} must be divisible by the {dist.world} processes")
        self.batches = StreamBatches(train_ids, config.batch_size, config.seq_len, dist.rank, dist.world)
        self.val_ids = val_ids
        self.model = model.to(device)
        self.average = WeightAverage(self.model, config.ema) if config.ema > 0 else None
        self.ddp = None
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            torch.manual_seed(rank_seed(config.seed, dist.rank, 0))  # the weights are built: now ranks differ
        self.optimizer = self._make_optimizer()
        # fp16 needs loss scaling so small gradients do not underflow; a no-op for other precisions.
        self.scaler = torch.amp.GradScaler(device.type, enabled=needs_loss_scaling(self.dtype, device))
        self.budget = Budget(config)
        self.metrics = MetricsLog(run_dir, dist.main)
        self.step = 0
        self.epoch = 0
        self.batch_index = 0
        self.elapsed = 0.0
        self.hidden = self.model.initial_state(len(self.batches.starts), device)
        self.train_loss: float | None = None
        self.val_loss: float | None = None
        self.val_error: float | None = None  # its standard error, when it came from a sample
        self.best_val_loss: float | None = None
        self.best_error: float | None = None
        self.val_pieces: tuple[float, ...] = ()  # val_loss on each piece of the sample, and best_val_loss
        self.best_pieces: tuple[float, ...] = ()
        self.evals_without_improvement = 0
        self.val_step: int | None = None  # the step val_loss was measured at
        self.lr = config.lr
        self._signal: int | None = None
        self._previous_handlers: dict = {}  # the signal handlers from before `run`
        # validation: a fixed sample of the held-out text while training, all of it at the end
        self.pieces: Pieces | None = None
        self.governor: ThreadGovernor | None = None  # CPU threads of a timed run (threads.py)
        self.read_speed = 0.0  # characters per second that validation reads, as last measured
        self.save_seconds = 0.0  # the longest save so far
        self.best_step: int | None = None
        self.best_epochs = 0.0
        self.best_weights: dict[str, torch.Tensor] | None = None  # the shipped weights at best_step
        self.best_score: Score | None = None
        self.saved_step: int | None = None

    @property
    def shipped(self) -> CharRNN:
        """The weights that are validated, saved and sampled: the average if there is one."""
        return self.average.model if self.average else self.model

    def _make_optimizer(self) -> torch.optim.Optimizer:
        # Weight decay on matrices only; biases and the embedding (a lookup) are left alone.
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and not name.startswith("embedding") else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # On CUDA the fused kernel updates every parameter in one launch instead of several per tensor.
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.99), fused=self.device.type == "cuda")

    # -- state ---------------------------------------------------------------------------------

    def resume_from(self, loaded: checkpoint.Loaded) -> None:
        """Continue exactly where `loaded` stopped: optimizer, RNG, cursor, hidden state."""
        snap = checkpoint.restore_training(loaded, self.optimizer)
        self.step, self.epoch, self.batch_index, self.elapsed = snap.step, snap.epoch, snap.batch_index, snap.elapsed
        self.train_loss, self.val_loss, self.best_val_loss = snap.train_loss, snap.val_loss, snap.best_val_loss
        self.val_error, self.val_pieces = snap.val_error, snap.val_pieces
        self.val_step = snap.step if snap.val_loss is not None else None
        self.evals_without_improvement = snap.evals_without_improvement
        if (best := checkpoint.pointer(self.run_dir, "best")) is not None:
            manifest = checkpoint.read_json(best / checkpoint.MANIFEST)
            self.best_step, self.best_epochs = int(manifest["step"]), float(manifest.get("epochs", 0.0))
            self.best_error = manifest.get("val_standard_error")
            self.best_pieces = tuple(manifest.get("val_pieces") or ())
        if self.dist.world > 1:  # the checkpoint holds rank 0's random state only
            torch.manual_seed(rank_seed(self.config.seed, self.dist.rank, self.step))
        if snap.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(snap.scaler)
        if snap.weights:  # the checkpoint's model holds the average; training goes on from these
            self.model.load_state_dict(snap.weights)
        if snap.hidden:
            full = [h.to(self.device, torch.float32) for h in snap.hidden]  # older checkpoints held bf16
            rows = slice(self.dist.rank, None, self.dist.world)
            if full[0].shape[1] == self.config.batch_size:
                self.hidden = state_from_tensors([h[:, rows].contiguous() for h in full])
        self.metrics.truncate_after(self.step)  # the steps after it are done again

    def save(self) -> Path | None:
        hidden = gather_streams(state_tensors(self.hidden), self.dist)  # collective: every rank takes part
        if not self.dist.main:
            return None
        snap = checkpoint.Snapshot(
            step=self.step,
            epoch=self.epoch,
            batch_index=self.batch_index,
            elapsed=self.elapsed,
            hidden=hidden,
            train_loss=self.train_loss,
            # only a checkpoint evaluated at its own step carries a validation loss (its name and the
            # "best" pointer depend on it); one saved between evaluations does not
            val_loss=self.val_loss if self.val_step == self.step else None,
            val_error=self.val_error if self.val_step == self.step else None,
            val_pieces=self.val_pieces if self.val_step == self.step else (),
            best_val_loss=self.best_val_loss,
            best_val_error=self.best_error,
            epochs=self.epochs_done(),
            evals_without_improvement=self.evals_without_improvement,
            weights=self.model.state_dict() if self.average else None,
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
        )
        info = self.record.to_json() if self.record else {}
        try:
            path = checkpoint.save(self.run_dir, self.shipped, self.optimizer, snap, info, self.config.keep)
        except OSError as e:
            then = (
                "the previous checkpoint is intact. Free some disk space and resume with --resume"
                if checkpoint.pointer(self.run_dir, "latest")
                else "no checkpoint was saved yet. Free some disk space and start the run again"
            )
            raise CharRNNError(f"{self.run_dir}: could not write a checkpoint ({e.strerror or e}); {then}")
        self.reporter.saved(path)
        return path

    # -- the budget ----------------------------------------------------------------------------

    def epochs_done(self) -> float:
        return self.epoch + self.batch_index / len(self.batches)

    def position(self) -> Position:
        self.budget.reserve = self.final_reserve  # what the end of the run costs, as last measured
        return Position(self.step, self.epochs_done(), self.elapsed, self.evals_without_improvement)

    def agreed_position(self) -> Position:
        """The position for the learning rate, the same on every rank: a time budget's schedule runs
        on the clock and on what the end will cost, which each process measures for itself, and
        ranks that stepped with different rates would end with different weights."""
        at = self.position()
        if self.dist.world == 1 or not self.config.max_time or self.config.decay_steps:
            return at
        elapsed, self.budget.reserve = max_floats_over_ranks([at.elapsed, self.budget.reserve], self.dist, self.device)
        return replace(at, elapsed=elapsed)

    def stop_reason(self) -> str | None:
        return self.budget.stop_reason(self.position())

    @property
    def final_reserve(self) -> float:
        """Seconds a timed run keeps for its end: the last periodic validation, the whole held-out
        text for the model it hands back, the last save; with a margin."""
        if not self.config.max_time or len(self.val_ids) < 2:
            return self.save_seconds
        read = len(self.val_ids) + (self.pieces.cost if self.pieces else 0)
        return 1.2 * read / max(self.read_speed, 1.0) + self.save_seconds

    # -- the loop ------------------------------------------------------------------------------

    def train_step(self) -> float:
        if self.batch_index >= len(self.batches):  # a new epoch: streams restart, state too
            self.epoch += 1
            self.batch_index = 0
            self.hidden = self.model.initial_state(len(self.batches.starts), self.device)
        x, y = self.batches.batch(self.batch_index)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        lr = self.budget.learning_rate(self.agreed_position())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        net = self.ddp or self.model
        with autocast(self.device, self.dtype):
            logits, hidden = net(x, self.hidden)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.hidden = detach(hidden)
        self.step += 1
        if self.average:
            self.average.update(self.model, self.step)
        self.batch_index += 1
        value = loss.item()
        if not math.isfinite(value):
            raise CharRNNError(
                f"training diverged at step {self.step} (loss {value}); lower --lr or use --precision fp32"
            )
        self.lr = lr
        return value

    def run(self) -> Result:
        """Train until a budget is used up or a signal arrives; save on the way out and hand back
        the best validated model."""
        self._previous_handlers = previous = self._install_signal_handlers()
        try:
            reason, last_path = self._loop()
            kept = self._kept(last_path)
            self.elapsed = time.perf_counter() - self._clock
        finally:
            if self.governor:
                self.governor.restore()
            if self._signal is None:  # after a signal keep ignoring them: the command is on its way out
                self._restore_signal_handlers(previous)  # (`restore_signals` gives a program its own back)
        check_ranks_agree(self.model, self.dist)
        result = Result(
            steps=self.step,
            epochs=self.epochs_done(),
            elapsed=self.elapsed,
            characters=self.step * self.config.batch_size * self.config.seq_len,
            train_loss=self.train_loss,
            val=kept.val if kept else None,
            best_val_loss=self.best_val_loss,
            checkpoint=last_path,
            stopped_by=reason,
            kept=kept,
            last_estimate=self.val_loss,
            run_dir=self.run_dir,
        )
        if self.dist.main:
            checkpoint.write_json(self.run_dir / checkpoint.RESULT, result.to_json())
        self.reporter.finish(result)
        return result

    def _loop(self) -> tuple[str, Path | None]:
        """Train, validate and save until a reason to stop; then the last validation and save.
        Returns the reason and the last checkpoint."""
        c = self.config
        start_step, last_save_time, last_path = self.step, time.monotonic(), None
        chars_per_step = c.batch_size * c.seq_len
        window_time, window_steps = 0.0, 0  # training time only, so evaluation does not dent chars/s
        self.plan_validation()
        self.lr = self.budget.learning_rate(self.agreed_position())  # the position sets the budget's reserve
        # each validation also saves a checkpoint: its time counts in what a validation costs
        clock = EvalClock(
            c,
            self.elapsed,
            self.budget.training_time,
            lambda: self.validation_seconds() + self.save_seconds,
            lambda: self.elapsed / self.epochs_done() if self.epochs_done() > 0 else None,
        )
        self.reporter.start({"step": self.step, "config": c.to_json(), "precision": str(self.dtype).split(".")[-1]})
        self._clock = time.perf_counter() - self.elapsed  # elapsed counts everything: steps, validation, saves
        # a timed run on a CPU takes fewer threads while another program competes for the cores
        if c.max_time and self.device.type == "cpu" and self.dist.world == 1:
            self.governor = ThreadGovernor()  # `run` restores the thread count
        while (
            reason := agree_on_stop("signal" if self._signal else self.stop_reason(), self.dist, self.device)
        ) is None:
            t0 = time.perf_counter()
            loss = self.train_step()
            seconds = time.perf_counter() - t0
            window_time += seconds
            window_steps += 1
            if self.governor and (
                message := self.governor.step(seconds, chars_per_step, time.perf_counter() - self._clock)
            ):
                self.reporter.note(message)
            if self.on_step:
                self.on_step(self)
            self.elapsed = time.perf_counter() - self._clock
            logging = self.step % c.log_every == 0 or self.step == 1
            if logging:  # under DDP the loss of the whole batch, as one process would log it
                loss = mean_over_ranks(loss, self.dist, self.device)
                self._log(loss, window_steps * chars_per_step / max(window_time, 1e-9))
                window_time, window_steps = 0.0, 0
            self.train_loss = loss
            evaluate_now = clock.due(self.step, self.elapsed, logging, self.dist, self.device)
            if evaluate_now:
                self._evaluate_and_record()
            # clocks differ between processes: under DDP all ranks must agree to save (a collective)
            due_minutes = c.save_every_minutes and max_over_ranks(
                int(time.monotonic() - last_save_time >= 60 * c.save_every_minutes), self.dist, self.device
            )
            periodic = (c.save_every and self.step % c.save_every == 0) or due_minutes
            if periodic and not evaluate_now and self._last_step():
                periodic = False  # the end of the run validates and saves this step
            if evaluate_now or periodic:
                last_path = self._timed_save() or last_path
                last_save_time = time.monotonic()
            self.elapsed = time.perf_counter() - self._clock
        if self.dist.world > 1 and self.train_loss is not None:  # the last step's, of the whole batch
            self.train_loss = mean_over_ranks(self.train_loss, self.dist, self.device)
        if reason == "signal":
            last_path = self.save() or last_path
            raise Interrupted(128 + (self._signal or signal.SIGINT))
        if self.step > start_step or last_path is None:
            evaluate = self.val_step != self.step
            if evaluate:
                self._evaluate_and_record()
            if evaluate or self.saved_step != self.step:  # each checkpoint saved (and reported) once
                last_path = self._timed_save() or last_path
        return reason, last_path

    def _last_step(self) -> bool:
        """Whether the run stops after this step (all ranks agree: every rank asks at the same step)."""
        return agree_on_stop(self.stop_reason(), self.dist, self.device) is not None

    def _log(self, loss: float, chars_per_sec: float) -> None:
        record = {
            "step": self.step,
            "epoch": round(self.epochs_done(), 4),
            "time": round(self.elapsed, 3),
            "tokens": self.step * self.config.batch_size * self.config.seq_len,
            "train_loss": loss,
            "lr": self.lr,
            "chars_per_sec": round(chars_per_sec, 1),
            "progress": min(self.budget.done(self.position()), 1.0),
        }
        self.metrics.append(record)
        self.reporter.log(record)

    def _timed_save(self) -> Path | None:
        t0 = time.perf_counter()
        path = self.save()
        self.saved_step = self.step
        self.save_seconds = max(self.save_seconds, time.perf_counter() - t0)
        return path

    # -- validation ----------------------------------------------------------------------------

    def plan_validation(self) -> None:
        """Choose the periodic validation sample and, for a time budget, what the end will cost.

        The sample is sized from the measured scoring speed so that EVALS_PER_RUN validations use
        about EVAL_SHARE of the budget; the final one scores the whole held-out text. A held-out
        text that small is scored whole every time."""
        c, n = self.config, len(self.val_ids)
        if n < 2:
            return
        if c.max_time or c.eval_chars is None:
            self.read_speed = self._scoring_speed()
        if c.eval_chars is None:
            read = EVAL_SHARE * c.max_time * self.read_speed / EVALS_PER_RUN if c.max_time else 300_000
            # at most what the text holds (a huge budget asked for billions of pieces), but a small
            # text's sample as before: large enough that it is scored whole
            pieces = Pieces.spread(n, min(max(read, 20_000), max(n, 20_000)) * Pieces.FRACTION_SCORED)
            # every rank scores the same pieces, and a resumed run scores them again (the run
            # record holds this config)
            c.eval_chars = max_over_ranks(pieces.characters, self.dist, self.device)
        if c.eval_chars < 0.7 * n:
            self.pieces = Pieces.spread(n, c.eval_chars)

    def validation_seconds(self) -> float:
        """What one periodic validation takes, at the scoring speed last measured."""
        read = self.pieces.cost if self.pieces else len(self.val_ids)
        return read / max(self.read_speed, 1.0)

    def _scoring_speed(self) -> float:
        """Characters per second that validation reads, measured on a small piece of held-out text."""
        pieces = Pieces.spread(len(self.val_ids), 16_384)  # 16 pieces
        rate = 0.0
        for _ in range(2):  # the first pass also sets up the kernels
            t0 = time.perf_counter()
            score_pieces(self.shipped, self.val_ids, pieces, self.device, self.dtype)
            rate = pieces.cost / max(time.perf_counter() - t0, 1e-6)
        return rate

    def evaluate(self, whole: bool = False, model: CharRNN | None = None) -> Score | None:
        """The loss of `model` (default: the shipped weights) on the held-out sample (or on all of it)."""
        model = model or self.shipped
        if len(self.val_ids) < 2:
            return None
        if self.pieces is None or whole:
            return score(model, self.val_ids, self.device, dtype=self.dtype)
        return score_pieces(model, self.val_ids, self.pieces, self.device, self.dtype)

    def _kept(self, last_path: Path | None) -> Kept | None:
        """The best validated model, scored on the whole held-out text: what the run hands back."""
        if self.best_step is None or self.val_loss is None:
            if len(self.val_ids) >= 2 or last_path is None:
                return None
            return Kept(self.step, self.epochs_done(), last_path, None, None)  # nothing to validate on
        estimate = self.best_val_loss
        if note := self._last_ties_the_best():
            self.reporter.note(note)
            self.best_step, self.best_epochs, self.best_error = self.step, self.epochs_done(), self.val_error
            self.best_weights, self.best_score, estimate = None, None, self.val_loss
            if self.dist.main and last_path is not None:
                checkpoint.point(self.run_dir, "best", last_path)
        model = self.shipped
        if self.best_step != self.step:
            model = copy.deepcopy(self.shipped)
            weights = self.best_weights
            if weights is None:  # resumed after the best checkpoint was saved: read it back
                weights = checkpoint.load(self.run_dir, self.device, which="best").model.state_dict()
            model.load_state_dict(weights)
        whole = self.best_score
        if self.pieces is not None or whole is None:
            report = self._scoring_reporter(len(self.val_ids) - 1)
            report(0)
            whole = score(
                model, self.val_ids, self.device, dtype=self.dtype, deadline=self._deadline(), progress=report
            )
            whole = whole if whole.characters else None  # no time left at all: the estimate stands
        best = checkpoint.pointer(self.run_dir, "best") if self.dist.main else None
        held_out = len(self.val_ids) - 1  # characters a whole scoring counts
        return Kept(self.best_step, self.best_epochs, best or last_path, whole, estimate, held_out, self.best_error)

    def _last_ties_the_best(self) -> str | None:
        """When the last weights' estimate is worse than the best one's by less than the margin of
        their difference on the same pieces, that may well be the sample's chance, not the model:
        the run then hands back the last, more trained, weights. Says so, or returns None."""
        last, best = np.asarray(self.val_pieces), np.asarray(self.best_pieces)
        if self.best_step == self.step or self.val_step != self.step or len(last) != len(best):
            return None
        error = standard_error(last - best)
        worse = self.val_loss - self.best_val_loss
        if error is None or worse > 2 * error:
            return None
        return (
            f"the estimate was lowest at step {self.best_step:,} ({self.best_val_loss:.4f}); the last weights' is "
            f"{worse:+.4f} from it on the same pieces, within that difference's margin (±{2 * error:.4f}), so the "
            "run hands back the last weights"
        )

    def _scoring_reporter(self, total: int) -> Callable[[int], None]:
        """Tells the reporter how the last scoring of the whole held-out text goes, four times a
        second, and stops it at a signal."""
        last = -1.0

        def report(done: int) -> None:
            nonlocal last
            if self._signal:  # the checkpoints are saved: Ctrl-C or SIGTERM need not wait for the figure
                raise Interrupted(128 + self._signal)
            if (now := time.perf_counter()) - last < 0.25 and done < total:
                return
            last, elapsed = now, now - self._clock
            at = Position(self.step, self.epochs_done(), elapsed)
            record = {"step": self.best_step, "done": done, "characters": total, "time": round(elapsed, 3)}
            self.reporter.scoring({**record, "progress": min(self.budget.done(at), 1.0)})

        return report

    def _deadline(self) -> float | None:
        """When a timed run's last scoring must stop, whatever the machine's load: the reserve plans
        for it to end in time, and another process taking the cores meanwhile must not make a
        75-second run take minutes (a shared 2-core machine: 539 s, benchmarks/README.md)."""
        return self._clock + OVERRUN * self.config.max_time if self.config.max_time else None

    def _evaluate_and_record(self) -> None:
        t0 = time.perf_counter()
        val = self.evaluate()
        if self.pieces is not None:  # keep the cost of the end of the run up to date
            self.read_speed = self.pieces.cost / max(time.perf_counter() - t0, 1e-6)
        if val is None:
            return
        self.val_loss, self.val_error, self.val_pieces, self.val_step = val.nats, val.error, val.pieces, self.step
        if self.best_val_loss is None or val.nats < self.best_val_loss:
            self.best_val_loss = val.nats
            self.best_step, self.best_epochs = self.step, self.epochs_done()
            self.best_weights = {k: v.detach().clone() for k, v in self.shipped.state_dict().items()}
            self.best_score, self.best_error, self.best_pieces = val, val.error, val.pieces
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        record = {
            "step": self.step,
            "time": round(self.elapsed, 3),
            "tokens": self.step * self.config.batch_size * self.config.seq_len,
            "val_loss": val.nats,
            "val_bpc": val.bits_per_char,
            "val_characters": val.characters,
            "val_standard_error": val.error,  # None: the whole held-out text was scored
            "best_val_loss": self.best_val_loss,
        }
        self.metrics.append(record)
        self.reporter.evaluated(record)

    # -- signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict:
        """SIGINT / SIGTERM set a flag; the loop finishes its step, saves and exits 130 / 143.
        A second signal while saving only sets the flag again, so a save is never cut short."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            self._signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore_signals(self) -> None:
        """The handlers from before `run`, back after a run that a signal stopped: for a program that
        goes on (`charrnn.train` in a notebook), where a command simply exits."""
        self._restore_signal_handlers(self._previous_handlers)

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for s, h in previous.items():
            signal.signal(s, h)


class EvalClock:
    """When to validate: every --eval-every steps, or (the default with a time budget) about
    EVALS_PER_RUN times spread over the training time (`span`, which the run plans again as it
    measures what its end will cost) and at least every PASSES_PER_EVAL passes over the text
    (`pass_seconds`: a small text's best model comes early), but never so often that validating
    (`cost`: the seconds one takes) uses more than EVAL_SHARE of the time: a short budget validates
    fewer times; none in the last half interval, where the validation that ends the run comes.
    Agreed between processes at log steps."""

    def __init__(
        self,
        config: TrainConfig,
        elapsed: float,
        span: Callable[[], float],
        cost: Callable[[], float],
        pass_seconds: Callable[[], float | None] = lambda: None,
    ):
        self.every, self.timed = config.eval_every, config.eval_by_time
        self.span, self.cost, self.pass_seconds = span, cost, pass_seconds
        self.last = elapsed  # when the last validation (or the training) began

    def interval(self) -> float:
        every = self.span() / EVALS_PER_RUN
        if per_pass := self.pass_seconds():  # a small text read many times: at least every few passes
            every = min(every, PASSES_PER_EVAL * per_pass)
        return max(every, self.cost() / EVAL_SHARE)

    def due(self, step: int, elapsed: float, logging: bool, dist: Dist, device: torch.device) -> bool:
        if not self.timed:
            return self.every > 0 and step % self.every == 0
        # processes agree at log steps only (a collective); the validation's own time counts in the interval
        if not (logging or dist.world == 1):
            return False
        # The interval as it stands now, from the last validation: the time a pass takes is known
        # only once training has begun (a small text's first validation comes after two passes,
        # not after a twentieth of the budget), and what a validation and its save cost only once
        # one was made (the next must not follow the first at the next step).
        # Due, and not so near the end of training that the validation which ends the run follows it
        # within half an interval (it would be a second point at almost the same step): 1, or 2 for that
        due, interval = 0, self.interval()
        if elapsed >= self.last + interval:
            due = 2 if elapsed + interval / 2 >= self.span() else 1
        agreed = max_over_ranks(due, dist, device)
        if agreed:
            self.last = elapsed
        return agreed == 1


def training_speed(
    model_config: ModelConfig, config: TrainConfig, train_ids: np.ndarray, device: torch.device
) -> float | None:
    """Characters per second that training `model_config` with `config` reaches here and now (this
    CPU or GPU, whatever else runs on it): the median of a few real steps on the start of the
    text, after one that sets up the kernels, on a model that is then thrown away. On a CPU on all
    threads and on one, the faster of the two, as a timed run's ThreadGovernor would find; random
    states are untouched. None if the steps diverge (the run itself will say so). At most about
    SPEED_SECONDS of steps."""
    import statistics
    import tempfile

    most, speed = torch.get_num_threads(), 0.0
    gpus = [device] if device.type == "cuda" else []
    with tempfile.TemporaryDirectory() as folder, torch.random.fork_rng(devices=gpus):
        trainer = Trainer(CharRNN(model_config), train_ids, train_ids[:0], config, Path(folder), None, device)
        try:
            trainer.train_step()
            counts = sorted({most, 1}, reverse=True) if device.type == "cpu" else [most]
            for threads in counts:
                torch.set_num_threads(threads)
                seconds: list[float] = []
                while len(seconds) < SPEED_STEPS and (len(seconds) < 2 or sum(seconds) < SPEED_SECONDS / len(counts)):
                    start = time.perf_counter()
                    trainer.train_step()
                    seconds.append(time.perf_counter() - start)
                speed = max(speed, config.batch_size * config.seq_len / statistics.median(seconds))
        except CharRNNError:
            return None
        finally:
            torch.set_num_threads(most)
    return speed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
