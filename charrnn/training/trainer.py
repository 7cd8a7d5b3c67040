"""The training loop: stateful truncated BPTT with AdamW, warm-up + cosine decay, clipping,
periodic validation, checkpoints and signal handling. Runs unchanged under `torchrun` (DDP).

Library code: it reports progress through a `Reporter` and never prints.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import TrainConfig
from charrnn.data.batches import StreamBatches
from charrnn.device import (
    autocast,
    needs_loss_scaling,
    resolve_precision,
)
from charrnn.errors import CharRNNError, Interrupted, UsageError
from charrnn.model.network import CharRNN, detach, state_from_tensors, state_tensors
from charrnn.model.scoring import Pieces
from charrnn.records import Result, RunRecord, Score
from charrnn.storage import checkpoints as checkpoint
from charrnn.storage import layout
from charrnn.training.averaging import WeightAverage
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
from charrnn.training.optimizer import make_optimizer
from charrnn.training.report import Reporter
from charrnn.training.signals import StopSignals
from charrnn.training.threads import ThreadGovernor
from charrnn.training.validation import EvalClock, Validation


class Trainer(Validation):
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
        self.optimizer = make_optimizer(self.model, config, device)
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
        self.signals = StopSignals()
        # validation: a fixed sample of the held-out text while training, all of it at the end
        self.pieces: Pieces | None = None
        self.governor: ThreadGovernor | None = None  # CPU threads of a timed run (training/threads.py)
        self.read_speed = 0.0  # characters per second that validation reads, as last measured...
        self.speed_measured_at, self.probe_wait = 0.0, 0.0  # ...when (elapsed), and the wait for the next
        self.training_time, self.reserve = 0.0, 0.0  # when training stopped, and what it kept for the end
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

    # -- state ---------------------------------------------------------------------------------

    def resume_from(self, loaded: checkpoint.Loaded) -> None:
        """Continue exactly where `loaded` stopped: optimizer, RNG, cursor, hidden state."""
        snap = checkpoint.restore_training(loaded, self.optimizer)
        self.step, self.epoch, self.batch_index, self.elapsed = snap.step, snap.epoch, snap.batch_index, snap.elapsed
        self.train_loss, self.val_loss, self.best_val_loss = snap.train_loss, snap.val_loss, snap.best_val_loss
        self.val_error, self.val_pieces = snap.val_error, snap.val_pieces
        self.val_step = snap.step if snap.val_loss is not None else None
        self.evals_without_improvement = snap.evals_without_improvement
        if (best := layout.pointer(self.run_dir, "best")) is not None:
            manifest = layout.read_json(best / layout.MANIFEST)
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
                if layout.pointer(self.run_dir, "latest")
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

    def fit(self) -> Result:
        """Train until a budget is used up or a signal arrives; save on the way out and hand back
        the best validated model."""
        self.signals.install()
        try:
            reason, last_path = self._loop()
            kept = self._kept(last_path)
            self.elapsed = time.perf_counter() - self._clock
        finally:
            if self.governor:
                self.governor.restore()
            if self.signals.caught is None:  # after a signal keep ignoring them: the command is on its way out
                self.signals.restore()  # (`restore_signals` gives a program its own back)
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
            training_time=self.training_time,
            reserve=self.reserve if self.config.max_time else None,
        )
        if self.dist.main:
            checkpoint.write_json(self.run_dir / layout.RESULT, result.to_json())
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
            self.governor = ThreadGovernor()  # `fit` restores the thread count
        while (
            reason := agree_on_stop("signal" if self.signals.caught else self.stop_reason(), self.dist, self.device)
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
            self.measure_scoring_again()
        self.training_time, self.reserve = self.elapsed, self.budget.reserve
        if self.dist.world > 1 and self.train_loss is not None:  # the last step's, of the whole batch
            self.train_loss = mean_over_ranks(self.train_loss, self.dist, self.device)
        if reason == "signal":
            last_path = self.save() or last_path
            raise Interrupted(128 + (self.signals.caught or signal.SIGINT))
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

    def restore_signals(self) -> None:
        """The handlers from before `fit`, back after a run that a signal stopped: for a program that
        goes on (`charrnn.train` in a notebook), where a command simply exits."""
        self.signals.restore()
