"""train.shard_heads: two gloo processes train fam_kd's heads sharded (FSDP2) as one process trains them whole.

Two processes (torch.multiprocessing, float64) take two optimiser steps on their shares of the same global
batches with the heads sharded; one process takes the same steps unsharded, with the trainer's optimiser. The
losses and the updated weights and momentum must agree, each process must hold only its shard of every head
parameter and momentum buffer, the checkpointed state must have the unsharded run's names and numbering, and that
state, put back into fresh sharded processes, must train on exactly as the processes that saved it. With
train.grad_compression=bf16 the sharded heads' gradients must carry bf16's rounding, and a torchrun fam_kd run
with sharded heads must resume mid-epoch to the uninterrupted run's weights.
"""

from __future__ import annotations

import copy
import shutil
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from famkd.classification import task as task_module
from famkd.classification import train
from famkd.config import TrainConfig, load_config
from famkd.data import BatchLoader
from famkd.engine.checkpoint import save_checkpoint
from famkd.engine.distributed import Processes, wrap_for_training
from famkd.engine.run_log import read_metrics
from famkd.engine.schedule import IMPLEMENTATION_FLAGS, build_optimizer
from famkd.engine.sharding import full_training_state, head_modules, load_full_training_state
from famkd.models import create_model
from famkd.weights import load_checkpoint
from test_distributed import COMMON, GLOBAL_BATCH, check, fam_kd_distiller, tiny_dataset, torchrun
from tiny_cifar import tiny_datasets

SHARD_HEADS = True  # what the workers pass as shard_heads


def trained_distiller(processes: Processes, shard_heads: bool) -> tuple[Any, torch.nn.Module, torch.optim.SGD]:
    """A float64 fam_kd distiller wrapped for training (its step model), and its optimiser, built as the trainer
    builds them. Batch norms run in eval mode, so that the processes' gradients average to the batch's."""
    distiller = fam_kd_distiller().double()
    step_model = wrap_for_training(distiller, processes, torch.device("cpu"), False, shard_heads=shard_heads)
    distiller.eval()
    return step_model, distiller, build_optimizer(distiller, TrainConfig())


def take_steps(processes: Processes, step_model: Any, optimizer: torch.optim.SGD, epoch: int) -> list[float]:
    """Two optimiser steps on this process's shares of the first two global batches of `epoch`; the losses."""
    share, replicas, rank = GLOBAL_BATCH // processes.world_size, processes.world_size, processes.rank
    loader = BatchLoader(tiny_dataset(), share, train=True, seed=3, num_replicas=replicas, rank=rank)
    loader.set_epoch(epoch)
    losses = []
    for images, labels in loader:
        _, terms = step_model(images.double(), labels, 25)
        loss = sum(terms.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def local_sizes(distiller: torch.nn.Module, optimizer: torch.optim.SGD) -> dict[str, tuple[int, int]]:
    """Per head parameter: the elements this process holds of it and of its momentum buffer."""
    heads = [p for module in head_modules(distiller) for p in module.parameters()]
    names = {id(p): name for name, p in distiller.named_parameters()}
    local = [p.to_local() if isinstance(p, DTensor) else p for p in heads]
    momenta = [optimizer.state[p]["momentum_buffer"] for p in heads]
    momenta = [m.to_local() if isinstance(m, DTensor) else m for m in momenta]
    return {names[id(p)]: (part.numel(), m.numel()) for p, part, m in zip(heads, local, momenta)}


def single_process_run() -> dict[str, Any]:
    step_model, distiller, optimizer = trained_distiller(Processes(), shard_heads=False)
    losses = take_steps(Processes(), step_model, optimizer, 1)
    saved = {"student": distiller.student.state_dict(), "heads": distiller.head_state_dict()}
    saved = copy.deepcopy(saved | {"optimizer": optimizer.state_dict()})  # state dicts hold the live tensors
    losses += take_steps(Processes(), step_model, optimizer, 2)
    return {"losses": losses, "saved": saved, "heads": distiller.head_state_dict()}


def resumed_steps(processes: Processes, saved: dict[str, Any]) -> dict[str, Any]:
    """The epoch-2 steps of fresh sharded processes given the `saved` checkpoint state: losses, and the heads after."""
    step_model, distiller, optimizer = trained_distiller(processes, SHARD_HEADS)
    full_state = {f"student.{k}": v for k, v in saved["student"].items()} | saved["heads"]
    full_state |= {f"teacher.{k}": v for k, v in distiller.teacher.state_dict().items()}
    load_full_training_state(distiller, full_state, optimizer, saved["optimizer"])
    losses = take_steps(processes, step_model, optimizer, 2)
    return {"losses": losses, "heads": full_training_state(distiller, optimizer)["heads"]}


def sharded_worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    """Two steps (epoch 1), the state gathered and saved; two more steps (epoch 2); then fresh processes restored
    from the saved state, and from the single process's after epoch 1, take the epoch-2 steps again."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        processes = Processes(world_size, rank, rank)
        step_model, distiller, optimizer = trained_distiller(processes, SHARD_HEADS)
        result: dict[str, Any] = {"losses": take_steps(processes, step_model, optimizer, 1)}
        saved = {"student": distiller.student.state_dict(), **full_training_state(distiller, optimizer)}
        if rank == 0:
            save_checkpoint(f"{out}.saved", saved)
        dist.barrier()
        result["sizes"] = local_sizes(distiller, optimizer)
        result["losses"] += take_steps(processes, step_model, optimizer, 2)
        result["heads"] = full_training_state(distiller, optimizer)["heads"]
        for source in ("saved", "single"):  # the sharded run's checkpoint state, and the single process's
            result[source] = resumed_steps(processes, load_checkpoint(f"{out}.{source}"))
        save_checkpoint(f"{out}.{rank}", result)
        dist.barrier()  # every process done before any leaves (see compressed_worker)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("sharding")
    torch.set_num_threads(1)
    out = str(tmp_path / "run")
    single = single_process_run()
    save_checkpoint(f"{out}.single", single["saved"])
    mp.spawn(sharded_worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2)
    ranks = [load_checkpoint(f"{out}.{rank}") for rank in (0, 1)]
    return {"ranks": ranks, "saved": load_checkpoint(f"{out}.saved"), "single": single}


def assert_states_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-9, atol=1e-12, msg=name)


def test_sharded_steps_give_the_single_process_losses_and_weights(runs):
    single, ranks = runs["single"], runs["ranks"]
    assert len(single["heads"]) > 50
    for rank in ranks:  # each process's loss is the mean over its share: theirs average to the batch's
        assert len(rank["losses"]) == len(single["losses"]) == 4
    for step, loss in enumerate(single["losses"]):
        assert abs((ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2 - loss) <= 1e-9 * abs(loss)
    assert_states_close(ranks[0]["heads"], single["heads"])


def test_each_process_holds_only_its_shard_of_the_heads_and_their_momentum(runs):
    single_heads = runs["single"]["heads"]
    sizes = [rank["sizes"] for rank in runs["ranks"]]
    assert sizes[0].keys() == sizes[1].keys() and len(sizes[0]) > 40
    for name, (held, momentum) in sizes[0].items():
        rows = single_heads[name].shape[0]  # FSDP2 shards dim 0: ceil(rows / 2) rows on rank 0, the rest on rank 1
        row_size = single_heads[name][0].numel()
        assert (held, momentum) == ((rows + 1) // 2 * row_size,) * 2, name
        assert sizes[1][name] == ((rows // 2) * row_size,) * 2, name
    total = sum(single_heads[name].numel() for name in sizes[0])
    assert max(sum(held for held, _ in part.values()) for part in sizes) < 0.51 * total


def test_the_gathered_checkpoint_state_is_the_unsharded_runs(runs):
    saved, single = runs["saved"], runs["single"]["saved"]
    assert_states_close(saved["heads"], single["heads"])
    assert_states_close(saved["student"], single["student"])
    # Equal but for the implementation flags: one process takes the foreach path (FAM's filters are not
    # contiguous, famkd.engine.schedule.build_optimizer), the sharded processes one parameter at a time.
    single_groups = single["optimizer"]["param_groups"]
    kernels = [{flag: group[flag] for flag in IMPLEMENTATION_FLAGS} for group in single_groups]
    assert [group | own for group, own in zip(saved["optimizer"]["param_groups"], kernels)] == single_groups
    assert saved["optimizer"]["state"].keys() == single["optimizer"]["state"].keys()
    for index, state in single["optimizer"]["state"].items():
        assert_states_close(saved["optimizer"]["state"][index], state)


def test_fresh_processes_restored_from_the_saved_state_train_on_as_the_saving_ones(runs):
    ranks = runs["ranks"]
    for rank in ranks:
        assert rank["saved"]["losses"] == rank["losses"][2:]
    assert ranks[0]["heads"].keys() == ranks[0]["saved"]["heads"].keys()
    for name, value in ranks[0]["heads"].items():
        assert torch.equal(ranks[0]["saved"]["heads"][name], value), name


def test_a_single_process_checkpoint_resumes_sharded_as_it_resumes_whole(runs):
    single, ranks = runs["single"], runs["ranks"]
    for step, loss in enumerate(single["losses"][2:]):
        resumed = (ranks[0]["single"]["losses"][step] + ranks[1]["single"]["losses"][step]) / 2
        assert abs(resumed - loss) <= 1e-9 * abs(loss)
    assert_states_close(ranks[0]["single"]["heads"], single["heads"])


def test_torchrun_fam_kd_with_sharded_heads_resumed_mid_epoch_ends_like_the_uninterrupted_run(tiny_cifar_npy, tmp_path):
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet14", num_classes=10).state_dict()}, teacher)
    argv = [
        "method=fam_kd",
        "student=resnet8",
        "teacher.name=resnet14",
        f"teacher.checkpoint={teacher}",
        f"data.root={tiny_cifar_npy}",
        "data.classes=10",
        "train.epochs=2",
        "train.checkpoint_every=1",
        "train.shard_heads=true",
        "run.keep_checkpoints=4",
        "run.spectra_every=1",
        *COMMON,
    ]
    whole = tmp_path / "whole"
    out = check(torchrun(*argv, f"run.dir={whole}"))
    assert "2 processes sharing the global batch of 8, heads sharded over the 2 processes" in out
    checkpoints = sorted((whole / "checkpoints").glob("previous-*.pt"))
    mid_epoch = next(p.name for p in checkpoints if load_checkpoint(p)["partial_period"])  # mid epoch 2
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    out = check(torchrun("--resume", str(resumed / "checkpoints" / mid_epoch)))
    assert "resuming epoch 2 after step" in out
    final, reference = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (resumed, whole))
    assert len(reference["heads"]) > 40 and not any(isinstance(v, DTensor) for v in reference["heads"].values())
    for part in ("student", "heads"):
        assert all(torch.equal(final[part][k], reference[part][k]) for k in reference[part]), part
    assert all("gamma1/heads.0.fam" in record for record in read_metrics(resumed))  # read from the gathered heads


def compressed_worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    """The full head gradients of one float32 fam_kd step with sharded heads and train.grad_compression=bf16."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        processes = Processes(world_size, rank, rank)
        gradients = head_gradients_of_one_step(processes, "bf16", shard_heads=True)
        if rank == 0:
            save_checkpoint(out, gradients)
        # Every process done before any leaves: a process that left the gloo group while the other was still in
        # its last collectives was once aborted at exit ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def head_gradients_of_one_step(processes: Processes, grad_compression: str, shard_heads: bool) -> dict:
    distiller = fam_kd_distiller()
    step_model = wrap_for_training(distiller, processes, torch.device("cpu"), False, grad_compression, shard_heads)
    distiller.eval()
    share, replicas, rank = GLOBAL_BATCH // processes.world_size, processes.world_size, processes.rank
    loader = BatchLoader(tiny_dataset(), share, train=True, seed=3, num_replicas=replicas, rank=rank)
    loader.set_epoch(1)
    images, labels = next(iter(loader))
    sum(step_model(images, labels, 25)[1].values()).backward()
    gradients = {
        name: p.grad for name, p in distiller.named_parameters() if not name.startswith(("student.", "teacher."))
    }
    return {name: g.full_tensor() if isinstance(g, DTensor) else g.clone() for name, g in gradients.items()}


def test_sharded_heads_reduce_their_gradients_in_bf16_with_grad_compression(tmp_path):
    torch.set_num_threads(1)
    out = str(tmp_path / "gradients.pt")
    mp.spawn(compressed_worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2)
    compressed, exact = load_checkpoint(out), head_gradients_of_one_step(Processes(), "none", shard_heads=False)
    assert compressed.keys() == exact.keys() and len(exact) > 40
    whole_exact = torch.cat([g.flatten() for g in exact.values()])
    whole = torch.cat([compressed[name].flatten() for name in exact])
    error = float((whole - whole_exact).norm() / whole_exact.norm())
    assert 1e-5 < error <= 2.0**-8  # rounded to bf16 (float32 sums differ by about 1e-7), to its precision


def test_one_process_trains_unsharded_and_says_the_setting_has_no_effect(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(task_module, "build_datasets", lambda data_cfg: tiny_datasets())
    overrides = ["student=resnet8", "data.classes=10", "device=cpu", "run.tensorboard=false", "train.epochs=1"]
    overrides += ["train.batch_size=8", "train.max_steps_per_epoch=1", f"run.dir={tmp_path / 'run'}"]
    assert load_config(None).train.shard_heads is False
    train(load_config(None, [*overrides, "train.shard_heads=true"]))
    assert "steps/epoch, train.shard_heads has no effect with one process, run dir" in capsys.readouterr().out
