"""Weight averaging: what a run validates, saves and samples when --ema is on."""

from __future__ import annotations

import copy

import torch

from charrnn.model.network import CharRNN


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), kept in a copy of the
    model. Late in training the raw weights jitter around a minimum; their average lies nearer to
    it and generalises better (benchmarks/weight_average.py)."""

    def __init__(self, model: CharRNN, decay: float, warmup: float = 10.0):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.model.rnn.flatten_parameters()  # a copy loses cuDNN's one weight buffer (no-op on a CPU)
        self.params = list(self.model.parameters())
        self.decay = decay
        self.warmup = warmup  # decay <= (1 + step) / (warmup + step): about the last 1/(warmup - 1) of a run

    @torch.no_grad()
    def update(self, model: CharRNN, step: int) -> None:
        """Move the average towards `model` after training step `step` (1, 2, ...)."""
        weight = 1 - min(self.decay, (1 + step) / (self.warmup + step))
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], weight)  # one launch on a GPU
