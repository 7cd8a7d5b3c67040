"""`charrnn eval` (loss, bits per character and perplexity of models on texts) and `charrnn surprise`
(a text coloured by how surprising a model found each character)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from charrnn.cli.common import Errors, checkpoint_option, friendly, unknown_option, write_stdout
from charrnn.errors import CharRNNError, UsageError

DEVICE_HELP = "auto, cpu, cuda or mps."


@friendly
def eval_(
    paths: list[str] = typer.Argument(
        ..., help="Runs or checkpoints, then the texts to score: files, corpus names, '-' for stdin."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results on stdout."),
    streams: int | None = typer.Option(
        None,
        min=1,
        help="Contiguous pieces scored side by side (default: from the text's length, at most 32; 1 = fully sequential).",
    ),
    checkpoint=checkpoint_option("Which checkpoint of a run."),
    unknown=unknown_option("Characters outside the vocabulary."),
    encoding: str = typer.Option("utf-8", help="Text encoding of the files."),
    errors: Errors = typer.Option(Errors.strict, help="Undecodable bytes."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Loss (nats), bits per character and perplexity of models on texts: one row per model and file.

    Examples:

      charrnn eval runs/shakespeare other.txt

      charrnn eval runs/small runs/large test.txt valid.txt

      cat notes.txt | charrnn eval runs/notes - --json | jq '.results[].bits_per_char'

    The built-in corpus is scored as `builtin`. More: docs/evaluation.md.
    """
    import torch

    from charrnn.api import load
    from charrnn.cli import display, views
    from charrnn.data.sources import STDIN, resolve_sources
    from charrnn.storage import layout

    models = [p for p in paths if layout.is_model_path(p)]
    files = [p for p in paths if p not in models]
    if not models:
        raise UsageError(f"{paths[0]}: not a run or checkpoint; usage: charrnn eval RUN... FILE...")
    if not files:
        raise UsageError(
            "no text to score: name one or more files after the runs, '-' for stdin, or builtin for the built-in corpus"
        )
    torch.set_grad_enabled(False)
    rows = []
    if files.count(STDIN) > 1:
        raise UsageError("'-' (standard input) can be given only once")
    # Standard input and pipes can be read once: spool them, then every model reads the copy.
    inputs = {f: (resolve_sources([f])[0] if f == STDIN or Path(f).is_fifo() else f) for f in files}
    progress = display.TransferProgress()
    for m in models:
        model = load(m, which=checkpoint.value, device=device)
        for f in files:
            try:
                data = model.read(inputs[f], encoding, errors.value, unknown.value, progress=progress)
            except CharRNNError as e:
                if len(models) > 1:  # the vocabulary, and so what is unknown, is the model's
                    raise type(e)(f"{e} (model {model.checkpoint})", e.exit_code) from None
                raise
            finally:
                progress.close()
            label = "standard input" if f == STDIN else f
            scoring = display.ScoringProgress(label if len(models) == 1 else f"{m}: {label}")
            try:
                result = model.score_corpus(data, label, streams, progress=scoring, note=display.note)
            finally:
                scoring.close()
            rows.append({"checkpoint": str(model.checkpoint), "file": f, **result.to_json(), "unknown": data.unknown})
            if data.unknown:  # a figure on a text the model partly never saw: say how much of it
                display.note(model.unknown_note(label, data.unknown, unknown.value))
    if as_json:
        write_stdout(json.dumps({"results": rows}, indent=2) + "\n")
    else:
        views.eval_table(rows)


@friendly
def surprise(
    run: Path = typer.Argument(..., help="Run directory or checkpoint folder."),
    file: str = typer.Argument(..., help="Text file to look at ('-' is stdin, builtin the built-in corpus)."),
    start: int = typer.Option(0, min=0, help="First character of the window."),
    length: int = typer.Option(1500, min=1, help="Characters in the window."),
    html: Path | None = typer.Option(None, help="Also write the view as a standalone HTML page."),
    checkpoint=checkpoint_option("Which checkpoint of a run."),
    unknown=unknown_option("Characters outside the vocabulary."),
    encoding: str = typer.Option("utf-8", help="Text encoding of the file."),
    errors: Errors = typer.Option(Errors.strict, help="Undecodable bytes."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Show a text with each character coloured by how surprising the model found it. Examples:

    charrnn surprise runs/shakespeare play.txt --start 5000 --length 800

    charrnn surprise runs/shakespeare play.txt --html surprise.html
    """
    import torch

    from charrnn.api import load
    from charrnn.cli import display, views

    torch.set_grad_enabled(False)
    model = load(run, which=checkpoint.value, device=device)
    data = model.read(file, encoding, errors.value, unknown.value)
    data.require(2, "standard input" if file == "-" else file, "surprise (the first character has no context)")
    if start >= len(data.ids):
        raise UsageError(f"--start {start}: {file} has only {len(data.ids):,} characters")
    scoring = display.ScoringProgress(file)
    try:
        text, losses = model.surprisal(data, start, length, progress=scoring, note=display.note)
    finally:
        scoring.close()
    views.surprise_view(text, losses)
    if html is not None:
        page = views.surprise_html(text, losses, f"charrnn surprise: {file} under {model.checkpoint}")
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as e:
            raise CharRNNError(f"{html}: cannot write ({e.strerror or e})")
        display.note(f"wrote {html}")
