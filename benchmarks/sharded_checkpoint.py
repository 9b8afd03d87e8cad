"""Time and disk of the two ways to checkpoint sharded heads (`train.shard_heads`), on 2 gloo processes (CPU).

    python benchmarks/sharded_checkpoint.py [CONFIG]     (default: configs/imagenet/fam_kd/resnet50_MobileNetV1.yaml)

The config's distiller is built as the run builds it (random weights, 1000 ImageNet classes; the teacher is dropped
once the heads are built: neither way saves it), its heads sharded over 2 gloo processes, and the trainer's SGD
takes one step of zero gradients so that its momentum buffers exist. Then, timed on process 0:

- gathered (famkd's): `famkd.engine.sharding.full_training_state` gathers the full heads and optimiser state on
  process 0 (torch.distributed.checkpoint.state_dict, full_state_dict and cpu_offload), which writes one file with
  famkd's writer (`save_training_checkpoint`); on load every process reads that file and keeps its shards
  (`load_full_training_state`);
- dcp: `torch.distributed.checkpoint.save` of the sharded state dicts, each process writing its shards into one
  folder; on load `torch.distributed.checkpoint.load` into the sharded state dicts.

Printed: seconds to save and to load, and the bytes on disk, of each. Peak host memory: the gathered way holds
the full heads and momentum on process 0 besides its shards (for resnet50 -> MobileNetV1 about 10 GB there), and
on load each process reads the whole file; here it is memory-mapped (`torch.load(mmap=True)`), so that two
processes fit in a small machine's memory, where a resumed run reads it whole (famkd.weights.load_checkpoint).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from checkpoint_sizes import classification_distiller
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from famkd.engine.checkpoint import save_training_checkpoint
from famkd.engine.distributed import Processes, wrap_for_training
from famkd.engine.schedule import build_optimizer
from famkd.engine.sharding import full_training_state, load_full_training_state

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "imagenet" / "fam_kd" / "resnet50_MobileNetV1.yaml"


def sharded_distiller(config: Path, processes: Processes):
    """The config's distiller without its teacher, heads sharded, and its optimiser after one zero-gradient step."""
    torch.manual_seed(0)
    distiller, train_cfg = classification_distiller(config)
    distiller.register_module("teacher", None)
    wrap_for_training(distiller, processes, torch.device("cpu"), False, shard_heads=True)
    optimizer = build_optimizer(distiller, train_cfg)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad()
    return distiller, optimizer


def timed(step, *args) -> float:
    dist.barrier()
    start = time.perf_counter()
    step(*args)
    dist.barrier()
    return time.perf_counter() - start


def save_gathered(distiller, optimizer, file: Path) -> None:
    state = {"student": distiller.student.state_dict(), **full_training_state(distiller, optimizer)}
    if dist.get_rank() == 0:
        save_training_checkpoint(file, state, keep=1)


def load_gathered(distiller, optimizer, file: Path) -> None:
    saved = torch.load(file, map_location="cpu", weights_only=True, mmap=True)  # see the module's docstring
    full_state = {f"student.{k}": v for k, v in saved["student"].items()} | saved["heads"]
    load_full_training_state(distiller, full_state, optimizer, saved["optimizer"])


def save_dcp(distiller, optimizer, folder: Path) -> None:
    model_state, optimizer_state = get_state_dict(distiller, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)


def load_dcp(distiller, optimizer, folder: Path) -> None:
    model_state, optimizer_state = get_state_dict(distiller, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(distiller, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def disk_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def worker(rank: int, config: Path, folder: str, rendezvous: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        distiller, optimizer = sharded_distiller(config, Processes(2, rank, rank))
        gathered, sharded = Path(folder) / "last.pt", Path(folder) / "dcp"
        rows = []
        for name, save, load, target in (
            ("gathered", save_gathered, load_gathered, gathered),
            ("dcp", save_dcp, load_dcp, sharded),
        ):
            save_s = timed(save, distiller, optimizer, target)
            load_s = timed(load, distiller, optimizer, target)
            rows.append(f"{name:9} save {save_s:7.1f} s  load {load_s:7.1f} s  disk {disk_bytes(target) / 1e9:6.2f} GB")
        if rank == 0:
            print(f"{config.relative_to(ROOT)}, 2 gloo processes", *rows, sep="\n", flush=True)
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    config = Path(argv[0]).resolve() if argv else DEFAULT
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(config, folder, str(Path(folder) / "rendezvous")), nprocs=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
