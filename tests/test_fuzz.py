"""Fuzz: random option values to `sample`, random bytes to `train` and `eval`. Whatever comes in, the
command ends with 0, 1 or 2 and never with a Python traceback. In-process, to stay fast."""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charrnn.cli import app

FUZZ = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
COUNTER = itertools.count()


def invoke(*args: str, input: bytes | None = None):
    with torch.enable_grad():  # sample and eval turn autograd off globally
        return CliRunner().invoke(app, list(args), input=input)


def assert_clean(result) -> None:
    """Exit 0, 1 or 2, and any exception is the SystemExit our error handling raises, not a crash."""
    crash = result.exception if not isinstance(result.exception, SystemExit) else None
    assert crash is None, f"{type(crash).__name__}: {crash}"
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.stderr


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["nan", "-inf", "1e-40", "5e-324", "1e308", "-0", "0", "abc", "", " 1", "0x10"]),
)
option_values = st.one_of(numbers, st.text(max_size=8))


@FUZZ
@given(
    options=st.lists(
        st.tuples(
            st.sampled_from(
                ["-n", "-t", "--top-k", "--top-p", "--count", "--seed", "--prime", "--stop", "--separator", "--unknown"]
            ),
            option_values,
        ),
        max_size=5,
    ),
    jsonl=st.booleans(),
)
def test_sample_survives_any_option_values(trained_run, options, jsonl):
    args = ["sample", str(trained_run), "-n", "20"]
    for flag, value in options:
        if flag in ("-n", "--count") and value.strip().lstrip("-").isdigit() and abs(int(value)) > 200:
            value = "200"  # large values are valid and only slow
        args += [flag, value]
    assert_clean(invoke(*args, *(["--jsonl"] if jsonl else [])))


flags = st.sampled_from([[], ["--bytes"], ["--errors", "replace"], ["--encoding", "latin-1"], ["--keep-newlines"]])


@settings(FUZZ, max_examples=12)
@given(data=st.binary(max_size=3000), text_flags=flags, gz=st.booleans())
def test_train_survives_any_bytes(data, text_flags, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("input.txt.gz" if gz else "input.txt")
        path.write_bytes(data)
        tiny = ["--hidden-size", "8", "--layers", "1", "--embedding-size", "4", "--batch-size", "2", "--seq-len", "8"]
        run = Path(tmp) / f"run{next(COUNTER)}"
        args = [
            "train",
            str(path),
            *tiny,
            *text_flags,
            "--max-steps",
            "1",
            "--sample-length",
            "0",
            "-q",
            "-o",
            str(run),
        ]
        assert_clean(invoke(*args))


@settings(FUZZ, max_examples=15)
@given(data=st.binary(max_size=2000), unknown=st.sampled_from(["error", "skip", "replace"]), stdin=st.booleans())
def test_eval_survives_any_bytes(trained_run, data, unknown, stdin):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.txt"
        path.write_bytes(data)
        target = "-" if stdin else str(path)
        result = invoke("eval", str(trained_run), target, "--unknown", unknown, "--json", input=data)
        assert_clean(result)
        if result.exit_code == 0:
            import json

            assert all(math.isfinite(r["nats"]) for r in json.loads(result.stdout)["results"])
