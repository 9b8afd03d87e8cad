"""Per config: the bytes DDP all-reduces per step, and the training state each process holds, without and with
`train.shard_heads`, counted on a real 2-process gloo step on the CPU.

    python benchmarks/comm_memory.py [CONFIG ...]     (default: every configs/imagenet and configs/coco file, and
                                                        CIFAR-100's resnet32x4 -> resnet8x4 and resnet56 -> resnet20
                                                        fam_kd and kd)

Each config's distiller is built as the run builds it (random weights; 1000 ImageNet classes at the config's crop
size, 100 CIFAR classes at 32, 80 COCO categories), in two gloo processes spawned with torch.multiprocessing:

- all-reduced: the distiller under famkd's DDP (`wrap_for_training`) takes one forward and backward of its
  method's loss, 2 random images (COCO: of 320 x 320 pixels and one box each, the detector resizing to 320: the
  heads' sizes do not depend on the image size there) on each process, and a communication hook wrapping torch's
  `allreduce_hook` (the same float32 all-reduce DDP runs in C++) counts the bytes of every bucket it all-reduces.
  The bytes do not depend on the batch: DDP all-reduces every trained parameter's gradient once per step. A
  distiller whose two DDP copies would not fit in this machine's memory (over TOUCH_ABOVE trained parameters:
  resnet50 -> MobileNetV1 fam_kd, 834M) takes instead the backward of a loss that touches every trained parameter
  once, without its teacher (marked *; the distiller's forward is replaced by that loss, under DDP's forward, which
  prepares the all-reduce): the same buckets, all-reduced the same way.
- state per process: the bytes of the trained parameters, their gradients (present after the step) and SGD's
  momentum (one buffer of each trained parameter's shape), float32; with `shard_heads`, the heads sharded over the
  2 processes: the student's whole, and this process's shards of the heads' parameters (gradients and momentum
  take the shards' shapes, as tests/test_sharding.py checks). The frozen teacher's weights and the activations
  come on top.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from checkpoint_sizes import COCO_CATEGORIES, IMAGENET_CLASSES, ROOT
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.tensor import DTensor

from famkd.config import load_config
from famkd.detection.config import load_detection_config
from famkd.detection.models import build_detector
from famkd.distill import create_distiller
from famkd.engine.distributed import Processes, wrap_for_training
from famkd.models import create_model

CIFAR_CONFIGS = [
    f"configs/cifar100/{method}/{pair}.yaml"
    for pair in ("resnet32x4_resnet8x4", "resnet56_resnet20")
    for method in ("fam_kd", "kd")
]
TOUCH_ABOVE = 400_000_000  # trained parameters above which the touching loss replaces the method's (see above)
IMAGES_PER_PROCESS, COCO_SIZE = 2, 320


def classification_step(path: Path):
    """The config's distiller and one batch of its step's arguments."""
    cfg = load_config(path)
    cifar = "cifar100" in path.parts
    classes, size = (100, 32) if cifar else (IMAGENET_CLASSES, getattr(cfg.data, "crop_size", 224))
    student = create_model(cfg.student, num_classes=classes, image_size=size)
    teacher = create_model(cfg.teacher.name, num_classes=classes, image_size=size) if cfg.teacher.name else None
    distiller = create_distiller(cfg.method, student=student, teacher=teacher, image_size=size, **cfg.distill)
    images = torch.randn(IMAGES_PER_PROCESS, 3, size, size)
    return distiller, (images, torch.randint(classes, (IMAGES_PER_PROCESS,)), 1)


def detection_step(path: Path):
    cfg = load_detection_config(path, ["teacher.checkpoint=unused.pkl"])  # the teacher is built, not loaded
    student = build_detector(cfg.student, COCO_CATEGORIES, COCO_SIZE, COCO_SIZE)
    teacher = (
        None if cfg.method == "vanilla" else build_detector(cfg.teacher.name, COCO_CATEGORIES, COCO_SIZE, COCO_SIZE)
    )
    distiller = create_distiller(cfg.method, task="detection", student=student, teacher=teacher, **cfg.distill)
    images = [torch.rand(3, COCO_SIZE, COCO_SIZE) for _ in range(IMAGES_PER_PROCESS)]
    box = {"boxes": torch.tensor([[40.0, 60.0, 200.0, 240.0]]), "labels": torch.tensor([1])}
    return distiller, (images, [dict(box) for _ in images], 1)


def build(path: Path):
    torch.manual_seed(0)
    return (detection_step if "coco" in path.parts else classification_step)(path)


def trained(distiller) -> list[torch.nn.Parameter]:
    return list(distiller.student_parameters()) + list(distiller.head_parameters())


def drop_teacher(distiller) -> None:
    if distiller.teacher is not None:
        distiller.register_module("teacher", None)


def counting_hook(counted: list[int]):
    """torch's allreduce_hook, counting the bytes of each bucket it all-reduces."""

    def hook(state, bucket):
        counted.append(bucket.buffer().numel() * bucket.buffer().element_size())
        return default_hooks.allreduce_hook(state, bucket)

    return hook


def ddp_step(path: Path, processes: Processes) -> dict:
    """One DDP step of the config's distiller: bytes all-reduced, whether the touching loss ran, the state bytes."""
    distiller, arguments = build(path)
    touch = sum(p.numel() for p in trained(distiller)) > TOUCH_ABOVE
    if touch:  # through DDP's forward, which prepares its all-reduce
        drop_teacher(distiller)
        distiller.forward = lambda *_: (None, {"touch": sum(p.sum() for p in trained(distiller)) * 0.0})
    step_model = wrap_for_training(distiller, processes, torch.device("cpu"), False)
    counted: list[int] = []
    step_model.register_comm_hook(None, counting_hook(counted))
    distiller.train()
    loss = sum(step_model(*arguments)[1].values())
    loss.backward()
    weights = sum(p.numel() * p.element_size() for p in trained(distiller))
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in trained(distiller) if p.grad is not None)
    return {"all_reduced": sum(counted), "touch": touch, "state": 2 * weights + gradients}


def sharded_state(path: Path, processes: Processes) -> dict:
    """The config's distiller with its heads sharded: this process's trained bytes, whole and held."""
    distiller, _ = build(path)
    drop_teacher(distiller)  # not needed to shard the heads
    wrap_for_training(distiller, processes, torch.device("cpu"), False, shard_heads=True)
    held = [p.to_local() if isinstance(p, DTensor) else p for p in trained(distiller)]
    return {
        "student_m": sum(p.numel() for p in distiller.student.parameters()) / 1e6,
        "heads_m": distiller.num_head_parameters() / 1e6,
        "sharded_state": 3 * sum(p.numel() * p.element_size() for p in held),
    }


def worker(rank: int, paths: list[Path], rendezvous: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        processes = Processes(2, rank, rank)
        for path in paths:
            row = ddp_step(path, processes)
            gc.collect()
            row |= sharded_state(path, processes)
            gc.collect()
            if rank == 0:
                print_row(path, row)
    finally:
        dist.destroy_process_group()


def print_row(path: Path, row: dict) -> None:
    name = f"`{str(path.relative_to(ROOT)).removeprefix('configs/')}`" + ("*" if row["touch"] else "")
    print(
        f"| {name} | {row['student_m']:.2f} | {row['heads_m']:.2f} | {row['all_reduced'] / 2**20:,.1f} | "
        f"{row['state'] / 2**20:,.0f} | {row['sharded_state'] / 2**20:,.0f} |",
        flush=True,
    )


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    paths = [Path(a).resolve() for a in argv] or [
        *sorted((ROOT / "configs" / "imagenet").rglob("*.yaml")),
        *sorted((ROOT / "configs" / "coco").rglob("*.yaml")),
        *(ROOT / config for config in CIFAR_CONFIGS),
    ]
    columns = "config | student M params | heads M params | all-reduced MiB/step | state MiB/process | with shard_heads"
    print(f"| {columns} |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(paths, str(Path(folder) / "rendezvous")), nprocs=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
