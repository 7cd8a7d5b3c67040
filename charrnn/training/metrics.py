"""A run's metrics.jsonl, written and read here only.

One JSON object per line, appended as training goes: a training record at each log step
(`step`, `epoch`, `time`, `tokens`, `train_loss`, `lr`, `chars_per_sec`, `progress`) and a
validation record at each evaluation (`step`, `time`, `tokens`, `val_loss`, `val_bpc`,
`val_characters`, `best_val_loss`). A line cut short by a crash, or not in that form, is skipped
when reading.
"""

from __future__ import annotations

import json
from pathlib import Path

from charrnn.files import atomic_write

FILE = "metrics.jsonl"


def read(run: Path) -> list[dict]:
    """The records of the run in `run` (a directory), oldest first; [] if it has none."""
    path = Path(run) / FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if _well_formed(record):
            records.append(record)
    return records


NUMBERS = ("epoch", "time", "tokens", "train_loss", "lr", "chars_per_sec", "progress", "val_loss", "val_bpc")


def _well_formed(record) -> bool:
    """A record as charrnn writes it: an object with a whole-number step, and numbers where numbers
    go (a line edited by hand or by another program is skipped rather than failing a plot or a resume)."""
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        return False
    return all(type(record[k]) in (int, float) for k in NUMBERS if k in record)


class MetricsLog:
    """Appends records to a run's metrics.jsonl; a no-op where `enabled` is false (other DDP ranks)."""

    def __init__(self, run: Path, enabled: bool = True):
        self.path = Path(run) / FILE
        self.enabled = enabled

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop the records written after `step` (a resumed run does those steps again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [json.dumps(r) for r in read(self.path.parent) if r.get("step", 0) <= step]
        atomic_write(self.path, ("\n".join(kept) + "\n" if kept else "").encode())

    def clear(self) -> None:
        """Remove the records of an earlier attempt that never saved (a new run starts empty)."""
        if self.enabled:
            self.path.unlink(missing_ok=True)
