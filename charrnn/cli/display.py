"""The consoles and the lines a person reads on stderr: notes, errors, download and encoding progress.
With dashboard.py and views.py, the only place that uses Rich.

Progress, notes and errors go to stderr. The result a command was asked for goes to stdout: data
(samples, JSON) from the command modules, the human-readable views of info, surprise, plot and
cache list from views.py. Colour and animation appear only on a terminal with NO_COLOR unset; otherwise progress is
plain, periodic lines.
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from charrnn.errors import CharRNNError

LN2 = 0.6931471805599453


MIN_WIDTH = 40  # a COLUMNS below this (0, 5) would cut every value to nothing


def width(stream) -> int | None:
    """No wrapping into a pipe or a file (a log keeps every line, and paths whole), unless COLUMNS
    says otherwise; a terminal's own width; never narrower than MIN_WIDTH."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns:
        return None if columns.isdigit() and int(columns) >= MIN_WIDTH else MIN_WIDTH
    return None if stream.isatty() else 10_000


class StderrConsole(Console):
    """Progress and messages are not the product: when the reader of stderr goes away (`2>&1 | head`,
    quitting `less`), the command goes on without them, and a run still trains and saves."""

    def on_broken_pipe(self) -> None:
        stderr_gone()


def stderr_gone() -> None:
    """Everything still to say on stderr goes nowhere from now on."""
    console.quiet = True
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's captured stderr)
        pass


def make_console() -> Console:
    # emoji=False: a name such as "a:fire:b.txt" is shown as typed
    if os.environ.get("NO_COLOR"):  # no colour and no other styling either (https://no-color.org)
        return StderrConsole(
            stderr=True,
            color_system=None,
            no_color=True,
            highlight=False,
            soft_wrap=True,
            emoji=False,
            width=width(sys.stderr),
        )
    return StderrConsole(stderr=True, highlight=False, soft_wrap=True, emoji=False, width=width(sys.stderr))


console = make_console()


class PipeConsole(Console):
    """Rich ends the program with exit code 1 when the reader of its output goes away; a closed
    pipe (`| head`) is a normal end for us, which the commands' wrapper ends quietly with 0."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def stdout_console() -> Console:
    """For a command's human-readable result (info, surprise, plot): stdout, so `| less` and `| grep`
    work; colour only when stdout is a terminal and NO_COLOR is unset (FORCE_COLOR does not colour a pipe)."""
    tty = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    if not (sys.stdout.encoding or "utf-8").lower().replace("-", "").startswith("utf"):
        # a stdout that cannot encode every character (LANG=C, PYTHONIOENCODING=ascii): "?" for those
        # (a box line, "±", a character of the text) rather than a traceback
        sys.stdout.reconfigure(errors="replace")
    return PipeConsole(
        file=sys.stdout,
        color_system="auto" if tty else None,
        highlight=False,
        soft_wrap=True,
        emoji=False,
        width=width(sys.stdout),
    )


def print_table(out: Console, table: Table) -> None:
    """A table, without the spaces Rich pads its lines with to the widest one when the reader is a
    pipe or a file (they would end every line of a log, or of `charrnn info | grep`)."""
    if out.file.isatty():
        return out.print(table)
    try:
        with out.capture() as captured:
            out.print(table)
        out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        out.file.flush()
    except BrokenPipeError:
        out.on_broken_pipe()
    except OSError as e:  # > /dev/full
        where = "standard output" if out.file is sys.stdout else "standard error"
        raise CharRNNError(f"cannot write to {where}: {e.strerror or e}") from None


def animated() -> bool:
    """Live displays only on a real terminal (FORCE_COLOR may colour a file, never animate it)."""
    return (
        sys.stderr.isatty() and console.is_terminal and not os.environ.get("NO_COLOR") and not console.is_dumb_terminal
    )


JSON_LINES = False  # set by `train --log-format jsonl`: then every line on stderr is one JSON object


def emit(event: str, **fields) -> None:
    """One JSON object on one line of stderr, for programs that read the log."""
    import json

    if console.quiet:
        return
    try:
        console.file.write(json.dumps({"event": event, **fields}) + "\n")
        console.file.flush()
    except BrokenPipeError:
        stderr_gone()


def error(message: str) -> None:
    if JSON_LINES:
        return emit("error", message=message)
    console.print(f"[bold red]charrnn: error:[/] {escape(message)}")


def note(message: str) -> None:
    if JSON_LINES:
        return emit("note", message=message)
    console.print(f"[dim]charrnn:[/] {escape(message)}")


def prompt() -> None:
    console.print("[bold]>[/] ", end="")
    console.file.flush()


def fmt_loss(nats: float | None, error: float | None = None) -> str:
    return "-" if nats is None else f"{nats:.4f}{margin(error)} ({nats / LN2:.3f} bpc)"


def held_out_figure(
    nats: float | None,
    characters: int | None,
    held_out: int | None,
    estimate: float | None,
    estimate_error: float | None = None,
) -> str:
    """The kept model's validation figure and what it covers: all of the held-out text (beside the
    periodic estimate when that came from a sample), the part scored before a time budget ran out,
    or only the periodic estimate (with its margin)."""
    if nats is None:
        return (
            f"{fmt_loss(estimate, estimate_error)} (estimate: the time budget ran out before the whole held-out text)"
        )
    if held_out is not None and (characters or 0) < held_out:
        covered = f"{text_characters(characters):,} of {text_characters(held_out):,}"
        return f"{fmt_loss(nats)} on {covered} held-out characters (the time budget ran out)"
    figure = f"{fmt_loss(nats)} on all {text_characters(characters or 0):,} held-out characters"
    if estimate is not None and estimate_error is not None:  # what the dashboard showed, from a sample
        figure += f" (estimated from a sample during the run: {estimate:.4f}{margin(estimate_error)})"
    return figure


def text_characters(predicted: int) -> int:
    """Characters of held-out text behind a count of predictions: the first character is read but
    not predicted, so a held-out text of 350 characters (as the run's first line counts it) gives
    349 predictions (as `characters` in the JSON records counts them)."""
    return predicted + 1 if predicted else 0


def margin(error: float | None) -> str:
    """' ±0.012' (two standard errors) after a validation figure estimated from a sample of the
    held-out text; nothing when all of it was scored (`error` None)."""
    return "" if error is None else f" ±{2 * error:.3f}"


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
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
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


class ScoringProgress:
    """A bar (characters scored, characters a second, time left) while `eval` or `surprise` scores a
    text, on a terminal, once the scoring has taken SHOW_AFTER seconds: a short one shows nothing.
    Without a terminal nothing either, as training's log says nothing while it validates; a change
    of the thread count is a `note`, there and on a terminal."""

    SHOW_AFTER = 1.0

    def __init__(self, what: str):
        self.what = what
        self.progress: Progress | None = None
        self.task = None
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            if not animated() or time.perf_counter() - self.start < self.SHOW_AFTER:
                return
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} characters"),
                CharactersPerSecond(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(escape(self.what), total=total)
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class CharactersPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} chars/s" if task.speed else "", style="progress.data.speed")
