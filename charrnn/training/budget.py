"""How far a run has got through its budget, when it stops, and the learning rate on the way.

A run's budget is any of --max-steps, --epochs and --max-time (wall time: training, validation
and checkpoints together), whichever comes first, plus early stopping (--patience).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from charrnn.config import WARMUP_STEPS, TrainConfig


@dataclass(frozen=True)
class Position:
    """Where a run stands."""

    step: int
    epochs: float  # passes over the training text, with the fraction of the current one
    elapsed: float  # wall seconds
    evals_without_improvement: int = 0


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `lr * min_lr_ratio` as `progress`
    (the fraction of the step, epoch or time budget used, whichever is furthest) goes 0 -> 1."""
    warmup = config.warmup_steps
    if warmup is None:
        warmup = WARMUP_STEPS
        if horizon := config.decay_steps or config.max_steps:  # at most a tenth of a short run warms up
            warmup = min(warmup, max(1, horizon // 10))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


class Budget:
    """The budget of one run. `reserve` is the wall time its end needs (the last validation of the
    whole held-out text and the last save), which a --max-time budget keeps back from training."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.reserve = 0.0
        self.decayed = 0.0  # the furthest the learning-rate decay has gone

    def training_time(self) -> float:
        """The part of --max-time left for training once the end of the run is paid for."""
        return max(self.config.max_time - self.reserve, 0.5 * self.config.max_time)

    def progress(self, at: Position) -> float:
        """Fraction of the budget used, for the learning-rate schedule: the furthest of steps, epochs
        and time, the time against the part of --max-time left for training."""
        return self._furthest(at, self.training_time() if self.config.max_time else None)

    def done(self, at: Position) -> float:
        """Fraction of the run done as the user sees it: the time against the whole of --max-time,
        the end of the run included, so that it never goes back when the run measures again what
        its end will cost."""
        return self._furthest(at, self.config.max_time)

    def _furthest(self, at: Position, seconds: float | None) -> float:
        c = self.config
        parts = [0.0]
        if c.max_steps:
            parts.append(at.step / c.max_steps)
        if c.epochs:
            parts.append(at.epochs / c.epochs)
        if seconds:
            parts.append(at.elapsed / seconds)
        return max(parts)

    def learning_rate(self, at: Position) -> float:
        """The rate for the step after `at`: the decay runs over --decay-steps if given, else the budget.
        It never goes back up: a time budget's training time is planned again as the run measures
        what its end will cost, and a longer one must not raise the rate again."""
        progress = at.step / self.config.decay_steps if self.config.decay_steps else self.progress(at)
        self.decayed = max(self.decayed, progress)
        return learning_rate(self.config, at.step, self.decayed)

    def stop_reason(self, at: Position) -> str | None:
        c = self.config
        if c.max_steps is not None and at.step >= c.max_steps:
            return "max_steps"
        if c.epochs is not None and at.epochs >= c.epochs:
            return "epochs"
        if c.max_time is not None and at.elapsed >= self.training_time():
            return "max_time"
        # Automatic patience waits for a first whole pass: before it nothing was read twice, so a
        # worse validation is a held-out text unlike the rest (perl-modules' tail of Unicode
        # tables), not overfitting, and stopping would only waste the budget.
        if (patience := c.auto_patience) and at.evals_without_improvement >= patience:
            if c.patience is not None or at.epochs >= 1:
                return "patience"
        return None
