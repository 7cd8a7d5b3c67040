"""The command line: one module per command (options in, one library call, its result rendered),
gathered here into the `charrnn` program. Exit codes: 0 success, 1 bad input, 2 bad usage, 130
Ctrl-C, 143 SIGTERM; a closed pipe ends quietly with 0.

    train.py           charrnn train
    sample.py          charrnn sample
    evaluate.py        charrnn eval, charrnn surprise
    inspect_run.py     charrnn info, charrnn plot
    serve.py           charrnn serve
    storage.py         charrnn corpus ..., charrnn cache ...
    common.py          what they share: errors to exit codes, stdout, the option types
    display.py, dashboard.py, views.py, charts.py: everything people read
"""

from __future__ import annotations

import os
import sys

import typer

from charrnn.cli.common import parse_duration, silence_stdout
from charrnn.cli.evaluate import eval_, surprise
from charrnn.cli.inspect_run import info, plot
from charrnn.cli.sample import sample
from charrnn.cli.serve import serve
from charrnn.cli.storage import cache_app, corpus_app
from charrnn.cli.train import train

__all__ = ["app", "main", "parse_duration"]

app = typer.Typer(
    name="charrnn",
    help="Train character-level LSTM/GRU/RNN language models on any text, sample and evaluate them. "
    "Documentation by topic: docs/ (training, sampling, evaluation, serving, the Python API).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(train)
app.command()(sample)
app.command("eval")(eval_)
app.command()(surprise)
app.command()(plot)
app.command()(info)
app.add_typer(corpus_app, name="corpus")
app.command()(serve)
app.add_typer(cache_app, name="cache")

# Commands that never run a model: --threads (or CHARRNN_THREADS) must not make them import torch.
NO_TORCH = {"corpus", "cache", "plot"}
# Below this many columns Rich's help tables cut flag names short ("--save-every-mi…"); click's plain
# help wraps the text instead and keeps every name whole.
NARROW_HELP = 90


def version_callback(value: bool) -> None:
    if value:
        from charrnn import __version__

        sys.stdout.write(f"charrnn {__version__}\n")
        raise typer.Exit()


def use_threads(threads: int | None) -> None:
    """At most `threads` CPU threads for torch (default: all cores). torch reads OMP_NUM_THREADS only
    from the process's own start, so it is imported and told here, and only when asked."""
    if threads is None:
        return
    most = max(64, 4 * (os.cpu_count() or 1))  # tens of thousands crash OpenMP's thread creation
    if threads > most:
        raise typer.BadParameter(
            f"{threads}: at most {most} (this machine has {os.cpu_count()} cores)", param_hint="--threads"
        )
    import torch

    torch.set_num_threads(threads)


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        envvar="CHARRNN_THREADS",
        help="CPU threads for training, sampling and evaluation (default: all cores), for a shared machine: "
        "charrnn --threads 4 train ...",
    ),
) -> None:
    """charrnn: character-level language models from the command line."""
    if ctx.invoked_subcommand not in NO_TORCH:
        use_threads(threads)


def _asks_for_json_lines(args: list[str]) -> bool:
    return "--log-format=jsonl" in args or any(a == "--log-format" and b == "jsonl" for a, b in zip(args, args[1:]))


def _run_with_json_usage_errors() -> None:
    """`--log-format jsonl` promises one JSON object per line of stderr: a mistyped flag too."""
    from charrnn.cli import display

    try:
        code = app(prog_name="charrnn", standalone_mode=False)
    except typer.Abort:
        raise SystemExit(130)
    except Exception as e:  # Click's usage errors (click's own, or the copy newer Typers carry)
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        display.emit("error", message=e.format_message())
        raise SystemExit(e.exit_code)
    raise SystemExit(code if isinstance(code, int) else 0)


def main() -> None:
    import shutil

    # Started with stdout or stderr closed (2>&-, some daemons and cron set-ups): Python leaves them
    # None. What would go there goes nowhere instead, and the command still does its work.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - for the process's life

    if shutil.get_terminal_size().columns < NARROW_HELP:
        for typer_app in (app, corpus_app, cache_app):
            typer_app.rich_markup_mode = None
    try:
        if _asks_for_json_lines(sys.argv[1:]):
            _run_with_json_usage_errors()
        app(prog_name="charrnn")
    except BrokenPipeError:  # `charrnn --help | head`: the reader has gone
        silence_stdout()
    except OSError as e:  # what the commands' own errors do for help and usage text (--help > /dev/full)
        silence_stdout()
        from charrnn.cli import display

        display.error(f"cannot write to standard output: {e.strerror or e}")
        raise SystemExit(1)
