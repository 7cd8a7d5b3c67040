"""The views of what a command found: the tables of info, eval, cache and corpus, the loss plot and the surprise view."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from charrnn.cli import display
from charrnn.records import outcome


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "just now"


def cache_table(rows: list[dict], root: str, max_size: int) -> None:
    """The cache's entries, least recently used first, on stdout."""
    import time

    out = display.stdout_console()
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
        display.print_table(out, table)
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
    out = display.stdout_console()  # the command's result, as `cache list`'s: `charrnn corpus list | grep` works
    display.print_table(out, table)
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
        chars = display.text_characters(next(r["characters"] for r in rows if r["file"] == f))  # as wc -m counts them
        table.add_column(f"{escape(labels[f])}\n[dim]{chars:,} chars[/]", justify="right", overflow="fold")
    for c in checkpoints:
        row = [escape(c)]
        for f in files:
            r = cells[(c, f)]
            row.append(
                f"[bold]{r['nats']:.4f}[/] nats\n{r['bits_per_char']:.4f} bits/char\nperplexity {r['perplexity']:.3f}"
            )
        table.add_row(*row)
    display.print_table(display.console, table)


def sample_preview(text: str) -> None:
    """The sample printed at the end of training, on stderr (stdout stays clean for pipes)."""
    if display.JSON_LINES:
        return display.emit("sample", text=text)
    from rich.rule import Rule

    # a rule into a log (FORCE_COLOR too) is a line, not the unwrapped width
    wide = None if display.console.is_terminal and sys.stderr.isatty() else 80
    display.console.print(Rule("[dim]sample[/]"), width=wide)
    display.console.print(escape(text), markup=True, highlight=False)
    display.console.print(Rule(), width=wide)


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
    table.add_row("train loss", display.fmt_loss(summary["train_loss"]))
    result = summary.get("result") or {}
    kept = result.get("kept") or {}
    figure = None
    if kept and (result.get("val_loss") or kept.get("val_estimate")) is not None:
        figure = display.held_out_figure(
            result.get("val_loss"),
            result.get("val_characters"),
            result.get("held_out_characters"),
            kept.get("val_estimate"),
            kept.get("val_estimate_standard_error"),
        )
    this_is_kept = figure is not None and kept.get("checkpoint") == Path(summary["checkpoint"]).name
    # the kept model's own figure on the whole held-out text, where the run measured it, comes first
    shown = figure if this_is_kept else display.fmt_loss(summary["val_loss"], summary.get("val_standard_error"))
    table.add_row("validation loss", shown)
    best = display.fmt_loss(summary["best_val_loss"], summary.get("best_val_standard_error"))
    if not this_is_kept:
        table.add_row("best validation", best)
    elif summary["val_loss"] != summary["best_val_loss"]:  # kept though not the lowest: the display.margin rule
        table.add_row("lowest estimate", f"{best}, of an earlier step; the last weights were kept, within its margin")
    if figure is not None:
        table.add_row("kept model", escape(str(kept.get("checkpoint"))) + ("" if this_is_kept else f": {figure}"))
    elif not result and summary["best"]:
        table.add_row("kept model", f"{escape(summary['best'])}, the best validated (the last train did not finish)")
    if story := outcome(result):
        table.add_row("outcome", escape(story))
    names = []
    for n in summary["checkpoints"]:
        marks = [mark for mark in ("latest", "best") if summary[mark] == n]
        names.append(f"{n} ({', '.join(marks)})" if marks else n)
    table.add_row("checkpoints", escape("\n".join(names)))
    table.add_row("versions", f"charrnn {summary['tool_version']}, checkpoint format {summary['format_version']}")
    display.print_table(display.stdout_console(), table)


COLOURS = ["cyan", "magenta", "yellow", "green", "blue", "red"]


def loss_plot(all_curves, width: int = 72, height: int = 18) -> None:
    """Loss curves drawn with characters on stdout: small marks for training loss, large ones for
    validation, each run its own (plot.marks) and its own colour."""
    from charrnn.cli.charts import grid, marks

    cells, axes = grid(all_curves, width, height)
    out = display.stdout_console()
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
    out = display.stdout_console()
    out.print(view, soft_wrap=True, highlight=False)
    legend = Text("\nsurprise (nats): ")
    low = 0.0
    for limit, colour in SURPRISE_STEPS:
        legend.append(f" < {limit:g} " if limit != float("inf") else f" >= {low:g} ", style=f"black on {colour}")
        legend.append(" ")
        low = limit
    out.print(legend)
    if out.color_system is None:
        display.console.print(
            "(colours show on a terminal; --html writes a page that shows them anywhere)", style="dim"
        )


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
