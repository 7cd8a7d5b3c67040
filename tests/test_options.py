"""Option values the commands parse themselves: durations, devices, --val-file, --save-every-minutes."""

import json

import pytest
import torch
import typer
from conftest import TINY, generated_text
from typer.testing import CliRunner

from charrnn.cli import app, parse_duration
from charrnn.device import resolve_device
from charrnn.errors import CharRNNError
from charrnn.storage import checkpoints as ckpt
from charrnn.storage import layout

QUICK = [*TINY, "--sample-length", "0", "--eval-every", "0", "--quiet"]


def train(*args: str):
    """`charrnn train` in this process: fast, and what a user gets from the command."""
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(
    "text,seconds",
    [("90", 90), ("2.5", 2.5), ("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), (" 2D ", 172800), (None, None)],
)
def test_parse_duration_reads_seconds_and_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 m", "m", "5x", "1h 30m", "-5m", "5m3", "1.5.2s"])
def test_parse_duration_refuses_anything_else_with_the_forms_it_takes(text):
    with pytest.raises(typer.BadParameter, match="not a duration; use seconds or 90s, 5m, 1h, 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-time", "ten minutes"], "'ten minutes' is not a duration"),
        (["--max-time", "0"], "--max-time 0.0: must be more than 0"),  # a run of nothing is a typo
        (["--seed", str(2**64)], "--seed 18446744073709551616: must be a whole number from -2**63 to 2**64 - 1"),
    ],
)
def test_a_bad_budget_or_seed_is_a_usage_error_naming_it(tmp_path, args, message):
    result = CliRunner().invoke(app, ["train", *args, "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name,message",
    [
        ("gpu", "--device gpu: not a device charrnn runs on; use auto, cpu, cuda, cuda:N or mps"),
        ("cpu:x", "--device cpu:x: not a device"),
        ("cuda", "--device cuda: no CUDA GPU is available to PyTorch; use --device cpu"),
        ("cuda:1", "--device cuda:1: no CUDA GPU is available"),
        ("mps", "--device mps: Apple's MPS backend is not available; use --device cpu"),
    ],
)
def test_devices_that_cannot_be_used_are_usage_errors(name, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(CharRNNError, match=message) as e:
        resolve_device(name)
    assert e.value.exit_code == 2


def test_auto_and_cpu_resolve_to_a_device_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")


def test_val_file_is_what_validation_scores(tmp_path):
    corpus, held_out = tmp_path / "corpus.txt", tmp_path / "held-out.txt"
    corpus.write_text(generated_text(5000), encoding="utf-8")
    held_out.write_text(generated_text(1200, seed=7), encoding="utf-8")
    run = tmp_path / "run"
    train(str(corpus), "--val-file", str(held_out), "--max-steps", "2", *QUICK, "-o", str(run))
    result = json.loads((run / "result.json").read_text())
    # every character of the file after the first is predicted, and none of the corpus
    assert result["val_characters"] == len(held_out.read_text(encoding="utf-8")) - 1
    assert json.loads((run / "run.json").read_text())["val_file"] == str(held_out)


def test_a_val_file_that_is_trained_on_or_beside_a_val_fraction_is_refused(tmp_path):
    corpus, copy = tmp_path / "texts" / "corpus.txt", tmp_path / "copy.txt"
    corpus.parent.mkdir()
    corpus.write_text(generated_text(5000), encoding="utf-8")
    copy.write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "texts" / "more.txt").write_text(generated_text(3000, seed=2), encoding="utf-8")
    args = ["--max-steps", "1", *QUICK, "-o", str(tmp_path / "run")]
    for text, val_file in [(corpus, corpus), (corpus, copy), (corpus.parent, corpus)]:  # the file, a copy, a folder
        result = CliRunner().invoke(app, ["train", str(text), "--val-file", str(val_file), *args])
        assert result.exit_code == 2 and "also in the training text" in result.stderr, result.stderr
    result = CliRunner().invoke(app, ["train", str(corpus), "--val-file", str(copy), "--val-fraction", "0.2", *args])
    assert result.exit_code == 2 and "--val-fraction" in result.stderr and "give one of them" in result.stderr
    assert not (tmp_path / "run").exists()


def test_save_every_minutes_saves_by_the_clock(tmp_path, text_file):
    clocked, plain = tmp_path / "clocked", tmp_path / "plain"
    flags = [str(text_file), "--max-steps", "5", "--keep", "10", *QUICK]
    train(*flags, "--save-every-minutes", "0.000001", "-o", str(clocked))  # due again at every step
    train(*flags, "-o", str(plain))
    steps = {ckpt.read_manifest(p)["step"] for p in layout.list_checkpoints(clocked)}
    assert steps == {1, 2, 3, 4, 5}
    assert [ckpt.read_manifest(p)["step"] for p in layout.list_checkpoints(plain)] == [5]  # only at the end
