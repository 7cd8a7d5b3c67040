"""The command line: parses options, builds config objects, calls the library, maps errors to exits.

Exit codes: 0 success, 1 bad input (one line on stderr), 2 bad usage, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import time
from dataclasses import replace
from enum import Enum
from pathlib import Path

import typer

from charrnn import config
from charrnn.config import EVAL_SHARE, WARMUP_STEPS, TrainConfig
from charrnn.errors import CharRNNError, Interrupted, UsageError, os_error_message


class Cell(str, Enum):
    lstm = "lstm"
    gru = "gru"
    rnn = "rnn"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Preset(str, Enum):
    auto = "auto"
    small = "small"
    medium = "medium"
    large = "large"


class Errors(str, Enum):
    strict = "strict"
    replace = "replace"
    ignore = "ignore"


class Unknown(str, Enum):
    error = "error"
    skip = "skip"
    replace = "replace"


class LogFormat(str, Enum):
    auto = "auto"
    plain = "plain"
    jsonl = "jsonl"


class Which(str, Enum):
    latest = "latest"
    best = "best"


def friendly(command):
    """Turn the library's errors and signals into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from charrnn.cli import dashboard, display, views

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
            _silence_stdout()  # the reader (head, less) has gone: stop quietly
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


app = typer.Typer(
    name="charrnn",
    help="Train character-level LSTM/GRU/RNN language models on any text, sample and evaluate them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def parse_duration(value: str | None) -> float | None:
    """Seconds from '90', '90s', '5m', '1h', '1h30m' (config.parse_duration), as a usage error if not."""
    try:
        return config.parse_duration(value)
    except CharRNNError as e:
        raise typer.BadParameter(str(e))


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


# Commands that never run a model: --threads (or CHARRNN_THREADS) must not make them import torch.
NO_TORCH = {"corpus", "cache", "plot"}


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


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


@app.command()
@friendly
def train(
    ctx: typer.Context,
    corpus: list[str] | None = typer.Argument(
        None,
        help="Text files or directories, '-' for standard input, or a corpus name (charrnn corpus list); "
        "nothing for the built-in corpus.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<corpus>-<cell>-<time>)."),
    # model
    cell: Cell = typer.Option(Cell.lstm, help="Recurrent cell.", rich_help_panel="Model"),
    preset: Preset = typer.Option(
        Preset.auto,
        help="Model size and training settings for the budget: small (up to ~4 CPU minutes), medium (4+ CPU "
        "minutes, or a text a GPU reads 4+ times), large (larger texts on a GPU); auto picks one from the "
        "device, --max-time, the size of the text and the speed measured here. Flags given override it.",
        rich_help_panel="Model",
    ),
    layers: int | None = typer.Option(
        None, min=1, help="Recurrent layers (default: from --preset).", rich_help_panel="Model"
    ),
    hidden_size: int | None = typer.Option(
        None, min=1, help="Units per layer (default: from --preset).", rich_help_panel="Model"
    ),
    embedding_size: int | None = typer.Option(
        None, min=1, help="Character embedding size (default: from --preset).", rich_help_panel="Model"
    ),
    dropout: float | None = typer.Option(
        None,
        min=0.0,
        max=0.99,
        help="Dropout between layers and before the head (default: from --preset).",
        rich_help_panel="Model",
    ),
    # training
    batch_size: int | None = typer.Option(
        None, min=1, help="Parallel streams per batch (default: from --preset).", rich_help_panel="Training"
    ),
    seq_len: int | None = typer.Option(
        None,
        min=1,
        help="Characters per stream per batch, the truncated BPTT length (default: from --preset).",
        rich_help_panel="Training",
    ),
    lr: float | None = typer.Option(
        None, min=0.0, help="Peak learning rate, AdamW (default: from --preset).", rich_help_panel="Training"
    ),
    weight_decay: float | None = typer.Option(
        None,
        min=0.0,
        help="AdamW weight decay on weight matrices (default: from --preset).",
        rich_help_panel="Training",
    ),
    min_lr_ratio: float | None = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help="Where the cosine decay of the learning rate ends, as a fraction of --lr (default: from --preset).",
        rich_help_panel="Training",
    ),
    ema: float | None = typer.Option(
        None,
        min=0.0,
        max=0.9999,
        help="Validate, save and sample a moving average of the weights with this decay, e.g. 0.999; "
        "0 = the raw weights (default: from --preset).",
        rich_help_panel="Training",
    ),
    warmup_steps: int | None = typer.Option(
        None,
        min=0,
        help=f"Linear warm-up steps (default: {WARMUP_STEPS}, at most a tenth of a --max-steps budget).",
        rich_help_panel="Training",
    ),
    decay_steps: int | None = typer.Option(
        None, min=1, help="Steps over which the cosine decay runs (default: the budget).", rich_help_panel="Training"
    ),
    grad_clip: float = typer.Option(
        TrainConfig.grad_clip, min=0.0, help="Gradient-norm clip (0 = off).", rich_help_panel="Training"
    ),
    max_steps: int | None = typer.Option(None, min=1, help="Stop after this many steps.", rich_help_panel="Training"),
    max_time: str | None = typer.Option(
        None,
        help="Time budget: 600, 90s, 5m, 1h (default: 3m if no other budget). It covers training, validation "
        "and checkpoints; start-up and the final sample come on top.",
        rich_help_panel="Training",
    ),
    epochs: float | None = typer.Option(
        None, min=0.0, help="Stop after this many passes over the text.", rich_help_panel="Training"
    ),
    patience: int | None = typer.Option(
        None,
        min=0,
        help="Stop after this many evaluations without improvement (default: 5, a quarter of a --max-time "
        "budget, once the text has been read once; none with a step or epoch budget); 0 = never.",
        rich_help_panel="Training",
    ),
    seed: int = typer.Option(TrainConfig.seed, help="Random seed.", rich_help_panel="Training"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Training"),
    precision: Precision = typer.Option(
        Precision.auto, help="auto uses bf16 where the hardware supports it natively.", rich_help_panel="Training"
    ),
    # evaluation and checkpoints
    val_fraction: float = typer.Option(
        TrainConfig.val_fraction,
        min=0.0,
        max=0.5,
        help="Held-out tail of the text for validation.",
        rich_help_panel="Validation and checkpoints",
    ),
    val_max_chars: int = typer.Option(
        TrainConfig.val_max_chars,
        min=1,
        help="At most this many held-out characters.",
        rich_help_panel="Validation and checkpoints",
    ),
    val_file: Path | None = typer.Option(
        None,
        help="Validate on this file, which must not be trained on, instead of the end of the text "
        "(it replaces --val-fraction and --val-max-chars).",
        rich_help_panel="Validation and checkpoints",
    ),
    eval_every: int | None = typer.Option(
        None,
        min=0,
        help="Validate (and save) every N steps (default: 20 times in a --max-time budget, else every 100 "
        "steps); 0 = only at the end.",
        rich_help_panel="Validation and checkpoints",
    ),
    eval_chars: int | None = typer.Option(
        None,
        min=1,
        help="Held-out characters scored by each periodic validation, a fixed sample (default: sized so that "
        f"validation takes about {EVAL_SHARE:.0%} of the budget); the end of the run scores all of them.",
        rich_help_panel="Validation and checkpoints",
    ),
    log_every: int = typer.Option(
        TrainConfig.log_every, min=1, help="Log every N steps.", rich_help_panel="Validation and checkpoints"
    ),
    save_every: int | None = typer.Option(
        None, min=1, help="Also save every N steps.", rich_help_panel="Validation and checkpoints"
    ),
    save_every_minutes: float | None = typer.Option(
        None, min=0.0, help="Also save every N minutes.", rich_help_panel="Validation and checkpoints"
    ),
    keep: int = typer.Option(
        TrainConfig.keep,
        min=1,
        help="Newest checkpoints to keep (the best is always kept).",
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
    # text
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
    log_format: LogFormat = typer.Option(
        LogFormat.auto,
        help="auto: a live dashboard on a terminal, plain lines otherwise; "
        "plain; jsonl: one JSON object per event on stderr.",
        rich_help_panel="Output",
    ),
) -> None:
    """Train a model on text. Examples:

    charrnn train                                   # built-in corpus, about 3 minutes

    charrnn train shakespeare.txt --max-time 5m -o runs/shakespeare

    charrnn train notes/ --glob '*.md' --cell gru --layers 3

    charrnn train tinyshakespeare                   # a named corpus, downloaded on first use

    zcat logs.gz | charrnn train - --bytes           # standard input, byte-level

    charrnn train --resume runs/shakespeare --max-time 10m
    """
    from charrnn.cli import dashboard, display, views
    from charrnn.data.sources import TextOptions
    from charrnn.training.request import MODEL_FIELDS, TRAIN_FIELDS, RunRequest
    from charrnn.training.session import prepare

    display.JSON_LINES = log_format == LogFormat.jsonl  # notes, the sample and errors too
    params = {k: v.value if isinstance(v, Enum) else v for k, v in ctx.params.items()}
    given = {k for k in params if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    settings = {k: params[k] for k in (*MODEL_FIELDS, *TRAIN_FIELDS) if k in given and k != "device"}
    if "max_time" in given:
        settings["max_time"] = parse_duration(max_time)
    request = RunRequest(
        corpus=corpus or [],
        out=out,
        preset=params["preset"],
        settings=settings,
        resume=resume,
        init_from=init_from,
        val_file=val_file,
        text=TextOptions(encoding, params["errors"], keep_newlines, bytes_),
        glob=glob,
        unknown=params["unknown"],
        device=device,
        given=frozenset(k.rstrip("_") for k in given),
    )
    progress = display.TransferProgress(quiet or int(os.environ.get("RANK", 0)) > 0)  # torchrun: rank 0 shows it
    try:
        run = prepare(request, progress)
    finally:
        progress.close()
    ctx.call_on_close(run.release)
    quiet = quiet or not run.dist.main
    train_session(run, quiet, log_format.value, sample_length)


def train_session(run, quiet: bool, log_format: str, sample_length: int) -> None:
    """Train a prepared run with the dashboard, then show a sample of the model it hands back."""
    from charrnn.cli import dashboard, display, views

    def preview() -> str:
        """A line of sample text from the model as it is now, for the dashboard."""
        text = sample_text(run.trainer.shipped, run.data.vocab, 160, run.plan.train.seed, run.device)
        run.model.train()
        return text

    reporter = dashboard.TrainDisplay(quiet, log_format, preview, run.run_dir)
    if not quiet:
        for line in run.plan.notes:
            display.note(line)
        display.note(run.describe())
    try:
        run.execute(reporter)
    except Interrupted:
        reporter.interrupted()
        if not quiet:
            display.note(
                f"interrupted: saved step {run.trainer.step} to {run.run_dir}; continue with: charrnn train --resume {run.run_dir}"
            )
        raise
    finally:
        reporter.interrupted()  # never leave a live display running, whatever went wrong
    if not quiet and sample_length > 0 and run.dist.main:
        from charrnn.storage import checkpoints as ckpt
        from charrnn.storage import layout

        kept = ckpt.load(run.run_dir, "cpu", which="best").model  # the model the run hands back
        text = sample_text(kept, run.data.vocab, sample_length, run.plan.train.seed)
        views.sample_preview(run.data.vocab.to_bytes(text).decode("utf-8", "replace"))
        display.note(f"sample more with: charrnn sample {run.run_dir}")
    if run.dist.world > 1:
        # gloo's worker threads can still be alive when the interpreter shuts down, which aborts
        # the process (SIGABRT) after a successful run; everything is saved and flushed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def sample_text(model, vocab, length: int, seed: int, device=None) -> str:
    """`length` characters sampled from `model` at temperature 0.8 (the previews of a training run)."""
    from charrnn.generation.sampler import Decoding, Request, Sampler

    sampler = Sampler(model, vocab, device) if device is not None else Sampler(model, vocab)
    return "".join(c[0] for c in sampler.generate(Request(length=length, seed=seed), Decoding(0.8)))


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------


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


class _stdout_errors:
    """A failed write to stdout (disk full, I/O error) becomes one clear line; a closed pipe is
    passed on as BrokenPipeError for `main` to end quietly."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, BrokenPipeError) or not isinstance(error, OSError):
            return False
        _silence_stdout()
        raise CharRNNError(f"cannot write to standard output: {error.strerror or error}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush has nothing left to complain about."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@app.command()
@friendly
def sample(
    run: Path = typer.Argument(..., help="Run directory or checkpoint folder."),
    length: int = typer.Option(1000, "--length", "-n", min=0, help="Characters to generate per sample."),
    temperature: float = typer.Option(
        1.0, "--temperature", "-t", help="Randomness: 0 (or below 1e-6) = greedy, <1 safer, >1 wilder."
    ),
    top_k: int | None = typer.Option(None, help="Sample only from the k most likely characters (0: no limit)."),
    top_p: float | None = typer.Option(
        None, help="Sample only from the most likely characters whose total probability reaches p."
    ),
    prime: str | None = typer.Option(None, "--prime", "-p", help="Text to start from; '-' reads it from stdin."),
    prime_file: Path | None = typer.Option(None, help="Read the prime text from a file."),
    echo: bool = typer.Option(True, help="Print the prime before the continuation."),
    stop: list[str] | None = typer.Option(None, help="Stop a sample after this string (repeatable)."),
    count: int = typer.Option(1, min=1, max=10_000, help="Number of samples, generated together as one batch."),
    separator: str = typer.Option("\n\n", help="Printed between samples (default: a blank line).", show_default=False),
    jsonl: bool = typer.Option(False, help="One JSON object per sample instead of raw text."),
    seed: int | None = typer.Option(None, help="Seed for reproducible output."),
    unknown: Unknown = typer.Option(Unknown.error, help="Prime characters outside the vocabulary."),
    checkpoint: Which = typer.Option(
        Which.best, help="Which checkpoint of a run: best (the best validated: what training hands back) or latest."
    ),
    device: str = typer.Option(
        "cpu",
        help="cpu, cuda, cuda:N, mps or auto (a GPU if there is one). A GPU draws faster, many samples "
        "at once (--count) most of all, but takes a few seconds to start.",
    ),
    interactive: bool = typer.Option(
        False,
        "--interactive",
        "-i",
        help="Prompt loop: each line you type primes the model; /reset forgets, /quit ends.",
    ),
) -> None:
    """Generate text from a trained model, raw on stdout. Examples:

    charrnn sample runs/shakespeare -n 2000 -t 0.8

    charrnn sample runs/shakespeare --prime 'ROMEO:' --stop $'\\n\\n' | less

    printf 'To be' | charrnn sample runs/shakespeare --prime - --seed 1
    """
    import torch

    from charrnn.api import load
    from charrnn.data.sources import stdin_stream
    from charrnn.generation.sampler import Decoding

    decoding = Decoding(temperature, top_k, top_p)
    if prime is not None and prime_file is not None:
        raise UsageError("--prime and --prime-file exclude each other")
    if interactive and (count > 1 or jsonl or prime == "-"):
        raise UsageError(
            "--interactive reads your lines from stdin and writes one continuation at a time; "
            "drop --count, --jsonl and --prime -",
        )
    if interactive:
        stdin_stream("--interactive")  # a clear error now if the shell closed stdin
    text = read_prime(prime, prime_file)
    torch.set_grad_enabled(False)
    model = load(run, which=checkpoint.value, device=device)
    vocab = model.vocab
    # interactive turns go on from the state after a stop string: draw no character beyond it
    sampler = model.sampler(readback=1 if interactive else None)
    # A byte-level model's symbols are bytes: raw on stdout, and as (repaired) UTF-8 inside JSON.
    emit = vocab.to_bytes if vocab.kind == "bytes" else str
    readable = (lambda s: vocab.to_bytes(s).decode("utf-8", "replace")) if vocab.kind == "bytes" else str
    if seed is None and jsonl:
        seed = int.from_bytes(os.urandom(4), "little")
    source = str(prime_file) if prime_file else "--prime"
    request = model.request(text, length, stop or [], seed, unknown.value, count=count, source=source)
    text = request.prime
    out = StdoutWriter()
    if interactive:
        if text:
            if echo:
                out.write(emit(text))
            sampler.feed(text)
        converse(sampler, out, replace(request, prime=""), decoding, unknown.value, emit)
        return
    if not jsonl:  # the first sample as it is produced (`| head` ends the work), the others after it
        if echo:
            out.write(emit(text))
        others: list[list[str]] = [[] for _ in range(count - 1)]
        for chars in sampler.generate(request, decoding):
            out.write(emit(chars[0]))
            for other, ch in zip(others, chars[1:]):
                other.append(ch)
        for other in others:
            out.write(emit(vocab.from_user(separator) + (text if echo else "") + "".join(other)))
        out.close()
        return
    pieces: list[list[str]] = [[] for _ in range(count)]
    for chars in sampler.generate(request, decoding):
        for i, ch in enumerate(chars):
            pieces[i].append(ch)
    settings = {"seed": seed, "temperature": temperature, "top_k": top_k, "top_p": top_p, "length": length}
    for i, s in enumerate("".join(p) for p in pieces):
        record = {
            "text": readable((text if echo else "") + s),
            "prime": readable(text),
            "continuation": readable(s),
            "index": i,
            # as in the OpenAI API: "stop" when a --stop string ended it, "length" at --length
            "finish_reason": "stop" if len(s) < length or any(s.endswith(x) for x in request.stop if x) else "length",
            **settings,
            "checkpoint": str(model.checkpoint),
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.close()


def read_prime(prime: str | None, prime_file: Path | None) -> str:
    """The prime text: --prime as given, standard input for --prime -, or --prime-file's text."""
    from charrnn.data.sources import stdin_stream

    if prime == "-":
        try:
            return stdin_stream("--prime -").read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise CharRNNError(f"standard input: the prime is not valid UTF-8 (byte offset {e.start})")
    if prime_file is not None:
        try:
            return prime_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise CharRNNError(f"{prime_file}: cannot read the prime ({reason})")
    return prime or ""


def converse(sampler, out: StdoutWriter, request, decoding, unknown: str, emit=str) -> None:
    """The --interactive loop: each input line continues the text (the hidden state is kept across
    turns), then the model's continuation streams back. /reset starts afresh, /quit or EOF ends."""
    from charrnn.cli import dashboard, display, views

    tty = sys.stdin.isatty()
    if tty:
        display.note("type a line to prime the model; /reset forgets the conversation, /quit or Ctrl-D ends")
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")  # a bad byte is no crash
    while True:
        if tty:
            display.prompt()
        line = stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return
        if line.strip() == "/reset":
            sampler.reset()
            if tty:
                display.note("state reset")
            continue
        try:
            prime = sampler.encode_prime(sampler.vocab.from_user(line), unknown, source="input")
        except CharRNNError as e:
            display.error(str(e))
            continue
        written = ""
        for chars in sampler.generate(replace(request, prime=prime, count=1), decoding):
            out.write(emit(chars[0]))
            written += chars[0]
        if not written.endswith("\n"):
            out.write("\n")
            if "\n" in sampler.vocab.index:
                sampler.feed("\n")  # the model sees the line break the user sees
        out.close()


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------


@app.command("eval")
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
    checkpoint: Which = typer.Option(Which.best, help="Which checkpoint of a run."),
    unknown: Unknown = typer.Option(Unknown.error, help="Characters outside the vocabulary."),
    encoding: str = typer.Option("utf-8", help="Text encoding of the files."),
    errors: Errors = typer.Option(Errors.strict, help="Undecodable bytes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
) -> None:
    """Loss (nats), bits per character and perplexity of models on texts: one row per model and file.

    Examples:

      charrnn eval runs/shakespeare other.txt

      charrnn eval runs/small runs/large test.txt valid.txt

      cat notes.txt | charrnn eval runs/notes - --json | jq '.results[].bits_per_char'
    """
    import torch

    from charrnn.api import load
    from charrnn.cli import dashboard, display, views
    from charrnn.data.sources import STDIN, resolve_sources
    from charrnn.storage import checkpoints as ckpt
    from charrnn.storage import layout

    models = [p for p in paths if layout.is_model_path(p)]
    files = [p for p in paths if p not in models]
    if not models:
        raise UsageError(f"{paths[0]}: not a run or checkpoint; usage: charrnn eval RUN... FILE...")
    if not files:
        raise UsageError("no text to score: name one or more files after the runs, or '-' for stdin")
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
            result = model.score_corpus(data, label, streams)
            rows.append({"checkpoint": str(model.checkpoint), "file": f, **result.to_json(), "unknown": data.unknown})
            if data.unknown:  # a figure on a text the model partly never saw: say how much of it
                if unknown.value == "skip":
                    done = "left out, so the figure is for the rest of the text"
                else:
                    done = f"each scored as {model.vocab.chars[model.vocab.replacement_id]!r} instead"
                count = f"{data.unknown:,} characters are" if data.unknown != 1 else "1 character is"
                display.note(
                    f"{label}: {count} not in the vocabulary of {model.checkpoint}: {done} (--unknown {unknown.value})"
                )
    if as_json:
        out = StdoutWriter()
        out.write(json.dumps({"results": rows}, indent=2) + "\n")
        out.close()
    else:
        views.eval_table(rows)


@app.command()
@friendly
def surprise(
    run: Path = typer.Argument(..., help="Run directory or checkpoint folder."),
    file: str = typer.Argument(..., help="Text file to look at ('-' is stdin)."),
    start: int = typer.Option(0, min=0, help="First character of the window."),
    length: int = typer.Option(1500, min=1, help="Characters in the window."),
    html: Path | None = typer.Option(None, help="Also write the view as a standalone HTML page."),
    checkpoint: Which = typer.Option(Which.best, help="Which checkpoint of a run."),
    unknown: Unknown = typer.Option(Unknown.error, help="Characters outside the vocabulary."),
    encoding: str = typer.Option("utf-8", help="Text encoding of the file."),
    errors: Errors = typer.Option(Errors.strict, help="Undecodable bytes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
) -> None:
    """Show a text with each character coloured by how surprising the model found it. Examples:

    charrnn surprise runs/shakespeare play.txt --start 5000 --length 800

    charrnn surprise runs/shakespeare play.txt --html surprise.html
    """
    import torch

    from charrnn.api import load
    from charrnn.cli import dashboard, display, views
    from charrnn.model.scoring import by_character, surprisal, utf8_window

    torch.set_grad_enabled(False)
    model = load(run, which=checkpoint.value, device=device)
    data = model.read(file, encoding, errors.value, unknown.value)
    data.require(2, "standard input" if file == "-" else file, "surprise (the first character has no context)")
    if start >= len(data.ids):
        raise UsageError(f"--start {start}: {file} has only {len(data.ids):,} characters")
    byte_level = model.vocab.kind == "bytes"
    if byte_level:
        start, length = utf8_window(data.ids, start, length)
    losses = surprisal(model.network, data.ids, start, length, model.device)
    symbols = model.vocab.decode(data.ids[start : start + length].tolist())
    text, losses = by_character(symbols, losses, byte_level)
    views.surprise_view(text, losses)
    if html is not None:
        page = views.surprise_html(text, losses, f"charrnn surprise: {file} under {model.checkpoint}")
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as e:
            raise CharRNNError(f"{html}: cannot write ({e.strerror or e})")
        display.note(f"wrote {html}")


@app.command()
@friendly
def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write a PNG instead (needs matplotlib: pip install 'charrnn[plot]')."
    ),
    width: int = typer.Option(72, min=20, max=1000, help="Chart width in characters."),
    height: int = typer.Option(18, min=5, max=500, help="Chart height in lines."),
) -> None:
    """Training and validation loss curves of one or several runs. Examples:

    charrnn plot runs/shakespeare

    charrnn plot runs/a runs/b --output curves.png
    """
    from charrnn.cli import dashboard, display, views
    from charrnn.cli.charts import read_curves, save_png

    curves = [read_curves(r) for r in runs]
    if output is not None:
        save_png(curves, output)
        display.note(f"wrote {output}")
    else:
        views.loss_plot(curves, width, height)


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------


@app.command()
@friendly
def info(
    run: Path = typer.Argument(..., help="Run directory or checkpoint folder."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary on stdout."),
    checkpoint: Which = typer.Option(
        Which.best,
        help="Which checkpoint of a run: best (what training hands back) or latest (where --resume goes on).",
    ),
) -> None:
    """What a run or checkpoint holds: model, vocabulary, corpus, progress, losses. Examples:

    charrnn info runs/shakespeare

    charrnn info runs/shakespeare --json | jq .best_val_loss
    """
    from charrnn.cli import dashboard, display, views
    from charrnn.storage import checkpoints as ckpt
    from charrnn.storage import layout

    loaded = ckpt.load(run, "cpu", which=checkpoint.value, numbers_only=False)  # a damaged run's steps and losses too
    summary = ckpt.summarize(loaded)
    if as_json:
        out = StdoutWriter()
        out.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        out.close()
    else:
        try:
            views.info_table(summary)
        except (TypeError, ValueError, AttributeError, KeyError) as e:  # edited by hand or by another program
            raise ckpt.CheckpointError(
                f"{loaded.path}: a field of its manifest or of the run's result.json is not what charrnn writes "
                f"({type(e).__name__}: {e}); the files are damaged; `charrnn info --json` shows them as they are"
            )


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------

corpus_app = typer.Typer(
    help="Named corpora: well-known public-domain texts, usable anywhere a file goes.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("list")
@friendly
def corpus_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable list on stdout.")) -> None:
    """The corpora charrnn knows by name, and whether each is downloaded. Example:

    charrnn corpus list --json | jq -r '.[].name'
    """
    from charrnn.cli import dashboard, display, views
    from charrnn.data import cache
    from charrnn.data.catalog import CATALOG, builtin_text

    rows = []
    for e in CATALOG.values():
        builtin = not e.file
        local = cache.root() / "corpora" / e.file if e.file else None
        rows.append(
            {
                "name": e.name,
                "description": e.description,
                "builtin": builtin,
                "size": len(builtin_text().encode("utf-8")) if builtin else e.size,
                "url": e.url or None,
                "sha256": e.sha256 or None,
                "downloaded": builtin or local.is_file(),
                "path": str(local) if local and local.is_file() else None,
            }
        )
    if as_json:
        out = StdoutWriter()
        out.write(json.dumps(rows, indent=2) + "\n")
        out.close()
    else:
        views.corpus_table(rows)


@corpus_app.command("get")
@friendly
def corpus_get(name: str = typer.Argument(..., help="A name from charrnn corpus list.")) -> None:
    """Download a named corpus into the cache (checked against its sha256) and print its path. Example:

    CHARRNN_MIRROR=/mnt/corpora charrnn corpus get tinyshakespeare
    """
    from charrnn.cli import dashboard, display, views
    from charrnn.data.catalog import CATALOG
    from charrnn.data.sources import BUILTIN, fetch_named

    if name not in CATALOG:
        raise UsageError(f"{name}: not a known corpus; the names are {', '.join(CATALOG)}")
    if name == BUILTIN:
        display.note("builtin is assembled from the Python installation; there is nothing to download")
        return
    progress = display.TransferProgress()
    try:
        path = fetch_named(name, progress)
    finally:
        progress.close()
    out = StdoutWriter()
    out.write(f"{path}\n")
    out.close()


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------


@app.command()
@friendly
def serve(
    runs: list[Path] = typer.Argument(..., help="Runs or checkpoint folders; each is served as its folder's name."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 opens the server to the network."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on; 0 picks a free one."),
    api_key: str | None = typer.Option(
        None, envvar="CHARRNN_API_KEY", help="Require 'Authorization: Bearer KEY' on every API request."
    ),
    max_tokens: int = typer.Option(4096, min=1, help="Most characters generated per sample."),
    max_prompt: int = typer.Option(16_384, min=1, help="Most characters in a prompt or a text to score."),
    max_n: int = typer.Option(8, min=1, help="Most samples per request (n)."),
    max_streams: int = typer.Option(64, min=1, help="Most samples in flight at once; more are answered 429."),
    unknown: Unknown = typer.Option(
        Unknown.error, help="Prompt characters outside the vocabulary (a request may say)."
    ),
    checkpoint: Which = typer.Option(
        Which.best, help="Which checkpoint of a run: best (what training hands back) or latest."
    ),
    precision: Precision = typer.Option(
        Precision.auto,
        help="Products of a busy batch (16+ samples in flight): auto uses bf16 where the CPU has it natively; fp32 always computes as sample does.",
    ),
    access_log: bool = typer.Option(False, help="Log every request on stderr."),
) -> None:
    """Serve models over HTTP with the OpenAI-style completions API, and a page to try them at /.

    Needs the serve extra: pip install 'charrnn[serve]'. Examples:

      charrnn serve runs/shakespeare

      CHARRNN_API_KEY=secret charrnn serve runs/a runs/b --host 0.0.0.0 --port 8080
    """
    try:
        from charrnn.serving import http
    except ImportError as e:
        raise CharRNNError(f"charrnn serve needs the serve extra ({e.name} is missing): pip install 'charrnn[serve]'")
    import torch

    from charrnn.cli import dashboard, display, views
    from charrnn.storage import checkpoints as ckpt
    from charrnn.storage import layout

    names = [
        (r.resolve().parent.parent if r.resolve().parent.name == "checkpoints" else r.resolve()).name for r in runs
    ]
    if len(set(names)) != len(names):
        name = max(names, key=names.count)
        if len({r.resolve() for r, n in zip(runs, names) if n == name}) == 1:
            raise UsageError(f"{name}: given twice; name each run once")
        raise UsageError(f"two runs share the name '{name}': serve runs from differently named folders")
    if api_key and not (api_key.isascii() and api_key.isprintable() and api_key == api_key.strip()):
        # a header's bytes are read as Latin-1, and its ends stripped: no request could send such a key
        raise UsageError(
            "--api-key (or CHARRNN_API_KEY): use printable ASCII characters, no spaces at either end; "
            "HTTP headers carry no others"
        )
    low = http.resolve_precision(precision.value, torch.device("cpu"))
    sock = http.listen(host, port)  # before loading: a port in use is known at once
    torch.set_grad_enabled(False)
    loaded = {name: ckpt.load(r, "cpu", which=checkpoint.value) for name, r in zip(names, runs)}
    limits = http.Limits(max_tokens=max_tokens, max_prompt=max_prompt, max_n=max_n, max_streams=max_streams)
    server = http.Server(loaded, limits, api_key or None, unknown.value, None if low == torch.float32 else low)
    where = sock.getsockname()
    url = f"http://{f'[{where[0]}]' if ':' in where[0] else where[0]}:{where[1]}"
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):  # an empty key checks nothing either
        display.note(f"--host {host} without --api-key: anyone who can reach this machine can use the server")
    display.note(f"serving {', '.join(names)} at {url}/v1 and a page to try it at {url}/; Ctrl-C stops")
    http.serve_forever(server, sock, access_log)


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------

cache_app = typer.Typer(
    help="The cache of encoded texts, standard-input copies and downloads: see it, prune it, clear it.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
@friendly
def cache_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable list on stdout.")) -> None:
    """Each entry with its size, when it was last used and whether a running command reads it."""
    from charrnn.cli import dashboard, display, views
    from charrnn.data import cache

    rows = [e.to_json() for e in cache.entries()]
    if as_json:
        out = StdoutWriter()
        out.write(json.dumps({"root": str(cache.root()), "max_size": cache.max_size(), "entries": rows}, indent=2))
        out.write("\n")
        out.close()
    else:
        views.cache_table(rows, str(cache.root()), cache.max_size())


@cache_app.command("prune")
@friendly
def cache_prune(
    older_than: str | None = typer.Option(None, help="Remove entries not used for this long: 30d, 12h, 90m."),
    max_size: str | None = typer.Option(None, help="Then remove the least recently used down to this size: 2G."),
) -> None:
    """Remove old entries, or the least recently used beyond a size. Entries in use stay."""
    from charrnn.cli import dashboard, display, views
    from charrnn.data import cache

    if older_than is None and max_size is None:
        raise UsageError("give --older-than, --max-size or both (charrnn cache clear removes everything)")
    removed = cache.prune(parse_duration(older_than), cache.parse_size(max_size, "--max-size") if max_size else None)
    display.note(f"removed {len(removed)} entries, {sum(e.size for e in removed) / 1e6:,.1f} MB")


@cache_app.command("clear")
@friendly
def cache_clear() -> None:
    """Remove every entry that no running command is reading."""
    from charrnn.cli import dashboard, display, views
    from charrnn.data import cache

    removed = cache.prune(older_than=-1.0)
    kept = cache.entries()
    display.note(
        f"removed {len(removed)} entries, {sum(e.size for e in removed) / 1e6:,.1f} MB"
        + (f"; {len(kept)} in use or under an hour old kept" if kept else "")
    )


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


# Below this many columns Rich's help tables cut flag names short ("--save-every-mi…"); click's plain
# help wraps the text instead and keeps every name whole.
NARROW_HELP = 90


def _asks_for_json_lines(args: list[str]) -> bool:
    return "--log-format=jsonl" in args or any(a == "--log-format" and b == "jsonl" for a, b in zip(args, args[1:]))


def _run_with_json_usage_errors() -> None:
    """`--log-format jsonl` promises one JSON object per line of stderr: a mistyped flag too."""
    from charrnn.cli import dashboard, display, views

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
        _silence_stdout()
    except OSError as e:  # what the commands' own errors do for help and usage text (--help > /dev/full)
        _silence_stdout()
        from charrnn.cli import dashboard, display, views

        display.error(f"cannot write to standard output: {e.strerror or e}")
        raise SystemExit(1)
