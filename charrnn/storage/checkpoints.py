"""Run directories and checkpoints: atomic, durable, safe to load (safetensors + JSON only).

    runs/NAME/
      run.json                     how the run was started: model, vocabulary, settings, corpus
      metrics.jsonl                one JSON record per log or eval step
      latest.json, best.json       pointers {"checkpoint": "step-..."}; they move only after a save completes
      result.json                  how the last training session ended: the model kept and why
      .lock                        held (flock) by the one process writing the run; holds its PID
      checkpoints/step-00001200-val1.4321/
        model.safetensors          weights (with --ema, their moving average: what is sampled)
        optimizer.safetensors      optimizer state tensors
        trainer.safetensors        RNG states, the carried hidden state (and with --ema the raw weights)
        manifest.json              everything else, with the sha256 of each file; written last

A checkpoint folder is assembled under a temporary name and renamed into place, so a folder with
a final name is always complete. Every file is replaced through `files.replacing` (temporary name,
fsync, rename, fsync of the folder). One process at a time writes a run (`claim`); readers need no lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per run is then up to the user
    fcntl = None

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from charrnn import __version__
from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError, CheckpointError
from charrnn.model.network import CharRNN
from charrnn.storage.files import atomic_write, fsync_dir, is_temporary, write_json
from charrnn.storage.records import FORMAT_VERSION

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
RESULT = "result.json"
LOCK = ".lock"
RUN_FILES = {"run.json", "metrics.jsonl", "latest.json", "best.json", RESULT, CHECKPOINTS, LOCK}
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "trainer.safetensors")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete, use another one")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is damaged, use another checkpoint")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; the file is damaged, use another checkpoint")
    return data


def record_resume(run: Path, step: int | None, before: dict, after: dict) -> None:
    """Add to run.json the training settings a resume changed (e.g. a new --lr), so that the run's
    record tells its whole story. Nothing changes when nothing changed."""
    changed = {k: {"from": before.get(k), "to": v} for k, v in after.items() if before.get(k) != v}
    path = run / "run.json"
    if not changed or not path.is_file():
        return
    record = read_json(path)
    record.setdefault("resumes", []).append({"step": step, "changed": changed})
    write_json(path, record)


# ---------------------------------------------------------------------------------------------
# One writer per run
# ---------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive advisory lock (flock) on RUN/.lock, held by the one process that writes the run.

    The kernel drops it when the process ends, however it ends (kill -9 too), so a crash never leaves a
    run locked; the PID written into the file only names the holder in the message to a second writer."""

    def __init__(self, run: Path, new: bool = True):
        self.fd: int | None = None
        if fcntl is None:
            return
        self.fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            self.release()
            raise CharRNNError(
                f"{run}: another charrnn process (PID {holder}) is writing this run; wait for it to finish"
                + (", stop it, or choose another --out" if new else " or stop it")
            ) from None
        except OSError:  # a file system without locks (some network mounts): carry on unlocked
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            with suppress(OSError):
                os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def claim(run: Path, new: bool) -> RunLock:
    """Take `run` for writing: lock it, and for a new run refuse a file, a directory of other things, or
    a run that already has checkpoints. The caller releases the lock (process exit does too)."""
    if new:
        if run.exists() and not run.is_dir():
            raise CharRNNError(f"{run}: is a file, not a run directory; choose another --out")
        run.mkdir(parents=True, exist_ok=True)
    elif not run.is_dir():
        resolve(run)  # says what is wrong with it: missing, a file, a pickle
    lock = RunLock(run, new)
    if new:
        entries = sorted(p.name for p in run.iterdir() if p.name != LOCK and not is_temporary(p.name))
        stray = [name for name in entries if name not in RUN_FILES]
        if "run.json" not in entries:  # metrics.jsonl or best.json alone may well be someone else's
            stray = stray or entries
        problem = ""
        if stray:
            problem = f"holds {stray[0]!r}, so it is not a charrnn run; choose a new or empty directory for --out"
        elif list_checkpoints(run):
            problem = f"a run already exists there; pass --resume {run} to continue it or choose another --out"
        if problem:
            lock.release()
            raise CharRNNError(f"{run}: {problem}")
    return lock


def fresh_run_dir(parent: Path, stem: str, create: bool = True) -> Path:
    """parent/stem, or stem-2, stem-3... : a directory made here and now (mkdir is atomic), so two runs
    started in the same second never share one. `create=False` only names it (other DDP ranks)."""
    if not create:
        return parent / stem
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CharRNNError(f"{parent}: too many runs named {stem}; pass --out")


def writer_dir(path: str | Path) -> Path:
    """The run directory that `--resume PATH` writes to: PATH, or the run of a checkpoint folder."""
    p = Path(path)
    return run_of(p) if (p / MANIFEST).is_file() else p


# ---------------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------------


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".") and (folder / MANIFEST).is_file()


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_complete(p)), key=lambda p: p.name)


def pointer(run: Path, name: str) -> Path | None:
    """The checkpoint that `latest.json` or `best.json` points at, if it is complete."""
    try:
        target = json.loads((run / f"{name}.json").read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = run / CHECKPOINTS / str(target)
    return path if is_complete(path) else None


def point(run: Path, name: str, checkpoint: Path) -> None:
    """Move the `latest` or `best` pointer to a complete checkpoint."""
    write_json(run / f"{name}.json", {"checkpoint": checkpoint.name})


def resolve(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint folder from a run directory (its latest, or best, complete checkpoint) or a
    checkpoint folder itself. Anything else, pickles included, is refused before it is read."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such run or checkpoint; pass a run directory such as runs/NAME")
    if p.is_file():
        kind = (
            "a pickle file, which can run code when loaded"
            if p.suffix in {".pt", ".pth", ".pkl", ".bin", ".ckpt"}
            else "a file"
        )
        raise CheckpointError(
            f"{p}: is {kind}; charrnn loads only its own run or checkpoint folders (safetensors + JSON)"
        )
    if (p / MANIFEST).exists():
        return p
    if (p / CHECKPOINTS).is_dir() or (p / "run.json").exists():
        # Follow the pointers, which move only after a save completes and only by the run's one writer;
        # without one (a crash between a save and its pointer, an old run), the newest complete checkpoint.
        latest = pointer(p, "latest") or (list_checkpoints(p) or [None])[-1]
        found = (pointer(p, "best") or latest) if which == "best" else latest
        if found is None:
            raise CheckpointError(f"{p}: the run has no complete checkpoint yet; train it first")
        return found
    raise CheckpointError(f"{p}: not a charrnn run or checkpoint folder (no {MANIFEST} or {CHECKPOINTS}/)")


def is_model_path(path: str | Path) -> bool:
    """Whether `path` looks like a run or checkpoint folder (as opposed to text to read)."""
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in (MANIFEST, "run.json", CHECKPOINTS))


def run_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and everything else (for JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


# How an optimizer runs on its device, not what it has learnt: a checkpoint carries the flags of
# the machine that wrote it, so a CPU run resumed on CUDA would lose the fused kernel and a fused
# CUDA state would put its step counters where the other device's kernels do not look.
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable")


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict, data: dict) -> None:
    """Load saved optimizer state, keeping `optimizer`'s own implementation flags (fused, foreach)."""
    state: dict[int, dict] = defaultdict(dict)
    for name, value in [*tensors.items(), *data.get("scalars", {}).items()]:
        index, key = name.split(".", 1)
        state[int(index)][key] = value
    live = optimizer.param_groups
    groups = [
        {**saved, **{k: live[i][k] for k in IMPLEMENTATION_FLAGS if k in live[i]}} if i < len(live) else saved
        for i, saved in enumerate(data["param_groups"])
    ]
    for group in groups:  # AdamW's settings as charrnn writes them: out of range, they train on garbage
        lr, eps, decay, betas = (group.get(k) for k in ("lr", "eps", "weight_decay", "betas"))
        if not (_number(lr) and _number(decay) and _number(eps) and eps > 0):
            raise ValueError(f"lr {lr!r}, eps {eps!r}, weight_decay {decay!r}")
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_number(b) and b < 1 for b in betas)):
            raise ValueError(f"betas {betas!r}")
    optimizer.load_state_dict({"state": dict(state), "param_groups": groups})


def _number(x) -> bool:
    """A finite number, at least 0 (not a bool, which JSON would let through as one)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    """The random states training draws from: the CPU's and, on a GPU, that GPU's only (the
    others belong to other processes, and a machine with another GPU count must still resume)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor], python_state: list, device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    version, internal, gauss = python_state
    random.setstate((version, tuple(internal), gauss))


def weights_device(model: CharRNN) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Snapshot:
    """Everything a checkpoint holds besides the weights and optimizer."""

    step: int
    epoch: int
    batch_index: int  # next batch within the epoch: the data cursor
    elapsed: float  # training seconds so far (for --max-time and the time-based schedule)
    hidden: list[torch.Tensor]
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    epochs: float = 0.0
    evals_without_improvement: int = 0  # for --patience
    weights: dict[str, torch.Tensor] | None = None  # the training weights, when the model saved is their average
    scaler: dict | None = None  # the fp16 loss scale and its growth counter (GradScaler.state_dict)
    val_error: float | None = None  # val_loss's standard error, when it was estimated from a sample
    best_val_error: float | None = None  # best_val_loss's, likewise
    val_pieces: tuple[float, ...] = ()  # val_loss on each piece of the sample it was estimated from


def save(
    run: Path,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    snapshot: Snapshot,
    info: dict,
    keep: int,
) -> Path:
    """Write a complete checkpoint, move the pointers, apply retention. Returns its folder.

    `info` is the run-level JSON (vocabulary, settings) repeated in the manifest so that a checkpoint
    folder is self-contained."""
    folder = run / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{snapshot.step:08d}" + (f"-val{snapshot.val_loss:.4f}" if snapshot.val_loss is not None else "")
    final = folder / name
    if not is_complete(final):
        tmp = folder / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            opt_tensors, opt_json = optimizer_to_files(optimizer)
            trainer = {
                **rng_tensors(weights_device(model)),
                **{f"hidden.{i}": h.detach().cpu().contiguous() for i, h in enumerate(snapshot.hidden)},
                **{f"weights.{k}": v.detach().cpu().contiguous() for k, v in (snapshot.weights or {}).items()},
            }
            hashes = {}
            for fname, tensors in zip(TENSOR_FILES, (weights, opt_tensors, trainer)):
                data = save_safetensors(tensors)
                atomic_write(tmp / fname, data)
                hashes[fname] = hashlib.sha256(data).hexdigest()
            manifest = {
                "format_version": FORMAT_VERSION,
                "tool_version": __version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **info,
                "step": snapshot.step,
                "epoch": snapshot.epoch,
                "epochs": snapshot.epochs,  # epoch plus the fraction of the current one
                "batch_index": snapshot.batch_index,
                "elapsed": snapshot.elapsed,
                "train_loss": snapshot.train_loss,
                "val_loss": snapshot.val_loss,
                "val_standard_error": snapshot.val_error,
                "val_pieces": list(snapshot.val_pieces),
                "best_val_loss": snapshot.best_val_loss,
                "best_val_standard_error": snapshot.best_val_error,
                "evals_without_improvement": snapshot.evals_without_improvement,
                "python_rng": random.getstate(),
                "grad_scaler": snapshot.scaler,
                "optimizer": opt_json,
                "files": hashes,
            }
            write_json(tmp / MANIFEST, manifest)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(folder)
    point(run, "latest", final)
    best = pointer(run, "best")
    if snapshot.val_loss is not None and (best is None or snapshot.val_loss < _val_loss(best)):
        point(run, "best", final)
    prune(run, keep)
    return final


def _val_loss(checkpoint: Path) -> float:
    try:
        value = json.loads((checkpoint / MANIFEST).read_text()).get("val_loss")
    except (OSError, ValueError):
        return float("inf")
    return float("inf") if value is None else float(value)


def prune(run: Path, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints plus the ones `latest` and `best` point at;
    remove leftovers of interrupted saves. Never removes the only good checkpoint."""
    complete = list_checkpoints(run)
    protected = {p for p in (pointer(run, "latest"), pointer(run, "best")) if p}
    protected.update(complete[-max(keep, 1) :])
    for p in complete:
        if p not in protected:
            shutil.rmtree(p, ignore_errors=True)
    for p in (run / CHECKPOINTS).glob(".tmp-*"):
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_manifest(checkpoint: Path) -> dict:
    manifest = read_json(checkpoint / MANIFEST)
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{checkpoint / MANIFEST}: no format_version; not a charrnn checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{checkpoint}: written by a newer charrnn (format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade charrnn with pip install -U charrnn"
        )
    for key in ("model", "vocab", "step", "files"):
        if key not in manifest:
            raise CheckpointError(f"{checkpoint / MANIFEST}: missing '{key}'; the checkpoint is damaged")
    # the types everything after relies on: a damaged manifest is one clear line, not a traceback
    wrong = next(
        (key for key, kinds in MANIFEST_TYPES.items() if key in manifest and not _is(manifest[key], kinds)), None
    )
    if wrong is None and not all(isinstance(k, str) and isinstance(v, str) for k, v in manifest["files"].items()):
        wrong = "files"
    if wrong is not None:
        raise CheckpointError(
            f"{checkpoint / MANIFEST}: '{wrong}' is not what charrnn writes; the checkpoint is damaged"
        )
    return manifest


NUMBER = (int, float, type(None))
MANIFEST_TYPES = {
    "model": (dict,),
    "vocab": (dict,),
    "files": (dict,),
    "step": (int,),
    "epoch": (int,),
    "epochs": (int, float),
    "elapsed": (int, float),
    "train_loss": NUMBER,
    "val_loss": NUMBER,
    "val_standard_error": NUMBER,
    "best_val_loss": NUMBER,
    "best_val_standard_error": NUMBER,
    "val_pieces": (list, type(None)),
    "train": (dict,),
    "corpus": (dict,),
}


def _is(value, kinds: tuple) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def read_tensors(checkpoint: Path, fname: str, manifest: dict) -> dict[str, torch.Tensor]:
    """Load one safetensors file after checking it against the sha256 in the manifest."""
    path = checkpoint / fname
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e}); use another checkpoint")
    expected = manifest["files"].get(fname)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{path}: contents do not match the manifest (truncated or altered); use another checkpoint"
        )
    try:
        return load_safetensors(data)
    except Exception as e:  # safetensors raises its own error type for every malformation
        raise CheckpointError(f"{path}: not a valid safetensors file ({e}); use another checkpoint")


@dataclass
class Loaded:
    path: Path
    manifest: dict
    model: CharRNN
    vocab: Vocab

    @property
    def keep_newlines(self) -> bool:
        """Whether the model was trained with --keep-newlines: text for it is read the same way."""
        return bool((self.manifest.get("text_options") or {}).get("keep_newlines"))


def load(
    path: str | Path, device: str | torch.device = "cpu", which: str = "latest", numbers_only: bool = True
) -> Loaded:
    """Rebuild the model described by a checkpoint and load its weights, on `device`; weights that
    are not numbers (NaN, infinite) are refused unless `numbers_only` is False (`info` shows such a
    run, and a resumed run says where it diverged)."""
    checkpoint = resolve(path, which)
    manifest = read_manifest(checkpoint)
    try:
        config = ModelConfig.from_json(manifest["model"])
        vocab = Vocab.from_json(manifest["vocab"])
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{checkpoint / MANIFEST}: invalid model or vocabulary ({e}); the checkpoint is damaged")
    if config.vocab_size != len(vocab):
        raise CheckpointError(
            f"{checkpoint / MANIFEST}: vocabulary size does not match the model; the checkpoint is damaged"
        )
    weights = read_tensors(checkpoint, "model.safetensors", manifest)
    if wrong := next((f"{k} ({w.dtype})" for k, w in weights.items() if not w.is_floating_point()), None):
        # load_state_dict would cast it: int32 weights become a model of zeros that samples noise
        raise CheckpointError(
            f"{checkpoint / 'model.safetensors'}: weights that are not floating point: {wrong}; the checkpoint is damaged"
        )
    if numbers_only and not all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()):
        # what an overflowed run can leave behind: every interface would sample noise or score NaN
        raise CheckpointError(
            f"{checkpoint / 'model.safetensors'}: weights that are not numbers (NaN or infinite): damaged, or "
            "overflowed in training; use another checkpoint"
        )
    # before the model is built: a manifest that asks for far more than the weights hold (a trillion
    # layers) would take the memory or the time of the machine first
    stored = {k for k in weights if k.startswith("rnn.weight_hh_l")}
    hidden = weights["rnn.weight_hh_l0"].shape[-1] if "rnn.weight_hh_l0" in weights else None
    if len(stored) != config.layers or hidden != config.hidden_size:
        raise CheckpointError(
            f"{checkpoint / 'model.safetensors'}: does not fit the model in the manifest ({len(stored)} layers of "
            f"{hidden}, the manifest says {config.layers} of {config.hidden_size}); the checkpoint is damaged"
        )
    model = CharRNN(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{checkpoint / 'model.safetensors'}: does not fit the model in the manifest ({detail})")
    if numbers_only and not _outputs_numbers(model, len(vocab)):
        raise CheckpointError(
            f"{checkpoint / 'model.safetensors'}: the model's output is not a number (NaN or infinite) although its "
            "weights are: they overflow; use another checkpoint"
        )
    return Loaded(checkpoint, manifest, model.to(device), vocab)


@torch.no_grad()
def _outputs_numbers(model: CharRNN, vocab_size: int) -> bool:
    """Whether the model's predictions are numbers after each symbol (one step each, side by side):
    weights finite but huge (edited, or from an overflowing run) overflow inside the network."""
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(torch.arange(vocab_size).unsqueeze(1))
        return bool(torch.isfinite(logits).all())
    finally:
        model.train(was_training)


def restore_training(loaded: Loaded, optimizer: torch.optim.Optimizer) -> Snapshot:
    """Load optimizer, RNG and hidden state saved with `loaded`, for an exact resume."""
    checkpoint, manifest = loaded.path, loaded.manifest
    opt = read_tensors(checkpoint, "optimizer.safetensors", manifest)
    trainer = read_tensors(checkpoint, "trainer.safetensors", manifest)
    try:
        optimizer_from_files(optimizer, opt, manifest["optimizer"])
        restore_rng(trainer, manifest["python_rng"], weights_device(loaded.model))
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{checkpoint}: optimizer or RNG state does not fit ({e}); use another checkpoint")
    hidden = [trainer[k] for k in sorted(k for k in trainer if k.startswith("hidden."))]
    weights = {k.removeprefix("weights."): v for k, v in trainer.items() if k.startswith("weights.")}
    try:
        return Snapshot(
            step=int(manifest["step"]),
            epoch=int(manifest["epoch"]),
            batch_index=int(manifest["batch_index"]),
            elapsed=float(manifest["elapsed"]),
            hidden=hidden,
            train_loss=manifest.get("train_loss"),
            val_loss=manifest.get("val_loss"),
            best_val_loss=manifest.get("best_val_loss"),
            epochs=float(manifest.get("epochs", manifest["epoch"])),
            evals_without_improvement=int(manifest.get("evals_without_improvement", 0)),
            weights=weights or None,
            scaler=manifest.get("grad_scaler"),
            val_error=manifest.get("val_standard_error"),
            best_val_error=manifest.get("best_val_standard_error"),
            val_pieces=tuple(manifest.get("val_pieces") or ()),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{checkpoint / MANIFEST}: training state missing or invalid ({e}); use another checkpoint"
        )


def summarize(loaded: Loaded) -> dict:
    """A JSON-ready description of a checkpoint and its run, for `charrnn info`."""
    m = loaded.manifest
    run = run_of(loaded.path)
    corpus = m.get("corpus", {})
    return {
        "checkpoint": str(loaded.path),
        "model": m["model"],
        "why": m.get("why"),
        "parameters": loaded.model.num_parameters(),
        "vocab_size": len(loaded.vocab),
        "vocab": loaded.vocab.chars if loaded.vocab.kind == "chars" else "",
        "vocab_kind": loaded.vocab.kind,
        "corpus": corpus,
        "step": m["step"],
        "epoch": round(m.get("epochs", m.get("epoch", 0)), 3),
        "training_seconds": m.get("elapsed"),
        "train_loss": m.get("train_loss"),
        "val_loss": m.get("val_loss"),
        "val_standard_error": m.get("val_standard_error"),
        "best_val_loss": m.get("best_val_loss"),
        "best_val_standard_error": m.get("best_val_standard_error"),
        "checkpoints": [p.name for p in list_checkpoints(run)] if (run / CHECKPOINTS).is_dir() else [loaded.path.name],
        "latest": p.name if (p := pointer(run, "latest")) else None,
        "best": p.name if (p := pointer(run, "best")) else None,
        "result": _read_result(run),
        "tool_version": m.get("tool_version"),
        "format_version": m.get("format_version"),
        "train": m.get("train", {}),
    }


def _read_result(run: Path) -> dict | None:
    """The run's result.json (how its last training session ended), if it has a readable one."""
    try:
        data = json.loads((run / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
