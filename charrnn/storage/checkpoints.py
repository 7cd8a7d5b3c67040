"""Checkpoints: atomic, durable, safe to load (safetensors + JSON only).

    RUN/checkpoints/step-00001200-val1.4321/
      model.safetensors          weights (with --ema, their moving average: what is sampled)
      optimizer.safetensors      optimizer state tensors
      trainer.safetensors        RNG states, the carried hidden state (and with --ema the raw weights)
      manifest.json              everything else, with the sha256 of each file; written last

A checkpoint folder is assembled under a temporary name and renamed into place, so a folder with
a final name is always complete. Every file is replaced through `files.replacing` (temporary name,
fsync, rename, fsync of the folder). The run directory around it is storage/layout.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from charrnn import __version__
from charrnn.config import ModelConfig
from charrnn.data.sources import unify_newlines
from charrnn.data.vocab import Vocab
from charrnn.errors import CheckpointError
from charrnn.files import atomic_write, fsync_dir, write_json
from charrnn.model.network import CharRNN
from charrnn.records import FORMAT_VERSION, Info
from charrnn.storage.layout import (
    CHECKPOINTS,
    MANIFEST,
    RESULT,
    _val_loss,
    list_checkpoints,
    point,
    pointer,
    prune,
    read_json,
    resolve,
    run_of,
    set_aside,
)
from charrnn.storage.state import (
    optimizer_from_files,
    optimizer_to_files,
    restore_rng,
    rng_tensors,
)

TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "trainer.safetensors")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


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
    # A complete folder of this name that the latest pointer does not reach is left from a branch
    # the run abandoned (a crash or a full disk between its rename and the pointer's move): replaced,
    # never adopted. One the pointer reaches is this same state, saved already.
    if pointer(run, "latest") != final:
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
            set_aside(final)
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

    def symbols(self, text: str, source: str = "text") -> str:
        """Text from a user (a prime, a stop string, a prompt) as the symbols the model reads, by the
        rule its training text was read with: "\\r\\n" and "\\r" as "\\n" unless --keep-newlines."""
        symbols = self.vocab.from_user(text, source)
        return symbols if self.vocab.kind == "bytes" or self.keep_newlines else unify_newlines(symbols)


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


def summarize(loaded: Loaded) -> Info:
    """What a checkpoint and its run hold: `charrnn info`, `Model.info` and `info --json` alike."""
    m = loaded.manifest
    run = run_of(loaded.path)
    corpus = m.get("corpus", {})
    return Info.from_json(
        {
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
            "checkpoints": [p.name for p in list_checkpoints(run)] if run else [loaded.path.name],
            "latest": p.name if run and (p := pointer(run, "latest")) else None,
            "best": p.name if run and (p := pointer(run, "best")) else None,
            "result": _read_result(run) if run else None,
            "tool_version": m.get("tool_version"),
            "format_version": m.get("format_version"),
            "train": m.get("train", {}),
        }
    )


def _read_result(run: Path) -> dict | None:
    """The run's result.json (how its last training session ended), if it has a readable one."""
    try:
        data = json.loads((run / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
