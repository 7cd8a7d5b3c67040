"""End to end: the real `charrnn` command on generated text, as a user runs it."""

import json
import os
import subprocess
import sys

from conftest import TINY, generated_text, run_cli, run_cli_together, run_here

from charrnn.config import PRESETS
from charrnn.training.plan import choose


def test_train_writes_a_run_and_shows_a_sample(text_file, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "train", str(text_file), *TINY, "--max-steps", "20", "--eval-every", "10", "-o", str(run), check=True
    )
    assert proc.stdout == b""  # training prints nothing on stdout
    err = proc.stderr.decode()
    assert "validation" in err and "sample" in err
    assert "\x1b[" not in err  # stderr is not a terminal: no colour, no animation
    assert (run / "run.json").exists() and (run / "latest.json").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in records) and records[-1]["step"] == 20


def test_sample_stdout_is_only_the_generated_text(trained_run):
    proc = run_cli("sample", str(trained_run), "--length", "200", "--seed", "3", check=True)
    assert proc.stderr == b""
    text = proc.stdout.decode()
    assert len(text) == 200 and "\x1b" not in text
    again = run_cli("sample", str(trained_run), "--length", "200", "--seed", "3", check=True)
    assert again.stdout == proc.stdout  # a seed reproduces the output


def test_sample_echoes_the_prime(trained_run):
    proc = run_here("sample", str(trained_run), "--prime", "ANNA: the", "-n", "30", "--seed", "1", check=True)
    assert proc.stdout.decode().startswith("ANNA: the") and len(proc.stdout) == 39
    proc = run_here("sample", str(trained_run), "--prime", "ANNA: the", "-n", "30", "--no-echo", check=True)
    assert len(proc.stdout) == 30


def test_eval_json_parses(trained_run, text_file):
    proc = run_here("eval", str(trained_run), str(text_file), "--json", check=True)
    data = json.loads(proc.stdout)
    result = data["results"][0]
    assert result["file"] == str(text_file)
    assert 0 < result["nats"] < 4 and abs(result["bits_per_char"] - result["nats"] / 0.6931471805599453) < 1e-9
    assert result["characters"] == len(text_file.read_text()) - 1


def test_eval_table_goes_to_stderr(trained_run, text_file):
    proc = run_here("eval", str(trained_run), str(text_file), check=True)
    assert proc.stdout == b""
    assert "bits/char" in proc.stderr.decode()


def test_missing_corpus_is_one_clear_line(tmp_path):
    proc = run_here("train", str(tmp_path / "nope.txt"))
    assert proc.returncode == 1
    err = proc.stderr.decode().strip()
    assert err.count("\n") == 0 and "nope.txt" in err and "Traceback" not in err


def test_bad_flag_values_are_usage_errors(trained_run):
    assert run_here("train", "--layers", "0").returncode == 2
    assert run_here("train", "--no-such-flag").returncode == 2
    for flags in (["--temperature", "-1"], ["--top-p", "1.5"], ["--length", "-3"], ["--count", "100000000"]):
        proc = run_here("sample", str(trained_run), *flags)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    for flags in (["--width", "100000000"], ["--height", "100000000"]):  # a chart that size took 24 GB
        assert run_here("plot", str(trained_run), *flags).returncode == 2


def test_a_model_too_large_for_memory_is_one_clear_line(text_file, tmp_path, monkeypatch):
    """Refused before it is built when its training state cannot fit at all (exit 2, nothing written);
    and running out of memory later (a batch too large) ends in one line too, not a traceback."""
    proc = run_here("train", str(text_file), "--hidden-size", "1000000", "--max-steps", "1", "-o", str(tmp_path / "a"))
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "--hidden-size" in err and "GB" in err
    assert not (tmp_path / "a").exists()

    from charrnn.training.trainer import Trainer

    def out_of_memory(self):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 16000000000000 bytes.")

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    proc = run_here("train", str(text_file), *TINY, "--max-steps", "2", "-o", str(tmp_path / "b"))
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and err[-1].startswith("charrnn: error: out of memory; use a smaller model")
    assert "Traceback" not in proc.stderr.decode()


def test_json_lines_logs_give_usage_errors_as_json_too(text_file):
    for bad in (["--max-steps", "0"], ["--no-such-flag"]):
        proc = run_cli("train", str(text_file), "--log-format", "jsonl", *bad)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and json.loads(lines[0])["event"] == "error"


def test_help_and_version():
    assert run_cli("--help").returncode == 0
    assert run_cli("train", "--help").returncode == 0
    assert run_cli("--version").stdout.startswith(b"charrnn ")


def test_unwritable_run_directory_is_one_clear_line(text_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_here("train", str(text_file), *TINY, "--max-steps", "2", "-o", str(blocker / "run"))
    assert proc.returncode == 1
    err = proc.stderr.decode().strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "file" in err


def test_no_color_and_force_color_never_animate_a_file(text_file, tmp_path):
    envs = [{"NO_COLOR": "1", "FORCE_COLOR": "1"}, {"FORCE_COLOR": "1"}]
    args = ["train", str(text_file), *TINY, "--max-steps", "3", "--sample-length", "0", "-o"]
    procs = run_cli_together(*[([*args, str(tmp_path / f"r{i}")], env) for i, env in enumerate(envs)])
    for env, proc in zip(envs, procs):
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        assert "\x1b[?25l" not in err and "╭" not in err  # no live dashboard (it hides the cursor)
        if "NO_COLOR" in env:
            assert "\x1b[" not in err
        else:
            assert "\x1b[" in err  # FORCE_COLOR colours a file: the check above can fail


def test_presets_size_the_model_and_flags_override_them(text_file, tmp_path):
    common = ("--max-steps", "1", "--eval-every", "0", "--sample-length", "0")
    run = tmp_path / "medium"
    proc = run_here("train", str(text_file), "--preset", "medium", "--hidden-size", "48", *common, "-o", str(run))
    assert proc.returncode == 0, proc.stderr.decode()
    assert "preset medium with hidden-size 48 (as asked)" in proc.stderr.decode()  # what the run will use
    info = json.loads((run / "run.json").read_text())
    assert info["preset"] == "medium"
    assert info["model"]["hidden_size"] == 48  # given on the command line
    assert info["model"]["dropout"] == PRESETS["medium"]["dropout"]  # from the preset
    assert info["train"]["lr"] == PRESETS["medium"]["lr"]
    for key in ("weight_decay", "min_lr_ratio", "ema"):
        assert info["train"][key] == PRESETS["medium"][key], key

    auto = tmp_path / "auto"
    proc = run_here("train", str(text_file), *TINY, *common, "--device", "cpu", "-o", str(auto), check=True)
    assert (
        "preset small with hidden-size 32, embedding-size 8, batch-size 8, seq-len 32 "
        "(a CPU and a step or epoch budget)" in proc.stderr.decode()
    )
    proc = run_here("train", "--resume", str(auto), "--preset", "large", "--max-steps", "2")
    assert proc.returncode == 2 and b"--preset applies to new runs" in proc.stderr
    # which text is held out stays the run's own: validations before and after compare
    for flag, value in [
        ("--out", "elsewhere"),
        ("--encoding", "latin-1"),
        ("--val-fraction", "0.2"),
        ("--val-file", str(text_file)),
        ("--batch-size", "4"),  # the streams and the state carried through them are the run's own
        ("--seed", "5"),  # and so are its random streams, restored from the checkpoint
    ]:
        proc = run_here("train", "--resume", str(auto), flag, value, "--max-steps", "2")
        assert proc.returncode == 2 and f"{flag} applies to new runs".encode() in proc.stderr


def test_auto_preset_follows_device_budget_and_text_size():
    assert choose("cpu", 75, 1_000_000).preset == "small"
    assert choose("cpu", 180, 1_000_000).preset == "small"  # the default budget
    assert choose("cpu", 300, 1_000_000).preset == "medium"
    assert choose("cpu", 600, 1_000_000).preset == "medium"
    assert choose("cpu", 600, 50_000).preset == "small"  # too little text for a bigger model
    assert choose("cpu", None, 1_000_000).preset == "small"
    assert choose("cuda", 75, 1_000_000).preset == "large"


def test_info_describes_the_run_and_which_weights_it_holds(trained_run):
    proc, ascii_only = run_cli_together(
        (["info", str(trained_run)], {"FORCE_COLOR": "1"}), (["info", str(trained_run)], {"PYTHONIOENCODING": "ascii"})
    )
    assert proc.returncode == 0, proc.stderr.decode()
    table = proc.stdout.decode()  # the result: stdout, without colour in a pipe
    assert proc.stderr == b"" and "\x1b" not in table
    assert all(line == line.rstrip() for line in table.splitlines())  # no padding to the widest line
    assert "1 x 32 LSTM" in table and "60 steps" in table
    assert "preset small with hidden-size 32" in table and "(a CPU and a step or epoch budget)" in table  # why
    assert "moving average, decay 0.999" in table  # the default --ema: the checkpoint holds the average
    summary = json.loads(run_here("info", str(trained_run), "--json", check=True).stdout)
    assert summary["step"] == 60 and summary["train"]["ema"] == 0.999
    # a stdout that cannot encode "±" or a box line (LANG=C, PYTHONIOENCODING=ascii): "?", not a traceback
    assert ascii_only.returncode == 0 and ascii_only.stderr == b"" and b"60 steps" in ascii_only.stdout


def test_a_run_on_a_tiny_text_hands_back_its_best_model_and_says_so(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(generated_text(2_500), encoding="utf-8")
    run = tmp_path / "run"
    flags = ["--hidden-size", "128", "--layers", "1", "--embedding-size", "16", "--batch-size", "4", "--seq-len", "32"]
    flags += ["--dropout", "0", "--lr", "0.02", "--ema", "0", "--eval-every", "25", "--sample-length", "40"]
    proc = run_here("train", str(corpus), *flags, "--max-steps", "400", "-o", str(run), check=True)
    err = proc.stderr.decode()
    result = json.loads((run / "result.json").read_text())
    kept = result["kept"]["step"]
    assert 0 < kept < 400 and result["last_val_estimate"] > result["val_loss"] + 0.05  # it overfitted
    assert f"validation was best at step {kept}" in err and "kept that model" in err
    assert "passes over" not in err or "small for this budget" in err

    def sample(*extra):
        return run_here("sample", str(run), "-n", "200", "--seed", "3", *extra, check=True).stdout

    assert sample() == sample("--checkpoint", "best") != sample("--checkpoint", "latest")
    scored = json.loads(run_here("eval", str(run), str(corpus), "--json", check=True).stdout)["results"][0]
    assert f"step-{kept:08d}" in scored["checkpoint"]
    info = run_here("info", str(run), check=True)
    assert f"validation was best at step {kept}" in (info.stdout + info.stderr).decode()
    # info describes the model the run hands back, as sample, eval and surprise use it
    assert f"step-{kept:08d}" in info.stdout.decode().splitlines()[0]
    latest = run_here("info", str(run), "--checkpoint", "latest", check=True).stdout.decode()
    assert "step-00000400" in latest.splitlines()[0]
    # resuming continues from the newest checkpoint, as before
    proc = run_here("train", "--resume", str(run), "--max-steps", "425", "--sample-length", "0", check=True)
    assert json.loads((run / "result.json").read_text())["steps"] == 425


def test_threads_limits_torch_and_is_checked():
    proc = run_cli("--threads", "0", "corpus", "list")
    assert proc.returncode == 2 and b"--threads" in proc.stderr
    check = (
        "import charrnn.cli as c, torch; c.app(['--threads', '7', 'info', '--help'], standalone_mode=False); "
        "print(torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, check=True, env=env).stdout
    assert out.strip().endswith(b"\n7")  # more than the cores here: only --threads makes it 7


def test_help_and_views_into_a_full_disk_are_one_clear_line(trained_run):
    for command in (["--help"], ["info", str(trained_run)], ["corpus", "list"]):
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([sys.executable, "-m", "charrnn", *command], stdout=full, stderr=subprocess.PIPE)
        assert proc.returncode == 1
        assert proc.stderr.decode().splitlines() == [
            "charrnn: error: cannot write to standard output: No space left on device"
        ]


def test_fine_tuning_says_how_much_of_the_text_unknown_characters_touched(text_file, tmp_path):
    base = tmp_path / "base"
    run_here("train", str(text_file), *TINY, "--max-steps", "1", "--sample-length", "0", "-o", str(base), check=True)
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text() + "é" * 10, encoding="utf-8")
    for unknown, done in [("replace", "replaced by"), ("skip", "dropped")]:
        args = ["--init-from", str(base), "--unknown", unknown, "--max-steps", "1", "--sample-length", "0"]
        proc = run_here("train", str(other), *args, "-o", str(tmp_path / unknown), check=True)
        share = f"{10 / (len(text_file.read_text()) + 10):.1%}"
        assert f"10 characters of the text ({share}) are not in the model's vocabulary: {done}" in proc.stderr.decode()
