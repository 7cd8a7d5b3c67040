"""A fast single-character inference step computing exactly what nn.LSTM / nn.GRU / nn.RNN compute.

Calling `nn.LSTM` once per character pays the full per-call cost of PyTorch's fused RNN kernels for
one time step, which dominates at batch size 1. Here each step is a few plain tensor operations:
- the embedding is folded into the first layer's input weights: a (vocab, gates) lookup table that
  already holds both biases, so layer 1's input product becomes a row gather;
- every other layer does one `addmm` per weight matrix, with the biases folded in once;
- the gate non-linearities run on the whole gate vector at once.
Tested against the nn modules in tests/test_inference.py.

A step of many rows (a server's batch, serving/engine.py) can run its products in bf16 (`low=True`, with
`FastStep(model, low=torch.bfloat16)`): on a CPU with native bf16 a 32-row step of a 2x512 LSTM
takes 1.4 ms instead of 2.0 (one thread; from about 12 rows on it is the faster, below the
slower). Inputs and weights are rounded to bf16, products add up in fp32, and everything else
(the first layer's table, biases, gates, cell state) stays in fp32: logits move by about 1e-3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from charrnn.model.network import CharRNN, State


class FastStep:
    """step(ids, state) -> (logits, state) for one character per row, state as nn.<cell> shapes."""

    def __init__(self, model: CharRNN, low: torch.dtype | None = None):
        c = model.config
        self.cell, self.layers, self.hidden = c.cell, c.layers, c.hidden_size
        rnn = model.rnn
        with torch.no_grad():
            self.w_hh = [getattr(rnn, f"weight_hh_l{i}").detach().t().contiguous() for i in range(c.layers)]
            self.w_ih = [getattr(rnn, f"weight_ih_l{i}").detach().t().contiguous() for i in range(c.layers)]
            b_ih = [getattr(rnn, f"bias_ih_l{i}").detach() for i in range(c.layers)]
            b_hh = [getattr(rnn, f"bias_hh_l{i}").detach() for i in range(c.layers)]
            H = c.hidden_size
            if c.cell == "gru":
                # The new-gate's hidden bias sits inside r * (W_hn h + b_hn): it cannot be folded into
                # the input side, so only the r and z parts of b_hh are.
                self.bias = [
                    b_ih[i] + torch.cat([b_hh[i][: 2 * H], torch.zeros_like(b_hh[i][2 * H :])]) for i in range(c.layers)
                ]
                self.b_hn = [b_hh[i][2 * H :].clone() for i in range(c.layers)]
            else:
                self.bias = [b_ih[i] + b_hh[i] for i in range(c.layers)]
            # Layer 1's input side for every character: embedding @ W_ih^T + biases.
            self.table = (model.embedding.weight.detach() @ self.w_ih[0] + self.bias[0]).contiguous()
            self.head_w = model.head.weight.detach().t().contiguous()
            self.head_b = model.head.bias.detach().clone()
        # CUDA graphs of blocks of characters that samplers of this model recorded (generation/sampler.py), by
        # block, rows and decoding, oldest first; why recording failed, if it did
        self.graphs: dict = {}
        self.graph_error: str | None = None
        # (w_ih, w_hh, head_w) for a step's products: full precision, and `low` when asked for
        self.weights = {False: (self.w_ih, self.w_hh, self.head_w)}
        if low is not None:
            self.weights[True] = ([w.to(low) for w in self.w_ih], [w.to(low) for w in self.w_hh], self.head_w.to(low))

    def from_module(self, state: State) -> list:
        """nn.<cell> state (layers, batch, hidden) -> the per-layer list `step` works on."""
        if self.cell == "lstm":
            return [(state[0][i], state[1][i]) for i in range(self.layers)]
        return [state[i] for i in range(self.layers)]

    def to_module(self, state: list) -> State:
        if self.cell == "lstm":
            return torch.stack([h for h, _ in state]), torch.stack([c for _, c in state])
        return torch.stack(state)

    def step(self, ids: Tensor, state: list, low: bool = False) -> tuple[Tensor, list]:
        """One character per row: `ids` (batch,) and the per-layer state -> logits (batch, vocab), new
        state. `low`: the products in the lower precision this FastStep was made with."""
        H = self.hidden
        w_ih, w_hh, head_w = self.weights[low]
        new = []
        x = None
        for i in range(self.layers):
            inp = self.table.index_select(0, ids) if i == 0 else _addmm(self.bias[i], x, w_ih[i])
            if self.cell == "lstm":
                h, c = state[i]
                gates = _addmm(inp, h, w_hh[i], inplace=True)
                sig = torch.sigmoid(gates)
                c = sig[:, H : 2 * H] * c + sig[:, :H] * torch.tanh(gates[:, 2 * H : 3 * H])
                h = sig[:, 3 * H :] * torch.tanh(c)
                new.append((h, c))
            elif self.cell == "gru":
                h = state[i]
                hidden_part = _mm(h, w_hh[i])
                rz = torch.sigmoid(inp[:, : 2 * H] + hidden_part[:, : 2 * H])
                n = torch.tanh(inp[:, 2 * H :] + rz[:, :H] * (hidden_part[:, 2 * H :] + self.b_hn[i]))
                h = n + rz[:, H:] * (state[i] - n)  # (1 - z) * n + z * h
                new.append(h)
            else:
                h = torch.tanh(_addmm(inp, state[i], w_hh[i], inplace=True))
                new.append(h)
            x = h
        return _addmm(self.head_b, x, head_w), new


def _mm(x: Tensor, w: Tensor) -> Tensor:
    """x @ w in fp32; with x rounded to w's dtype when the weights are in a lower precision."""
    return x @ w if x.dtype == w.dtype else torch.mm(x.to(w.dtype), w).float()


def _addmm(base: Tensor, x: Tensor, w: Tensor, inplace: bool = False) -> Tensor:
    """base + x @ w (into `base` when `inplace`): at full precision one fused addmm, as before."""
    if x.dtype == w.dtype:
        return base.addmm_(x, w) if inplace else torch.addmm(base, x, w)
    product = _mm(x, w)
    return base.add_(product) if inplace else product.add_(base)


def map_state(fn, *states: list) -> list:
    """Apply `fn` to matching tensors of FastStep per-layer states (a tensor or an (h, c) pair per layer)."""
    out = []
    for layers in zip(*states):
        if isinstance(layers[0], tuple):
            out.append(tuple(fn(*parts) for parts in zip(*layers)))
        else:
            out.append(fn(*layers))
    return out
