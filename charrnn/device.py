"""Devices and precision: which device a command runs on, what autocast computes in there, and seeding.

Shared by training, the Python API, the server and the planner, so none of them imports the training loop."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext

import torch

from charrnn import choices
from charrnn.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if not isinstance(name, str):
        raise UsageError(f"device={name!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available to PyTorch; use --device cpu")
    if name.startswith("cuda") and "LOCAL_RANK" in os.environ:
        # under torchrun one GPU per process, even for cuda:N (which would put every rank on one GPU);
        # CUDA_VISIBLE_DEVICES chooses the GPUs
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple's MPS backend is not available; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or (device.type == "cpu" and device.index):
        raise UsageError(f"--device {name}: not a device charrnn runs on; use auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_native_bf16() -> bool:
    try:  # without the flag, emulated bf16 (slower than fp32) counts as supported
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older PyTorch, which did not count emulation
        return torch.cuda.is_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: `auto` picks bf16 on a CPU that does it natively; on CUDA fp16 with loss
    scaling where there are tensor cores (autocast runs cuDNN's LSTM in fp16 whatever dtype is
    asked for, so fp16 is what a GPU really runs); else fp32."""
    choices.check(name, choices.Precision, "--precision")
    if name == "auto":
        if device.type == "cuda":
            return torch.float16 if torch.cuda.get_device_capability(device) >= (7, 0) else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on this device")
    if name == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        # oneDNN's bf16 LSTM refuses to run without native bf16 instructions (AVX-512 BF16 / AMX)
        raise UsageError("--precision bf16: this CPU has no native bf16 support; use --precision fp32 (or auto)")
    if name == "bf16" and device.type == "cuda" and not cuda_has_native_bf16():
        raise UsageError("--precision bf16: this GPU has no native bf16; use --precision fp16 (or auto)")
    return dtypes[name]


def needs_loss_scaling(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether gradients pass through fp16 and need a GradScaler so that small ones do not
    underflow: with fp16, and on CUDA with bf16 too, since autocast casts cuDNN's RNN to fp16
    (aten/src/ATen/cudnn/AutocastRNN.cpp hard-codes kHalf; benchmarks/gpu_check.py probes it)."""
    return dtype == torch.float16 or (device.type == "cuda" and dtype == torch.bfloat16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass, or nothing for full precision."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
