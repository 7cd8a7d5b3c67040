"""Loss of a model on a text: nats per character, bits per character and perplexity."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.batches import IGNORE, eval_batches, piece_batches, sample_starts
from charrnn.device import autocast
from charrnn.model.network import CharRNN, state_tensors
from charrnn.records import Score

WARMUP = 256  # characters each scored piece reads first, unscored, so it starts with context
CHUNK = 64  # characters per stream per forward call: on a CPU faster than 256 (benchmarks/score_speed.py)
SURPRISAL_CHUNK = 65_536  # characters of one stream per forward call (a million fail in oneDNN)
CONTEXT = 2000  # characters a surprisal window is read after


def default_streams(n: int, warmup: int = WARMUP, most: int = 32) -> int:
    """Streams for scoring `n` characters: as many as batch well, but few enough that their warm-up
    reading costs at most about a tenth; a short text is read in one stream, which is exact."""
    return max(1, min(most, n // (10 * warmup)))


@torch.no_grad()
def score(
    model: CharRNN,
    ids: np.ndarray,
    device: torch.device,
    streams: int | None = None,
    seq_len: int = CHUNK,
    dtype: torch.dtype | None = None,
    warmup_batches: int = WARMUP // CHUNK,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Score:
    """Score every character of `ids` after the first, carrying the hidden state through the text.

    The text is read as `streams` contiguous pieces side by side (batched for speed; default: from
    its length); each piece carries its state from start to end, and first reads the
    `warmup_batches * seq_len` characters before it unscored, so that it starts with context as a
    single sequential pass would (`streams=1`, the exact figure; docs/design.md gives the
    difference). At `deadline` (a `time.perf_counter()` value) scoring stops: the Score then covers
    the start of every stream, `characters` says how much (0: none). `progress` is called after
    each batch with the number of characters scored so far."""
    streams = streams or default_streams(len(ids), warmup_batches * seq_len)
    batches = eval_batches(ids, streams, seq_len, warmup_batches)
    # stream 0 has no text before it: it read padding during the warm-up and starts afresh
    return _mean(
        *_score_batches(
            model, batches, device, dtype, reset_row0_after=warmup_batches, deadline=deadline, progress=progress
        )
    )


@dataclass(frozen=True)
class Pieces:
    """A fixed, bounded sample of a held-out text for quick periodic validation: `len(starts)`
    contiguous pieces of `length` characters spread evenly over it, each read after `warmup`
    characters of the text before it. The same pieces every time, so estimates compare."""

    starts: np.ndarray
    length: int
    warmup: int = WARMUP
    LENGTH = 1024
    FRACTION_SCORED = LENGTH / (LENGTH + WARMUP)  # of the characters read, with the default length and warm-up

    @classmethod
    def spread(cls, n: int, chars: float, length: int = LENGTH, warmup: int = WARMUP) -> Pieces:
        """About `chars` characters to score (at least one piece) of a text of `n`. Pieces of about
        a thousand characters: a shorter one starts too cold, and fewer, longer ones sample a varied
        text less evenly (benchmarks/estimate_designs.py)."""
        count = max(1, round(chars / length))
        return cls(sample_starts(n, count, length, warmup), length, warmup)

    @property
    def characters(self) -> int:
        """Characters scored."""
        return len(self.starts) * self.length

    @property
    def cost(self) -> int:
        """Characters read, warm-ups included."""
        return len(self.starts) * (self.length + self.warmup)


@torch.no_grad()
def score_pieces(
    model: CharRNN, ids: np.ndarray, pieces: Pieces, device: torch.device, dtype: torch.dtype | None = None
) -> Score:
    """The loss on a fixed sample of `ids` (see `Pieces`): an estimate of `score` at a bounded cost."""
    batches = piece_batches(ids, pieces.starts, pieces.length, CHUNK, pieces.warmup)
    sums, counts = _score_batches(model, batches, device, dtype)
    scored = counts > 0  # a piece longer than the text scores nothing
    means = sums[scored] / counts[scored]
    return replace(_mean(sums, counts, standard_error(means)), pieces=tuple(means.tolist()))


def _mean(sums: np.ndarray, counts: np.ndarray, error: float | None = None) -> Score:
    """The loss per character over rows' summed losses and counts (NaN when nothing was scored)."""
    count = int(counts.sum())
    return Score(float(sums.sum()) / count if count else float("nan"), count, error)


def standard_error(means: np.ndarray) -> float | None:
    """Standard error of the mean of `means`, a systematic sample in text order: from the squared
    differences of neighbouring pieces, which a text made of long stretches of different kinds
    (documentation, then tables) does not inflate as the spread of the pieces would; twice it is
    the margin a run states (benchmarks/estimate_designs.py checks how often it covers the whole figure)."""
    k = len(means)
    if k < 2:
        return None
    return float(np.sqrt(np.sum(np.diff(means) ** 2) / (2 * k * (k - 1))))


def _score_batches(
    model: CharRNN,
    batches,
    device: torch.device,
    dtype,
    reset_row0_after: int | None = None,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed loss and count of scored characters of each row, over batches whose hidden state
    carries from one to the next; the sums stay on the device until the end (no host
    synchronisation per batch). Batches after `deadline` are left."""
    was_training = model.training
    model.eval()
    sums, counts, state = None, None, None
    try:
        for i, (x, y) in enumerate(batches):
            if deadline is not None and time.perf_counter() > deadline:
                break
            if sums is None:
                sums = torch.zeros(len(x), dtype=torch.float64, device=device)
                counts = torch.zeros(len(x), dtype=torch.int64)
            if i == reset_row0_after and state is not None:
                for tensor in state_tensors(state):
                    tensor[:, 0] = 0
            counts += (y != IGNORE).sum(1)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits, state = model(x, state)
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="none")
            sums += losses.view(len(y), -1).sum(1)
            if progress is not None:
                progress(int(counts.sum()))
    finally:
        model.train(was_training)
    if sums is None:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return sums.cpu().numpy(), counts.numpy()


@torch.no_grad()
def surprisal(
    model: CharRNN,
    ids: np.ndarray,
    start: int,
    length: int,
    device: torch.device,
    context: int = CONTEXT,
    dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Loss in nats of each character in ids[start : start + length], given what precedes it.

    Up to `context` earlier characters are fed first so the window is read with a warmed-up state.
    The very first character of a text has no context and is not scored (NaN). The text is read
    in chunks, carrying the state, so a window of any length fits. `dtype`: as in `score`;
    `progress` is called after each chunk with the number of characters read so far, context included."""
    begin = max(0, start - context)
    text = np.asarray(ids[begin : min(len(ids), start + length)])
    losses, done = [np.full(1, np.nan)], 0
    for chunk in chunk_losses(model, text, device, SURPRISAL_CHUNK, dtype):
        losses.append(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return np.concatenate(losses)[start - begin :]


def chunk_losses(
    model: CharRNN, ids: np.ndarray, device: torch.device, chunk: int = CHUNK, dtype: torch.dtype | None = None
) -> Iterator[np.ndarray]:
    """Loss in nats of each of ids[1:] given what precedes it, `chunk` characters per forward call,
    the state carried: each call's losses as they come, so that a caller can pause or stop between
    two calls (the server scores a long text between its streams' steps). `dtype`: as in `score`."""
    was_training = model.training
    model.eval()
    try:
        text, state = np.asarray(ids).astype(np.int64), None
        for at in range(0, len(text) - 1, chunk):
            x = torch.from_numpy(text[at : at + chunk + 1]).to(device).unsqueeze(0)
            with torch.no_grad(), autocast(device, dtype):
                logits, state = model(x[:, :-1], state)
            yield F.cross_entropy(logits[0].float(), x[0, 1:], reduction="none").cpu().numpy()
    finally:
        model.train(was_training)


def by_character(symbols: str, losses: np.ndarray, byte_level: bool) -> tuple[list[str], np.ndarray]:
    """Symbols and their losses (from `surprisal`) as characters a person reads: a byte-level
    model's symbols are bytes, so each UTF-8 character gathers its bytes, with the sum of their
    losses (the loss of the whole character); a byte that starts no valid character stays on its own,
    shown as U+FFFD. The losses still add up to the total; NaN only where no byte was scored."""
    if not byte_level:
        return list(symbols), np.asarray(losses)
    data, chars, sums, at = symbols.encode("latin-1"), [], [], 0
    while at < len(data):
        size = _utf8_length(data[at])
        try:
            chars.append(data[at : at + size].decode("utf-8"))
        except UnicodeDecodeError:
            chars.append("\ufffd")
            size = 1
        part = losses[at : at + size]
        sums.append(float(np.nansum(part)) if not np.isnan(part).all() else float("nan"))
        at += size
    return chars, np.asarray(sums)


def _utf8_length(lead: int) -> int:
    """Bytes of the UTF-8 character that starts with the byte `lead` (1 for a byte that starts none)."""
    for size, (mask, value) in enumerate(((0x80, 0x00), (0xE0, 0xC0), (0xF0, 0xE0), (0xF8, 0xF0)), 1):
        if lead & mask == value:
            return size
    return 1


def utf8_window(ids: np.ndarray, start: int, length: int) -> tuple[int, int]:
    """A window of a byte-level model's symbols widened to whole UTF-8 characters at both ends."""

    def inside(i: int) -> bool:  # a continuation byte: the middle of a character
        return i < len(ids) and 0x80 <= int(ids[i]) < 0xC0

    for _ in range(3):
        if start > 0 and inside(start):
            start, length = start - 1, length + 1
    for _ in range(3):
        if inside(start + length):
            length += 1
    return start, length
