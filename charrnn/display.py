"""Everything a person reads on stderr: progress, tables, errors. The one module that uses Rich.

stdout is for data and is never written here. Colour and animation appear only when stderr is a
terminal and NO_COLOR is unset; otherwise progress is plain, periodic lines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from charrnn.train import Reporter

LN2 = 0.6931471805599453


def make_console() -> Console:
    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)


console = make_console()


def animated() -> bool:
    return console.is_terminal and not os.environ.get("NO_COLOR") and not console.is_dumb_terminal


def error(message: str) -> None:
    console.print(f"[bold red]charrnn: error:[/] {escape(message)}")


def note(message: str) -> None:
    console.print(f"[dim]charrnn:[/] {escape(message)}")


def _fmt_loss(nats: float | None) -> str:
    return "-" if nats is None else f"{nats:.4f} ({nats / LN2:.3f} bpc)"


class TrainDisplay(Reporter):
    """Live progress bar on a terminal; one plain line per log step elsewhere."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.live = animated() and not quiet
        self.progress: Progress | None = None
        self.task = None
        self.val: float | None = None
        self.best: float | None = None
        self.smoothed: float | None = None
        self.last_plain = 0.0

    def start(self, info: dict) -> None:
        if self.quiet:
            return
        note(f"training from step {info['step']} with {info['precision']} precision")
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]step {task.fields[step]}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("loss [cyan]{task.fields[loss]}[/]  val [green]{task.fields[val]}[/]"),
                TextColumn("{task.fields[speed]} chars/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=1000, step=info["step"], loss="-", val="-", speed="-")
            self.progress.start()

    def log(self, record: dict) -> None:
        loss = record["train_loss"]
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=1000 * record["progress"],
                step=record["step"],
                loss=f"{self.smoothed:.4f}",
                speed=f"{record['chars_per_sec']:,.0f}",
            )
        else:
            console.print(
                f"step {record['step']:>6}  epoch {record['epoch']:.2f}  loss {loss:.4f}  "
                f"lr {record['lr']:.2e}  {record['chars_per_sec']:,.0f} chars/s  {100 * record['progress']:.0f}%"
            )

    def evaluated(self, record: dict) -> None:
        self.val, self.best = record["val_loss"], record["best_val_loss"]
        if self.quiet:
            return
        text = f"{self.val:.4f} ({record['val_bpc']:.3f} bpc)"
        if self.progress is not None:
            self.progress.update(self.task, val=text)
        else:
            console.print(f"step {record['step']:>6}  validation {text}  best {self.best:.4f}")

    def saved(self, path: Path) -> None:
        pass

    def finish(self, summary: dict) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=1000 if summary["stopped_by"] != "signal" else None)
            self.progress.stop()
            self.progress = None
        if self.quiet:
            return
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_row("steps", f"{summary['steps']:,} ({summary['epochs']:.2f} epochs, stopped by {summary['stopped_by']})")
        table.add_row("training time", f"{summary['elapsed']:.0f} s")
        table.add_row("characters seen", f"{summary['characters']:,}")
        val = summary["val"]
        table.add_row("validation", _fmt_loss(val.nats if val else None))
        table.add_row("best validation", _fmt_loss(summary["best_val_loss"]))
        table.add_row("checkpoint", str(summary["checkpoint"]))
        console.print(table)

    def interrupted(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class TransferProgress:
    """A bar (bytes, MB/s, ETA) while a corpus is downloaded or encoded; encoding a small corpus takes
    a blink and shows nothing. Without a terminal, a download is announced in one plain line."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None
        self.what = ""

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.quiet or (what == "encoding" and total < (8 << 20)):
            return
        if not animated():
            if what != self.what and what.startswith("downloading"):
                note(f"{what} ({total / 1e6:.1f} MB)")
            self.what = what
            return
        if self.progress is None:
            from rich.progress import DownloadColumn, TransferSpeedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=console, transient=True,
            )
            self.progress.start()
        if what != self.what:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(what, total=total)
            self.what = what
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def corpus_table(rows: list[dict]) -> None:
    table = Table()
    for name, justify in [("name", "left"), ("size", "right"), ("here", "left"), ("description", "left")]:
        table.add_column(name, justify=justify)
    for r in rows:
        here = "built in" if r["builtin"] else "yes" if r["downloaded"] else "no"
        table.add_row(escape(r["name"]), f"{r['size'] / 1e6:.1f} MB", here, escape(r["description"]))
    console.print(table)
    console.print("[dim]use a name anywhere a file goes (charrnn train tinyshakespeare); "
                  "charrnn corpus get NAME downloads ahead of time[/]")


def eval_table(rows: list[dict]) -> None:
    table = Table(title=None)
    for name, justify in [("checkpoint", "left"), ("file", "left"), ("nats/char", "right"),
                          ("bits/char", "right"), ("perplexity", "right"), ("characters", "right")]:
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(
            escape(r["checkpoint"]), escape(r["file"]), f"{r['nats']:.4f}", f"{r['bits_per_char']:.4f}",
            f"{r['perplexity']:.3f}", f"{r['characters']:,}",
        )
    console.print(table)


def sample_preview(text: str) -> None:
    """The sample printed at the end of training, on stderr (stdout stays clean for pipes)."""
    console.rule("[dim]sample[/]")
    console.print(escape(text), markup=True, highlight=False)
    console.rule()


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def info_table(summary: dict) -> None:
    m = summary["model"]
    table = Table(show_header=False, box=None, padding=(0, 2), title=escape(summary["checkpoint"]), title_justify="left")
    table.add_row("model", f"{m['layers']} x {m['hidden_size']} {m['cell'].upper()}, embedding {m['embedding_size']}, "
                  f"dropout {m['dropout']}, {summary['parameters']:,} parameters")
    preview = summary["vocab"].replace("\n", "\\n").replace("\t", "\\t")
    if summary.get("vocab_kind") == "bytes":
        table.add_row("vocabulary", "256 byte values (byte-level model)")
    else:
        table.add_row("vocabulary", f"{summary['vocab_size']} characters: {escape(preview[:70])}{'...' if len(preview) > 70 else ''}")
    corpus = summary["corpus"]
    if corpus:
        paths = ", ".join("standard input" if s["path"] == "-" else s["path"] for s in corpus.get("sources", []))
        table.add_row("corpus", f"{escape(paths)} ({corpus.get('characters', 0):,} characters, sha256 {corpus.get('sha256', '')[:12]})")
    seconds = summary["training_seconds"] or 0
    table.add_row("trained", f"{summary['step']:,} steps, {summary['epoch']} epochs, {seconds:.0f} s")
    table.add_row("train loss", _fmt_loss(summary["train_loss"]))
    table.add_row("validation loss", _fmt_loss(summary["val_loss"]))
    table.add_row("best validation", _fmt_loss(summary["best_val_loss"]))
    names = []
    for n in summary["checkpoints"]:
        marks = [mark for mark in ("latest", "best") if summary[mark] == n]
        names.append(f"{n} ({', '.join(marks)})" if marks else n)
    table.add_row("checkpoints", escape("\n".join(names)))
    table.add_row("versions", f"charrnn {summary['tool_version']}, checkpoint format {summary['format_version']}")
    console.print(table)
