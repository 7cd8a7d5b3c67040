"""Training under torchrun with DistributedDataParallel (gloo on CPU): 2 processes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import generated_text, run_here

from charrnn.storage import checkpoints as ckpt

FLAGS = [
    "--hidden-size",
    "24",
    "--layers",
    "2",
    "--embedding-size",
    "8",
    "--dropout",
    "0",
    "--batch-size",
    "8",
    "--seq-len",
    "16",
    "--max-steps",
    "12",
    "--eval-every",
    "6",
    "--sample-length",
    "0",
    "--seed",
    "3",
    "--precision",
    "fp32",  # compared to 1e-5 with a single process: bf16 rounding would swamp that
]


def test_two_processes_match_one_process_with_the_same_batch(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(generated_text(4000))
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "charrnn",
            "train",
            str(corpus),
            *FLAGS,
            "-o",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    # only rank 0 wrote: one run directory, one metrics line per record
    steps = [line for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if '"train_loss"' in line]
    assert len(steps) == len({s for s in steps})
    ddp = ckpt.load(tmp_path / "ddp")
    run_here("train", str(corpus), *FLAGS, "-o", str(tmp_path / "single"), check=True)  # one process
    single = ckpt.load(tmp_path / "single")
    # gradients averaged over 2 x 4 streams equal the gradient over 8 streams: the same training
    for (name, a), b in zip(ddp.model.state_dict().items(), single.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)

    # ...and the same training loss logged: the whole batch's, not rank 0's half of it
    def losses(run):
        return [r["train_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r]

    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-4)
    ddp_result, single_result = (json.loads((tmp_path / r / "result.json").read_text()) for r in ("ddp", "single"))
    assert ddp_result["train_loss"] == pytest.approx(single_result["train_loss"], rel=1e-4)  # step 12, not logged
    # the hidden state of all 8 streams was gathered into the checkpoint, so it resumes anywhere
    hidden = ckpt.read_tensors(ddp.path, "trainer.safetensors", ddp.manifest)["hidden.0"]
    assert hidden.shape == (2, 8, 24)


def test_two_processes_with_a_time_budget_step_with_the_same_learning_rate(tmp_path):
    """A time budget's schedule runs on each process's own clock and measurements: unless the ranks
    agree on them, they step with different rates and end with different weights (which the run
    checks at its end, and refused)."""
    corpus = tmp_path / "text.txt"
    corpus.write_text(generated_text(20_000))
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    env["OMP_NUM_THREADS"] = "1"
    timed = [f for f in FLAGS if f not in ("--max-steps", "12")] + ["--max-time", "2"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "charrnn"]
    proc = subprocess.run(
        [*command, "train", str(corpus), *timed, "-o", str(tmp_path / "ddp")], capture_output=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert json.loads((tmp_path / "ddp" / "result.json").read_text())["stopped_by"] == "max_time"
