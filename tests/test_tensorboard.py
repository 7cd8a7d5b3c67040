"""`charrnn train --tensorboard DIR`: the curves, the samples and the settings, read back from the
event files with TensorBoard's own reader."""

from __future__ import annotations

import pytest
from conftest import TINY, run_here

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_gets_the_curves_samples_and_settings_and_a_resume_goes_on(tmp_path, text_file):
    board, run = tmp_path / "board", tmp_path / "run"
    args = [*TINY, "--eval-every", "4", "--log-every", "2", "--sample-length", "0", "-q", "--tensorboard", str(board)]
    run_here("train", str(text_file), "--max-steps", "8", "-o", str(run), *args, check=True)
    first = events(board)
    assert {"loss/train", "loss/val", "learning_rate", "chars_per_sec"} <= set(first.Tags()["scalars"])
    assert [e.step for e in first.Scalars("loss/val")] == [4, 8]
    assert [e.step for e in first.Scalars("loss/train")] == [1, 2, 4, 6, 8]  # the first step is logged too
    samples = first.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [4, 8] and all(s.tensor_proto.string_val[0] for s in samples)
    settings = first.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"hidden_size" in settings and b"batch_size" in settings

    run_here("train", "--resume", str(run), "--max-steps", "12", "-q", "--sample-length", "0",
             "--tensorboard", str(board), check=True)  # fmt: skip
    resumed = events(board)
    assert [e.step for e in resumed.Scalars("loss/train")] == [1, 2, 4, 6, 8, 10, 12]
    assert [e.step for e in resumed.Scalars("loss/val")] == [4, 8, 12]
