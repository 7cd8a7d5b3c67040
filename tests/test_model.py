import pytest
import torch

from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, ModelConfig


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_shapes_for_each_cell(cell, layers):
    config = ModelConfig(vocab_size=11, cell=cell, layers=layers, hidden_size=16, embedding_size=5, dropout=0.1)
    model = CharRNN(config)
    x = torch.randint(0, 11, (4, 7))
    logits, state = model(x)
    assert logits.shape == (4, 7, 11)
    tensors = state if cell == "lstm" else (state,)
    assert len(tensors) == (2 if cell == "lstm" else 1)
    for t in tensors:
        assert t.shape == (layers, 4, 16)
    init = model.initial_state(4)
    again, _ = model.eval()(x, init)
    assert again.shape == logits.shape


def test_state_carries_context():
    """Feeding a text in two halves with the state carried equals feeding it at once."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=9, hidden_size=12, embedding_size=4)).eval()
    x = torch.randint(0, 9, (2, 20))
    whole, _ = model(x)
    first, state = model(x[:, :12])
    second, _ = model(x[:, 12:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


@pytest.mark.parametrize("field,value", [("layers", 0), ("hidden_size", 0), ("cell", "transformer"), ("dropout", 1.0)])
def test_bad_config_is_a_usage_error(field, value):
    with pytest.raises(CharRNNError) as e:
        ModelConfig(vocab_size=5, **{field: value})
    assert e.value.exit_code == 2
