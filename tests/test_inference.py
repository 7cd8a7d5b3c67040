"""The fast sampler step must compute what nn.LSTM / nn.GRU / nn.RNN compute."""

import pytest
import torch

from charrnn.model.fast_step import FastStep
from charrnn.model.network import CharRNN, ModelConfig


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_fast_step_matches_nn_modules(cell, layers):
    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(vocab_size=13, cell=cell, layers=layers, hidden_size=24, embedding_size=6, dropout=0.2)
    ).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a misplaced bias would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randint(0, 13, (3, 25))
    with torch.no_grad():
        expected, expected_state = model(x)
        fast = FastStep(model)
        state = fast.from_module(model.initial_state(3))
        outputs = []
        for t in range(x.shape[1]):
            logits, state = fast.step(x[:, t], state)
            outputs.append(logits)
        state = fast.to_module(state)
    torch.testing.assert_close(torch.stack(outputs, 1), expected, rtol=1e-4, atol=1e-5)
    for a, b in zip(state if cell == "lstm" else [state], expected_state if cell == "lstm" else [expected_state]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_low_precision_step_stays_close_and_full_precision_is_unchanged(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=13, cell=cell, layers=2, hidden_size=32, embedding_size=6)).eval()
    x = torch.randint(0, 13, (16, 40))
    with torch.no_grad():
        plain, both = FastStep(model), FastStep(model, low=torch.bfloat16)
        states = [f.from_module(model.initial_state(16)) for f in (plain, both, both)]
        for t in range(x.shape[1]):
            (a, states[0]), (b, states[1]), (c, states[2]) = (
                plain.step(x[:, t], states[0]),
                both.step(x[:, t], states[1]),
                both.step(x[:, t], states[2], low=True),
            )
            assert torch.equal(a, b)  # made with a low precision, a full-precision step is what it was
            assert (a - c).abs().max() < 0.02 and not torch.equal(a, c)  # bf16: close, not identical
