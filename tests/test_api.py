"""The Python API (charrnn/trained.py): what a program gets from `charrnn.load` is what the commands print."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import generated_text, run_cli
from typer.testing import CliRunner

import charrnn
from charrnn.api import Model
from charrnn.cli import app
from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.generation.sampler import Decoding
from charrnn.model.network import CharRNN
from charrnn.storage.checkpoints import Loaded


def cli(*args: str) -> tuple[int, bytes, str]:
    """The command in this process: exit code, stdout bytes, stderr text."""
    with torch.enable_grad():  # sample and eval turn autograd off globally
        result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    return result.exit_code, result.stdout_bytes, result.stderr


@pytest.fixture(scope="module")
def model(trained_run):
    return charrnn.load(trained_run)


def test_import_charrnn_does_not_import_torch():
    code = "import charrnn, sys; assert 'torch' not in sys.modules; charrnn.CharRNNError; print(charrnn.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'lod'"):
        charrnn.lod  # noqa: B018
    assert {"load", "Model", "CharRNNError"} <= set(dir(charrnn))


def test_sample_is_what_the_command_prints(trained_run, model):
    printed = run_cli("sample", str(trained_run), "--prime", "ANNA: the", "-n", "200", "--seed", "3", check=True)
    assert model.sample("ANNA: the", length=200, seed=3, echo=True).encode() == printed.stdout
    flags = ["-n", "150", "-t", "0.7", "--top-k", "5", "--top-p", "0.9", "--seed", "8", "--no-echo"]
    _, out, _ = cli("sample", str(trained_run), "--prime", "BEN:", *flags)
    assert model.sample("BEN:", length=150, temperature=0.7, top_k=5, top_p=0.9, seed=8).encode() == out
    _, out, _ = cli(
        "sample", str(trained_run), "--prime", "ANNA: Zq the", "--unknown", "skip", "-n", "50", "--seed", "1"
    )
    assert model.sample("ANNA: Zq the", length=50, seed=1, unknown="skip", echo=True).encode() == out
    assert out.startswith(b"ANNA:  the")


def test_a_seed_reproduces_and_calls_do_not_disturb_each_other(model):
    first = model.sample("ANNA:", length=120, seed=5)
    assert len(first) == 120
    assert model.sample("ANNA:", length=120, seed=5) == first
    assert model.sample("ANNA:", length=120, seed=6) != first
    a, b = model.stream("ANNA:", length=120, seed=5), model.stream("ANNA:", length=120, seed=6)
    pieces_a, pieces_b = [], []
    for x, y in zip(a, b):  # two streams drawn in turn: each keeps its own state
        pieces_a.append(x)
        pieces_b.append(y)
    assert "".join(pieces_a) == first and "".join(pieces_b) == model.sample("ANNA:", length=120, seed=6)


def test_stream_yields_the_sample_piece_by_piece(model):
    pieces = list(model.stream("BEN: the", length=80, temperature=0.9, seed=2, echo=True))
    assert len(pieces) > 50  # as it is drawn, not all at the end
    assert pieces[0] == "BEN: the"
    assert "".join(pieces) == model.sample("BEN: the", length=80, temperature=0.9, seed=2, echo=True)


def test_stop_strings_end_the_sample_after_the_first_one(trained_run, model):
    whole = model.sample("ANNA:", length=300, seed=4)
    stops = [".", " t"]
    cut = min(whole.index(s) + len(s) for s in stops if s in whole)
    assert 0 < cut < 300
    assert model.sample("ANNA:", length=300, seed=4, stop=stops) == whole[:cut]
    assert model.sample("ANNA:", length=300, seed=4, stop=".") == whole[: whole.index(".") + 1]
    _, out, _ = cli("sample", str(trained_run), "--prime", "ANNA:", "-n", "300", "--seed", "4", "--stop", ".")
    assert out.decode() == "ANNA:" + model.sample("ANNA:", length=300, seed=4, stop=".")


def test_score_is_what_eval_reports(trained_run, model, tmp_path):
    text = generated_text(3_000, seed=9)
    path = tmp_path / "held-out.txt"
    path.write_text(text.replace("\n", "\r\n"), encoding="utf-8")  # eval reads "\r\n" as "\n"
    reported = json.loads(cli("eval", str(trained_run), str(path), "--json")[1])["results"][0]
    score = model.score(text)
    assert score.to_json() == pytest.approx({k: reported[k] for k in score.to_json()}, rel=1e-12)
    assert score.characters == len(text) - 1 and 1 < score.bits_per_char < 8
    assert model.score_file(path).to_json() == score.to_json()
    assert model.score(text, streams=1).nats == pytest.approx(score.nats, abs=0.01)


def test_best_and_latest_checkpoints(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    first, last = sorted(p.name for p in (run / "checkpoints").iterdir())
    (run / "best.json").write_text(json.dumps({"checkpoint": first}))  # an earlier checkpoint validated best
    best, latest = charrnn.load(run), charrnn.load(run, which="latest")
    assert best.checkpoint.name == first and latest.checkpoint.name == last
    assert best.info.step == 30 and latest.info.step == 60
    assert best.sample(length=100, seed=1) != latest.sample(length=100, seed=1)
    assert charrnn.load(run / "checkpoints" / first).sample(length=100, seed=1) == best.sample(length=100, seed=1)
    with pytest.raises(charrnn.UsageError, match="which='last': use best or latest"):
        charrnn.load(run, which="last")


def test_info_is_what_info_json_shows(trained_run, model):
    info = model.info
    assert info.step == 60 and info.model.hidden_size == 32 and info.vocab_size == len(model.vocab)
    assert info.checkpoint == model.checkpoint
    shown = json.loads(cli("info", str(trained_run), "--json", "--checkpoint", "best")[1])
    assert info.to_json() == shown


def test_errors_are_charrnn_errors_with_the_commands_messages(trained_run, model, tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(charrnn.CheckpointError) as e:
        charrnn.load(missing)
    code, _, err = cli("sample", str(missing))
    assert code == 1 and str(e.value) in err and "no such run or checkpoint" in str(e.value)

    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged)
    weights = next((damaged / "checkpoints").iterdir()) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(charrnn.CheckpointError, match="do not match the manifest") as e:
        charrnn.load(weights.parent)
    assert str(e.value) in cli("sample", str(weights.parent))[2]

    with pytest.raises(charrnn.InputError) as e:
        model.sample("ANNA: Zq")
    code, _, err = cli("sample", str(trained_run), "--prime", "ANNA: Zq")
    assert code == 1 and str(e.value) in err and "'Z' 'q'" in str(e.value)
    with pytest.raises(charrnn.InputError, match="at least 2"):
        model.score("A")

    with pytest.raises(charrnn.UsageError, match="--temperature -1") as e:
        model.stream(temperature=-1)  # checked at the call, before the first piece
    assert isinstance(e.value, ValueError) and isinstance(e.value, charrnn.CharRNNError) and e.value.exit_code == 2
    with pytest.raises(charrnn.UsageError, match="--stop ''"):  # as `sample --stop ''` and serve say
        model.sample(stop="")
    with pytest.raises(charrnn.UsageError, match="--temperature None"):  # top_k=None is a default: an easy slip
        model.sample(temperature=None)
    with pytest.raises(charrnn.UsageError, match="--unknown 'ignore'"):
        model.sample(unknown="ignore")
    with pytest.raises(charrnn.UsageError, match="--seed 1180591620717411303424: must be a whole number"):
        model.sample(seed=2**70)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_time": 0}, "--max-time 0.0: must be more than 0"),
        ({"epochs": float("nan")}, "--epochs nan: must be a finite number"),
        ({"max_time": float("inf")}, "--max-time inf: must be a finite number"),
        ({"val_fraction": 1}, "--val-fraction 1: must be a number from 0 to 0.5"),
        ({"seq_len": 0}, "--seq-len 0: must be a whole number, at least 1"),
        ({"max_steps": -1}, "--max-steps -1: must be a whole number, at least 1"),
        ({"hidden_size": -1}, "--hidden-size -1: must be a whole number, at least 1"),
        ({"hidden_size": "32"}, "--hidden-size '32': must be a whole number, not str"),
        ({"layers": 1.0}, "--layers 1.0: must be a whole number, not float"),
        ({"dropout": float("nan")}, "--dropout nan: must be a finite number"),
        ({"lr": "0.01"}, "--lr '0.01': must be a number, not str"),
        ({"ema": "0.5"}, "--ema '0.5': must be a number, not str"),
        ({"preset": "huge"}, "--preset 'huge': use auto, small, medium or large"),
        ({"max_time": True}, "True is not a duration"),
        ({"max_time": [5]}, "[5] is not a duration"),
        ({"out": 5}, "out=5: must be a path"),
        ({"resume": 5}, "resume=5: must be a path"),
        ({"reporter": 5}, "reporter=5: must be a charrnn.training.report.Reporter"),
        ({"hidden_size": 10**7}, "more than the"),
        ({"unknown": "bogus"}, "--unknown 'bogus': use error, skip or replace"),
        ({"glob": ["*.txt"]}, "--glob ['*.txt']: must be a str"),
        ({"bytes": "no"}, "bytes='no': must be True or False"),  # a non-empty str is true
        ({"seed": 2**70}, "--seed 1180591620717411303424"),
        ({"errors": "bogus"}, "--errors 'bogus': use strict, replace or ignore"),
        ({"hiden_size": 5}, "unknown setting 'hiden_size'"),
    ],
)
def test_train_checks_its_arguments_as_the_command_checks_its_flags(tmp_path, settings, message):
    """What the command's flags refuse (exit code 2), `charrnn.train` refuses as a UsageError, which
    is also a ValueError, before it reads or writes anything."""
    text = tmp_path / "text.txt"
    text.write_text("hello world\n" * 100, encoding="utf-8")
    settings = {"out": tmp_path / "run", **settings}
    with pytest.raises(charrnn.UsageError, match=re.escape(message)) as e:
        charrnn.train(text, **settings)
    assert isinstance(e.value, ValueError) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("corpus", [5, b"text.txt", [None]])
def test_train_says_what_a_corpus_must_be(tmp_path, corpus):
    with pytest.raises(charrnn.UsageError, match="corpus=.*: must be a path"):
        charrnn.train(corpus, out=tmp_path / "run")


def test_a_byte_level_model_gives_text_decoded_as_it_streams():
    torch.manual_seed(0)
    network = CharRNN(ModelConfig(256, hidden_size=16, embedding_size=8))
    model = Model(Loaded(Path("bytes-model"), {}, network, Vocab.byte_level()))
    sampled = model.sample("é ü", length=400, seed=2, echo=True)
    symbols = "".join(c[0] for c in model.sampler().generate(model.request("é ü", 400, seed=2), Decoding()))
    assert sampled == ("é ü".encode() + model.vocab.to_bytes(symbols)).decode("utf-8", "replace")
    assert sampled.startswith("é ü") and "\ufffd" in sampled  # random bytes: invalid UTF-8 repaired
    pieces = list(model.stream("é ü", length=400, seed=2, echo=True))
    assert pieces[0] == "é ü" and "".join(pieces) == sampled


def test_the_library_prints_nothing(model):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        model.sample("ANNA:", length=50, seed=1)
        model.score("ANNA: the cat sat on the mat.\n")
        with contextlib.suppress(charrnn.CharRNNError):
            model.sample("Zq")
    assert out.getvalue() == "" and err.getvalue() == ""


def test_surprise_reads_other_encodings_and_devices(trained_run, tmp_path):
    text = generated_text(2_000, seed=3)
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text(text, encoding="utf-16")
    code, _, err = cli("surprise", str(trained_run), str(utf16), "--length", "100")
    assert code == 1 and "pass --encoding utf-16" in err
    code, out, err = cli("surprise", str(trained_run), str(utf16), "--length", "100", "--encoding", "utf-16")
    assert code == 0, err
    assert text[:30] in out.decode()

    broken = tmp_path / "broken.txt"
    broken.write_bytes(text[:500].encode() + b"\xff" + text[500:].encode())
    code, _, err = cli("surprise", str(trained_run), str(broken))
    assert code == 1 and "invalid utf-8 at byte offset 500" in err
    code, out, err = cli("surprise", str(trained_run), str(broken), "--errors", "ignore", "--device", "cpu")
    assert code == 0, err
    assert text[480:520] in out.decode()
    code, _, err = cli("surprise", str(trained_run), str(broken), "--errors", "ignore", "--device", "tpu9")
    assert code == 2 and "--device tpu9" in err


def test_a_file_that_cannot_be_read_is_an_input_error_as_on_the_command_line(tmp_path, monkeypatch):
    """A file of a walked directory that vanishes (or cannot be read) while the run reads it: the
    command prints one line; the API raises the same line as an InputError, not a bare OSError."""
    from charrnn.data import corpus as corpus_module

    text = tmp_path / "text.txt"
    text.write_text("hello world\n" * 100, encoding="utf-8")

    def vanished(self):
        raise FileNotFoundError(2, "No such file or directory", str(self.path))

    monkeypatch.setattr(corpus_module.Source, "fingerprint", vanished)
    with pytest.raises(charrnn.InputError, match=re.escape(f"{text}: No such file or directory; check the path")):
        charrnn.train(text, out=tmp_path / "run", max_steps=1)


@pytest.mark.parametrize(
    "path, device", [(b"runs/x", "cpu"), (None, "cpu"), (5, "cpu"), ("runs/x", None), ("runs/x", "meta")]
)
def test_load_checks_its_arguments(path, device):
    with pytest.raises(charrnn.UsageError):
        charrnn.load(path, device=device)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.sample("a", length="5"),
        lambda m: m.sample("a", length=5.0),
        lambda m: m.sample("a", temperature="0.5"),
        lambda m: m.sample("a", top_k=2.5),
        lambda m: m.sample("a", stop=5),
        lambda m: m.sample(None, length=5),
        lambda m: m.score(None),
        lambda m: m.sample("a", echo="yes"),
        lambda m: m.score("ANNA: the", streams="2"),
        lambda m: m.score("ANNA: the", streams=2.5),
    ],
)
def test_model_methods_check_their_argument_types(trained_run, call):
    with pytest.raises(charrnn.UsageError):
        call(charrnn.load(trained_run))


def test_numpy_numbers_are_numbers(model):
    """Settings read with numpy or pandas arrive as numpy scalars: the same as the Python numbers."""
    import numpy as np

    settings = {"length": 40, "temperature": 0.8, "top_k": 5, "top_p": 0.9, "seed": 3}
    as_numpy = {k: (np.float32 if isinstance(v, float) else np.int64)(v) for k, v in settings.items()}
    assert model.sample("BEN:", **as_numpy) == model.sample(
        "BEN:", **{**settings, "temperature": float(np.float32(0.8)), "top_p": float(np.float32(0.9))}
    )
    assert model.score("ANNA: the cat", streams=np.int64(1)) == model.score("ANNA: the cat", streams=1)


def test_train_takes_numpy_numbers_and_records_plain_ones(tmp_path):
    import numpy as np

    corpus = tmp_path / "text.txt"
    corpus.write_text(generated_text(5_000), encoding="utf-8")
    result = charrnn.train(
        str(corpus), out=tmp_path / "run", max_steps=np.int64(2), lr=np.float32(0.002), hidden_size=np.int64(16),
        layers=1, embedding_size=8, batch_size=4, seq_len=16,
    )  # fmt: skip
    recorded = json.loads((result.run_dir / "run.json").read_text())
    assert (recorded["train"]["max_steps"], recorded["model"]["hidden_size"]) == (2, 16) and result.steps == 2
    assert recorded["train"]["lr"] == pytest.approx(0.002)
