"""Several training processes (torchrun, DDP): joining the group, reductions, and the wrapped model.

`famkd train` runs as one process, or as one of several started by

    torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m famkd train CONFIG ...

which sets WORLD_SIZE, RANK and LOCAL_RANK. Each process then joins the group (NCCL on CUDA, gloo
on the CPU), takes the GPU of its local rank, loads 1/N of every global batch (`train.batch_size`
is the global batch: it must divide by N) and trains a DistributedDataParallel copy of the
student and the heads; the frozen teacher is not synchronised. Process 0 alone prints, logs and
writes the run folder; every process resumes from its checkpoints. Loss terms, train accuracy and
the test counts are summed over the processes, so the logged numbers cover the whole global batch
and the whole test set (`all_reduce_sum`). A process that fails exits with its error, and torchrun
then stops the others.

A process that dies (killed, out of memory, its node lost) leaves the others in a collective: gloo
sees the connection reset at once, a peer that hangs or whose node vanished is given up after
`train.dist_timeout` seconds (the group's timeout). `lost_peer_error` tells such a failure from any
other error and `lost_ranks` names the ranks whose processes are gone, where they ran on this host
(each process's host and pid are gathered when the group is joined).

`train.grad_compression=bf16|fp16` registers torch's own DDP communication hook (`bf16_compress_hook`,
`fp16_compress_hook`): each gradient bucket is cast to the half format, all-reduced (half the bytes of
float32) and cast back, so the averaged gradients carry the format's precision (about 3 significant digits
for fp16, 2 for bf16; fp16 also flushes gradients below about 6e-8 to zero). Both work on gloo (CPU) and NCCL.

`train.shard_heads=true` shards the distillation heads' parameters, gradients and optimiser state over the
processes with FSDP2 (famkd.engine.sharding); the student stays under DDP. With gradient compression the heads'
gradients are reduce-scattered in the same half format.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from famkd.engine import sharding
from famkd.errors import ConfigError
from famkd.models.taps import refresh_taps


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one process: world_size 1, rank 0)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    hosts_and_pids: tuple[tuple[str, int], ...] = ()  # per rank, gathered when the group is joined

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Process 0, the one that prints and writes."""
        return self.rank == 0

    def batch_share(self, global_batch: int, setting: str = "train.batch_size") -> int:
        """This process's share of a global batch; a remainder is an error."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"{setting}={global_batch} is the global batch and must divide by the {self.world_size} processes; "
                f"choose a multiple of {self.world_size}"
            )
        return global_batch // self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is set on any process (each process calls this at the same point)."""
        return bool(self.max(int(flag), device))

    def max(self, value: int, device: torch.device) -> int:
        """The largest of the processes' `value`s, a small integer (each process calls this at the same point)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())


def attempt_store(rank: int, world_size: int, timeout: timedelta | None) -> dist.Store:
    """The store torchrun describes (MASTER_ADDR:MASTER_PORT; served by its agent, else by rank 0), its keys
    prefixed by the attempt (TORCHELASTIC_RESTART_COUNT): after `--max-restarts` starts the processes again, the
    process group must not read the dead attempt's addresses, which made gloo connect to a closed port."""
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_serves,
        timeout=timeout or timedelta(minutes=30),
        multi_tenant=True,
    )
    return dist.PrefixStore(f"famkd/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def join_processes(device_setting: str, timeout_s: float | None = None) -> Processes:
    """The process group torchrun describes in the environment, joined (a single process: nothing to join); a
    collective that waits longer than `timeout_s` seconds for a peer fails (None: torch's default)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
        backend = "nccl" if use_cuda else "gloo"
        store = attempt_store(rank, world_size, timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    hosts_and_pids = gather_objects((socket.gethostname(), os.getpid()))
    return Processes(world_size, rank, local_rank, tuple((str(h), int(p)) for h, p in hosts_and_pids))


LOST_PEER_SIGNS = ("connection reset", "connection closed", "broken pipe", "timed out", "timeout", "gloo", "nccl")


def lost_peer_error(error: BaseException) -> bool:
    """Whether `error`, raised in a collective of several processes, says a peer is gone or did not answer in time
    (a torch.distributed error, or gloo's and NCCL's transport errors raised as RuntimeError)."""
    if isinstance(error, dist.DistError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(sign in message for sign in LOST_PEER_SIGNS)


def lost_ranks(processes: Processes, wait_s: float = 2.0) -> list[int]:
    """The ranks whose processes ran on this host and are gone (exited, or exited and not yet reaped), looked for
    during up to `wait_s` seconds (a killed process closes its connections before it is gone); ranks on other hosts
    cannot be checked from here."""
    host, deadline = socket.gethostname(), time.monotonic() + wait_s
    peers = [(rank, pid) for rank, (peer_host, pid) in enumerate(processes.hosts_and_pids) if peer_host == host]
    peers = [(rank, pid) for rank, pid in peers if rank != processes.rank]
    while True:
        lost = [rank for rank, pid in peers if not process_alive(pid)]
        if lost or not peers or time.monotonic() > deadline:
            return lost
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")


def process_device(device: torch.device, processes: Processes) -> torch.device:
    """The GPU of this process's local rank when training on CUDA with several processes."""
    if processes.distributed and device.type == "cuda":
        return torch.device("cuda", processes.local_rank)
    return device


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """`tensor` summed over the processes (in place), or as it is with a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def gather_objects(value: Any) -> list[Any]:
    """Every process's `value` (a picklable object), by rank; each process calls this at the same point."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def compression_hook(grad_compression: str) -> Callable[..., Any] | None:
    """torch's DDP communication hook for `train.grad_compression` (none: None, DDP's own float all-reduce)."""
    if grad_compression == "none":
        return None
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    hooks = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}
    if grad_compression not in hooks:
        choices = ", ".join(("none", *hooks))
        raise ConfigError(f"train.grad_compression={grad_compression!r} is not allowed; choose one of: {choices}")
    return hooks[grad_compression]


def wrap_for_training(
    distiller: nn.Module,
    processes: Processes,
    device: torch.device,
    sync_bn: bool,
    grad_compression: str = "none",
    shard_heads: bool = False,
) -> nn.Module:
    """`distiller` (a classification or detection distiller: a module with a `teacher` attribute) for the training
    step: as it is with one process, else a DistributedDataParallel around the student and the heads
    (find_unused_parameters=False: every trainable parameter gets a gradient; gradient_as_bucket_view: no second
    copy of the gradients in the all-reduce buckets), with the frozen teacher's
    parameters and buffers left out of the synchronisation, and, with `sync_bn`, the student's and the heads'
    batch norms computing their statistics over the global batch; `grad_compression` (bf16 | fp16) all-reduces
    the gradients in that format (`compression_hook`). With `shard_heads` the heads are sharded over the processes
    first (famkd.engine.sharding) and their parameters left out of DDP too; build the optimiser after this call,
    over the sharded parameters."""
    if not processes.distributed:
        return distiller
    teacher = getattr(distiller, "teacher", None)
    if sync_bn:
        if teacher is not None:  # the frozen teacher keeps its own batch norms
            distiller.register_module("teacher", None)
        convert_sync_batchnorm(distiller)
        refresh_taps(distiller.get_submodule("student"))
        if teacher is not None:
            distiller.register_module("teacher", teacher)
    ignored = [f"teacher.{name}" for name in teacher.state_dict()] if teacher is not None else []
    if shard_heads:
        ignored += sharding.shard_heads(distiller, processes.world_size, device, grad_compression)
    ignore = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if ignore is not None:  # without it the teacher's tensors are synchronised too: identical, so harmless
        ignore(distiller, ignored)
    device_ids = [device.index] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(  # the gradients are views into DDP's buckets, not a second copy
        distiller, device_ids=device_ids, find_unused_parameters=False, gradient_as_bucket_view=True
    )
    hook = compression_hook(grad_compression)
    if hook is not None:
        wrapped.register_comm_hook(None, hook)  # state None: the default process group
    return wrapped


def convert_sync_batchnorm(module: nn.Module) -> None:
    """Batch norms to SyncBatchNorm in place; timm's, which hold their activation, through timm's own converter."""
    try:
        from timm.layers import convert_sync_batchnorm as convert
    except ImportError:
        convert = nn.SyncBatchNorm.convert_sync_batchnorm
    convert(module)


def wait_for_peers() -> None:
    """Wait until every process of the group gets here (nothing to wait for with one process). A process that
    leaves the gloo group while a peer's last collectives (e.g. gathering sharded heads for the final checkpoint)
    are still under way may be aborted at exit; the collectives run in order, so the barrier ends after them."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave_processes() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
