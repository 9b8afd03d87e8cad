"""Sharded heads (`train.shard_heads`): FSDP2 spreads the distillation heads over the training processes.

With several processes and `train.shard_heads=true`, `shard_heads` puts each head module of the distiller (each
child that is neither `student` nor `teacher`, a ModuleList's or ModuleDict's items one by one) under
`torch.distributed.fsdp.fully_shard`: each process keeps 1/N of every head parameter (along dim 0, a DTensor), of
its gradient (reduce-scattered instead of all-reduced) and so of the optimiser's momentum. A head's parameters are
all-gathered for its forward, freed after it, and gathered again for its backward. FSDP2 shards contiguous
parameters only: a head parameter stored in another layout (FAM's frequency-major filter, a channels-last
convolution) is stored contiguous first, which its forward then copies to the layout it needs.

The student stays replicated under DDP (famkd.engine.distributed.wrap_for_training leaves the sharded parameters
out of its all-reduce): it is small next to the heads (4.2M against 830M for resnet50 -> MobileNetV1), and it is
used outside the training step by some processes only (process 0 exports it and writes FAM spectra; each process
evaluates its share of the test set, whose batches may differ in number), where sharded parameters would need
every process in a collective. The parameters keep their names, so checkpoints hold the state dicts of unsharded
runs: process 0 gathers the full heads and optimiser state (`full_training_state`), and every process takes its
shards back from the full state on resume (`load_full_training_state`). torch.distributed.checkpoint, each
process writing its shards into a folder, saves faster and never holds the full heads (resnet50 -> MobileNetV1 on
2 gloo processes: 4.4 s against 34.7 s, the same 6.67 GB; benchmarks/sharded_checkpoint.py), but the single file
keeps what reads checkpoints (checksum, rotation, best.pt, report, export, resume with or without sharding and
with any number of processes) unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from famkd.engine.schedule import with_own_implementation

CONTAINERS = (nn.ModuleList, nn.ModuleDict)  # modules without a forward of their own
REDUCE_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors, on process 0 only


def head_modules(distiller: nn.Module) -> list[nn.Module]:
    """The distiller's head modules with trainable parameters, each a unit of its own for `fully_shard`."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if isinstance(module, CONTAINERS):
            for child in module.children():
                visit(child)
        elif any(parameter.requires_grad for parameter in module.parameters()):
            found.append(module)

    for name, child in distiller.named_children():
        if name not in ("student", "teacher"):
            visit(child)
    return found


def shard_heads(distiller: nn.Module, world_size: int, device: torch.device, grad_compression: str) -> list[str]:
    """Shard `distiller`'s head modules over the `world_size` processes of the default group, in place; the names
    of the sharded parameters. `grad_compression` (bf16 | fp16) reduce-scatters their gradients in that format,
    cast back to the parameters' dtype after the reduction, as the DDP hooks do."""
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(reduce_dtype=REDUCE_DTYPES[grad_compression])
    for module in head_modules(distiller):
        for parameter in module.parameters():
            if not parameter.is_contiguous():
                parameter.data = parameter.data.contiguous()
        fully_shard(module, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
    return [name for name, parameter in distiller.named_parameters() if isinstance(parameter, DTensor)]


def is_sharded(module: nn.Module) -> bool:
    """Whether any of `module`'s parameters is sharded (a DTensor)."""
    return any(isinstance(parameter, DTensor) for parameter in module.parameters())


@contextmanager
def gathered_heads(distiller: nn.Module) -> Iterator[None]:
    """Within the block the sharded heads hold their full parameters, as plain tensors, on every process (for the
    FAM logs, which read and run heads outside the training step); every process enters it at the same point."""
    sharded = [module for module in distiller.modules() if isinstance(module, FSDPModule)]
    for module in sharded:
        module.unshard()
        module.set_reshard_after_forward(False)  # a forward within the block (process 0's spectra) keeps them
    try:
        yield
    finally:
        for module in sharded:
            module.set_reshard_after_forward(True)
            module.reshard()


def full_training_state(distiller: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full head state dict and optimiser state dict of a distiller with sharded heads, as an unsharded run's
    `head_state_dict()` and `optimizer.state_dict()` hold them, on process 0 (the others get empty dicts); every
    process calls this at the same point."""
    model_state = get_model_state_dict(distiller, options=GATHERED)
    heads = {name: value for name, value in model_state.items() if not name.startswith(("student.", "teacher."))}
    by_name = get_optimizer_state_dict(distiller, optimizer, options=GATHERED)
    return {"heads": heads, "optimizer": numbered_optimizer_state(by_name) if by_name else {}}


def numbered_optimizer_state(by_name: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state dict keyed by parameter names (torch.distributed.checkpoint's) keyed by the parameters'
    positions instead, as `Optimizer.state_dict()` numbers them: through the groups, in order."""
    names = [name for group in by_name["param_groups"] for name in group["params"]]
    number = {name: index for index, name in enumerate(names)}
    groups, start = [], 0
    for group in by_name["param_groups"]:
        groups.append({**group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    state = {number[name]: value for name, value in by_name["state"].items()}
    return {"state": state, "param_groups": groups}


def named_optimizer_state(distiller: nn.Module, optimizer: torch.optim.Optimizer, numbered: dict) -> dict[str, Any]:
    """The inverse of `numbered_optimizer_state` for `optimizer` over `distiller`'s parameters."""
    name_of = {id(parameter): name for name, parameter in distiller.named_parameters()}
    names = [name_of[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in numbered["param_groups"]]
    return {"state": {names[i]: value for i, value in numbered["state"].items()}, "param_groups": groups}


def load_full_training_state(
    distiller: nn.Module, full_state: dict[str, Any], optimizer: torch.optim.Optimizer, optimizer_state: dict
) -> None:
    """Put the full state dict `full_state` (every key of the distiller's) and the full `optimizer_state` (as
    `Optimizer.state_dict()` numbers it) into a distiller with sharded heads: each process keeps its shards.
    Every process calls this, each with the full state."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(distiller, full_state, options=options)
    named = named_optimizer_state(distiller, optimizer, with_own_implementation(optimizer, optimizer_state))
    set_optimizer_state_dict(distiller, optimizer, named, options=options)
