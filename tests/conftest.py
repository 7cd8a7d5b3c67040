"""Shared fixtures: a private cache, generated text, and helpers to run the real command."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # small models run fastest single-threaded, and tests stay deterministic
# ...and so do the commands the tests start: one thread each, so they do not fight over the cores
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Views into a pipe are as wide as their lines unless COLUMNS says otherwise; the tests that want a
# width set it, and a COLUMNS inherited from a shell or from pytest-xdist's workers (80) must not wrap the rest.
for name in ("COLUMNS", "LINES"):
    os.environ.pop(name, None)

WORDS = "the cat sat on a mat and then ran to see her dog by old red door while it was raining".split()


def generated_text(chars: int = 20_000, seed: int = 0) -> str:
    """Deterministic, learnable text: sentences of common words, with speaker lines."""
    rng = random.Random(seed)
    lines = []
    total = 0
    while total < chars:
        line = (
            ("ANNA: " if rng.random() < 0.5 else "BEN: ")
            + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
            + "."
        )
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)[:chars] + "\n"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CHARRNN_CACHE", str(cache))
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    return cache


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(generated_text(), encoding="utf-8")
    return path


TINY = ["--hidden-size", "32", "--layers", "1", "--embedding-size", "8", "--batch-size", "8", "--seq-len", "32"]


def run_cli(*args: str, input: str | bytes | None = None, env: dict | None = None, cwd=None, check: bool = False):
    """Run `python -m charrnn ARGS` in a subprocess, as a user would; returns CompletedProcess (bytes)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", *args], input=data, capture_output=True, env=full_env, cwd=cwd, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]!r}\nstderr: {proc.stderr.decode()[-3000:]}"
        )
    return proc


def run_cli_together(*commands: tuple[list[str], dict], preexec_fn=None) -> list[subprocess.CompletedProcess]:
    """run_cli for several (args, env) at once, one thread each: for tests whose commands are
    independent. `preexec_fn` runs in each child before the command (to close a descriptor)."""
    procs = []
    for args, env in commands:
        full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
        full_env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env})
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "charrnn", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                preexec_fn=preexec_fn,
            )
        )
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def run_here(*args: str, input: str | bytes | None = None, check: bool = False):
    """`charrnn ARGS` in this process, with run_cli's result type: seconds faster (no interpreter or
    torch start-up), for tests where the process boundary is not the point."""
    from typer.testing import CliRunner

    from charrnn.cli import app

    with torch.enable_grad():  # sample and eval turn autograd off for the whole process
        result = CliRunner().invoke(app, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, which the real command would show as a traceback
    proc = subprocess.CompletedProcess(["charrnn", *args], result.exit_code, result.stdout_bytes, result.stderr_bytes)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]!r}\nstderr: {proc.stderr.decode()[-3000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny trained run shared by the sample and eval tests."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(generated_text(), encoding="utf-8")
    run = root / "run"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CHARRNN_CACHE", str(root / "cache"))
        args = ["--max-steps", "60", "--eval-every", "30", "--sample-length", "0", "-o", str(run)]
        run_here("train", str(corpus), *TINY, *args, check=True)
    return run


def run_record(model, corpus, config):
    """The run record a Trainer keeps in its checkpoints, for tests that build one directly."""
    from charrnn.records import RunRecord

    return RunRecord(model.config, corpus.vocab.to_json(), {}, config, corpus.describe())


class SimulatedClock:
    """Time that passes with the work done, not with the machine: each training step takes `step`
    seconds and scoring reads `read_speed` characters a second, however busy the cores are. The rules
    that turn a time budget into steps and validations are then tested exactly, on any machine.

    `read_speed` may be a function, asked at each scoring: a machine whose load changes (another
    program on the cores while the run measures its scoring speed, gone later). With `per_batch`,
    scoring outside training (`eval`, `surprise`) takes its time batch by batch: each forward call
    of a model without gradients reads its characters at `read_speed`, so a function of torch's
    thread count simulates cores that another program competes for."""

    def __init__(self, monkeypatch, step: float, read_speed: float | Callable[[], float], per_batch: bool = False):
        import time

        from charrnn.model.network import CharRNN
        from charrnn.training import validation
        from charrnn.training.trainer import Trainer

        self.now = 1000.0
        self.speed = read_speed if callable(read_speed) else lambda: read_speed
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(time, "monotonic", lambda: self.now)
        train_step, score, score_pieces = Trainer.train_step, validation.score, validation.score_pieces

        def timed_step(trainer):
            loss = train_step(trainer)
            self.now += step
            return loss

        def timed_score(*args, **kwargs):
            result = score(*args, **kwargs)
            self.now += result.characters / self.speed()
            return result

        def timed_pieces(model, ids, pieces, *args, **kwargs):
            result = score_pieces(model, ids, pieces, *args, **kwargs)
            self.now += pieces.cost / self.speed()
            return result

        forward = CharRNN.forward

        def timed_forward(model, x, *args, **kwargs):
            if not torch.is_grad_enabled():  # scoring: a training step's own time is `step`
                self.now += x.numel() / self.speed()
            return forward(model, x, *args, **kwargs)

        monkeypatch.setattr(Trainer, "train_step", timed_step)
        if per_batch:
            monkeypatch.setattr(CharRNN, "forward", timed_forward)
        else:
            monkeypatch.setattr(validation, "score", timed_score)
            monkeypatch.setattr(validation, "score_pieces", timed_pieces)


@pytest.fixture
def simulated_clock(monkeypatch):
    """SimulatedClock(step, read_speed, per_batch=False), installed for the test."""
    return lambda step, read_speed, per_batch=False: SimulatedClock(monkeypatch, step, read_speed, per_batch)
