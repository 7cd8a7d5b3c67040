"""A run's curves in TensorBoard: `charrnn train --tensorboard DIR` (the `tensorboard` extra).

A `Reporter` that writes what the training loop reports as TensorBoard events, and passes every
report on to the reporter it wraps (the dashboard). Steps are training steps, so a resumed run's
curves go on from where it stopped; what an interrupted run wrote after its last checkpoint is
dropped (`purge_step`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from charrnn.errors import CharRNNError
from charrnn.records import Result
from charrnn.training.report import Reporter


class TensorBoard(Reporter):
    """Training loss, validation loss and its margin, learning rate, speed, the samples the
    dashboard shows (`preview`, at each validation) and the settings (hparams)."""

    def __init__(self, folder: Path, settings: dict, inner: Reporter | None = None,
                 preview: Callable[[], str] | None = None):  # fmt: skip
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CharRNNError(
                "--tensorboard needs the tensorboard package: pip install 'charrnn[tensorboard]'"
            ) from None
        self.writer_class, self.folder, self.settings = SummaryWriter, folder, settings
        self.inner, self.preview = inner or Reporter(), preview
        self.writer = None

    def start(self, info: dict) -> None:
        step = info["step"]
        self.writer = self.writer_class(str(self.folder), purge_step=step + 1 if step else None)
        if not step:
            self._hparams()
        self.inner.start(info)

    def _hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        flat = {k: v for k, v in self.settings.items() if isinstance(v, (int, float, str, bool))}
        for summary in hparams(flat, {"loss/val": math.nan}):
            self.writer._get_file_writer().add_summary(summary)

    def log(self, record: dict) -> None:
        step = record["step"]
        if record.get("train_loss") is not None and math.isfinite(record["train_loss"]):
            self.writer.add_scalar("loss/train", record["train_loss"], step)
        self.writer.add_scalar("learning_rate", record["lr"], step)
        self.writer.add_scalar("chars_per_sec", record["chars_per_sec"], step)
        self.inner.log(record)

    def evaluated(self, record: dict) -> None:
        step = record["step"]
        if math.isfinite(record["val_loss"]):
            self.writer.add_scalar("loss/val", record["val_loss"], step)
        if record.get("val_standard_error") is not None:  # an estimate from a sample: its margin, 2 errors
            self.writer.add_scalar("loss/val_margin", 2 * record["val_standard_error"], step)
        if self.preview is not None:
            self.writer.add_text("sample", self.preview(), step)
        self.writer.flush()
        self.inner.evaluated(record)

    def scoring(self, record: dict) -> None:
        self.inner.scoring(record)

    def saved(self, path: Path) -> None:
        self.inner.saved(path)

    def note(self, message: str) -> None:
        self.inner.note(message)

    def finish(self, result: Result) -> None:
        if result.val is not None:
            self.writer.add_scalar("loss/val_kept", result.val.nats, result.kept.step if result.kept else result.steps)
        self.writer.close()
        self.inner.finish(result)

    def interrupted(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if hasattr(self.inner, "interrupted"):
            self.inner.interrupted()
