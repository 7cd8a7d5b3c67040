"""`charrnn sample`: text from a trained model, raw on stdout (or one JSON object per sample)."""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import typer

from charrnn.cli.common import StdoutWriter, checkpoint_option, friendly, unknown_option
from charrnn.errors import CharRNNError, UsageError


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
    unknown=unknown_option("Prime characters outside the vocabulary."),
    checkpoint=checkpoint_option(),
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

    Every option and pipelines: docs/sampling.md.
    """
    import torch

    from charrnn.api import load
    from charrnn.data.sources import stdin_stream
    from charrnn.generation.sampler import Decoding, finish_reason

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
            out.write(emit(vocab.from_user(separator, "--separator") + (text if echo else "") + "".join(other)))
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
            "finish_reason": finish_reason(s, length, request.stop),
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
    from charrnn.cli import display

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
