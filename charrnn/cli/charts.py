"""Loss curves from runs' metrics.jsonl: as a character grid for the terminal, or as a PNG.

Pure data and text here; views.py colours the grid. The PNG needs matplotlib (the `plot` extra).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.errors import CharRNNError, UsageError
from charrnn.files import atomic_write
from charrnn.training import metrics


@dataclass
class Curves:
    name: str
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val: list[tuple[int, float]] = field(default_factory=list)


def read_curves(run: Path) -> Curves:
    path = Path(run) / metrics.FILE
    if not path.is_file():
        raise CharRNNError(f"{run}: no metrics.jsonl; pass a run directory written by charrnn train")
    curves = Curves(Path(run).name)
    for record in metrics.read(Path(run)):
        if "train_loss" in record:
            curves.train.append((record["step"], record["train_loss"]))
        if "val_loss" in record:
            curves.val.append((record["step"], record["val_loss"]))
    if not curves.train and not curves.val:
        raise CharRNNError(f"{path}: no loss records yet; train the run for a few steps first")
    return curves


# (training, validation) marks of each run: told apart without colour too (a pipe, NO_COLOR)
MARKS = [("·", "●"), ("+", "■"), ("x", "▲"), ("'", "◆"), (":", "○"), ("-", "□")]


def marks(index: int) -> tuple[str, str]:
    return MARKS[index % len(MARKS)]


def grid(all_curves: list[Curves], width: int = 72, height: int = 18) -> tuple[list[list[tuple[str, int]]], dict]:
    """A height x width grid of (mark, series index) cells, plus the axes' ranges.

    Training points are small marks, validation points large ones (`marks`: each run its own);
    series index picks the colour."""
    points = [
        (s, v, i, kind)
        for i, c in enumerate(all_curves)
        for kind, series in enumerate((c.train, c.val))
        for s, v in series
        if math.isfinite(v)
    ]
    if not points:
        raise CharRNNError("no finite losses to plot")
    x_max = max(p[0] for p in points) or 1
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    y_max = y_max if y_max > y_min else y_min + 1
    cells: list[list[tuple[str, int]]] = [[(" ", -1)] * width for _ in range(height)]
    for drawn in (0, 1):  # validation drawn last, on top
        for step, value, index, kind in points:
            if kind != drawn:
                continue
            col = min(width - 1, int(step / x_max * (width - 1)))
            row = min(height - 1, int((y_max - value) / (y_max - y_min) * (height - 1)))
            cells[row][col] = (marks(index)[kind], index)
    return cells, {"x_max": x_max, "y_min": y_min, "y_max": y_max}


def save_png(all_curves: list[Curves], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharRNNError("--output needs matplotlib: pip install 'charrnn[plot]' (or pip install matplotlib)")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for i, c in enumerate(all_curves):
        color = f"C{i}"
        if c.train:
            ax.plot(*zip(*c.train), color=color, alpha=0.45, linewidth=1, label=f"{c.name} train")
        if c.val:
            ax.plot(*zip(*c.val), color=color, marker="o", linewidth=2, label=f"{c.name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # The image goes to exactly `path` (matplotlib alone would add .png to a name without a suffix),
    # rendered in memory first so that a failed write (disk full, /dev/full) is reported, not lost.
    fmt = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        plt.close(fig)
        raise UsageError(f"--output {path}: unknown image type '.{fmt}'; use one of .{', .'.join(supported)}")
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt)
    finally:
        plt.close(fig)
    try:
        atomic_write(path, buffer.getvalue())
    except OSError as e:
        raise CharRNNError(f"{path}: cannot write the image ({e.strerror or e}); check the path and free space")
