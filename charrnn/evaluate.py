"""Loss of a model on a text: nats per character, bits per character and perplexity."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.batches import IGNORE, eval_batches
from charrnn.model import CharRNN, state_tensors


@dataclass(frozen=True)
class Score:
    nats: float  # mean cross-entropy per predicted character
    characters: int  # characters predicted (the first character of a text has no context)

    @property
    def bits_per_char(self) -> float:
        return self.nats / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nats, 700.0))

    def to_json(self) -> dict:
        return {
            "nats": self.nats,
            "bits_per_char": self.bits_per_char,
            "perplexity": self.perplexity,
            "characters": self.characters,
        }


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass, or nothing for full precision."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def score(
    model: CharRNN,
    ids: np.ndarray,
    device: torch.device,
    streams: int = 64,
    seq_len: int = 256,
    dtype: torch.dtype | None = None,
    warmup_batches: int = 1,
) -> Score:
    """Score every character of `ids` after the first, carrying the hidden state through the text.

    The text is read as `streams` contiguous pieces side by side (batched for speed); each piece
    carries its state from start to end, and first reads the `warmup_batches * seq_len` characters
    before it unscored, so that it starts with context as a single sequential pass would
    (`streams=1`, the exact figure; the difference is measured in benchmarks/README.md)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    state = None
    try:
        for i, (x, y) in enumerate(eval_batches(ids, streams, seq_len, warmup_batches)):
            if i == warmup_batches and state is not None:  # stream 0 read padding: start it afresh
                for tensor in state_tensors(state):
                    tensor[:, 0] = 0
            x, y = x.to(device), y.to(device)
            with autocast(device, dtype):
                logits, state = model(x, state)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
            total += loss.item()
            count += int((y != IGNORE).sum())
    finally:
        model.train(was_training)
    return Score(total / count if count else float("nan"), count)


@torch.no_grad()
def surprisal(
    model: CharRNN, ids: np.ndarray, start: int, length: int, device: torch.device, context: int = 2000
) -> np.ndarray:
    """Loss in nats of each character in ids[start : start + length], given what precedes it.

    Up to `context` earlier characters are fed first so the window is read with a warmed-up state.
    The very first character of a text has no context and is not scored (NaN)."""
    was_training = model.training
    model.eval()
    try:
        begin = max(0, start - context)
        end = min(len(ids), start + length)
        x = torch.from_numpy(np.asarray(ids[begin:end]).astype(np.int64)).to(device).unsqueeze(0)
        logits, _ = model(x[:, :-1])
        losses = F.cross_entropy(logits[0].float(), x[0, 1:], reduction="none").cpu().numpy()
        per_char = np.concatenate([[np.nan], losses])  # loss of x[i] given x[:i]
        return per_char[start - begin :]
    finally:
        model.train(was_training)
