"""Exact resume, crash safety and signals, with real processes (RELIABILITY items 5, 9-11, 22)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, generated_text, run_here
from safetensors.torch import load_file

from charrnn.storage import checkpoints as ckpt
from charrnn.storage import layout

# 5,400 training characters in 8 streams of 32: 21 batches per epoch, so 30 steps cross an epoch.
MODEL = [
    "--hidden-size",
    "32",
    "--layers",
    "2",
    "--embedding-size",
    "8",
    "--dropout",
    "0.3",
    "--batch-size",
    "8",
    "--seq-len",
    "32",
    "--seed",
    "5",
    "--sample-length",
    "0",
    "--log-every",
    "1",
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(generated_text(6000), encoding="utf-8")
    return path


def losses(run: Path) -> list:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in records]


def final_tensors(run: Path) -> dict:
    folder = layout.resolve(run)
    return {name: load_file(folder / name) for name in ckpt.TENSOR_FILES}


@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_resume_is_bit_identical_with_dropout_across_an_epoch(corpus, tmp_path, ema):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [str(corpus), *MODEL, "--decay-steps", "30", "--eval-every", "15", "--ema", ema]
    # the first two runs at once, a thread each (two processes spinning on both cores would crawl)
    first = [
        start(["--threads", "1", "train", *common, "--max-steps", n, "-o", str(run)])
        for n, run in [("30", straight), ("15", split)]
    ]
    assert [p.wait(timeout=120) for p in first] == [0, 0], [p.stderr.read().decode() for p in first]
    run_here("--threads", "1", "train", "--resume", str(split), "--max-steps", "30", "--sample-length", "0", check=True)
    a, b = final_tensors(straight), final_tensors(split)
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert a[name][key].equal(b[name][key]), f"{name}:{key} differs"
    assert losses(straight) == losses(split)
    assert json.loads((layout.resolve(split) / "manifest.json").read_text())["epoch"] == 1


def test_resume_refuses_other_text_and_architecture(corpus, tmp_path):
    run = tmp_path / "run"
    run_here("train", str(corpus), *MODEL, "--max-steps", "2", "-o", str(run), check=True)
    other = tmp_path / "other.txt"
    other.write_text(generated_text(6000, seed=1))
    proc = run_here("train", str(other), "--resume", str(run))
    assert proc.returncode == 1 and b"corpus differs" in proc.stderr and b"--init-from" in proc.stderr
    # a text with characters the run never saw says the same, not "use --unknown to proceed"
    accented = tmp_path / "accented.txt"
    accented.write_text(generated_text(6000, seed=1) + "\u00e9\u00df")
    proc = run_here("train", str(accented), "--resume", str(run))
    assert proc.returncode == 1 and b"corpus differs" in proc.stderr and b"--unknown" not in proc.stderr
    proc = run_here("train", "--resume", str(run), "--hidden-size", "64")
    assert proc.returncode == 2 and b"--hidden-size" in proc.stderr  # a usage error
    # fine-tuning on the other text is what --init-from is for
    run_here(
        "train",
        str(other),
        "--init-from",
        str(run),
        "--max-steps",
        "2",
        "-o",
        str(tmp_path / "tuned"),
        "--sample-length",
        "0",
        check=True,
    )


def start(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )


def wait_for_training(run: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the process has logged a step past the checkpoint it started from."""
    before = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) > before:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    raise AssertionError("training did not start")


def fork_cli(args: list[str]) -> int:
    """Run `charrnn ARGS` in a forked child: a real process to kill, without paying for a fresh
    interpreter and torch import each time (this test kills 20 of them)."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            from charrnn.cli import app

            app(args=args, prog_name="charrnn")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
        finally:
            os._exit(code)
    return pid


def wait_for_step(run: Path, pid: int, timeout: float = 60) -> None:
    before = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) > before:
            return
        done, status = os.waitpid(pid, os.WNOHANG)
        assert done == 0, f"training ended early with status {status}"
        time.sleep(0.01)
    raise AssertionError("training did not start")


def test_sigkill_at_random_moments_never_loses_the_run(corpus, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(1234)
    args = [str(corpus), *MODEL, "--save-every", "1", "--eval-every", "0", "--max-steps", "100000", "--keep", "2"]
    steps = []
    for _ in range(20):
        if layout.list_checkpoints(run):
            pid = fork_cli(["train", "--resume", str(run), "--sample-length", "0"])
        else:  # killed before the first checkpoint: the same command starts the run again
            pid = fork_cli(["train", *args, "-o", str(run)])
        wait_for_step(run, pid)
        time.sleep(rng.uniform(0, 0.3))  # most of a step is spent saving: kills land mid-save
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = ckpt.load(run)  # the newest complete checkpoint always loads
        steps.append(loaded.manifest["step"])
    assert steps == sorted(steps) and steps[-1] > steps[0]  # every restart made progress
    final = run_here(
        "train", "--resume", str(run), "--max-steps", str(steps[-1] + 3), "--sample-length", "0", check=True
    )
    assert final.returncode == 0
    assert ckpt.load(run).manifest["step"] == steps[-1] + 3
    assert not list((run / "checkpoints").glob(".tmp-*"))  # leftovers of killed saves are cleaned up


@pytest.mark.parametrize(
    "signum,code,twice", [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)]
)
def test_signals_save_and_exit_with_the_shell_code(corpus, tmp_path, signum, code, twice):
    run = tmp_path / "run"
    proc = start(["train", str(corpus), *MODEL, "--max-steps", "100000", "--eval-every", "0", "-o", str(run)])
    wait_for_training(run, proc)
    proc.send_signal(signum)
    if twice:  # a second Ctrl-C while the final checkpoint is being written
        time.sleep(0.01)
        proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "--resume" in err
    loaded = ckpt.load(run)
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert loaded.manifest["step"] >= max(logged)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_last_scoring_of_the_held_out_text_stops_it(corpus, tmp_path, signum, code):
    """The checkpoints are saved before the last scoring of the whole held-out text, which can take
    minutes on a large one: Ctrl-C and SIGTERM stop it there and then, with their exit codes."""
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(generated_text(1_000_000, seed=1), encoding="utf-8")
    run = tmp_path / "run"
    args = ["--val-file", str(held_out), "--hidden-size", "256", "--max-steps", "3", "--eval-chars", "2000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", str(corpus), *args, "--log-format", "jsonl", "-o", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    events = []
    for line in proc.stderr:
        events.append(json.loads(line)["event"])
        if events[-1] == "scoring":
            break
    assert events[-1] == "scoring", events
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == code
    # stopped there: a scoring that went on to the end would have written the run's result
    assert ckpt.load(run).manifest["step"] == 3 and not (run / "result.json").exists()


def test_a_resume_with_a_new_budget_starts_its_patience_afresh(corpus, tmp_path):
    """Validations that did not improve before the resume do not stop the longer run it asked for."""
    run = tmp_path / "run"
    flags = [*MODEL, "--lr", "0", "--eval-every", "5", "--patience", "3", "--sample-length", "0"]
    run_here("train", str(corpus), *flags, "--max-steps", "20", "-o", str(run), check=True)
    assert ckpt.load(run).manifest["evals_without_improvement"] == 3  # the weights never change
    run_here("train", "--resume", str(run), "--max-steps", "40", "--patience", "3", "--sample-length", "0", check=True)
    assert json.loads((run / "result.json").read_text())["steps"] == 35  # 3 more validations, then patience


def test_a_second_resume_keeps_what_the_first_resume_changed(corpus, tmp_path):
    run = tmp_path / "run"
    run_here("train", str(corpus), *MODEL, "--max-steps", "3", "--eval-every", "0", "-o", str(run), check=True)
    run_here("train", "--resume", str(run), "--max-steps", "6", "--sample-length", "0", check=True)
    run_here("train", "--resume", str(run), "--sample-length", "0", check=True)  # nothing new: still 6
    assert ckpt.load(run).manifest["step"] == 6
    assert ckpt.load(run).manifest["train"]["max_steps"] == 6


def test_a_run_from_before_ema_resumes_without_an_average(corpus, tmp_path):
    run = tmp_path / "run"
    run_here("train", str(corpus), *MODEL, "--max-steps", "3", "--ema", "0", "-o", str(run), check=True)
    manifest = layout.resolve(run) / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["train"]["ema"]  # what a checkpoint written before --ema existed looks like
    manifest.write_text(json.dumps(old))
    before = final_tensors(run)["model.safetensors"]
    run_here("train", "--resume", str(run), "--max-steps", "5", "--sample-length", "0", check=True)
    resumed = ckpt.load(run)
    assert resumed.manifest["step"] == 5 and resumed.manifest["train"]["ema"] == 0.0
    trainer = load_file(layout.resolve(run) / "trainer.safetensors")
    assert not [k for k in trainer if k.startswith("weights.")]  # no raw weights beside an average
    assert any(not before[k].equal(v) for k, v in final_tensors(run)["model.safetensors"].items())


def native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16, so oneDNN runs no bf16 LSTM here")
@pytest.mark.parametrize("first, then", [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_run_resumes_in_another_precision(corpus, tmp_path, first, then):
    # `auto` picks bf16 on one machine and fp32 on another: a checkpoint must move between them
    run = tmp_path / "run"
    run_here("train", str(corpus), *MODEL, "--precision", first, "--max-steps", "3", "-o", str(run), check=True)
    run_here("train", "--resume", str(run), "--precision", then, "--max-steps", "6", "--sample-length", "0", check=True)
    tensors = final_tensors(run)["trainer.safetensors"]
    assert json.loads((layout.resolve(run) / "manifest.json").read_text())["step"] == 6
    assert {tensors[k].dtype for k in tensors if k.startswith("hidden.")} == {torch.float32}


def test_one_writer_per_run_and_a_killed_writer_leaves_no_lock(corpus, tmp_path):
    run = tmp_path / "run"
    args = [str(corpus), *MODEL, "--save-every", "2", "--eval-every", "0"]
    writer = start(["train", *args, "--max-steps", "100000", "-o", str(run)])
    try:
        wait_for_training(run, writer)
        deadline = time.monotonic() + 60
        while not layout.list_checkpoints(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        for second in (["train", *args, "--max-steps", "5", "-o", str(run)], ["train", "--resume", str(run)]):
            proc = run_here(*second)  # in this process: the writer is another one
            err = proc.stderr.decode()
            assert proc.returncode == 1 and f"PID {writer.pid}" in err, err
            assert "Traceback" not in err and err.strip().count("\n") == 0
        assert run_here("sample", str(run), "-n", "20", check=True).stdout  # readers work meanwhile
        assert writer.poll() is None  # and the writer never noticed
    finally:
        writer.kill()  # SIGKILL: no chance to unlock
        writer.wait()
    step = ckpt.load(run).manifest["step"]
    run_here("train", "--resume", str(run), "--max-steps", str(step + 1), "--sample-length", "0", check=True)
    assert ckpt.load(run).manifest["step"] == step + 1


def test_a_copied_checkpoint_is_refused_by_resume_and_nothing_is_written_beside_it(tmp_path, text_file, monkeypatch):
    """--resume of a checkpoint folder outside its run (a backup copy) used to write checkpoints/, pointers,
    metrics and a lock into the copy's grandparent, among the user's files; and a relative --resume from
    inside RUN/checkpoints/ wrote RUN/checkpoints/checkpoints/. Now the copy is refused with the way to
    start from it, and the relative path resumes the run it belongs to."""
    run = tmp_path / "run"
    run_here("train", str(text_file), *TINY, "--max-steps", "4", "--eval-every", "2", "--sample-length", "0",
             "-q", "-o", str(run), check=True)  # fmt: skip
    newest = max((run / "checkpoints").iterdir())
    foreign = tmp_path / "foreign"
    shutil.copytree(newest, foreign / "backup" / newest.name)
    before = sorted(p.relative_to(foreign) for p in foreign.rglob("*"))
    proc = run_here("train", "--resume", str(foreign / "backup" / newest.name), "--max-steps", "6", "-q")
    assert proc.returncode == 2 and b"not inside a run directory" in proc.stderr and b"--init-from" in proc.stderr
    assert sorted(p.relative_to(foreign) for p in foreign.rglob("*")) == before

    monkeypatch.chdir(run / "checkpoints")
    run_here("train", "--resume", newest.name, "--max-steps", "6", "-q", "--sample-length", "0", check=True)
    assert not (run / "checkpoints" / "checkpoints").exists()
    assert json.loads((run / "latest.json").read_text())["checkpoint"].startswith("step-00000006")


def test_a_checkpoint_the_run_never_pointed_to_is_replaced_not_adopted(tmp_path, text_file, monkeypatch):
    """A full disk between a checkpoint's rename and the move of latest.json left step 9 complete
    but unreached. A resume with a new budget trained steps 7-9 again, found the old folder, wrote
    nothing and pointed latest.json at the abandoned branch's weights. Now the old folder goes."""
    import errno

    from charrnn.storage import checkpoints

    run = tmp_path / "run"
    real_point = checkpoints.point

    def disk_full_at_step_9(run_dir, name, checkpoint):
        if name == "latest" and checkpoint.name.startswith("step-00000009"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_point(run_dir, name, checkpoint)

    args = [*TINY, "--save-every", "3", "--eval-every", "0", "--keep", "5", "--sample-length", "0", "-q"]
    with monkeypatch.context() as m:
        m.setattr(checkpoints, "point", disk_full_at_step_9)
        proc = run_here("train", str(text_file), "--max-steps", "10", "-o", str(run), *args)
    assert proc.returncode == 1 and b"No space left" in proc.stderr
    orphan = run / "checkpoints" / "step-00000009"
    assert json.loads(orphan.joinpath("manifest.json").read_text())["train"]["max_steps"] == 10
    assert json.loads((run / "latest.json").read_text())["checkpoint"] == "step-00000006"

    run_here("train", "--resume", str(run), "--max-steps", "12", "-q", "--sample-length", "0", check=True)
    assert json.loads((run / "latest.json").read_text())["checkpoint"].startswith("step-00000012")
    redone = json.loads(orphan.joinpath("manifest.json").read_text())  # the new branch's step 9
    assert redone["train"]["max_steps"] == 12
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_resume_removes_checkpoints_newer_than_the_pointer_it_goes_on_from(tmp_path, text_file):
    run = tmp_path / "run"
    args = [*TINY, "--eval-every", "3", "--keep", "5", "--sample-length", "0", "-q", "-o", str(run)]
    run_here("train", str(text_file), "--max-steps", "6", *args, check=True)
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    (run / "latest.json").write_text(json.dumps({"checkpoint": checkpoints[0]}))  # as if 6's pointer never moved
    (run / "best.json").write_text(json.dumps({"checkpoint": checkpoints[0]}))
    proc = run_here("train", "--resume", str(run), "--max-steps", "9", "--sample-length", "0", check=True)
    assert checkpoints[1].encode() in proc.stderr and b"removed 1 checkpoint" in proc.stderr
    assert checkpoints[1] not in {p.name for p in (run / "checkpoints").iterdir()}


def test_a_resume_refuses_a_validation_file_that_changed(tmp_path, text_file):
    """The training text was hashed and checked on resume; --val-file's was not, so a resumed run
    compared figures from two texts and kept a model on that basis."""
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(generated_text(3_000, seed=5), encoding="utf-8")
    run = tmp_path / "run"
    args = [*TINY, "--eval-every", "3", "--sample-length", "0", "-q"]
    run_here(
        "train", str(text_file), "--val-file", str(held_out), "--max-steps", "3", "-o", str(run), *args, check=True
    )
    held_out.write_text(generated_text(3_000, seed=6), encoding="utf-8")
    proc = run_here("train", "--resume", str(run), "--max-steps", "6", "-q")
    assert proc.returncode == 1 and f"{held_out}: the validation text differs".encode() in proc.stderr
    held_out.write_text(generated_text(3_000, seed=5), encoding="utf-8")
    run_here("train", "--resume", str(run), "--max-steps", "6", "-q", "--sample-length", "0", check=True)


def test_info_after_an_interrupted_resume_names_the_model_sample_uses(tmp_path, text_file):
    """result.json was written only when a train command ended normally: after Ctrl-C during a
    resume, info named the previous command's kept model while best.json (sample, eval) had moved on."""
    run = tmp_path / "run"
    args = [*TINY, "--eval-every", "3", "--sample-length", "0", "-q"]
    run_here("train", str(text_file), "--max-steps", "3", "-o", str(run), *args, check=True)
    assert (run / "result.json").exists()
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", "--resume", str(run), "--max-steps", "100000", "--log-format", "jsonl"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    for line in proc.stderr:
        if json.loads(line)["event"] == "eval":  # a validation of the resumed run: best.json may move
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    best = json.loads((run / "best.json").read_text())["checkpoint"]
    info = run_here("info", str(run), check=True).stdout.decode()
    kept = next(line for line in info.splitlines() if line.strip().startswith("kept model"))
    assert best in kept and "did not finish" in kept
    assert json.loads(run_here("info", str(run), "--json", check=True).stdout)["result"] is None
