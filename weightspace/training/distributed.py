"""torch.distributed set-up for metanetwork training under torchrun (gloo on CPU, nccl on GPU)."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); return ``(rank, world_size)``.

    Without torchrun, or if a group already exists, nothing is started.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_batch(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``t`` along dim 0 in rank order, differentiably; ``t`` itself alone.

    Sizes along dim 0 may differ by process. Losses over pairs of the global batch (e.g. ranking
    losses) computed on the gathered tensor give, after DDP's gradient averaging, the gradient of
    one process on the whole batch: torch's differentiable all-gather sums every process's
    gradient for each part back to its owner, and DDP divides by the world size.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    counts = [int(n) for n in sizes]
    padded = torch.cat([t, t.new_zeros((max(counts) - t.shape[0], *t.shape[1:]))])
    return torch.cat([part[:n] for part, n in zip(all_gather(padded), counts)])


def _free_port() -> int:
    """A free TCP port on the loopback interface (for a local process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
