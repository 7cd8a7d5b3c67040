"""`charrnn info` (what a run or checkpoint holds) and `charrnn plot` (loss curves of runs)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from charrnn.cli.common import checkpoint_option, friendly, write_stdout


@friendly
def info(
    run: Path = typer.Argument(..., help="Run directory or checkpoint folder."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary on stdout."),
    as_config: bool = typer.Option(
        False, "--config", help="The options that train this run again, as TOML for charrnn train --config."
    ),
    checkpoint=checkpoint_option(
        "Which checkpoint of a run: best (what training hands back) or latest (where --resume goes on)."
    ),
) -> None:
    """What a run or checkpoint holds: model, vocabulary, corpus, progress, losses. Examples:

    charrnn info runs/shakespeare

    charrnn info runs/shakespeare --json | jq .best_val_loss

    charrnn info runs/shakespeare --config > run.toml && charrnn train --config run.toml
    """
    from charrnn.cli import views
    from charrnn.storage import checkpoints

    loaded = checkpoints.load(run, "cpu", which=checkpoint.value, numbers_only=False)  # a damaged run's too
    if as_config:
        from charrnn.cli.options_file import run_options, write_options
        from charrnn.records import RunRecord
        from charrnn.storage import layout

        # the run's settings as it started (run.json), not what it decided while training (eval-chars)
        record = loaded.manifest
        if (run_dir := layout.run_of(loaded.path)) and (run_dir / "run.json").is_file():
            record = layout.read_json(run_dir / "run.json")
        write_stdout(write_options(run_options(RunRecord.from_json(record, loaded.path))))
        return
    summary = checkpoints.summarize(loaded).to_json()
    if as_json:
        write_stdout(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return
    try:
        views.info_table(summary)
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # edited by hand or by another program
        raise checkpoints.CheckpointError(
            f"{loaded.path}: a field of its manifest or of the run's result.json is not what charrnn writes "
            f"({type(e).__name__}: {e}); the files are damaged; `charrnn info --json` shows them as they are"
        )


@friendly
def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write a PNG instead (needs matplotlib, the plot extra)."
    ),
    width: int = typer.Option(72, min=20, max=1000, help="Chart width in characters."),
    height: int = typer.Option(18, min=5, max=500, help="Chart height in lines."),
) -> None:
    """Training and validation loss curves of one or several runs. Examples:

    charrnn plot runs/shakespeare

    charrnn plot runs/a runs/b --output curves.png
    """
    from charrnn.cli import display, views
    from charrnn.cli.charts import read_curves, save_png

    curves = [read_curves(r) for r in runs]
    if output is not None:
        save_png(curves, output)
        display.note(f"wrote {output}")
    else:
        views.loss_plot(curves, width, height)
