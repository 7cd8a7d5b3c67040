"""The model: embedding -> multi-layer LSTM / GRU / tanh RNN -> dropout -> linear head.

`ModelConfig` is the single description of a model; checkpoints store exactly it, so a model is
always rebuilt from its own description.
"""

from __future__ import annotations

import torch
from torch import nn

from charrnn.config import ModelConfig

MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

# The hidden state a recurrent layer carries: (h, c) for an LSTM, h for GRU and RNN.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        rnn_kwargs = {"nonlinearity": "tanh"} if config.cell == "rnn" else {}
        self.rnn = MODULES[config.cell](
            config.embedding_size,
            config.hidden_size,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
            **rnn_kwargs,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (batch, time, vocab) for ids `x` (batch, time), and the state after the last step."""
        out, state = self.rnn(self.embedding(x), state)
        return self.head(self.drop(out)), state

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        c = self.config
        zeros = torch.zeros(c.layers, batch, c.hidden_size, device=device)
        return (zeros, zeros.clone()) if c.cell == "lstm" else zeros

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach(state: State) -> State:
    """Cut the graph at the batch border (truncated BPTT) while keeping the values."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def state_tensors(state: State) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def state_from_tensors(tensors: list[torch.Tensor]) -> State:
    return tuple(tensors) if len(tensors) == 2 else tensors[0]
