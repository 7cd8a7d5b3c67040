"""What every command shares: the error-to-exit-code wrapper, raw output on stdout, and the option
types and options that several commands take, made once from `charrnn.choices` and `charrnn.config`.

Exit codes: 0 success, 1 bad input (one line on stderr), 2 bad usage, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from enum import Enum

import typer

from charrnn import choices, config
from charrnn.errors import CharRNNError, Interrupted, os_error_message


def choice_type(name: str, choice) -> type[Enum]:
    """The option type Typer shows as [a|b|c] for a choice of `charrnn.choices`."""
    return Enum(name, {value: value for value in choices.values(choice)}, type=str)


Cell = choice_type("Cell", choices.Cell)
Precision = choice_type("Precision", choices.Precision)
Preset = choice_type("Preset", choices.Preset)
Errors = choice_type("Errors", choices.DecodingErrors)
Unknown = choice_type("Unknown", choices.Unknown)
LogFormat = choice_type("LogFormat", choices.LogFormat)
Checkpoint = choice_type("Checkpoint", choices.Checkpoint)

CHECKPOINT_HELP = "Which checkpoint of a run: best (the best validated: what training hands back) or latest."


def checkpoint_option(help: str = CHECKPOINT_HELP):
    return typer.Option(Checkpoint.best, "--checkpoint", help=help)


def unknown_option(help: str = "Characters outside the model's vocabulary."):
    return typer.Option(Unknown.error, "--unknown", help=help)


def json_option(what: str = "Machine-readable output on stdout."):
    return typer.Option(False, "--json", help=what)


def parse_duration(value: str | None) -> float | None:
    """Seconds from '90', '90s', '5m', '1h', '1h30m' (config.parse_duration), as a usage error if not."""
    try:
        return config.parse_duration(value)
    except CharRNNError as e:
        raise typer.BadParameter(str(e))


def friendly(command):
    """Turn the library's errors and signals into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from charrnn.cli import display

        try:
            return command(*args, **kwargs)
        except CharRNNError as e:
            display.error(str(e))
            raise SystemExit(e.exit_code)
        except Interrupted as e:
            raise SystemExit(e.exit_code)
        except KeyboardInterrupt:
            raise SystemExit(130)
        except BrokenPipeError:
            silence_stdout()  # the reader (head, less) has gone: stop quietly
            raise SystemExit(0)
        except OSError as e:  # a file we had to write or read failed: disk full, read-only, permissions
            display.error(os_error_message(e))
            raise SystemExit(1)
        except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeErrors
            if not isinstance(e, MemoryError) and "out of memory" not in str(e) and "allocate" not in str(e):
                raise
            display.error(
                "out of memory; use a smaller model (--hidden-size, --layers) or fewer characters at once "
                "(--batch-size, --seq-len, or --batch for sample); the checkpoints already saved are intact"
            )
            raise SystemExit(1)

    return wrapper


class StdoutWriter:
    """Raw text to stdout, flushed at line ends and at least every 50 ms, so pipes see it live."""

    def __init__(self):
        self.last_flush = time.monotonic()
        try:
            sys.stdout.reconfigure(encoding="utf-8", newline="\n")
        except (AttributeError, ValueError):
            pass

    def write(self, text: str | bytes) -> None:
        """Text, or raw bytes (what a byte-level model generates) straight to the binary buffer."""
        now = time.monotonic()
        with _stdout_errors():
            if isinstance(text, bytes):
                sys.stdout.buffer.write(text)
                newline = b"\n" in text
            else:
                sys.stdout.write(text)
                newline = "\n" in text
            if newline or now - self.last_flush > 0.05:
                sys.stdout.flush()
                self.last_flush = now

    def close(self) -> None:
        with _stdout_errors():
            sys.stdout.flush()


def write_stdout(text: str) -> None:
    """A whole output (a JSON document, a path) to stdout at once."""
    out = StdoutWriter()
    out.write(text)
    out.close()


class _stdout_errors:
    """A failed write to stdout (disk full, I/O error) becomes one clear line; a closed pipe is
    passed on as BrokenPipeError for `main` to end quietly."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, BrokenPipeError) or not isinstance(error, OSError):
            return False
        silence_stdout()
        raise CharRNNError(f"cannot write to standard output: {error.strerror or error}")


def silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush has nothing left to complain about."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
