"""`charrnn train`: options in, a `RunRequest` to `training.session.prepare`, the dashboard while it trains.

The model and training settings are not written out here: each one's flag, help and range come from
its field in `charrnn.config` (`setting(...)` and `RANGES`), so they cannot drift from the library.
"""

from __future__ import annotations

import inspect
import os
import shlex
import sys
from dataclasses import fields
from enum import Enum
from pathlib import Path

import typer

from charrnn import config
from charrnn.cli.common import Cell, Errors, LogFormat, Precision, Preset, Unknown, friendly, parse_duration
from charrnn.errors import Interrupted

CHOICES = {"cell": Cell, "precision": Precision}


def setting_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per model and training setting, as Typer reads a command's signature.
    A setting is None unless given: the preset, or a resumed run's own settings, fill in the rest."""
    params = []
    for f in [*fields(config.ModelConfig), *fields(config.TrainConfig)]:
        if "help" not in f.metadata:
            continue
        low, high = config.RANGES.get(f.name, (None, None))
        kind = CHOICES.get(f.name) or (str if f.name == "max_time" else int if "int" in str(f.type) else float)
        option = typer.Option(
            None,
            f"--{f.name.replace('_', '-')}",
            help=f.metadata["help"],
            rich_help_panel=f.metadata["panel"],
            min=low if kind in (int, float) else None,
            max=high if kind in (int, float) else None,
        )
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None))
    return params


def train_options(
    ctx: typer.Context,
    corpus: list[str] | None = typer.Argument(
        None,
        help="Text files or directories, '-' for standard input, or a corpus name (charrnn corpus list); "
        "nothing for the built-in corpus.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<corpus>-<cell>-<time>)."),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        help="Read options from a TOML file, by their flags' names (hidden-size = 512); flags given override "
        "it. charrnn info RUN --config writes the one that trains a run again.",
    ),
    preset: Preset = typer.Option(
        Preset.auto,
        help="Model size and training settings for the budget: small, medium or large; auto picks one from "
        "the device, --max-time, the size of the text and the speed measured here. Flags given override it. "
        "See docs/training.md.",
        rich_help_panel="Model",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Training"),
    val_file: Path | None = typer.Option(
        None,
        help="Validate on this file, which must not be trained on, instead of the end of the text "
        "(it replaces --val-fraction and --val-max-chars).",
        rich_help_panel="Validation and checkpoints",
    ),
    resume: Path | None = typer.Option(
        None, help="Continue this run exactly where it stopped.", rich_help_panel="Validation and checkpoints"
    ),
    init_from: Path | None = typer.Option(
        None,
        help="Start a new run from this run's or checkpoint's weights (fine-tuning).",
        rich_help_panel="Validation and checkpoints",
    ),
    encoding: str = typer.Option("utf-8", help="Text encoding of the corpus.", rich_help_panel="Text"),
    errors: Errors = typer.Option(Errors.strict, help="What to do with undecodable bytes.", rich_help_panel="Text"),
    keep_newlines: bool = typer.Option(
        False, help="Keep \\r\\n and \\r as they are instead of turning them into \\n.", rich_help_panel="Text"
    ),
    glob: str = typer.Option("*", help="File pattern when a directory is given.", rich_help_panel="Text"),
    unknown: Unknown = typer.Option(
        Unknown.error, help="Characters outside the model's vocabulary when fine-tuning.", rich_help_panel="Text"
    ),
    bytes_: bool = typer.Option(
        False, "--bytes", help="Byte-level model: 256 symbols, any file, no decoding.", rich_help_panel="Text"
    ),
    sample_length: int = typer.Option(
        400, min=0, help="Characters of sample shown at the end.", rich_help_panel="Output"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr.", rich_help_panel="Output"),
    tensorboard: Path | None = typer.Option(
        None,
        help="Also write the curves, samples and settings as TensorBoard events into this folder "
        "(pip install 'charrnn[tensorboard]').",
        rich_help_panel="Output",
    ),
    log_format: LogFormat = typer.Option(
        LogFormat.auto,
        help="auto: a live dashboard on a terminal, plain lines otherwise; "
        "plain; jsonl: one JSON object per event on stderr.",
        rich_help_panel="Output",
    ),
):
    """The options of `train` that are not model or training settings (a signature for Typer only)."""


@friendly
def train(ctx: typer.Context, **params) -> None:
    """Train a model on text. Examples:

    charrnn train                                   # built-in corpus, about 3 minutes

    charrnn train shakespeare.txt --max-time 5m -o runs/shakespeare

    charrnn train notes/ --glob '*.md' --cell gru --layers 3

    charrnn train tinyshakespeare                   # a named corpus, downloaded on first use

    zcat logs.gz | charrnn train - --bytes           # standard input, byte-level

    charrnn train --resume runs/shakespeare --max-time 10m

    Budgets, presets, fine-tuning and several GPUs: docs/training.md.
    """
    from charrnn.cli import display
    from charrnn.data.sources import TextOptions
    from charrnn.training.request import RunRequest
    from charrnn.training.session import prepare

    params = {k: v.value if isinstance(v, Enum) else v for k, v in params.items()}
    display.JSON_LINES = params["log_format"] == "jsonl"  # notes, the sample and errors too
    given = {k for k in params if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    if params["config_file"] is not None:  # what the file says, where no flag says otherwise
        from charrnn.cli.options_file import read_options

        from_file = read_options(params["config_file"], ctx)
        params.update({k: v.value if isinstance(v, Enum) else v for k, v in from_file.items() if k not in given})
        given |= set(from_file)
    settings = {k: params[k] for k in (*config.MODEL_FIELDS, *config.TRAIN_FIELDS) if k in given}
    if "max_time" in settings:
        settings["max_time"] = parse_duration(settings["max_time"])
    request = RunRequest(
        corpus=list(params["corpus"] or []),
        out=_path(params["out"]),
        preset=params["preset"],
        settings=settings,
        resume=_path(params["resume"]),
        init_from=_path(params["init_from"]),
        val_file=_path(params["val_file"]),
        text=TextOptions(params["encoding"], params["errors"], params["keep_newlines"], params["bytes_"]),
        glob=params["glob"],
        unknown=params["unknown"],
        device=params["device"],
        given=frozenset(k.rstrip("_") for k in given),
    )
    quiet = params["quiet"]
    progress = display.TransferProgress(quiet or int(os.environ.get("RANK", 0)) > 0)  # torchrun: rank 0 shows it
    try:
        session = prepare(request, progress)
    finally:
        progress.close()
    ctx.call_on_close(session.release)
    show(session, quiet or not session.dist.main, params["log_format"], params["sample_length"], params["tensorboard"])


def _path(value) -> Path | None:
    return None if value is None else Path(value)


def _signature() -> inspect.Signature:
    options = list(inspect.signature(train_options, eval_str=True).parameters.values())
    return inspect.Signature([*options, *setting_parameters()])


train.__signature__ = _signature()


def show(session, quiet: bool, log_format: str, sample_length: int, tensorboard: Path | None = None) -> None:
    """Train a prepared session with the dashboard, then show a sample of the model it hands back."""
    from charrnn.cli import dashboard, display, views
    from charrnn.generation.sampler import preview
    from charrnn.storage import checkpoints

    def dashboard_preview() -> str:
        """A line of sample text from the model as it is now, for the dashboard."""
        text = preview(session.trainer.shipped, session.data.vocab, 160, session.plan.train.seed, session.device)
        session.model.train()
        return text

    reporter = dashboard.TrainDisplay(quiet, log_format, dashboard_preview, session.run_dir)
    if tensorboard is not None and session.dist.main:
        from charrnn.training.tensorboard import TensorBoard

        record = session.record
        settings = {"preset": record.preset, **record.model.to_json(), **record.train.to_json()}
        reporter = TensorBoard(Path(tensorboard), settings, reporter, dashboard_preview)
    if not quiet:
        for line in session.plan.notes:
            display.note(line)
        display.note(session.describe())
    try:
        session.execute(reporter)
    except Interrupted:
        reporter.interrupted()
        if not quiet:
            display.note(
                f"interrupted: saved step {session.trainer.step} to {session.run_dir}; "
                f"continue with: charrnn train --resume {shlex.quote(str(session.run_dir))}"
            )
        raise
    finally:
        reporter.interrupted()  # never leave a live display running, whatever went wrong
    if not quiet and sample_length > 0 and session.dist.main:
        kept = checkpoints.load(session.run_dir, "cpu", which="best").model  # the model the run hands back
        text = preview(kept, session.data.vocab, sample_length, session.plan.train.seed)
        views.sample_preview(session.data.vocab.to_bytes(text).decode("utf-8", "replace"))
        display.note(f"sample more with: charrnn sample {shlex.quote(str(session.run_dir))}")
    if session.dist.world > 1:
        # gloo's worker threads can still be alive when the interpreter shuts down, which aborts
        # the process (SIGABRT) after a successful run; everything is saved and flushed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
