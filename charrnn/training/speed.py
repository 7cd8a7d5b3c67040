"""How fast training runs here and now, measured on a few real steps, for the planner's choice of preset."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import CharRNNError
from charrnn.model.network import CharRNN
from charrnn.training.trainer import Trainer

SPEED_STEPS = 4  # timed steps per thread count when a run measures its speed before it plans...


SPEED_SECONDS = 1.0  # ...fewer (2 at least) where a model this large takes longer


def training_speed(
    model_config: ModelConfig, config: TrainConfig, train_ids: np.ndarray, device: torch.device
) -> float | None:
    """Characters per second that training `model_config` with `config` reaches here and now (this
    CPU or GPU, whatever else runs on it): the median of a few real steps on the start of the
    text, after one that sets up the kernels, on a model that is then thrown away. On a CPU on all
    threads and on one, the faster of the two, as a timed run's ThreadGovernor would find; random
    states are untouched. None if the steps diverge (the run itself will say so). At most about
    SPEED_SECONDS of steps."""
    import statistics
    import tempfile

    most, speed = torch.get_num_threads(), 0.0
    gpus = [device] if device.type == "cuda" else []
    with tempfile.TemporaryDirectory() as folder, torch.random.fork_rng(devices=gpus):
        trainer = Trainer(CharRNN(model_config), train_ids, train_ids[:0], config, Path(folder), None, device)
        try:
            trainer.train_step()
            counts = sorted({most, 1}, reverse=True) if device.type == "cpu" else [most]
            for threads in counts:
                torch.set_num_threads(threads)
                seconds: list[float] = []
                while len(seconds) < SPEED_STEPS and (len(seconds) < 2 or sum(seconds) < SPEED_SECONDS / len(counts)):
                    start = time.perf_counter()
                    trainer.train_step()
                    seconds.append(time.perf_counter() - start)
                speed = max(speed, config.batch_size * config.seq_len / statistics.median(seconds))
        except CharRNNError:
            return None
        finally:
            torch.set_num_threads(most)
    return speed
