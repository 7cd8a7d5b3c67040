"""Checkpoints: safe loading, malformed files, atomic saves, retention (RELIABILITY items 1-8)."""

import errno
import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import generated_text, run_here, run_record
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from charrnn.data.corpus import corpus_from_text
from charrnn.errors import CharRNNError
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.storage import checkpoints as ckpt
from charrnn.storage import layout
from charrnn.training.optimizer import make_optimizer
from charrnn.training.trainer import TrainConfig, Trainer

PACKAGE = Path(__file__).resolve().parent.parent / "charrnn"


def small_trainer(run: Path, keep: int = 3, **settings) -> Trainer:
    corpus = corpus_from_text(generated_text(3000))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=16, layers=1, embedding_size=4))
    config = TrainConfig(**{"batch_size": 4, "seq_len": 16, "eval_every": 0, "max_steps": 4, "keep": keep, **settings})
    record = run_record(model, corpus, config)
    return Trainer(model, corpus.ids, corpus.ids[:500], config, run, record, torch.device("cpu"))


@pytest.fixture
def saved(tmp_path) -> Path:
    trainer = small_trainer(tmp_path / "run")
    trainer.fit()
    return layout.resolve(tmp_path / "run")


def digest_tree(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rehash(checkpoint: Path, fname: str) -> None:
    """Make the manifest agree with a tampered file, so the file's own parser has to catch it."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][fname] = hashlib.sha256((checkpoint / fname).read_bytes()).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_save_then_load_gives_identical_outputs(saved):
    loaded = ckpt.load(saved)
    original = small_trainer(saved.parent.parent.parent / "again")
    original.fit()
    x = torch.randint(0, len(loaded.vocab), (2, 30))
    loaded.model.eval()
    original.shipped.eval()  # what is saved: the weight average (--ema), or the raw weights without one
    torch.testing.assert_close(loaded.model(x)[0], original.shipped(x)[0], rtol=0, atol=0)


def test_only_safetensors_and_json_are_written(saved):
    names = {p.name for p in saved.parent.parent.rglob("*") if p.is_file()}
    assert all(n.endswith((".safetensors", ".json", ".jsonl")) for n in names), names


def test_package_never_unpickles():
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert not re.search(r"weights_only\s*=\s*False", source), path
        assert not re.search(r"^\s*(import pickle|from pickle)|pickle\.loads?\(|torch\.load\(", source, re.M), path


class Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.write_text, (Path(self.sentinel), "pwned"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, saved):
    sentinel = tmp_path / "sentinel"
    evil = tmp_path / "model.pt"
    torch.save({"weights": Evil(str(sentinel))}, evil)
    for target in (evil,):
        proc = run_here("sample", str(target), "-n", "5")
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr and b"pickle" in proc.stderr
    # a pickle smuggled into a checkpoint folder under the safetensors name
    shutil.copy(evil, saved / "model.safetensors")
    rehash(saved, "model.safetensors")
    proc = run_here("sample", str(saved), "-n", "5")
    assert proc.returncode == 1 and b"model.safetensors" in proc.stderr
    assert not sentinel.exists()


def _truncate(p):
    p.write_bytes(p.read_bytes()[:-20])


def _trailing(p):
    p.write_bytes(p.read_bytes() + b"garbage")


def _absurd_header(p):
    data = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 1 << 60) + data[8:])


def _empty(p):
    p.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _trailing, _absurd_header, _empty])
@pytest.mark.parametrize("manifest_agrees", [False, True])
def test_malformed_weights_are_clear_errors(saved, damage, manifest_agrees):
    damage(saved / "model.safetensors")
    if manifest_agrees:
        rehash(saved, "model.safetensors")
    with pytest.raises(CharRNNError, match="model.safetensors"):
        ckpt.load(saved)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(optimizer=5),
        lambda m: m["optimizer"].update(scalars=5),
        lambda m: m["optimizer"]["param_groups"][0].update(betas=[2, 3]),  # trained on, it went complex
        lambda m: m["optimizer"]["param_groups"][0].update(eps=-1),
        lambda m: m["optimizer"]["param_groups"][0].update(lr="x"),
    ],
)
def test_a_malformed_optimizer_block_is_a_clear_error_on_resuming(saved, tmp_path, edit):
    manifest = json.loads((saved / "manifest.json").read_text())
    edit(manifest)
    (saved / "manifest.json").write_text(json.dumps(manifest))
    trainer = small_trainer(tmp_path / "again")
    with pytest.raises(CharRNNError, match="optimizer or RNG state does not fit"):
        ckpt.restore_training(ckpt.load(saved), make_optimizer(trainer.model, trainer.config, trainer.device))


def test_wrong_shapes_and_missing_keys(saved):
    weights = ckpt.read_tensors(saved, "model.safetensors", ckpt.read_manifest(saved))
    wrong = dict(weights, **{"head.bias": torch.zeros(3)})
    (saved / "model.safetensors").write_bytes(save_safetensors(wrong))
    rehash(saved, "model.safetensors")
    with pytest.raises(CharRNNError, match="does not fit"):
        ckpt.load(saved)
    missing = {k: v for k, v in weights.items() if k != "head.weight"}
    (saved / "model.safetensors").write_bytes(save_safetensors(missing))
    rehash(saved, "model.safetensors")
    with pytest.raises(CharRNNError, match="head.weight"):
        ckpt.load(saved)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.update(format_version=99), "newer charrnn"),
        (lambda m: m.pop("model"), "missing 'model'"),
        (lambda m: m.update(format_version="one"), "format_version"),
        # a hand-edited or damaged manifest: one line naming the field, never a traceback or a hang
        (lambda m: m.update(model=None), "'model' is not what charrnn writes"),
        (lambda m: m.update(files=[1]), "'files' is not what charrnn writes"),
        (lambda m: m.update(step="30"), "'step' is not what charrnn writes"),
        (lambda m: m.update(val_loss="x"), "'val_loss' is not what charrnn writes"),
        (lambda m: m["model"].update(layers=10**12), "the manifest says 1000000000000 of"),
        (lambda m: m["model"].update(dropout=2.0), r"invalid model or vocabulary \(--dropout"),
    ],
)
def test_bad_manifests(saved, edit, match):
    manifest = json.loads((saved / "manifest.json").read_text())
    edit(manifest)
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CharRNNError, match=match):
        ckpt.load(saved)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(CharRNNError, match="not valid JSON"):
        ckpt.load(saved)


def test_cli_reports_damage_in_one_line(saved):
    _truncate(saved / "model.safetensors")
    proc = run_here("sample", str(saved.parent.parent), "-n", "5")
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "model.safetensors" in lines[0]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = small_trainer(run, max_steps=2)
    trainer.fit()
    before = digest_tree(run)
    trainer.config.max_steps = 4
    real = ckpt.atomic_write
    calls = []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", failing)
    with pytest.raises(CharRNNError, match="No space left on device.*previous checkpoint is intact"):
        trainer.fit()
    after = {k: v for k, v in digest_tree(run).items() if k != "metrics.jsonl"}
    assert after == {k: v for k, v in before.items() if k != "metrics.jsonl"}
    assert not list((run / "checkpoints").glob(".tmp-*"))  # no half-written folder left behind
    ckpt.load(run)


def test_a_failed_first_write_does_not_promise_a_checkpoint_to_resume(tmp_path, monkeypatch):
    def failing(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_write", failing)
    with pytest.raises(CharRNNError, match="No space left on device.*no checkpoint was saved yet") as e:
        small_trainer(tmp_path / "run", max_steps=2).fit()
    assert "--resume" not in str(e.value)


def test_retention_keeps_newest_and_best(tmp_path):
    run = tmp_path / "run"
    trainer = small_trainer(run, keep=2, max_steps=6, save_every=1)
    trainer.config.eval_every = 3
    trainer.fit()
    steps = [int(p.name.split("-")[1]) for p in layout.list_checkpoints(run)]
    best = int(layout.pointer(run, "best").name.split("-")[1])
    assert best in (3, 6)  # the evaluated steps
    assert steps == sorted({5, 6, best})  # the two newest, and the best wherever it is
    assert layout.pointer(run, "latest").name.startswith("step-00000006")
    # an older best outlives checkpoints newer than it
    oldest = layout.list_checkpoints(run)[0]
    (run / "best.json").write_text(json.dumps({"checkpoint": oldest.name}))
    layout.prune(run, keep=1)
    assert [p.name for p in layout.list_checkpoints(run)] == [oldest.name, layout.pointer(run, "latest").name]


def test_prune_never_deletes_the_only_good_checkpoint(saved):
    run = saved.parent.parent
    (run / "latest.json").write_text("{broken")
    (run / "best.json").unlink(missing_ok=True)
    layout.prune(run, keep=1)
    assert layout.list_checkpoints(run)
    assert layout.resolve(run).exists()


def test_leftover_temporary_folders_are_ignored(saved):
    run = saved.parent.parent
    junk = run / "checkpoints" / ".tmp-step-00009999-12345"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"partial")
    assert layout.resolve(run) == saved


def test_load_puts_the_model_on_the_device_asked_for(saved):
    # safetensors always hands back CPU tensors, so only the model's own parameters show where `load`
    # put it; "meta" is a device that every machine has
    assert {p.device.type for p in ckpt.load(saved, "meta").model.parameters()} == {"meta"}
    assert {p.device.type for p in ckpt.load(saved, torch.device("cpu")).model.parameters()} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_checkpoint_loads_on_cpu_and_back(saved):  # pragma: no cover - runs where a GPU is present
    loaded = ckpt.load(saved, "cuda")
    assert next(loaded.model.parameters()).is_cuda
    assert not next(ckpt.load(saved, "cpu").model.parameters()).is_cuda


def test_best_points_only_at_evaluated_checkpoints(tmp_path):
    run = tmp_path / "run"
    trainer = small_trainer(run, keep=10, max_steps=7, save_every=1)
    trainer.config.eval_every = 3
    trainer.fit()
    evaluated = {p.name for p in layout.list_checkpoints(run) if "-val" in p.name}
    assert {int(n[5:13]) for n in evaluated} == {3, 6, 7}  # evaluations, and the final one
    best = layout.pointer(run, "best")
    assert best.name in evaluated
    losses = {n: float(n.split("-val")[1]) for n in evaluated}
    assert losses[best.name] == min(losses.values())


@pytest.mark.parametrize("written_with", [{"fused": True}, {"foreach": True}])
def test_optimizer_state_keeps_the_loading_machines_kernel_flags(written_with):
    # A checkpoint written on CUDA carries fused=True; resumed on a CPU (or the reverse) the
    # optimizer must keep its own flags and go on as the original would.
    def make(**flags):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        return model, torch.optim.AdamW(model.parameters(), lr=0.1, **flags)

    def step(model, optimizer):
        optimizer.zero_grad()
        model(torch.ones(2, 4)).square().sum().backward()
        optimizer.step()

    model, optimizer = make(**written_with)
    step(model, optimizer)
    tensors, data = ckpt.optimizer_to_files(optimizer)
    tensors, data = load_safetensors(save_safetensors(tensors)), json.loads(json.dumps(data))  # as on disk
    assert any(data["param_groups"][0][k] for k in ("fused", "foreach"))
    resumed, loading = make(fused=False, foreach=False)
    resumed.load_state_dict(model.state_dict())
    ckpt.optimizer_from_files(loading, tensors, data)
    assert (loading.param_groups[0]["fused"], loading.param_groups[0]["foreach"]) == (False, False)
    assert loading.param_groups[0]["lr"] == 0.1 and loading.state[resumed.weight]["step"] == 1
    step(model, optimizer)
    step(resumed, loading)
    torch.testing.assert_close(resumed.weight, model.weight)


def test_the_fp16_loss_scale_is_saved_and_restored(tmp_path):
    # fp16 needs CUDA; the GradScaler itself runs on a CPU, which is enough to check the round trip
    trainer = small_trainer(tmp_path / "run")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    trainer.fit()  # 4 steps: the scale grew once and the growth counter stands at 1
    saved = trainer.scaler.state_dict()
    assert saved["scale"] == 2.0**11 and saved["_growth_tracker"] == 1
    resumed = small_trainer(tmp_path / "run", max_steps=8)
    resumed.scaler = torch.amp.GradScaler("cpu", growth_interval=3)
    resumed.resume_from(ckpt.load(tmp_path / "run"))
    assert resumed.scaler.state_dict() == saved


def test_claim_refuses_a_file_other_peoples_directories_and_a_second_writer(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.jsonl").write_text("my own numbers\n")
    (mine / "notes.txt").write_text("x")
    with pytest.raises(CharRNNError, match="notes.txt.*not a charrnn run"):
        layout.claim(mine, new=True)
    (mine / "notes.txt").unlink()  # run-like names alone, without run.json, are not a run either
    with pytest.raises(CharRNNError, match="metrics.jsonl.*not a charrnn run"):
        layout.claim(mine, new=True)
    assert (mine / "metrics.jsonl").read_text() == "my own numbers\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CharRNNError, match="is a file"):
        layout.claim(tmp_path / "file", new=True)
    lock = layout.claim(tmp_path / "new", new=True)
    with pytest.raises(CharRNNError, match=f"PID {os.getpid()}"):  # flock: two opens conflict even in one process
        layout.claim(tmp_path / "new", new=True)
    lock.release()
    layout.claim(tmp_path / "new", new=True).release()


def test_a_finished_run_given_as_out_is_named_a_run_to_resume(trained_run):
    assert (trained_run / "result.json").exists()  # every file a finished run holds is one of ours
    with pytest.raises(CharRNNError, match="a run already exists there; pass --resume"):
        layout.claim(trained_run, new=True)


def test_fresh_run_dirs_started_in_the_same_second_never_collide(tmp_path):
    made = [layout.fresh_run_dir(tmp_path, "text-lstm-20260101-120000") for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)


def test_readers_follow_the_latest_pointer(saved):
    run = saved.parent.parent
    stray = run / "checkpoints" / "step-99999999"  # newer by name, but not the run's latest
    shutil.copytree(saved, stray)
    assert layout.resolve(run) == saved and layout.resolve(run, "best") == saved
    (run / "latest.json").unlink()
    assert layout.resolve(run) == stray  # without a pointer: the newest complete checkpoint
