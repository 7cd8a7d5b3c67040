"""Everything a person reads: progress, tables, errors. The one module that uses Rich.

Progress, notes and errors go to stderr. The result a command was asked for goes to stdout: data
(samples, JSON) from cli.py, the human-readable views of info, surprise, plot and cache list from
here. Colour and animation appear only on a terminal with NO_COLOR unset; otherwise progress is
plain, periodic lines.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from charrnn.errors import CharRNNError
from charrnn.training.report import Reporter

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


SMALL_TEXT_EPOCHS = 10  # passes over the text from which a run that got worse is told its text is small...
EARLY_BEST = 0.75  # ...when its best model came at most this far into its steps


def outcome(summary: dict) -> str | None:
    """One line on how a run ended, from its result.json; None when nothing needs saying."""
    kept = summary.get("kept")
    if not kept or kept["step"] >= summary["steps"]:
        return None
    early = "stopped early: " if summary.get("stopped_by") == "patience" else ""
    line = (
        f"{early}validation was best at step {kept['step']:,} (epoch {kept['epochs']:.1f}) and no better after "
        "it; kept that model: sample, eval and surprise use it"
    )
    # only when the best came well before the end: a last validation or two a hair worse is noise,
    # and then a shorter budget would have trained less, not as well sooner
    if summary["epochs"] >= SMALL_TEXT_EPOCHS and kept["step"] <= EARLY_BEST * summary["steps"]:
        line += (
            f". The run read the text {summary['epochs']:.0f} times: it is small for this budget "
            "(README: 'Small texts'); a shorter --max-time would do as well, sooner"
        )
    return line


def _fmt_loss(nats: float | None, error: float | None = None) -> str:
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
            f"{_fmt_loss(estimate, estimate_error)} (estimate: the time budget ran out before the whole held-out text)"
        )
    if held_out is not None and (characters or 0) < held_out:
        covered = f"{text_characters(characters):,} of {text_characters(held_out):,}"
        return f"{_fmt_loss(nats)} on {covered} held-out characters (the time budget ran out)"
    figure = f"{_fmt_loss(nats)} on all {text_characters(characters or 0):,} held-out characters"
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


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 48) -> str:
    """The whole series in at most `width` characters (means of equal runs of values), scaled to its
    range: a curve of the whole run, so noise at its end does not fill the height."""
    if len(values) > width:
        edges = [i * len(values) // width for i in range(width + 1)]
        values = [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in values)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class TrainDisplay(Reporter):
    """How training looks on stderr.

    - a terminal: a live dashboard (progress and ETA, losses, learning rate, speed, a sparkline of
      the loss, and a short sample refreshed at each validation);
    - not a terminal, or NO_COLOR: one plain line per log step and per evaluation;
    - `log_format="jsonl"`: one JSON object per log step and evaluation, for other programs;
    - `quiet`: nothing but errors.
    `preview` (optional) returns a line of sample text from the current model."""

    def __init__(self, quiet: bool = False, log_format: str = "auto", preview=None, run_dir: Path | None = None):
        self.quiet = quiet
        self.jsonl = log_format == "jsonl"
        self.live_mode = animated() and not quiet and log_format == "auto"
        self.preview = preview
        self.run_dir = run_dir
        self.live = None
        self.record: dict = {}
        self.val: dict | None = None
        self.smoothed: float | None = None
        self.history: list[float] = []  # the smoothed training loss at each log line
        self.val_history: list[float] = []
        self.sample = ""
        self.scoring_line = ""  # the last scoring of the whole held-out text, while it runs
        self.scoring_said = False  # ...announced once in a plain or JSON log

    def _emit_json(self, kind: str, record: dict) -> None:
        emit(kind, **record)

    def start(self, info: dict) -> None:
        if self.quiet:
            return
        if self.jsonl:
            self._emit_json("start", {"step": info["step"], "precision": info["precision"]})
            return
        note(f"training from step {info['step']} with {info['precision']} precision")
        if self.live_mode:
            from rich.live import Live

            if info["step"] and self.run_dir is not None:  # resumed: the curves go on from what was drawn
                from charrnn.training import metrics

                for record in metrics.read(self.run_dir):
                    train, val = record.get("train_loss"), record.get("val_loss")
                    if record["step"] > info["step"]:
                        continue
                    if train is not None and math.isfinite(train):  # a diverged step's NaN has no height
                        self._smooth(train)
                    if val is not None and math.isfinite(val):
                        self.val_history.append(val)

            self.live = Live(self.render(), console=console, refresh_per_second=4, transient=False)
            self.live.start()

    def render(self):
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar

        r = self.record
        progress = r.get("progress", 0.0)
        elapsed = r.get("time", 0.0)
        eta = elapsed * (1 - progress) / progress if progress > 0 else None
        body = Table.grid(padding=(0, 2))
        body.add_column(style="dim", justify="right")
        body.add_column()
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=1.0, completed=progress, width=40),
            f"{100 * progress:3.0f}%",
            f"[dim]{_clock(elapsed)} elapsed, eta {_clock(eta) if eta is not None else '-'}[/]",
        )
        body.add_row("progress", bar)
        if "step" in r:
            body.add_row(
                "step",
                f"{r['step']:,}  [dim]epoch[/] {r['epoch']:.2f}  [dim]lr[/] {r['lr']:.2e}  "
                f"[dim]speed[/] {r['chars_per_sec']:,.0f} chars/s",
            )
            body.add_row("train loss", f"[cyan]{r['train_loss']:.4f}[/]  [dim]smoothed[/] {self.smoothed:.4f}")
        if v := self.val:
            body.add_row(
                "validation",
                f"[green]{v['val_loss']:.4f}[/]{margin(v.get('val_standard_error'))} nats  "
                f"{v['val_bpc']:.3f} bits/char  [dim]best[/] {v['best_val_loss']:.4f}",
            )
        if self.history:
            body.add_row("train curve", f"[cyan]{sparkline(self.history)}[/]")
        if len(self.val_history) > 1:  # where it turns up while the train curve goes on down: overfitting
            body.add_row("val curve", f"[green]{sparkline(self.val_history)}[/]")
        if self.sample:
            body.add_row("sample", escape(self.sample))
        if self.scoring_line:
            body.add_row("scoring", self.scoring_line)
        title = f"charrnn · {escape(str(self.run_dir))}" if self.run_dir else "charrnn"
        return Panel(body, title=title, title_align="left", border_style="dim")

    def _smooth(self, loss: float) -> None:
        # an average over about the last ten log lines, over all of them before that (so early in a
        # run it follows a fast-falling loss instead of lagging behind with the first one)
        decay = min(0.9, len(self.history) / (len(self.history) + 9))
        self.smoothed = loss if self.smoothed is None else decay * self.smoothed + (1 - decay) * loss
        self.history.append(self.smoothed)

    def log(self, record: dict) -> None:
        loss = record["train_loss"]
        self._smooth(loss)
        self.record = record
        if self.quiet:
            return
        if self.jsonl:
            self._emit_json("log", record)
        elif self.live is not None:
            self.live.update(self.render())
        else:
            console.print(
                f"step {record['step']:>6}  epoch {record['epoch']:.2f}  loss {loss:.4f}  "
                f"lr {record['lr']:.2e}  {record['chars_per_sec']:,.0f} chars/s  {100 * record['progress']:.0f}%"
            )

    def evaluated(self, record: dict) -> None:
        self.val = record
        self.val_history.append(record["val_loss"])
        if self.quiet:
            return
        if self.jsonl:
            self._emit_json("eval", record)
        elif self.live is not None:
            if self.preview is not None:
                self.sample = self.preview().replace("\n", " ⏎ ")[:200]
            self.live.update(self.render())
        else:
            console.print(
                f"step {record['step']:>6}  validation {record['val_loss']:.4f}"
                f"{margin(record.get('val_standard_error'))} ({record['val_bpc']:.3f} bpc)  "
                f"best {record['best_val_loss']:.4f}"
            )

    def scoring(self, record: dict) -> None:
        """The last scoring of the whole held-out text: a line of the dashboard that counts up while
        it runs (it can take a while on a large text), else one line when it starts."""
        if self.quiet:
            return
        held_out = text_characters(record["characters"])
        what = f"the kept model (step {record['step']:,}) on all {held_out:,} held-out characters"
        if self.live is not None:
            self.record = {**self.record, "time": record["time"], "progress": record["progress"]}
            self.scoring_line = f"{what}: {record['done'] / max(record['characters'], 1):.0%}"
            self.live.update(self.render())
        elif not self.scoring_said:
            self.scoring_said = True
            if self.jsonl:
                self._emit_json("scoring", record)
            else:
                console.print(f"scoring {what}")

    def note(self, message: str) -> None:
        if not self.quiet:
            note(message)

    def saved(self, path: Path) -> None:
        if self.jsonl and not self.quiet:
            self._emit_json("checkpoint", {"path": str(path)})

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()
            self.live = None

    def finish(self, result) -> None:
        """The end of a run (`charrnn.storage.records.Result`): what was kept and why."""
        if self.record:  # the last frame shows the last step, which may come after the last log step
            self.record = {**self.record, "step": result.steps, "epoch": result.epochs, "time": result.elapsed}
            if result.train_loss is not None:
                self.record["train_loss"] = result.train_loss
            if result.stopped_by != "signal":
                self.record["progress"] = 1.0
        self.scoring_line, self.scoring_said = "", False
        self._stop_live()
        if self.quiet:
            return
        summary = result.to_json()
        story = outcome(summary)
        if self.jsonl:
            self._emit_json("finish", {**summary, "message": story})
            return
        table = fields_table()
        table.add_row("steps", f"{result.steps:,} ({result.epochs:.2f} epochs, stopped by {result.stopped_by})")
        table.add_row("time", f"{result.elapsed:.0f} s (training, validation and checkpoints)")
        table.add_row("characters seen", f"{result.characters:,}")
        kept = result.kept
        if kept is not None and (kept.val or kept.estimate) is not None:
            where = f"step {kept.step:,}" + (" (the last)" if not result.kept_earlier else "")
            table.add_row("kept model", f"{where}: {escape(str(kept.checkpoint))}")
            val = kept.val
            figure = held_out_figure(
                val and val.nats, val and val.characters, kept.held_out, kept.estimate, kept.estimate_error
            )
            table.add_row("validation", figure)
        if result.kept_earlier and result.last_estimate is not None:
            table.add_row("last weights", f"step {result.steps:,}: estimated {_fmt_loss(result.last_estimate)}")
        table.add_row("resume from", escape(str(result.checkpoint)))
        print_table(console, table)
        if story:
            note(story)

    def interrupted(self) -> None:
        self._stop_live()


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


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "just now"


def cache_table(rows: list[dict], root: str, max_size: int) -> None:
    """The cache's entries, least recently used first, on stdout."""
    import time

    out = stdout_console()
    table = Table(box=None, padding=(0, 2))
    columns = [("kind", "left"), ("entry", "left"), ("text", "left"), ("size", "right"), ("last used", "right")]
    for name, justify in [*columns, ("", "left")]:
        table.add_column(name, justify=justify)
    now = time.time()
    for r in rows:
        name = r["name"] if len(r["name"]) <= 40 else r["name"][:37] + "..."
        size = f"{r['size'] / 1e6:,.1f} MB"
        # an encoded entry is held by the commands reading it; a standard-input copy or a half-written
        # entry cannot tell, and is kept for an hour in case a running command is still at it
        held = "in use" if r["kind"] == "encoded" and not r["name"].startswith(".") else "recent: kept an hour"
        text = r.get("text") or ""
        text = text if len(text) <= 40 else "..." + text[-37:]
        table.add_row(
            r["kind"], escape(name), escape(text), size, _age(now - r["last_used"]), held if r["in_use"] else ""
        )
    if rows:
        print_table(out, table)
    total = sum(r["size"] for r in rows)
    out.print(
        f"{len(rows)} entries, {total / 1e6:,.1f} MB in {escape(root)}; encoded texts and stdin copies are kept "
        f"under {max_size / 2**30:.4g} GiB (CHARRNN_CACHE_MAX_SIZE), least recently used first to go"
    )


def corpus_table(rows: list[dict]) -> None:
    """The named corpora, on stdout."""
    table = Table()
    for name, justify in [("name", "left"), ("size", "right"), ("here", "left"), ("description", "left")]:
        table.add_column(name, justify=justify)
    for r in rows:
        here = "built in" if r["builtin"] else "yes" if r["downloaded"] else "no"
        table.add_row(escape(r["name"]), f"{r['size'] / 1e6:.1f} MB", here, escape(r["description"]))
    out = stdout_console()  # the command's result, as `cache list`'s: `charrnn corpus list | grep` works
    print_table(out, table)
    out.print(
        "[dim]use a name anywhere a file goes (charrnn train tinyshakespeare); "
        "charrnn corpus get NAME downloads ahead of time[/]"
    )


def eval_table(rows: list[dict]) -> None:
    """One row per checkpoint, one column per file; each cell: nats, bits per char, perplexity."""
    files = list(dict.fromkeys(r["file"] for r in rows))
    names = ["standard input" if f == "-" else Path(f).name for f in files]
    labels = dict(zip(files, names if len(set(names)) == len(names) else files))  # short where unambiguous
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows))
    cells = {(r["checkpoint"], r["file"]): r for r in rows}
    table = Table(show_lines=len(checkpoints) > 1)
    table.add_column("checkpoint", overflow="fold")
    for f in files:
        chars = text_characters(next(r["characters"] for r in rows if r["file"] == f))  # as wc -m counts them
        table.add_column(f"{escape(labels[f])}\n[dim]{chars:,} chars[/]", justify="right", overflow="fold")
    for c in checkpoints:
        row = [escape(c)]
        for f in files:
            r = cells[(c, f)]
            row.append(
                f"[bold]{r['nats']:.4f}[/] nats\n{r['bits_per_char']:.4f} bits/char\nperplexity {r['perplexity']:.3f}"
            )
        table.add_row(*row)
    print_table(console, table)


def sample_preview(text: str) -> None:
    """The sample printed at the end of training, on stderr (stdout stays clean for pipes)."""
    if JSON_LINES:
        return emit("sample", text=text)
    from rich.rule import Rule

    # a rule into a log (FORCE_COLOR too) is a line, not the unwrapped width
    wide = None if console.is_terminal and sys.stderr.isatty() else 80
    console.print(Rule("[dim]sample[/]"), width=wide)
    console.print(escape(text), markup=True, highlight=False)
    console.print(Rule(), width=wide)


def fields_table(**settings) -> Table:
    """Names and values, two columns: a value too long for a narrow terminal folds onto the next
    line whole (a path stays copyable), never cut short with an ellipsis."""
    table = Table(show_header=False, box=None, padding=(0, 2), **settings)
    table.add_column()
    table.add_column(overflow="fold")
    return table


def info_table(summary: dict) -> None:
    """What `charrnn info` shows, on stdout."""
    m = summary["model"]
    table = fields_table(title=escape(summary["checkpoint"]), title_justify="left")
    table.add_row(
        "model",
        f"{m['layers']} x {m['hidden_size']} {m['cell'].upper()}, embedding {m['embedding_size']}, "
        f"dropout {m['dropout']}, {summary['parameters']:,} parameters",
    )
    if summary.get("why"):  # what the run's first line said of its settings
        table.add_row("settings", escape(summary["why"]))
    preview = summary["vocab"].replace("\n", "\\n").replace("\t", "\\t")
    if summary.get("vocab_kind") == "bytes":
        table.add_row("vocabulary", "256 byte values (byte-level model)")
    else:
        table.add_row(
            "vocabulary",
            f"{summary['vocab_size']:,} characters: {escape(preview[:70])}{'...' if len(preview) > 70 else ''}",
        )
    corpus = summary["corpus"]
    if corpus:
        paths = ", ".join("standard input" if s["path"] == "-" else s["path"] for s in corpus.get("sources", []))
        table.add_row(
            "corpus",
            f"{escape(paths)} ({corpus.get('characters', 0):,} characters, sha256 {corpus.get('sha256', '')[:12]})",
        )
    seconds = summary["training_seconds"] or 0
    table.add_row(
        "trained", f"{summary['step']:,} steps, {summary['epoch']} epochs, saved {seconds:.0f} s into the run"
    )
    ema = summary["train"].get("ema")
    table.add_row("weights", f"moving average, decay {ema} (--ema)" if ema else "as trained (no --ema)")
    table.add_row("train loss", _fmt_loss(summary["train_loss"]))
    result = summary.get("result") or {}
    kept = result.get("kept") or {}
    figure = None
    if kept and (result.get("val_loss") or kept.get("val_estimate")) is not None:
        figure = held_out_figure(
            result.get("val_loss"),
            result.get("val_characters"),
            result.get("held_out_characters"),
            kept.get("val_estimate"),
            kept.get("val_estimate_standard_error"),
        )
    this_is_kept = figure is not None and kept.get("checkpoint") == Path(summary["checkpoint"]).name
    # the kept model's own figure on the whole held-out text, where the run measured it, comes first
    shown = figure if this_is_kept else _fmt_loss(summary["val_loss"], summary.get("val_standard_error"))
    table.add_row("validation loss", shown)
    best = _fmt_loss(summary["best_val_loss"], summary.get("best_val_standard_error"))
    if not this_is_kept:
        table.add_row("best validation", best)
    elif summary["val_loss"] != summary["best_val_loss"]:  # kept though not the lowest: the margin rule
        table.add_row("lowest estimate", f"{best}, of an earlier step; the last weights were kept, within its margin")
    if figure is not None:
        table.add_row("kept model", escape(str(kept.get("checkpoint"))) + ("" if this_is_kept else f": {figure}"))
    if story := outcome(result):
        table.add_row("outcome", escape(story))
    names = []
    for n in summary["checkpoints"]:
        marks = [mark for mark in ("latest", "best") if summary[mark] == n]
        names.append(f"{n} ({', '.join(marks)})" if marks else n)
    table.add_row("checkpoints", escape("\n".join(names)))
    table.add_row("versions", f"charrnn {summary['tool_version']}, checkpoint format {summary['format_version']}")
    print_table(stdout_console(), table)


COLOURS = ["cyan", "magenta", "yellow", "green", "blue", "red"]


def loss_plot(all_curves, width: int = 72, height: int = 18) -> None:
    """Loss curves drawn with characters on stdout: small marks for training loss, large ones for
    validation, each run its own (plot.marks) and its own colour."""
    from charrnn.cli.charts import grid, marks

    cells, axes = grid(all_curves, width, height)
    out = stdout_console()
    for i, row in enumerate(cells):
        label = axes["y_max"] if i == 0 else axes["y_min"] if i == height - 1 else None
        prefix = f"{label:7.3f} ┤" if label is not None else "        │"
        line = "".join(ch if idx < 0 else f"[{COLOURS[idx % len(COLOURS)]}]{ch}[/]" for ch, idx in row)
        out.print(prefix + line, highlight=False)
    out.print("        └" + "─" * width)
    out.print(f"         0{'step':^{width - 2 - len(str(axes['x_max']))}}{axes['x_max']:,}")
    for i, c in enumerate(all_curves):
        colour = COLOURS[i % len(COLOURS)]
        figures = ""
        if c.val:
            step, best = min(c.val, key=lambda point: point[1])
            figures = f", best validation {best:.4f} at step {step:,}, last {c.val[-1][1]:.4f}"
        train, val = marks(i)
        out.print(f"  [{colour}]{train} train  {val} validation[/]  {escape(c.name)}{figures}")


SURPRISE_STEPS = [(0.5, "green"), (1.5, "yellow"), (3.0, "dark_orange"), (float("inf"), "red")]


def _surprise_colour(loss: float) -> str:
    if loss != loss:  # NaN: the first character, which has no context
        return "dim"
    return next(colour for limit, colour in SURPRISE_STEPS if loss < limit)


def surprise_view(text: Sequence[str], losses) -> None:
    """The text (characters) on stdout, each character coloured by how surprised the model was (its loss in nats)."""
    from rich.text import Text

    view = Text()
    for ch, loss in zip(text, losses):
        view.append(ch, style=_surprise_colour(float(loss)))
    out = stdout_console()
    out.print(view, soft_wrap=True, highlight=False)
    legend = Text("\nsurprise (nats): ")
    low = 0.0
    for limit, colour in SURPRISE_STEPS:
        legend.append(f" < {limit:g} " if limit != float("inf") else f" >= {low:g} ", style=f"black on {colour}")
        legend.append(" ")
        low = limit
    out.print(legend)
    if out.color_system is None:
        console.print("(colours show on a terminal; --html writes a page that shows them anywhere)", style="dim")


def surprise_html(text: Sequence[str], losses, title: str) -> str:
    """A standalone HTML page of the surprisal view: colour by loss, the exact loss on hover."""
    import html

    palette = {"green": "#c8f7c5", "yellow": "#fff3b0", "dark_orange": "#ffc98b", "red": "#ff9b9b", "dim": "#eeeeee"}
    spans = []
    for ch, loss in zip(text, losses):
        loss = float(loss)
        colour = palette[_surprise_colour(loss)]
        tip = "no context" if loss != loss else f"{loss:.3f} nats"
        shown = "⏎\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="background:{colour}" title="{html.escape(repr(ch))}: {tip}">{shown}</span>')
    legend = " ".join(
        f'<span style="background:{palette[c]};padding:0 .4em">{"&lt; " + format(lim, "g") if lim != float("inf") else "&ge; 3"}</span>'
        for lim, c in SURPRISE_STEPS
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;margin:2em}pre{font-family:monospace;white-space:pre-wrap;line-height:1.5}</style>\n"
        "</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>Each character is coloured by the model's loss on it (nats): {legend}. "
        "Hover for the exact value.</p>\n"
        f"<pre>{''.join(spans)}</pre>\n</body>\n</html>\n"
    )
