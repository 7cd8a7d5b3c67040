"""The training dashboard on stderr: a live view on a terminal, plain lines or JSON lines otherwise."""

from __future__ import annotations

import math
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from charrnn.cli import display
from charrnn.cli.views import fields_table
from charrnn.records import outcome
from charrnn.training.report import Reporter

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
        self.live_mode = display.animated() and not quiet and log_format == "auto"
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
        display.emit(kind, **record)

    def start(self, info: dict) -> None:
        if self.quiet:
            return
        if self.jsonl:
            self._emit_json("start", {"step": info["step"], "precision": info["precision"]})
            return
        display.note(f"training from step {info['step']} with {info['precision']} precision")
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

            self.live = Live(self.render(), console=display.console, refresh_per_second=4, transient=False)
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
                f"[green]{v['val_loss']:.4f}[/]{display.margin(v.get('val_standard_error'))} nats  "
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
            display.console.print(
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
            display.console.print(
                f"step {record['step']:>6}  validation {record['val_loss']:.4f}"
                f"{display.margin(record.get('val_standard_error'))} ({record['val_bpc']:.3f} bpc)  "
                f"best {record['best_val_loss']:.4f}"
            )

    def scoring(self, record: dict) -> None:
        """The last scoring of the whole held-out text: a line of the dashboard that counts up while
        it runs (it can take a while on a large text), else one line when it starts."""
        if self.quiet:
            return
        held_out = display.text_characters(record["characters"])
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
                display.console.print(f"scoring {what}")

    def note(self, message: str) -> None:
        if not self.quiet:
            display.note(message)

    def saved(self, path: Path) -> None:
        if self.jsonl and not self.quiet:
            self._emit_json("checkpoint", {"path": str(path)})

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()
            self.live = None

    def finish(self, result) -> None:
        """The end of a run (`charrnn.records.Result`): what was kept and why."""
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
            figure = display.held_out_figure(
                val and val.nats, val and val.characters, kept.held_out, kept.estimate, kept.estimate_error
            )
            table.add_row("validation", figure)
        if result.kept_earlier and result.last_estimate is not None:
            table.add_row("last weights", f"step {result.steps:,}: estimated {display.fmt_loss(result.last_estimate)}")
        table.add_row("resume from", escape(str(result.checkpoint)))
        display.print_table(display.console, table)
        if story:
            display.note(story)

    def interrupted(self) -> None:
        self._stop_live()
