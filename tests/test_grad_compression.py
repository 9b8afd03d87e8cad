"""train.grad_compression: under DDP, torch's bf16 / fp16 compression hooks all-reduce half the bytes of float32, and
the step's gradients match the uncompressed step's to the format's precision.

Two gloo processes (torch.multiprocessing) take one fam_kd step on their shares of the same global batch, once per
setting. The bytes are those handed to torch.distributed.all_reduce, counted by wrapping it in each process: the
compression hooks call it with the half-precision bucket; for `none` (DDP's own all-reduce in C++, which Python
does not see) the test registers torch's `allreduce_hook`, the same float32 all-reduce through Python. Without
famkd's hook the compressed settings would count no bytes at all, and their gradients would be exact.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from famkd.data import BatchLoader
from famkd.engine.checkpoint import save_checkpoint
from famkd.engine.distributed import Processes, compression_hook, wrap_for_training
from famkd.errors import ConfigError
from famkd.weights import load_checkpoint
from test_distributed import GLOBAL_BATCH, fam_kd_distiller, tiny_dataset

SETTINGS = ("none", "bf16", "fp16")
# The format's unit roundoff: 2^-8 (bf16's 8 significant bits), 2^-11 (fp16's 11). Every value is rounded three
# times (each process's share, and their sum); a parameter whose shares nearly cancel (a scalar) loses more.
UNIT = {"bf16": 2.0**-8, "fp16": 2.0**-11}
# fp16's subnormals are spaced 2^-24 apart: below that a gradient entry is flushed to zero (bf16 has float32's range).
SPACING = {"bf16": 0.0, "fp16": 2.0**-24}


def one_step(processes: Processes, grad_compression: str, all_reduced: list[int]) -> dict[str, torch.Tensor]:
    """This process's gradients after one float32 fam_kd step under DDP with `grad_compression`; the bytes
    all-reduced during the step are appended to `all_reduced`."""
    distiller = fam_kd_distiller()
    step_model = wrap_for_training(distiller, processes, torch.device("cpu"), False, grad_compression)
    if grad_compression == "none":
        step_model.register_comm_hook(None, default_hooks.allreduce_hook)  # DDP's float all-reduce, seen from Python
    loader = BatchLoader(
        tiny_dataset(), GLOBAL_BATCH // 2, train=True, seed=3, num_replicas=processes.world_size, rank=processes.rank
    )
    loader.set_epoch(1)
    images, labels = next(iter(loader))
    all_reduced.clear()
    _, losses = step_model(images, labels, 25)
    sum(losses.values()).backward()
    return {name: p.grad.clone() for name, p in distiller.named_parameters() if p.grad is not None}


def worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    all_reduced: list[int] = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor: torch.Tensor, *args, **kwargs):
        all_reduced.append(tensor.numel() * tensor.element_size())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce  # what the hooks call (torch.distributed.all_reduce)
    try:
        result: dict[str, object] = {}
        for setting in SETTINGS:
            gradients = one_step(Processes(world_size, rank, rank), setting, all_reduced)
            result[setting] = {"gradients": gradients, "bytes": sum(all_reduced), "calls": len(all_reduced)}
        save_checkpoint(f"{out}.{rank}", result)
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compression")
    torch.set_num_threads(1)
    out = str(tmp_path / "steps")
    mp.spawn(worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2)
    return [load_checkpoint(f"{out}.{rank}") for rank in (0, 1)]


def test_compressed_steps_all_reduce_half_the_bytes(steps):
    for rank in steps:
        full = rank["none"]["bytes"]
        assert full >= 4 * sum(g.numel() for g in rank["none"]["gradients"].values()) > 0
        for setting in ("bf16", "fp16"):
            assert rank[setting]["calls"] == rank["none"]["calls"] > 0, setting  # one all-reduce per bucket
            assert rank[setting]["bytes"] * 2 == full, setting
    print(f"bytes all-reduced per step: none {steps[0]['none']['bytes']}, bf16 {steps[0]['bf16']['bytes']}")


@pytest.mark.parametrize("setting", ["bf16", "fp16"])
def test_compressed_gradients_match_the_uncompressed_step_to_the_formats_precision(steps, setting):
    for rank in steps:
        exact, compressed = rank["none"]["gradients"], rank[setting]["gradients"]
        assert exact.keys() == compressed.keys() and len(exact) > 50
        errors = {name: float((compressed[name] - g).norm() / g.norm()) for name, g in exact.items() if g.norm() > 0}
        for name, g in exact.items():
            bound = 4 * UNIT[setting] * g.norm() + 2 * SPACING[setting] * g.numel() ** 0.5
            assert (compressed[name] - g).norm() <= bound, (name, errors.get(name))
        whole_exact = torch.cat([g.flatten() for g in exact.values()])
        whole = torch.cat([compressed[name].flatten() for name in exact])
        error = float((whole - whole_exact).norm() / whole_exact.norm())
        assert 0 < error <= UNIT[setting]  # rounded (the hook ran), to the format's precision
        print(f"{setting}: gradient error / norm of all the gradients: {error:.2e}")
    for name, gradient in steps[0][setting]["gradients"].items():  # the processes agree exactly
        assert torch.equal(gradient, steps[1][setting]["gradients"][name]), name


def test_the_hooks_are_torchs_own():
    assert compression_hook("none") is None
    assert compression_hook("bf16") is default_hooks.bf16_compress_hook
    assert compression_hook("fp16") is default_hooks.fp16_compress_hook
    with pytest.raises(ConfigError, match="choose one of: none, bf16, fp16"):
        compression_hook("int8")
