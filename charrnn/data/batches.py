"""Splits and stateful stream batching for truncated back-propagation through time.

The text is cut into `batch_size` contiguous streams; batch i holds characters [i*T, (i+1)*T] of
every stream, so row b of batch i+1 continues exactly where row b of batch i stopped and the
model's hidden state can be carried from one batch to the next.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from charrnn.errors import CharRNNError

IGNORE = -100  # target id that the loss skips (padding in evaluation)


def split(ids: np.ndarray, val_fraction: float, val_max_chars: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the text for training, the contiguous rest for validation, at most
    `val_max_chars` of it (every evaluation scores all of it: a tenth of 1 GB would take an hour)."""
    if val_fraction <= 0:
        return ids, ids[:0]
    cut = int(len(ids) * (1 - val_fraction))  # as nanoGPT: 1,003,854 of tiny-shakespeare for training
    if val_max_chars:
        cut = max(cut, len(ids) - val_max_chars)
    return ids[:cut], ids[cut:]


def min_characters(batch_size: int, seq_len: int) -> int:
    return batch_size * seq_len + 1


def fit_batch_size(n_chars: int, batch_size: int, seq_len: int, multiple: int = 1) -> int:
    """The largest batch size <= `batch_size` (a multiple of `multiple`) that `n_chars` can fill,
    or 0 if not even one batch of `multiple` streams fits."""
    fits = max(0, (n_chars - 1) // seq_len)
    return min(batch_size, fits - fits % multiple)


class StreamBatches:
    """Training batches as contiguous streams; this rank's rows are streams rank, rank+world, ..."""

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        if len(data) < min_characters(batch_size, seq_len):
            raise CharRNNError(
                f"training text has {len(data):,} characters but batch size {batch_size} x sequence length "
                f"{seq_len} needs at least {min_characters(batch_size, seq_len):,}; "
                "use more text or lower --batch-size / --seq-len"
            )
        self.data = data
        self.seq_len = seq_len
        self.stream_len = (len(data) - 1) // batch_size
        self.batches_per_epoch = self.stream_len // seq_len
        self.starts = (np.arange(batch_size, dtype=np.int64) * self.stream_len)[rank::world]
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (rows, seq_len) of batch `index` within an epoch."""
        rows = self.data[self.starts[:, None] + index * self.seq_len + self._offsets]
        chunk = torch.from_numpy(rows.astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]


def eval_batches(
    data: np.ndarray, streams: int, seq_len: int, warmup_batches: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every character of `data` after the first, scored exactly once, in `streams` contiguous
    streams whose hidden state the caller carries from batch to batch. Padding targets are IGNORE.

    With `warmup_batches`, each stream first reads that many batches of the text just before its
    own piece without scoring them, so that its first characters are predicted with context, as a
    single sequential pass would. Stream 0 has nothing before it: it reads padding then, and the
    caller resets its state (row 0) after the warm-up."""
    n = len(data) - 1
    if n < 1:
        return
    streams = max(1, min(streams, n))
    length = -(-n // streams)  # ceil: the last stream is shorter, padded with IGNORE
    starts = np.arange(streams, dtype=np.int64) * length
    yield from piece_batches(data, starts, length, seq_len, warmup_batches * seq_len)


def piece_batches(
    data: np.ndarray, starts: np.ndarray, length: int, seq_len: int, warmup: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Pieces data[start : start + length] side by side, one per row, `seq_len` characters a batch;
    each row first reads the `warmup` characters before its piece unscored. Positions before the
    text or past its end read padding and are not scored."""
    n = len(data) - 1
    base = np.asarray(starts, dtype=np.int64)[:, None]
    for start in range(-warmup, length, seq_len):
        offsets = start + np.arange(min(seq_len, length - start), dtype=np.int64)
        pos = base + offsets
        readable = (pos >= 0) & (pos < n)
        scored = readable & (offsets >= 0)
        pos = np.where(readable, pos, 0)
        x = torch.from_numpy(data[pos].astype(np.int64))
        y = torch.from_numpy(np.where(scored, data[pos + 1].astype(np.int64), IGNORE))
        yield x, y


def sample_starts(n: int, pieces: int, length: int, warmup: int) -> np.ndarray:
    """Start positions of `pieces` pieces of `length` spread evenly over a text of `n` characters,
    each with `warmup` characters of text before it: the same pieces every time."""
    first, last = min(warmup, n), max(min(warmup, n), n - 1 - length)
    return np.linspace(first, last, pieces).round().astype(np.int64)
