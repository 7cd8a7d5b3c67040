"""Running the same command under `torchrun` (PyTorch DDP): joining and leaving the process group
and the few collectives the training loop needs so that every process takes the same decisions.

With one process (no torchrun) every function here is a no-op that returns its input.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.errors import CharRNNError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # whatever way the process ends (an error, a signal): an NCCL group left standing can hang
        # its process at exit, and torchrun then never learns that this rank failed
        atexit.register(leave_distributed, clean=False)
    return Dist(dist.get_rank(), dist.get_world_size())


def leave_distributed(clean: bool = True) -> None:
    """Tear the process group down; after a clean run first wait for every rank (after an error
    the others may never arrive)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A seed of each rank's own for dropout: with the same seed every rank would draw the same
    masks. `step` gives a resumed run masks it has not used before."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _all_reduce(values: list[float], op: str, dist: Dist, device: torch.device) -> list[float]:
    """`values` reduced over all ranks with `op` (MAX or SUM), in one collective."""
    if dist.world == 1:
        return values
    import torch.distributed as td

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    td.all_reduce(tensor, op=getattr(td.ReduceOp, op))
    return tensor.tolist()


def max_over_ranks(value: int, dist: Dist, device: torch.device) -> int:
    """The largest `value` any rank holds, so that every rank takes the same decision."""
    return int(_all_reduce([value], "MAX", dist, device)[0])


def max_floats_over_ranks(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    """The largest of each value over all ranks, in one collective."""
    return _all_reduce(values, "MAX", dist, device)


def mean_over_ranks(value: float, dist: Dist, device: torch.device) -> float:
    """The mean of `value` over all ranks (each rank's loss on its share of the batch: the batch's)."""
    return _all_reduce([value], "SUM", dist, device)[0] / dist.world


STOP_REASONS = ["signal", "max_steps", "epochs", "max_time", "patience"]  # the first wins


def agree_on_stop(reason: str | None, dist: Dist, device: torch.device) -> str | None:
    """The reason to stop that wins over all ranks (time budgets and signals can differ between
    processes, and a rank that stopped alone would hang the others); None: go on."""
    if dist.world == 1:
        return reason
    n = len(STOP_REASONS)
    code = max_over_ranks(0 if reason is None else n - STOP_REASONS.index(reason), dist, device)
    return None if code == 0 else STOP_REASONS[n - code]


def gather_streams(tensors: list[torch.Tensor], dist: Dist) -> list[torch.Tensor]:
    """Hidden-state tensors (layers, streams, hidden) of all ranks in one, stream i from rank
    i % world (how StreamBatches deals the streams out), for checkpoints."""
    if dist.world == 1:
        return tensors
    import torch.distributed as td

    full = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(dist.world)]
        td.all_gather(parts, t.contiguous())
        stacked = torch.stack(parts, dim=2)  # (layers, rows per rank, world, hidden)
        full.append(stacked.flatten(1, 2))  # interleave: stream i lives on rank i % world
    return full


def check_ranks_agree(model: torch.nn.Module, dist: Dist) -> None:
    """Under DDP every rank must end with the same weights; a mismatch means a broken setup."""
    if dist.world == 1:
        return
    import torch.distributed as td

    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    sums = [torch.zeros_like(checksum) for _ in range(dist.world)]
    td.all_gather(sums, checksum)
    if any(not torch.equal(s, sums[0]) for s in sums):
        raise CharRNNError(f"the {dist.world} processes ended with different weights; check the torchrun setup")
