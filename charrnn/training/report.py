"""The interface between the training loop and whatever shows its progress (the CLI's display).

Kept free of torch so that commands which only show things (`charrnn corpus list`, `charrnn plot`)
can import the display without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charrnn.training.trainer import Result


class Reporter:
    """What the training loop tells the outside world; every method does nothing unless overridden."""

    def start(self, info: dict) -> None: ...
    def log(self, record: dict) -> None: ...
    def evaluated(self, record: dict) -> None: ...
    def scoring(self, record: dict) -> None: ...  # the last scoring of the whole held-out text, as it goes
    def saved(self, path: Path) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self, result: Result) -> None: ...
