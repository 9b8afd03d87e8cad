"""Several training processes: DDP gradients equal one process's, and torchrun runs end to end on the CPU.

The gradient test starts two gloo processes with torch.multiprocessing; the end-to-end tests run
`python -m torch.distributed.run --standalone --nproc_per_node 2 -m famkd train ...` (torchrun) on
a tiny ImageFolder tree and on the tiny CIFAR-100, both written in temporary folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from famkd.data import BatchLoader, ImageDataset
from famkd.distill import create_distiller
from famkd.engine.checkpoint import save_checkpoint
from famkd.engine.distributed import Processes, wrap_for_training
from famkd.engine.run_log import read_metrics
from famkd.errors import ConfigError
from famkd.models import create_model
from famkd.weights import load_checkpoint
from tiny_imagenet import write_tiny_imagenet

GLOBAL_BATCH = 8


def tiny_dataset() -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 4
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageDataset(images, labels, 4, (0.5,) * 3, (0.25,) * 3, "random test images")


def fam_kd_distiller() -> torch.nn.Module:
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=4), create_model("resnet14", num_classes=4)
    return create_distiller("fam_kd", student=student, teacher=teacher, image_size=32)


def gradients_of_one_step(processes: Processes) -> dict[str, torch.Tensor]:
    """The gradients of one fam_kd step on this process's share of the first global batch of epoch 1.

    Batch norms run in eval mode, so that every image's loss depends on that image alone and the
    average of the processes' gradients is the gradient of the whole batch."""
    distiller = fam_kd_distiller().double()
    step_model = wrap_for_training(distiller, processes, torch.device("cpu"), sync_bn=False)
    loader = BatchLoader(
        tiny_dataset(),
        GLOBAL_BATCH // processes.world_size,
        train=True,
        seed=3,
        num_replicas=processes.world_size,
        rank=processes.rank,
    )
    loader.set_epoch(1)
    images, labels = next(iter(loader))
    distiller.eval()
    _, losses = step_model(images.double(), labels, 25)
    sum(losses.values()).backward()
    return {name: p.grad.clone() for name, p in distiller.named_parameters() if p.grad is not None}


def ddp_worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        gradients = gradients_of_one_step(Processes(world_size, rank, rank))
        if rank == 0:
            save_checkpoint(out, gradients)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_gradient_equals_the_single_process_gradient(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path / "grads.pt")), nprocs=2)
    distributed = load_checkpoint(tmp_path / "grads.pt")
    single = gradients_of_one_step(Processes())
    assert set(distributed) == set(single) and len(single) > 50
    for name, gradient in single.items():
        torch.testing.assert_close(distributed[name], gradient, rtol=1e-9, atol=1e-12, msg=name)
    assert not any(name.startswith("teacher.") for name in single)


def test_each_process_loads_its_share_of_every_global_batch():
    dataset = tiny_dataset()
    whole = BatchLoader(dataset, 8, train=True, seed=5, with_indices=True)
    shares = [BatchLoader(dataset, 4, train=True, seed=5, num_replicas=2, rank=r, with_indices=True) for r in (0, 1)]
    for loader in (whole, *shares):
        loader.set_epoch(2)
    assert len(whole) == len(shares[0]) == len(shares[1]) == 2
    for (images, _, indices), *parts in zip(whole, *shares):
        assert torch.equal(torch.cat([part[2] for part in parts]), indices)
        assert torch.equal(torch.cat([part[0] for part in parts]), images)
    tests = [BatchLoader(dataset, 3, train=False, num_replicas=3, rank=r, with_indices=True) for r in range(3)]
    covered = torch.cat([indices for loader in tests for _, _, indices in loader])
    assert torch.equal(covered, torch.arange(16))  # every test image once: parts of 6, 6 and 4


def test_a_global_batch_that_does_not_divide_is_refused():
    with pytest.raises(ConfigError, match="train.batch_size=10 is the global batch and must divide by the 4"):
        Processes(4, 0, 0).batch_share(10)
    assert Processes(4, 0, 0).batch_share(256) == 64


def contrastive_steps(processes: Processes, method: str, queue_size: int) -> dict[str, torch.Tensor]:
    """Two float64 steps of `method` on this process's share of the first two global batches of epoch 1 (no
    optimiser step: the memory alone changes): each step's loss terms and gradients, then the memory."""
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=4), create_model("resnet14", num_classes=4)
    distiller = create_distiller(
        method,
        student=student,
        teacher=teacher,
        num_samples=16,
        labels=tiny_dataset().labels,
        nce_k=6,
        queue_size=queue_size,
    ).double()
    step_model = wrap_for_training(distiller, processes, torch.device("cpu"), sync_bn=False)
    share = GLOBAL_BATCH // processes.world_size
    loader = BatchLoader(
        tiny_dataset(),
        share,
        train=True,
        seed=3,
        num_replicas=processes.world_size,
        rank=processes.rank,
        with_indices=True,
    )
    loader.set_epoch(1)
    distiller.eval()  # batch norms per image, so that the processes' gradients average to the batch's
    result = {}
    for step, (images, labels, indices) in enumerate(loader):
        _, losses = step_model(images.double(), labels, 1, indices)
        sum(losses.values()).backward()
        result |= {f"{step}.loss.{name}": value.detach() for name, value in losses.items()}
        result |= {f"{step}.grad.{n}": p.grad.clone() for n, p in distiller.named_parameters() if p.grad is not None}
        distiller.zero_grad()
    return result | {f"memory.{k}": v for k, v in distiller.memory.state_dict().items()}


def contrastive_worker(rank: int, world_size: int, rendezvous: str, out: str, method: str, queue_size: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        save_checkpoint(f"{out}.{rank}", contrastive_steps(Processes(world_size, rank, rank), method, queue_size))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method, queue_size", [("crd", 0), ("wcord", 0), ("crd", 8)])
def test_two_processes_share_one_contrastive_memory_as_one_process_does_on_the_global_batch(
    tmp_path, method, queue_size
):
    torch.set_num_threads(1)
    out = str(tmp_path / "steps")
    mp.spawn(contrastive_worker, args=(2, str(tmp_path / "rendezvous"), out, method, queue_size), nprocs=2)
    ranks = [load_checkpoint(f"{out}.{rank}") for rank in (0, 1)]
    single = contrastive_steps(Processes(), method, queue_size)
    assert ranks[0].keys() == single.keys() and any(k.startswith("1.loss.") for k in single)
    for name, value in single.items():
        if ".loss." in name:  # each process's terms are means over its share: their mean is the batch's
            value_of_ranks = (ranks[0][name] + ranks[1][name]) / 2
            torch.testing.assert_close(value_of_ranks, value, rtol=1e-9, atol=1e-12, msg=name)
        else:  # gradients (averaged by DDP) and the memory, with its negatives' generator, on both processes
            for rank in ranks:
                torch.testing.assert_close(rank[name], value, rtol=1e-9, atol=1e-12, msg=name)


# ---- torchrun end to end ---------------------------------------------------------------------

COMMON = [
    "device=cpu",
    "run.deterministic=true",
    "run.tensorboard=false",
    "train.log_interval=1",
    f"train.batch_size={GLOBAL_BATCH}",
    "train.eval_batch_size=4",
]


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "famkd",
        "train",
        *argv,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def check(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout + completed.stderr


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory) -> Path:
    return write_tiny_imagenet(tmp_path_factory.mktemp("imagenet"), train_per_class=6, val_per_class=3)


def test_torchrun_fam_kd_on_imagenet_folders_trains_logs_the_whole_val_set_and_resumes(imagenet_tree, tmp_path):
    teacher = tmp_path / "resnet34.pth"
    torch.manual_seed(0)
    torch.save(create_model("resnet34", num_classes=3).state_dict(), teacher)  # torchvision's state-dict layout
    run_dir = tmp_path / "run"
    argv = [
        "method=fam_kd",
        "student=resnet18",
        "teacher.name=resnet34",
        f"teacher.checkpoint={teacher}",
        "data.dataset=imagenet",
        f"data.root={imagenet_tree}",
        "data.crop_size=32",
        "data.resize_size=36",
        "data.workers=0",
        "distill.pooled_level=residual",
        "distill.warmup_epochs=1",
        *COMMON,
    ]
    out = check(torchrun(*argv, "train.epochs=1", f"run.dir={run_dir}"))
    assert "2 processes sharing the global batch of 8" in out
    first = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert first["epoch"] == 1 and (run_dir / "student_best.pt").is_file()

    out = check(torchrun("--resume", str(run_dir), "train.epochs=2"))
    assert "resuming after epoch 1" in out
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["test_images"] == 9 for r in records)  # 3 classes x 3 val images, each counted once
    steps_per_epoch = 18 // GLOBAL_BATCH  # 18 training images, global batch 8, drop_last
    assert [r["global_step"] for r in records] == [steps_per_epoch, 2 * steps_per_epoch]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2


def test_the_same_torchrun_command_trains_a_cifar_config_with_compressed_gradients(tiny_cifar_npy, tmp_path):
    run_dir = tmp_path / "cifar"
    argv = [
        "student=resnet8",
        f"data.root={tiny_cifar_npy}",
        "data.classes=10",
        "train.epochs=1",
        f"run.dir={run_dir}",
        "train.grad_compression=bf16",
        *COMMON,
    ]
    out = check(torchrun(*argv))
    assert "2 processes sharing the global batch of 8, gradients all-reduced in bf16" in out
    assert "device cpu, 1 threads (auto)" in out  # torchrun's OMP_NUM_THREADS=1 caps the automatic value
    (record,) = read_metrics(run_dir)
    assert record["test_images"] == 30 and record["global_step"] == 60 // GLOBAL_BATCH


def test_torchrun_crd_resumed_mid_epoch_ends_like_the_uninterrupted_run(tiny_cifar_npy, tmp_path):
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher)
    argv = [
        "method=crd",
        "student=resnet8",
        "teacher.name=resnet8",
        f"teacher.checkpoint={teacher}",
        f"data.root={tiny_cifar_npy}",
        "data.classes=10",
        "train.epochs=2",
        "train.checkpoint_every=1",
        "run.keep_checkpoints=4",
        "distill.nce_k=16",
        *COMMON,
    ]
    whole = tmp_path / "whole"
    check(torchrun(*argv, f"run.dir={whole}"))
    checkpoints = sorted((whole / "checkpoints").glob("previous-*.pt"))
    mid_epoch = next(p.name for p in checkpoints if load_checkpoint(p)["partial_period"])  # mid epoch 2
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    out = check(torchrun("--resume", str(resumed / "checkpoints" / mid_epoch)))
    assert "resuming epoch 2 after step" in out
    final, reference = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (resumed, whole))
    assert {"memory.student_memory", "memory._extra_state"} <= reference["heads"].keys()
    for part in ("student", "heads"):
        assert all(torch.equal(final[part][k], reference[part][k]) for k in reference[part]), part
