"""The model: embedding -> multi-layer LSTM / GRU / tanh RNN -> dropout -> linear head.

`ModelConfig` is the single description of a model; checkpoints store exactly it, so a model is
always rebuilt from its own description.

Training with dropout on a CPU runs the layers one at a time with `fast_dropout` between them:
PyTorch's own dropout draws one float per element, a large share of a small model's training
step. Elsewhere (evaluation, sampling, GPUs) the nn module runs
all layers in one call; both compute the same thing (tests/test_model.py).
"""

from __future__ import annotations

import torch
from torch import nn

from charrnn.config import ModelConfig

MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# What each module calls inside: the op for `num_layers` layers, here called with one at a time.
FUNCTIONS = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}

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
        p, embedded = self.config.dropout, self.embedding(x)
        if self.training and p > 0 and x.device.type == "cpu":
            out, state = self.layer_by_layer(embedded, state, p)
            out = fast_dropout(out, p)
        else:
            out, state = self.rnn(embedded, state)
            out = self.drop(out)
        return self.head(out), state

    def layer_by_layer(self, x: torch.Tensor, state: State | None, dropout: float) -> tuple[torch.Tensor, State]:
        """What `self.rnn` computes, one layer at a time, with `fast_dropout` between the layers."""
        c = self.config
        carried = state_tensors(state if state is not None else self.initial_state(x.shape[0], x.device))
        finals = []
        for i in range(c.layers):
            if i:
                x = fast_dropout(x, dropout)
            weights = [getattr(self.rnn, f"{name}_l{i}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            layer_state = [t[i : i + 1] for t in carried]
            if c.cell != "lstm":
                layer_state = layer_state[0]
            # (input, state, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
            x, *final = FUNCTIONS[c.cell](x, layer_state, weights, True, 1, 0.0, self.training, False, True)
            finals.append(final)
        return x, state_from_tensors([torch.cat(parts) for parts in zip(*finals)])

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        c = self.config
        zeros = torch.zeros(c.layers, batch, c.hidden_size, device=device)
        return (zeros, zeros.clone()) if c.cell == "lstm" else zeros

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout, as `F.dropout` in training, with the mask drawn as random 16-bit integers
    (four per random 64-bit word) instead of one random float per element: several times faster
    on a CPU. `p` is rounded to a multiple of 1/65536."""
    dropped = round(p * 65536)
    if dropped == 0:
        return x
    words = torch.randint(-(2**63), 2**63 - 1, (x.numel() // 4 + 1,), dtype=torch.int64, device=x.device)
    noise = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform over -32768..32767
    return x * (noise >= dropped - 32768) * (65536 / (65536 - dropped))


def detach(state: State) -> State:
    """Cut the graph at the batch border (truncated BPTT) while keeping the values, in fp32: under
    autocast the RNN returns its state in bf16 or fp16, and a state carried (or checkpointed) in
    that dtype breaks a later step run in another precision (oneDNN's fp32 LSTM refuses a bf16
    state). bf16 and fp16 convert to fp32 exactly, so this changes no value."""
    return tuple(s.detach().float() for s in state) if isinstance(state, tuple) else state.detach().float()


def state_tensors(state: State) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def state_from_tensors(tensors: list[torch.Tensor]) -> State:
    return tuple(tensors) if len(tensors) == 2 else tensors[0]
