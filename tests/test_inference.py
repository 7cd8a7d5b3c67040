"""The fast sampler step must compute what nn.LSTM / nn.GRU / nn.RNN compute."""

import pytest
import torch

from charrnn.inference import FastStep
from charrnn.model import CharRNN, ModelConfig


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
