"""The optimizer a run trains with: AdamW, weight decay on the weight matrices only."""

from __future__ import annotations

import torch

from charrnn.config import TrainConfig
from charrnn.model.network import CharRNN


def make_optimizer(model: CharRNN, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over `model`, with decay on matrices only: biases and the embedding (a lookup) are left alone."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("embedding") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # On CUDA the fused kernel updates every parameter in one launch instead of several per tensor.
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=device.type == "cuda")
