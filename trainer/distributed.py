"""Distributed helpers that do nothing without a process group, and the local process launcher.

The training loop runs unchanged in three ways:

- one process, no process group: :func:`rank` is 0, :func:`world_size` 1, collectives are no-ops;
- ``vosctl train --gpus 0,1`` (NCCL) or ``--nproc N`` (gloo, on the CPU): this machine spawns one
  process per GPU or N processes with torch.multiprocessing; they meet on a free local port;
- across machines with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
  (read when training starts, never at import)::

      torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
          -m vosctl train --data DAVIS --out runs/x --gpus all

Nothing here runs at import time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.errors import VosError

TORCHRUN_COMMAND = (
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 "
    "-m vosctl train --data DAVIS --out runs/x --gpus all"
)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` without a process group)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Launch:
    """How this machine runs training: ``processes`` local processes on ``gpus`` (empty: CPU)."""

    processes: int
    gpus: tuple[int, ...]
    device: str  # the device of a single process without --gpus

    @property
    def backend(self) -> str:
        return "nccl" if self.gpus else "gloo"

    def device_for(self, local_rank: int) -> torch.device:
        if self.gpus:
            return torch.device("cuda", self.gpus[local_rank % len(self.gpus)])
        from engine.devices import resolve_device

        return resolve_device(self.device) if self.processes == 1 else torch.device("cpu")


def parse_gpus(spec: str) -> tuple[int, ...]:
    """``""`` -> (), ``"all"`` -> every visible GPU, ``"0,1"`` -> (0, 1); checked against this machine."""
    spec = spec.strip().lower()
    if not spec:
        return ()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise VosError(f"--gpus {spec} was given, but no CUDA GPU is available; use --nproc for CPU.")
    if spec == "all":
        return tuple(range(count))
    try:
        ids = tuple(int(part) for part in spec.split(",") if part.strip())
    except ValueError:
        raise VosError(f"--gpus takes 'all' or a comma list of GPU numbers such as 0,1, not '{spec}'.") from None
    bad = [i for i in ids if not 0 <= i < count]
    if bad or len(set(ids)) != len(ids) or not ids:
        raise VosError(f"--gpus {spec} does not name distinct GPUs among the {count} found.")
    return ids


def plan_launch(*, gpus: str, nproc: int, device: str) -> Launch:
    ids = parse_gpus(gpus)
    if ids and nproc > 1:
        raise VosError("Give either --gpus (one process per GPU) or --nproc (CPU processes), not both.")
    if launched_by_torchrun():
        if not ids and device == "auto" and torch.cuda.is_available():
            # Under torchrun, "auto" means each process on its own GPU, as --gpus all does.
            ids = tuple(range(torch.cuda.device_count()))
        return Launch(processes=1, gpus=ids, device=device)
    return Launch(processes=len(ids) if ids else nproc, gpus=ids, device=device)


def init_process_group(*, backend: str, rank: int | None, world: int | None, init_method: str) -> None:
    """Join the group; ``rank``/``world`` None read them from torchrun's environment."""
    kwargs = {} if rank is None else {"rank": rank, "world_size": world}
    try:
        dist.init_process_group(backend, init_method=init_method, timeout=timedelta(minutes=30), **kwargs)
    except Exception as error:  # rendezvous failures come in many types
        raise VosError(f"Could not join the training process group ({type(error).__name__}: {error}).") from error


def destroy_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _entry(local_rank: int, worker: Callable, world: int, port: int, queue: Any, args: tuple) -> None:
    try:
        result = worker(local_rank, world, f"tcp://127.0.0.1:{port}", *args)
        if local_rank == 0:
            queue.put(("result", result))
    except VosError as error:
        queue.put(("error", str(error)))
        raise


def spawn(worker: Callable[..., Any], *, processes: int, args: tuple) -> Any:
    """Run ``worker(local_rank, world, init_method, *args)`` in ``processes`` new processes.

    Returns what rank 0 returned; a failure in any process becomes one VosError.
    """
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    try:
        mp.spawn(_entry, args=(worker, processes, free_port(), queue, args), nprocs=processes, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
        messages = []
        while not queue.empty():
            kind, value = queue.get()
            if kind == "error":
                messages.append(value)
        if messages:
            raise VosError(messages[0]) from None
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise VosError(f"A training process failed: {last}") from None
    result = None
    while not queue.empty():
        kind, value = queue.get()
        if kind == "result":
            result = value
    return result
