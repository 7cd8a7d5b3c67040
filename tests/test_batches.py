import numpy as np
import pytest
import torch

from charrnn.data.batches import IGNORE, StreamBatches, eval_batches, fit_batch_size, split
from charrnn.errors import CharRNNError


def test_streams_are_contiguous_across_batches():
    data = np.arange(1000, dtype=np.int64)
    b = StreamBatches(data, batch_size=4, seq_len=10)
    assert len(b) == (999 // 4) // 10
    x0, y0 = b.batch(0)
    x1, _ = b.batch(1)
    # targets are inputs shifted by one; batch 1 continues each row exactly where batch 0 stopped
    assert torch.equal(x0[:, 1:], y0[:, :-1])
    assert torch.equal(x1[:, 0], y0[:, -1])
    # rows are distinct contiguous slices of the text
    starts = x0[:, 0].tolist()
    assert starts == [0, 249, 498, 747]
    for row in range(4):
        joined = torch.cat([b.batch(i)[0][row] for i in range(len(b))])
        assert torch.equal(joined, torch.arange(starts[row], starts[row] + len(joined)))


def test_ranks_share_the_streams():
    data = np.arange(2000).astype(np.int64)
    full = StreamBatches(data, 4, 8)
    parts = [StreamBatches(data, 4, 8, rank=r, world=2) for r in range(2)]
    x = full.batch(3)[0]
    assert torch.equal(parts[0].batch(3)[0], x[0::2]) and torch.equal(parts[1].batch(3)[0], x[1::2])


def test_too_little_text_says_how_much_is_needed():
    with pytest.raises(CharRNNError, match="at least 641"):
        StreamBatches(np.zeros(100, np.uint8), batch_size=10, seq_len=64)
    assert fit_batch_size(100, 10, 64) == 1
    assert fit_batch_size(50, 10, 64) == 0


def test_eval_batches_score_every_character_once():
    data = np.arange(103).astype(np.int64)
    seen = []
    for x, y in eval_batches(data, streams=4, seq_len=5):
        assert x.shape == y.shape
        keep = y != IGNORE
        assert torch.equal(y[keep], x[keep] + 1)  # each target follows its input
        seen.extend(y[keep].tolist())
    assert sorted(seen) == list(range(1, 103))


def test_eval_warmup_reads_the_text_before_each_piece_unscored():
    data = np.arange(103).astype(np.int64)
    batches = list(eval_batches(data, streams=4, seq_len=5, warmup_batches=2))
    x = torch.cat([b[0] for b in batches], dim=1)
    y = torch.cat([b[1] for b in batches], dim=1)
    assert (y[:, :10] == IGNORE).all()  # the warm-up is never scored...
    assert x[1, :10].tolist() == list(range(16, 26))  # ...and is the text just before piece 1 (26..51)
    assert y[1, 10].item() == 27
    keep = y != IGNORE
    assert sorted(y[keep].tolist()) == list(range(1, 103))  # still every character exactly once


def test_split_is_a_contiguous_tail():
    train, val = split(np.arange(1_115_394), 0.1)
    assert len(train) == 1_003_854 and val[0] == train[-1] + 1
