"""Hostile input that once ended in a traceback or a wrong answer: each is now one clear line
on stderr and the documented exit code. Most run in-process (`cli`, fast); what needs a real process
(a closed stdin, a new run directory under a lock) runs as a user runs it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, generated_text, run_cli, run_cli_together, run_here
from typer.testing import CliRunner

from charrnn.cli import app


def cli(*args: str, input: str | None = None, check: bool = False) -> SimpleNamespace:
    """The command in this process, answered like run_cli; an exception other than our exits fails."""
    with torch.enable_grad():  # sample and eval turn autograd off globally
        result = CliRunner().invoke(app, list(args), input=input)
    crash = None if isinstance(result.exception, (SystemExit, type(None))) else result.exception
    assert crash is None, f"{type(crash).__name__}: {crash}"
    if check:
        assert result.exit_code == 0, result.stderr
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout_bytes, stderr=result.stderr_bytes)


def one_clear_line(proc, code: int, *words: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for w in words:
        assert w in err, err
    return err


def test_corrupt_gzip_is_a_clear_error_in_train_and_eval(tmp_path, trained_run):
    packed = bytearray(gzip.compress(generated_text(20_000).encode()))
    for i in range(200, 260):  # flip bytes inside the deflate stream: zlib, not gzip, notices
        packed[i] ^= 0xFF
    bad = tmp_path / "flipped.txt.gz"
    bad.write_bytes(bytes(packed))
    one_clear_line(cli("train", str(bad), *TINY, "--max-steps", "2"), 1, "flipped.txt.gz", "damaged")
    one_clear_line(cli("eval", str(trained_run), str(bad)), 1, "flipped.txt.gz", "damaged")


@pytest.mark.parametrize("t", ["nan", "inf", "-inf"])
def test_temperature_must_be_a_finite_number(trained_run, t):
    one_clear_line(cli("sample", str(trained_run), "-t", t, "-n", "5"), 2, "--temperature")


@pytest.mark.parametrize("t", ["1e-40", "5e-324"])
def test_tiny_temperatures_sample_like_greedy(trained_run, t):
    greedy = cli("sample", str(trained_run), "-t", "0", "-n", "80", "--prime", "ANNA:", check=True)
    tiny = cli("sample", str(trained_run), "-t", t, "-n", "80", "--prime", "ANNA:", "--seed", "1", check=True)
    assert tiny.stdout == greedy.stdout and tiny.stderr == b""


def test_one_character_texts_are_clear_errors_in_surprise_and_eval(tmp_path, trained_run):
    one = tmp_path / "one.txt"
    one.write_text("a")
    one_clear_line(cli("surprise", str(trained_run), str(one)), 1, "one.txt", "at least 2")
    one_clear_line(cli("eval", str(trained_run), str(one)), 1, "one.txt", "at least 2")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    err = one_clear_line(cli("eval", str(trained_run), str(empty)), 1, "empty.txt")
    assert "to train on" not in err  # eval does not train


def closed_stdin(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """The commands run at once, each with its standard input closed, as `charrnn ... <&-` does."""
    return run_cli_together(*[(args, {}) for args in commands], preexec_fn=lambda: os.close(0))


def test_closed_stdin_is_a_clear_error(trained_run):
    prime, interactive, train, score = closed_stdin(
        ["sample", str(trained_run), "--prime", "-"],
        ["sample", str(trained_run), "-i"],
        ["train", "-", *TINY, "--max-steps", "2"],
        ["eval", str(trained_run), "-"],
    )
    one_clear_line(prime, 2, "--prime -", "closed")
    one_clear_line(interactive, 2, "--interactive", "closed")
    one_clear_line(train, 2, "standard input", "closed")
    one_clear_line(score, 2, "standard input", "closed")


def test_stdin_twice_in_eval_is_a_usage_error_not_a_cache_path(trained_run, private_cache):
    err = one_clear_line(cli("eval", str(trained_run), "-", "-", input="ANNA: the cat\n"), 2, "only once")
    assert str(private_cache) not in err


def test_unknown_characters_from_stdin_name_standard_input_and_the_model(trained_run, private_cache):
    err = one_clear_line(cli("eval", str(trained_run), str(trained_run), "-", input="ANNA: ~~~\n"), 1)
    assert "standard input" in err and "'~'" in err and "(model " in err and str(private_cache) not in err


def test_utf16_with_a_bom_is_named(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_bytes("hello there\n".encode("utf-16"))
    one_clear_line(cli("train", str(path), *TINY, "--max-steps", "2"), 1, "wide.txt", "--encoding utf-16")


def test_plot_writes_the_file_it_names_and_reports_a_failed_write(trained_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "mycurves"
    proc = cli("plot", str(trained_run), "--output", str(out), check=True)
    assert out.read_bytes().startswith(b"\x89PNG") and f"wrote {out}" in proc.stderr.decode()
    one_clear_line(cli("plot", str(trained_run), "--output", str(tmp_path / "c.nosuch")), 2, ".nosuch")
    if os.path.exists("/dev/full"):
        one_clear_line(cli("plot", str(trained_run), "--output", "/dev/full"), 1, "/dev/full")


def test_misleading_train_messages_are_fixed(trained_run, text_file, tmp_path):
    err = one_clear_line(
        cli("train", "--init-from", str(trained_run), "--resume", str(trained_run), "-o", str(tmp_path / "x")), 2
    )
    assert "exclude each other" in err
    one_clear_line(cli("train", str(text_file), "--val-fraction", "0", "--patience", "3"), 2, "--patience")
    err = one_clear_line(cli("train", "--resume", str(trained_run), "--hidden-size", "64"), 2)
    assert "--hidden-size differs" in err


def test_a_resume_records_the_settings_it_changed(tmp_path, text_file):
    run = tmp_path / "run"
    common = [*TINY, "--eval-every", "0", "--sample-length", "0", "-q"]
    cli("train", str(text_file), *common, "--max-steps", "3", "-o", str(run), check=True)
    cli("train", "--resume", str(run), "--max-steps", "5", "--lr", "0.001", "-q", check=True)
    resumes = json.loads((run / "run.json").read_text())["resumes"]
    assert resumes[0]["step"] == 3 and resumes[0]["changed"]["lr"]["to"] == 0.001


def test_train_refuses_an_output_directory_that_is_not_a_run(tmp_path, text_file):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.json").write_text('{"mine": true}')
    (mine / "thesis.tex").write_text("x")
    one_clear_line(run_here("train", str(text_file), *TINY, "--max-steps", "2", "-o", str(mine)), 1, "thesis.tex")
    assert (mine / "best.json").read_text() == '{"mine": true}'
    one_clear_line(run_here("train", str(text_file), *TINY, "--max-steps", "2", "-o", str(text_file)), 1, "is a file")


def test_a_run_whose_log_reader_goes_away_trains_on_and_saves(tmp_path, text_file):
    """`charrnn train ... 2>&1 | head -2`: the progress is not the product; the run goes on without
    it, saves its checkpoints and ends with 0, rather than dying at the next line it prints."""
    run = tmp_path / "run"
    args = [*TINY, "--max-steps", "20", "--log-every", "1", "--eval-every", "10", "--sample-length", "0"]
    procs = {}
    for log in ("plain", "jsonl"):  # both at once, a thread each
        procs[log] = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "--threads", "1", "train", str(text_file), *args]
            + ["--log-format", log, "-o", str(run / log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    for proc in procs.values():
        proc.stderr.readline()
        proc.stderr.close()  # the reader goes away after the first line
    for log, proc in procs.items():
        assert proc.wait(timeout=300) == 0
        assert json.loads((run / log / "result.json").read_text())["steps"] == 20


def test_names_are_shown_as_typed_and_odd_devices_threads_and_widths_are_refused_or_floored(tmp_path, trained_run):
    odd = tmp_path / "a:fire:b.txt"
    odd.write_text(generated_text(5_000), encoding="utf-8")
    proc = run_here(
        "train", str(odd), *TINY, "--max-steps", "2", "--sample-length", "0", "-o", str(tmp_path / "r:smile:")
    )
    assert proc.returncode == 0 and b"r:smile:" in proc.stderr  # not an emoji
    assert "a:fire:b.txt" in run_here("info", str(tmp_path / "r:smile:"), check=True).stdout.decode()
    for device in ("meta", "xpu", "cpu:3"):
        proc = run_here("sample", str(trained_run), "-n", "5", "--device", device)
        assert proc.returncode == 2 and b"use auto, cpu, cuda, cuda:N or mps" in proc.stderr
    proc = run_here("--threads", "99999", "sample", str(trained_run), "-n", "5")
    assert proc.returncode == 2 and b"--threads" in proc.stderr
    info = run_cli("info", str(trained_run), env={"COLUMNS": "0"}).stdout.decode()  # read when the process starts
    assert "1 x 32 LSTM," in info  # read at 40 columns at least, not cut to nothing


def test_a_held_out_part_too_short_to_validate_on_is_said(tmp_path, text_file):
    proc = run_here(
        "train", str(text_file), *TINY, "--max-steps", "2", "--val-max-chars", "1", "-o", str(tmp_path / "r")
    )
    assert proc.returncode == 0 and b"does not validate" in proc.stderr and b"--val-max-chars" in proc.stderr


@pytest.mark.parametrize("glob", ["../*.txt", "/etc/*"])
def test_glob_stays_within_the_directory_and_hidden_directories_are_left_out(tmp_path, glob):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / ".git" / "objects").mkdir(parents=True)
    (project / "src" / "a.txt").write_text(generated_text(3_000), encoding="utf-8")
    (project / ".git" / "objects" / "ab").write_bytes(bytes(range(256)) * 4)  # a binary git object
    (tmp_path / "outside.txt").write_text("not this one\n", encoding="utf-8")
    (project / "src" / "z-link.txt").symlink_to("a.txt")  # the same text again: read once
    run = tmp_path / "run"
    run_here("train", str(project), *TINY, "--max-steps", "1", "--sample-length", "0", "-o", str(run), check=True)
    sources = json.loads((run / "run.json").read_text())["corpus"]["sources"]
    assert [Path(s["path"]).name for s in sources] == ["a.txt"]  # .git's files are not text to train on
    proc = run_here("train", str(project), "--glob", glob, "--max-steps", "1", "-o", str(tmp_path / "g"))
    assert proc.returncode == 2 and b"--glob" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize("encoding", ["rot13", "base64", "zlib"])
def test_codecs_that_are_not_text_encodings_are_usage_errors(text_file, encoding):
    proc = run_here("train", str(text_file), "--encoding", encoding, "--max-steps", "1")
    assert proc.returncode == 2 and b"not a text encoding" in proc.stderr


def test_resuming_from_a_checkpoint_older_than_the_newest_is_refused(tmp_path, text_file):
    """It would branch the run and keep the abandoned branch's checkpoint as its best: sample and eval
    would then use a model of a history that no longer exists."""
    run = tmp_path / "run"
    args = [*TINY, "--max-steps", "4", "--eval-every", "2", "--sample-length", "0", "-o", str(run)]
    run_here("train", str(text_file), *args, check=True)
    older = sorted((run / "checkpoints").iterdir())[0]
    proc = run_here("train", "--resume", str(older), "--max-steps", "6")
    assert proc.returncode == 2 and b"has a newer checkpoint" in proc.stderr and b"--init-from" in proc.stderr
    assert json.loads((run / "result.json").read_text())["steps"] == 4  # the run is as it was


def test_a_run_trained_on_a_relative_path_resumes_from_another_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "text.txt").write_text(generated_text(5_000), encoding="utf-8")
    args = [*TINY, "--sample-length", "0", "-q"]
    monkeypatch.chdir(tmp_path)
    run_here("train", "data/text.txt", *args, "--max-steps", "2", "-o", "runs/r", check=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_here("train", "--resume", str(tmp_path / "runs" / "r"), "--max-steps", "3", *args[-3:], check=True)
    assert json.loads((tmp_path / "runs" / "r" / "result.json").read_text())["steps"] == 3


def test_eval_reads_text_as_the_model_was_trained_and_counts_what_it_did_not_know(tmp_path):
    """A model trained with --keep-newlines is scored on its "\\r"s too; characters outside the
    vocabulary, scored with --unknown replace or skip, are counted in a note and in --json."""
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(generated_text(6_000).replace("\n", "\r\n").encode())
    run = tmp_path / "run"
    args = [*TINY, "--keep-newlines", "--max-steps", "2", "--sample-length", "0", "-o", str(run)]
    run_here("train", str(crlf), *args, check=True)
    scored = json.loads(run_here("eval", str(run), str(crlf), "--json", check=True).stdout)["results"][0]
    assert scored["characters"] == len(crlf.read_bytes()) - 1 and scored["unknown"] == 0  # every "\r" counted
    odd = tmp_path / "odd.txt"
    odd.write_text("héllo wörld\r\n" * 20, encoding="utf-8")
    proc = run_here("eval", str(run), str(odd), "--unknown", "replace", "--json", check=True)
    assert json.loads(proc.stdout)["results"][0]["unknown"] == 40
    assert b"40 characters are not in the vocabulary" in proc.stderr and b"scored as" in proc.stderr


def test_a_cache_folder_that_cannot_be_used_is_named_with_the_fix(tmp_path, text_file):
    proc = run_cli(
        "train",
        str(text_file),
        *TINY,
        "--max-steps",
        "1",
        "-o",
        str(tmp_path / "r"),
        env={"CHARRNN_CACHE": "/dev/null"},
    )
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1
    assert "cannot use the cache folder /dev/null" in err and "CHARRNN_CACHE" in err


def test_a_binary_file_in_a_directory_is_called_not_text_with_the_way_to_leave_it_out(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text(generated_text(3_000), encoding="utf-8")
    (notes / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    proc = run_here("train", str(notes), "--max-steps", "1", "-o", str(tmp_path / "r"))
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "curves.png: not text" in err and "--glob '*.txt'" in err
    assert "--encoding" not in err  # latin-1 would "decode" the image and train on it


def test_a_precision_this_device_cannot_run_is_refused_before_the_run_is_made(tmp_path, text_file):
    proc = run_here("train", str(text_file), "--precision", "fp16", "--max-steps", "1", "-o", str(tmp_path / "r"))
    assert proc.returncode == 2 and b"--precision fp16" in proc.stderr and not (tmp_path / "r").exists()


def test_commands_work_with_stderr_or_stdout_closed(trained_run):
    """cron jobs and daemons may start programs with descriptors closed (2>&-, >&-): the command still
    does its work, and what would go to the closed stream goes nowhere."""

    def closed(fd, *args):
        return subprocess.run(
            [sys.executable, "-m", "charrnn", *args], stdout=subprocess.PIPE, preexec_fn=lambda: os.close(fd)
        )

    proc = closed(2, "sample", str(trained_run), "-n", "20", "--seed", "1")  # train, too: the console is the same
    assert proc.returncode == 0 and len(proc.stdout.decode()) == 20
    assert closed(1, "info", str(trained_run)).returncode == 0


def test_a_val_file_with_characters_the_training_text_lacks_is_named_and_counted(tmp_path, text_file):
    odd = tmp_path / "held-out.txt"
    odd.write_text("héllo wörld\n" * 10, encoding="utf-8")
    args = [*TINY, "--val-file", str(odd), "--max-steps", "1", "--sample-length", "0"]
    proc = run_here("train", str(text_file), *args, "-o", str(tmp_path / "a"))
    assert proc.returncode == 1 and b"not in the training text" in proc.stderr  # no model exists yet
    proc = run_here("train", str(text_file), *args, "--unknown", "skip", "-o", str(tmp_path / "b"), check=True)
    assert b"20 characters of" in proc.stderr and b"left out (--unknown skip)" in proc.stderr


@pytest.mark.parametrize(
    "edit",
    [
        lambda manifest, result: manifest.update(why=5),
        lambda manifest, result: manifest["corpus"].update(characters="x"),
        lambda manifest, result: result.update(kept=5),
        lambda manifest, result: result.update(steps=None),
    ],
)
def test_info_on_fields_of_the_wrong_type_is_one_line(trained_run, tmp_path, edit):
    import shutil

    from charrnn.storage import layout

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = layout.resolve(run, "best")
    manifest, result = (json.loads(p.read_text()) for p in (folder / "manifest.json", run / "result.json"))
    edit(manifest, result)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (run / "result.json").write_text(json.dumps(result))
    proc = run_here("info", str(run))
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "not what charrnn writes" in err and "Traceback" not in err, err
    assert run_here("info", str(run), "--json").returncode == 0  # the fields as they are


def test_resuming_from_a_manifest_with_a_bad_training_setting_names_the_file_not_a_flag(tmp_path, text_file):
    from charrnn.storage import layout

    run = tmp_path / "run"
    run_here("train", str(text_file), *TINY, "--max-steps", "2", "--sample-length", "0", "-o", str(run), check=True)
    folder = layout.resolve(run)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["train"]["batch_size"] = "x"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = run_here("train", "--resume", str(run), "--max-steps", "3")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and str(folder) in err and "not what charrnn writes" in err, err


def test_lone_surrogates_are_one_line_everywhere(tmp_path, trained_run):
    """Bytes that are not UTF-8 on a command line reach Python as lone surrogates ("\\udcff"): a
    prime or stop string holding one gave a traceback, `Model.sample` a UnicodeEncodeError, and a
    text decoded to one with --encoding unicode_escape trained, then broke sample, info and surprise."""
    from conftest import TINY, run_here

    import charrnn

    for flag in ("--prime", "--stop"):
        proc = run_here("sample", str(trained_run), flag, "ab\udcff", "-n", "5")
        err = proc.stderr.decode()
        assert proc.returncode == 1 and f"{flag}: character 3 is U+DCFF" in err and "Traceback" not in err
    model = charrnn.load(trained_run)
    with pytest.raises(charrnn.InputError, match="U[+]D800"):
        model.sample("\ud800")
    with pytest.raises(charrnn.InputError, match="U[+]DCFF"):
        model.score("the cat\udcff")
    escaped = tmp_path / "escaped.txt"
    escaped.write_text("the cat sat on the mat \\ud800 and ran\n" * 200, encoding="ascii")
    proc = run_here("train", str(escaped), "--encoding", "unicode_escape", *TINY, "--max-steps", "1", "-o",
                    str(tmp_path / "run"))  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "U+D800, half of a UTF-16 surrogate pair" in err and "--encoding" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_prime_with_windows_line_ends_is_read_as_the_training_text_was(trained_run):
    """eval read "\\r\\n" as "\\n", but a prime holding it was refused as outside the vocabulary (and
    --unknown replace made "\\r" a space): one rule for every text a model reads."""
    from conftest import run_here

    import charrnn

    unix = run_here(
        "sample", str(trained_run), "--prime", "ANNA: the cat.\nBEN:", "-n", "40", "--seed", "3", check=True
    )
    windows = run_here("sample", str(trained_run), "--prime", "ANNA: the cat.\r\nBEN:", "-n", "40", "--seed", "3",
                       check=True)  # fmt: skip
    assert windows.stdout == unix.stdout
    model = charrnn.load(trained_run)
    assert model.sample("BEN:\r\n", length=30, seed=1) == model.sample("BEN:\n", length=30, seed=1)
    assert model.sample("BEN:", stop="\r\n", length=300, seed=1).endswith("\n")


def test_small_things_a_new_user_meets(tmp_path, monkeypatch):
    """A resume from another folder reads the recorded file, not one of the same name there; a run
    named after a file with spaces has none; a file called `runs` is named as the problem; a run
    trained on standard input, resumed without it, says so."""
    from conftest import TINY, generated_text, run_here

    args = [*TINY, "--max-steps", "2", "--sample-length", "0", "-q"]
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "text.txt").write_text(generated_text(3_000), encoding="utf-8")
    (elsewhere / "text.txt").write_text(generated_text(3_000, seed=9), encoding="utf-8")  # same name, other text
    monkeypatch.chdir(work)
    run_here("train", "text.txt", "-o", str(tmp_path / "run"), *args, check=True)
    monkeypatch.chdir(elsewhere)
    run_here("train", "--resume", str(tmp_path / "run"), "--max-steps", "4", "-q", "--sample-length", "0", check=True)

    (work / "my notes\nfinal.txt").write_text(generated_text(3_000), encoding="utf-8")
    monkeypatch.chdir(work)
    run_here("train", "my notes\nfinal.txt", *args, check=True)
    assert [p.name for p in (work / "runs").iterdir()][0].startswith("my-notes-final-lstm-")

    monkeypatch.chdir(elsewhere)
    Path("runs").write_text("not a folder")
    proc = run_here("train", "text.txt", *args)
    assert proc.returncode == 1 and b"runs: is a file, not a folder for runs" in proc.stderr

    run_here("train", "-", "-o", str(tmp_path / "piped"), *args, input=generated_text(3_000), check=True)
    proc = run_here("train", "--resume", str(tmp_path / "piped"), "--max-steps", "4", "-q", input="")
    assert proc.returncode == 1 and b"this run was trained on standard input; pipe the same text in" in proc.stderr
