"""Validation during training: when it is due, the sample it scores, and the model a run hands back."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from charrnn.config import EVAL_SHARE, EVALS_PER_RUN, PASSES_PER_EVAL, TrainConfig
from charrnn.errors import Interrupted
from charrnn.model.network import CharRNN
from charrnn.model.scoring import Pieces, score, score_pieces, standard_error
from charrnn.records import Kept, Score
from charrnn.storage import checkpoints as checkpoint
from charrnn.storage import layout
from charrnn.training.budget import Position
from charrnn.training.distributed import (
    Dist,
    max_over_ranks,
)

# A timed run's last scoring stops at this multiple of --max-time; what it scored by then is reported.
OVERRUN = 1.05
# A timed run measures its scoring speed again when this share of its budget went by without a
# validation measuring it, if that costs at most PROBE_SHARE of the reserve it may give back to
# training, or of the time since it was last measured.
PROBE_EVERY = 0.1
PROBE_SHARE = 0.02
PROBE_CHARS = 16_384  # characters scored to measure the speed: 16 pieces


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


class Validation:
    """The validation half of `Trainer`: the sample each periodic validation scores, what the
    end of a timed run reserves for the last one, and which validated model the run hands back."""

    def plan_validation(self) -> None:
        """Choose the periodic validation sample and, for a time budget, what the end will cost.

        The sample is sized from the measured scoring speed so that EVALS_PER_RUN validations use
        about EVAL_SHARE of the budget; the final one scores the whole held-out text. A held-out
        text that small is scored whole every time."""
        c, n = self.config, len(self.val_ids)
        if n < 2:
            return
        if c.max_time or c.eval_chars is None:
            self.read_speed, self.speed_measured_at = self._scoring_speed(passes=2), self.elapsed
            self.probe_wait = PROBE_EVERY * (c.max_time or 0.0)
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

    @property
    def final_reserve(self) -> float:
        """Seconds a timed run keeps for its end: the last periodic validation, the whole held-out
        text for the model it hands back, the last save; with a margin."""
        if not self.config.max_time or len(self.val_ids) < 2:
            return self.save_seconds
        read = len(self.val_ids) + (self.pieces.cost if self.pieces else 0)
        return 1.2 * read / max(self.read_speed, 1.0) + self.save_seconds

    def measure_scoring_again(self) -> None:
        """Keep a timed run's reserve for its end up to date where no validation measures the scoring
        speed. The first measure, made before the clock starts, may have met another program on the
        cores: the reserve then came out many times what the end took, training stopped at half the
        budget, and validation, planned from the same speed, came only at the end. A measure that
        finds the speed it expected waits twice as long for the next."""
        c, since = self.config, self.elapsed - self.speed_measured_at
        if not c.max_time or len(self.val_ids) < 2 or since < self.probe_wait:
            return
        if self._probe().cost / max(self.read_speed, 1.0) > PROBE_SHARE * max(self.final_reserve, since):
            return
        expected, self.read_speed = self.read_speed, self._scoring_speed(passes=1)
        same = 2 / 3 < self.read_speed / max(expected, 1.0) < 3 / 2
        self.probe_wait = 2 * self.probe_wait if same else PROBE_EVERY * c.max_time
        self.speed_measured_at = self.elapsed = time.perf_counter() - self._clock

    def _probe(self) -> Pieces:
        return Pieces.spread(len(self.val_ids), PROBE_CHARS)

    def _scoring_speed(self, passes: int) -> float:
        """Characters per second that validation reads, measured on a small piece of held-out text;
        the last of `passes` (a first one also sets up the kernels)."""
        pieces, rate = self._probe(), 0.0
        for _ in range(passes):
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
                layout.point(self.run_dir, "best", last_path)
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
        best = layout.pointer(self.run_dir, "best") if self.dist.main else None
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
            if self.signals.caught:  # the checkpoints are saved: Ctrl-C or SIGTERM need not wait for the figure
                raise Interrupted(128 + self.signals.caught)
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
        75-second run take many times its budget."""
        return self._clock + OVERRUN * self.config.max_time if self.config.max_time else None

    def _evaluate_and_record(self) -> None:
        t0 = time.perf_counter()
        val = self.evaluate()
        if val is None:
            return
        # keep the cost of the end of the run up to date
        read = self.pieces.cost if self.pieces is not None else len(self.val_ids)
        self.read_speed = read / max(time.perf_counter() - t0, 1e-6)
        self.speed_measured_at = time.perf_counter() - self._clock
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
