"""A trained model for Python programs: `load` a run, then sample, stream, score and describe it.

The commands `charrnn sample`, `eval` and `surprise` load models through here too, so a program and
the command line read a checkpoint, apply the unknown-character policy and score text the same way;
with the same settings and seed, `Model.sample` returns the text that `charrnn sample` prints.
Nothing here prints: problems are raised as `CharRNNError` subclasses with the command's message.
"""

from __future__ import annotations

import codecs
import itertools
import math
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from charrnn import choices
from charrnn.config import check_seed, in_range, parse_duration, plain_number
from charrnn.data.catalog import Progress
from charrnn.data.corpus import Corpus, load_corpus
from charrnn.data.sources import STDIN, Source, TextOptions
from charrnn.data.vocab import Vocab
from charrnn.device import resolve_device, resolve_precision
from charrnn.errors import CharRNNError, InputError, Interrupted, UsageError, os_error_message
from charrnn.generation.sampler import Decoding, Request, Sampler
from charrnn.model.network import CharRNN
from charrnn.model.scoring import CONTEXT, by_character, score, surprisal, utf8_window
from charrnn.records import Info, Result, Score
from charrnn.storage import checkpoints as ckpt
from charrnn.training.report import Reporter
from charrnn.training.threads import Done, Note, ScoringWatch


def load(run_or_checkpoint: str | Path, which: str = "best", device: str = "cpu") -> Model:
    """Load a trained model.

    Args:
        run_or_checkpoint: a run directory (`runs/NAME`) or one of its checkpoint folders.
        which: for a run, "best" (its best validated checkpoint: what training hands back) or
            "latest" (its newest, where `--resume` goes on).
        device: "cpu", "cuda", "cuda:N", "mps" or "auto" (a GPU if there is one).

    Returns:
        The `Model`, ready to sample and score.

    Raises:
        CheckpointError: the path is no run or checkpoint, a pickle, or damaged files.
        UsageError: a bad `which` or `device`.
    """
    choices.check(which, choices.Checkpoint, "which=")
    if not isinstance(run_or_checkpoint, (str, os.PathLike)):
        raise UsageError(
            f"{run_or_checkpoint!r}: pass a run directory or checkpoint folder, as a str or a pathlib.Path"
        )
    return Model(ckpt.load(run_or_checkpoint, resolve_device(device), which=which))


class Model:
    """A loaded model. Each call starts from a fresh hidden state, so calls do not affect each other."""

    def __init__(self, loaded: ckpt.Loaded):
        self.checkpoint: Path = loaded.path  # the checkpoint folder the weights came from
        self.network: CharRNN = loaded.model.eval()  # the torch module, for programs that want it
        self.vocab: Vocab = loaded.vocab
        self.device: torch.device = loaded.model.head.weight.device
        self._loaded = loaded
        self._sampler = Sampler(self.network, self.vocab, self.device)
        # a text is read as the model's own was: a model trained with --keep-newlines knows "\r"
        self.keep_newlines = loaded.keep_newlines

    def __repr__(self) -> str:
        c = self.network.config
        return f"<charrnn.Model {c.layers}x{c.hidden_size} {c.cell} from {self.checkpoint}>"

    @property
    def info(self) -> Info:
        """What the checkpoint and its run hold: the fields of `charrnn info --json`."""
        return ckpt.summarize(self._loaded)

    # --- sampling ---------------------------------------------------------------------------

    def sample(
        self,
        prime: str = "",
        length: int = 1000,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] = (),
        seed: int | None = None,
        unknown: str = "error",
        echo: bool = False,
    ) -> str:
        """Generate text, as `charrnn sample` does: with the same settings and seed, the same text.

        Args:
            prime: text to start from (the model reads it first).
            length: most characters to generate after the prime.
            temperature: 0 (or below 1e-6) greedy, below 1 safer, above 1 wilder.
            top_k: draw only from the k most likely characters (None or 0: no limit).
            top_p: draw only from the most likely characters whose probability adds up to p.
            stop: a string, or several: the sample ends after the first of them it produces.
            seed: for the same text every time (None: a different one each call).
            unknown: prime characters outside the vocabulary: "error", "skip" or "replace".
            echo: put the prime before the continuation, as the command prints it.

        Returns:
            The continuation (with `echo`, the prime and the continuation).

        Raises:
            InputError: prime characters outside the vocabulary, with unknown="error".
            UsageError: a setting out of range, as the command's flags are checked.
        """
        return "".join(self.stream(prime, length, temperature, top_k, top_p, stop, seed, unknown, echo))

    def stream(
        self,
        prime: str = "",
        length: int = 1000,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] = (),
        seed: int | None = None,
        unknown: str = "error",
        echo: bool = False,
    ) -> Iterator[str]:
        """`sample`, piece by piece as the text is drawn: the same arguments; an iterator of pieces
        that, joined, are what `sample` returns. Raises as `sample`, at the call rather than at the
        first piece: the arguments are checked and the prime encoded before anything is drawn."""
        if not isinstance(echo, bool):
            raise UsageError(f"echo={echo!r}: must be True or False")
        length, temperature, top_k, top_p, seed = map(plain_number, (length, temperature, top_k, top_p, seed))
        decoding = Decoding(temperature, top_k, top_p)
        request = self.request(prime, length, stop, seed, unknown)
        sampler = self.sampler()
        prefix = request.prime if echo else ""
        steps = (chars[0] for chars in sampler.generate(request, decoding))
        return self._readable(prefix, steps)

    def request(
        self,
        prime: str,
        length: int,
        stop: str | Sequence[str] = (),
        seed: int | None = None,
        unknown: str = "error",
        count: int = 1,
        source: str = "--prime",
    ) -> Request:
        """A sampling request in the model's symbols: the prime with the `unknown` policy applied
        (error, skip or replace characters outside the vocabulary), the stop strings as symbols."""
        if not isinstance(prime, str):
            raise UsageError(f"prime={prime!r}: must be a str")
        if not in_range(length, 0, None, integer=True):
            raise UsageError(f"--length {length!r}: must be a whole number, at least 0")
        if seed is not None:
            check_seed(seed)
        stops = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, (list, tuple)) else None
        if stops is None or not all(isinstance(s, str) for s in stops):
            raise UsageError(f"stop={stop!r}: must be a str or a list of str")
        if "" in stops:  # it would end every sample before its first character (serve refuses it too)
            raise UsageError("--stop '': a stop string needs at least one character")
        return Request(
            prime=self.encode_prime(prime, unknown, source),
            length=length,
            count=count,
            stop=[self.symbols(s, "--stop") for s in stops],
            seed=seed,
        )

    def encode_prime(self, text: str, unknown: str = "error", source: str = "--prime") -> str:
        """`text` as the symbols the model reads, with the `unknown` policy applied; `source` names
        the text in the error (as `charrnn sample` names it)."""
        choices.check(unknown, choices.Unknown, "--unknown")
        return self._sampler.encode_prime(self.symbols(text, source), unknown, source=source)

    def symbols(self, text: str, source: str = "text") -> str:
        """Text from a user as the symbols the model reads, as its training text was read."""
        return self._loaded.symbols(text, source)

    def sampler(self, readback: int | None = None) -> Sampler:
        """A sampler with its own fresh hidden state (sharing this model's weights)."""
        return Sampler(self.network, self.vocab, self.device, readback, fast=self._sampler.fast)

    def _readable(self, prefix: str, symbols: Iterator[str]) -> Iterator[str]:
        """Text from symbols: themselves for a character model; for a byte-level model their UTF-8
        decoding (a character split across steps comes out whole, an invalid byte as U+FFFD)."""
        pieces = itertools.chain([prefix] if prefix else [], symbols)
        if self.vocab.kind != "bytes":
            yield from pieces
            return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for piece in pieces:
            if text := decoder.decode(piece.encode("latin-1")):
                yield text
        if tail := decoder.decode(b"", final=True):
            yield tail

    # --- scoring ----------------------------------------------------------------------------

    def score(self, text: str, unknown: str = "error", streams: int | None = None) -> Score:
        """The model's loss on `text`, as `charrnn eval` computes it for a file holding it ("\\r\\n"
        and "\\r" read as "\\n", unless the model was trained with --keep-newlines).

        Args:
            text: at least two characters (the first has no context to be scored from).
            unknown: characters outside the vocabulary: "error", "skip" (left out) or "replace".
            streams: contiguous pieces scored side by side (None: from the length; 1: exactly sequential).

        Returns:
            A `Score`: `nats` per character, `bits_per_char`, `perplexity`, `characters` scored.

        Raises:
            InputError: characters outside the vocabulary with unknown="error", or a text too short.
            UsageError: a bad `unknown` or `streams`.
        """
        choices.check(unknown, choices.Unknown, "--unknown")
        if not isinstance(text, str):
            raise UsageError(f"text={text!r}: must be a str (score_file reads a file)")
        symbols = self.symbols(text)
        data = Corpus(self.vocab.encode(symbols, unknown, source="text"), self.vocab)
        return self.score_corpus(data, "text", streams)

    def score_file(
        self,
        path: str | Path,
        encoding: str = "utf-8",
        errors: str = "strict",
        unknown: str = "error",
        streams: int | None = None,
    ) -> Score:
        """The model's loss on a file, as `charrnn eval` scores it.

        Args:
            path: a file, a corpus name (`builtin`, `tinyshakespeare`) or "-" for standard input.
            encoding: the file's text encoding.
            errors: bytes that do not decode: "strict" (refused), "replace" or "ignore".
            unknown: characters outside the vocabulary: "error", "skip" or "replace".
            streams: as in `score`.

        Returns:
            A `Score`, as `score` returns.

        Raises:
            InputError: a missing or undecodable file, or characters outside the vocabulary.
            UsageError: a bad `errors`, `unknown` or `streams`.
        """
        label = "standard input" if str(path) == STDIN else str(path)
        return self.score_corpus(self.read(path, encoding, errors, unknown), label, streams)

    def read(
        self,
        path: str | Path | Source,
        encoding: str = "utf-8",
        errors: str = "strict",
        unknown: str = "error",
        progress: Progress | None = None,
    ) -> Corpus:
        """A file (a corpus name, "-" for standard input) encoded in this model's vocabulary, as
        `charrnn eval` and `surprise` read it; `errors` (strict, replace or ignore) for undecodable bytes."""
        choices.check(unknown, choices.Unknown, "--unknown")
        choices.check(errors, choices.DecodingErrors, "--errors")
        path = path if isinstance(path, Source) else str(path)
        options = TextOptions(encoding, errors, keep_newlines=self.keep_newlines)
        return load_corpus([path], options, vocab=self.vocab, unknown=unknown, progress=progress)

    def score_corpus(
        self, data: Corpus, label: str = "text", streams: int | None = None, progress: Done = None, note: Note = None
    ) -> Score:
        """Loss of the model on encoded text; `label` names the text in the error if it is too short.
        `progress(done, total)` hears how many characters are scored as it goes. On a CPU the thread
        count adapts to another program's load (`note(message)` hears of it), as training's does."""
        data.require(2, label, "scoring (the first character has no context)")
        streams = plain_number(streams)
        if streams is not None and not in_range(streams, 1, None, integer=True):
            raise UsageError(f"--streams {streams!r}: must be a whole number, at least 1")
        dtype = resolve_precision("auto", self.device)
        with ScoringWatch(len(data.ids) - 1, self.device, progress, note) as watch:
            result = score(self.network, data.ids, self.device, streams=streams, dtype=dtype, progress=watch)
        if not math.isfinite(result.nats):  # weights that overflow on this text: no figure to give
            raise CharRNNError(
                f"{label}: the model's loss on it is not a number ({result.nats}): its weights overflow; "
                f"use another checkpoint than {self.checkpoint}"
            )
        return result

    def surprisal(
        self, data: Corpus, start: int, length: int, progress: Done = None, note: Note = None
    ) -> tuple[list[str], list[float]]:
        """How surprising each character of `data`'s window [start, start + length) was, in nats: the
        characters and their losses (a byte-level model's window widened to whole characters).
        `progress` and `note` as in `score_corpus`."""
        byte_level = self.vocab.kind == "bytes"
        if byte_level:
            start, length = utf8_window(data.ids, start, length)
        total = min(len(data.ids), start + length) - max(0, start - CONTEXT) - 1
        with ScoringWatch(total, self.device, progress, note) as watch:
            losses = surprisal(self.network, data.ids, start, length, self.device, progress=watch)
        symbols = self.vocab.decode(data.ids[start : start + length].tolist())
        return by_character(symbols, losses, byte_level)

    def unknown_note(self, label: str, count: int, unknown: str) -> str:
        """What scoring a text with `count` characters outside the vocabulary did with them."""
        if unknown == "skip":
            done = "left out, so the figure is for the rest of the text"
        else:
            done = f"each scored as {self.vocab.chars[self.vocab.replacement_id]!r} instead"
        many = f"{count:,} characters are" if count != 1 else "1 character is"
        return f"{label}: {many} not in the vocabulary of {self.checkpoint}: {done} (--unknown {unknown})"


def train(corpus=None, out=None, max_time=None, **options) -> Result:
    """Train a model, as `charrnn train` does.

    Args:
        corpus: a file, a directory, a corpus name, or a list of them (None: the built-in corpus).
        out: the run directory (None: runs/<corpus>-<cell>-<time>).
        max_time: the budget, in seconds or as a duration such as "5m".
        **options: the options of `charrnn train` with underscores: the model and training settings
            (layers=2, hidden_size=256, dropout=0.2, lr=3e-3, max_steps=1000, ...), and preset, resume,
            init_from, val_file, encoding, errors, keep_newlines, bytes, glob, unknown, device, and
            `reporter` (a charrnn Reporter, for progress).

    Returns:
        How the run ended, a `Result`: `result.run_dir` is the run, `charrnn.load(result.run_dir)`
        its best model.

    Raises:
        UsageError: a bad setting, as the command's flags are refused, before anything is read.
        InputError: a text that cannot be read or is too short; CharRNNError for other bad input,
            with the message the command line prints. Ctrl-C and SIGTERM are passed on once the run is saved.
    """
    from charrnn.training.request import RunRequest
    from charrnn.training.session import prepare

    reporter = options.pop("reporter", None)
    options = {k: plain_number(v) for k, v in options.items()}  # numpy numbers, kept in JSON as numbers
    if reporter is not None and not isinstance(reporter, Reporter):
        raise UsageError(f"reporter={reporter!r}: must be a charrnn.training.report.Reporter (or None for no progress)")
    text_keys = {"encoding", "errors", "keep_newlines", "bytes"}
    for key in ("keep_newlines", "bytes"):  # bytes="no" would be true
        if key in options and not isinstance(options[key], bool):
            raise UsageError(f"{key}={options[key]!r}: must be True or False")
    text = TextOptions(**{k: options.pop(k) for k in list(options) if k in text_keys})
    plain_keys = ("preset", "resume", "init_from", "val_file", "glob", "unknown", "device")
    plain = {k: options.pop(k) for k in list(options) if k in plain_keys}
    for key in ("resume", "init_from", "val_file"):
        if plain.get(key) is not None:
            plain[key] = _path(key, plain[key])
    choices.check(plain.get("unknown", "error"), choices.Unknown, "--unknown")
    if not isinstance(plain.get("glob", "*"), str):
        raise UsageError(f"--glob {plain['glob']!r}: must be a str such as '*.txt'")
    if max_time is not None:
        options["max_time"] = parse_duration(plain_number(max_time))
    corpus = [] if corpus is None else corpus if isinstance(corpus, (list, tuple)) else [corpus]
    corpus = [str(_path("corpus", c)) for c in corpus]
    out = None if out is None else _path("out", out)
    given = set(options) | set(plain) | {k for k in text_keys if getattr(text, k) != getattr(TextOptions(), k)}
    if out is not None:
        given.add("out")
    request = RunRequest(corpus=corpus, out=out, settings=options, text=text, given=given, **plain)
    try:
        session = prepare(request)
    except OSError as e:  # a file of the text that vanished or cannot be read, as the command says it
        raise InputError(os_error_message(e)) from e
    try:
        return session.execute(reporter)
    except Interrupted as e:
        stopped_by = e.exit_code - 128
    except OSError as e:  # a checkpoint that could not be written: disk full, read-only
        raise CharRNNError(os_error_message(e)) from e
    finally:
        if session.trainer is not None:
            session.trainer.restore_signals()  # the program's own Ctrl-C handling, after a signal too
        session.release()
    # saved; now the signal does to the program what it would have done without the run: SIGTERM
    # (docker stop, systemd) its own handler or the end of the process, Ctrl-C a KeyboardInterrupt
    if stopped_by == signal.SIGTERM:
        signal.raise_signal(signal.SIGTERM)
    raise KeyboardInterrupt


def _path(name: str, value) -> Path:
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise UsageError(f"{name}={value!r}: must be a path, as a str or a pathlib.Path")
