import pytest
import torch
import torch.nn.functional as F

from charrnn.errors import CharRNNError
from charrnn.model.network import CharRNN, ModelConfig, fast_dropout


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_each_cell_learns_a_pattern_that_needs_memory(cell, layers):
    """In 'aab' repeated, what follows an 'a' depends on the character before it: only a model whose state
    carries context predicts every character. Logits and state keep their documented shapes."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=3, cell=cell, layers=layers, hidden_size=16, embedding_size=4, dropout=0.1)
    model = CharRNN(config)
    ids = torch.tensor([0, 0, 1] * 12)
    x = torch.stack([ids[k : k + 30] for k in range(3)])  # the three phases of the pattern
    y = torch.stack([ids[k + 1 : k + 31] for k in range(3)])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(120):
        loss = F.cross_entropy(model(x)[0].reshape(-1, 3), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logits, state = model.eval()(x)
    assert logits.shape == (3, 30, 3)
    for t in state if cell == "lstm" else (state,):
        assert t.shape == (layers, 3, 16)
    # from the second character on, the two characters seen decide the next one
    assert torch.equal(logits.argmax(-1)[:, 1:], y[:, 1:])


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


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_layer_by_layer_computes_what_the_module_computes(cell):
    """The CPU training path (one layer at a time) is the nn module's maths: equal outputs, states and
    gradients when no dropout is drawn."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, layers=3, hidden_size=16, embedding_size=5, dropout=0.3))
    x = torch.randint(0, 11, (4, 7))
    state = model.initial_state(4)
    state = tuple(t + 0.1 for t in state) if cell == "lstm" else state + 0.1
    outputs, grads = [], []
    for run in (lambda e: model.rnn(e, state), lambda e: model.layer_by_layer(e, state, 0.0)):
        model.zero_grad()
        model.rnn.dropout = 0.0
        out, final = run(model.embedding(x))
        out.sum().backward()
        outputs.append((out, *(final if cell == "lstm" else (final,))))
        grads.append([p.grad.clone() for p in [*model.embedding.parameters(), *model.rnn.parameters()]])
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_fast_dropout_drops_the_asked_fraction_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(200, 1000)
    y = fast_dropout(x, 0.25)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert y.unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert not torch.equal(fast_dropout(x, 0.25), y)  # a fresh mask each call
    assert fast_dropout(x, 0.0) is x


def test_training_with_dropout_is_seeded():
    config = ModelConfig(vocab_size=11, layers=2, hidden_size=16, embedding_size=5, dropout=0.5)
    x = torch.randint(0, 11, (4, 7))
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = CharRNN(config).train()
        runs.append(model(x)[0])
    torch.testing.assert_close(runs[0], runs[1])
