"""Local gloo process groups for tests: no TCP port to race for, and a hard time limit instead of a hang.

The group meets through a file (``file://``), so no port is picked, freed and re-bound (a freed ephemeral
port can be taken meanwhile, or a client retrying an unopened one can connect to itself). A collective that
never completes fails after ``COLLECTIVE_TIMEOUT``, and ``run_processes`` kills what is still running after
its ``timeout``, so a broken test fails in minutes instead of stalling the suite.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = timedelta(seconds=120)


@contextmanager
def process_group(rank: int, world: int, init: str) -> Iterator[None]:
    """Inside: this process is rank ``rank`` of the gloo group that meets at ``init``, on one thread."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_processes(fn: Callable, args: tuple, folder: Path, nprocs: int = 2, timeout: float = 300.0) -> None:
    """Run ``fn(rank, nprocs, init, *args)`` in ``nprocs`` spawned processes; fail if one fails or time runs out."""
    store = Path(folder) / "process_group_store"
    store.unlink(missing_ok=True)
    ctx = mp.start_processes(fn, args=(nprocs, store.resolve().as_uri(), *args), nprocs=nprocs, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{fn.__name__}: {nprocs} processes still running after {timeout:.0f} s; killed")
