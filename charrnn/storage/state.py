"""A training state as safetensors plus JSON: the optimizer's tensors and settings, and the random generators' states."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import torch


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
