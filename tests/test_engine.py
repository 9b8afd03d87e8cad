"""Engine units: atomic checkpoints, RNG capture, evaluation counts, schedule, teachers, NaN stops."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from famkd.classification import task as task_module
from famkd.classification import train
from famkd.classification.evaluation import evaluate, topk_correct
from famkd.config import ConfigError, TeacherConfig, TrainConfig, load_config
from famkd.distill import create_distiller, resolve_method_options
from famkd.distill.vanilla import Vanilla
from famkd.engine import run_log
from famkd.engine.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from famkd.engine.progress import PeriodProgress, StopRequest
from famkd.engine.run_log import RunLog, read_metrics
from famkd.engine.schedule import Schedule, build_optimizer
from famkd.errors import FamkdError, NonFiniteLossError
from famkd.models import create_model
from famkd.weights import load_checkpoint, load_teacher, load_teacher_and_name
from tiny_cifar import tiny_datasets

# ---- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    state = {"weights": torch.arange(6.0).reshape(2, 3), "epoch": 3, "config": {"train": {"lr": 0.05}}}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["weights"], state["weights"])
    assert loaded["epoch"] == 3 and loaded["config"] == {"train": {"lr": 0.05}}
    assert os.listdir(tmp_path) == ["c.pt"]


def test_failed_checkpoint_write_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"epoch": 1})
    before = target.read_bytes()

    def save_half_then_fail(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(target, {"epoch": 2})
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FamkdError, match="cannot read checkpoint .*garbage.pt"):
        load_checkpoint(garbage)
    with pytest.raises(FamkdError, match="checkpoint not found: .*absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_rng_state_survives_a_checkpoint_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


# ---- evaluation ----------------------------------------------------------------------------


def test_evaluate_counts_top1_top5_and_mean_cross_entropy_by_hand():
    # Label ranks: row 0 first, row 1 third, row 2 last (sixth), row 3 fifth.
    logits = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            [6.0, 1.0, 4.0, 5.0, 2.0, 3.0],
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
            [6.0, 2.0, 5.0, 4.0, 3.0, 1.0],
        ]
    )
    labels = torch.tensor([0, 2, 5, 1])
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    result = evaluate(nn.Identity(), batches)
    assert result["top1"] == 25.0 and result["top5"] == 75.0
    rows = logits.double().tolist()
    expected_loss = sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(rows, labels.tolist())) / 4
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_top5_with_fewer_than_five_classes_counts_every_sample():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert topk_correct(logits, torch.tensor([0, 0])).tolist() == [1.0, 2.0]


# ---- optimiser and schedule ----------------------------------------------------------------


def test_multistep_schedule_decays_after_each_milestone_epoch():
    train_cfg = TrainConfig(lr=0.1, lr_milestones=[2, 4], lr_decay=0.5)
    distiller = create_distiller("vanilla", student=create_model("resnet8", num_classes=10))
    optimizer = build_optimizer(distiller, train_cfg)
    schedule = Schedule(train_cfg, steps_per_epoch=3)
    used = []
    for epoch in range(1, 7):
        schedule.set_lr(optimizer, epoch - 1, 3 * (epoch - 1))
        used.append(optimizer.param_groups[0]["lr"])
    expected = [0.1 * 0.5 ** sum(m < epoch for m in (2, 4)) for epoch in range(1, 7)]
    assert used == pytest.approx(expected, rel=1e-12)


def test_iteration_schedule_warms_up_linearly_then_decays_at_each_milestone_iteration():
    """Detectron2's WarmupMultiStepLR: factor(i) = (w (1 - i / W) + i / W) for i < W, times decay ** #{m <= i},
    i the iterations already taken."""
    train_cfg = TrainConfig(epochs=0, iterations=10, warmup_iters=4, warmup_factor=0.001, lr_milestones=[6, 8])
    schedule = Schedule(train_cfg, steps_per_epoch=3)
    factors = [schedule.lr_factor(i // 3, i) for i in range(10)]
    warm = [0.001 * (1 - i / 4) + i / 4 for i in range(4)]
    assert factors == pytest.approx([*warm, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rel=1e-12)


def test_optimizer_trains_student_and_heads_but_not_the_teacher():
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10)
    distiller = create_distiller("fam_kd", student=student, teacher=teacher, image_size=32)
    cfg = TrainConfig(lr=0.03, momentum=0.8, weight_decay=1e-3, nesterov=True)
    optimizer = build_optimizer(distiller, cfg)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    expected = {id(p) for p in student.parameters()} | {id(p) for p in distiller.head_parameters()}
    assert trained == expected and not trained & {id(p) for p in teacher.parameters()}
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.03, 0.8, 1e-3, True)


@pytest.mark.parametrize(("method", "nesterov"), [("vanilla", False), ("vanilla", True), ("fam_kd", False)])
def test_optimizer_steps_follow_the_sgd_formula(method, nesterov):
    """Three steps against v = mu v + g + wd p; p -= lr (g + wd p + mu v if nesterov else v), in float64. fam_kd's
    FAM filters are stored frequency-major (not contiguous): SGD takes its foreach path, which reads them in place,
    rather than the fused kernel, which copies them to contiguous tensors and back on every step."""
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10)
    teacher = create_model("resnet8", num_classes=10) if method == "fam_kd" else None
    distiller = create_distiller(method, student=student, teacher=teacher, image_size=32).double()
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    optimizer = build_optimizer(distiller, cfg)
    params = list(distiller.student.parameters()) + list(distiller.head_parameters())
    assert bool(optimizer.param_groups[0]["fused"]) is (method == "vanilla")
    expected = [p.detach().clone() for p in params]
    velocity = [torch.zeros_like(p) for p in params]
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for i, g in enumerate(grads):
            d = g + cfg.weight_decay * expected[i]
            velocity[i] = d if step == 0 else cfg.momentum * velocity[i] + d
            expected[i] -= cfg.lr * (d + cfg.momentum * velocity[i] if nesterov else velocity[i])
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


# ---- distiller options ---------------------------------------------------------------------


def test_unknown_distill_option_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown option 'distill.temprature' .*did you mean 'distill.temperature'"):
        resolve_method_options("kd", {"temprature": 4.0})


def test_image_size_comes_from_the_data_not_from_the_options():
    assert resolve_method_options("kd", {"temperature": 2.0})["temperature"] == 2.0
    with pytest.raises(ConfigError, match="unknown option 'distill.image_size'"):
        resolve_method_options("fam_kd", {"image_size": 16})
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10)
    distiller = create_distiller("fam_kd", student=student, teacher=teacher, image_size=24)
    assert [head.fam.size for head in distiller.heads] == [1, 6, 12, 24]  # deepest (pooled) level first


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="(?i)fam_kdd.*did you mean 'fam_kd'"):
        resolve_method_options("fam_kdd", {})


# ---- teachers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet8_weights():
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=10).state_dict()


def test_teacher_loads_from_the_community_layout_with_its_recorded_arch(tmp_path, resnet8_weights):
    path = tmp_path / "teacher.pth"
    torch.save({"model": resnet8_weights, "epoch": 240, "test_acc": 70.0, "arch": "resnet8"}, path)
    teacher, arch = load_teacher_and_name(TeacherConfig(checkpoint=str(path)), num_classes=10)
    assert arch == "resnet8" and not teacher.training
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in resnet8_weights.items())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_loads_a_famkd_checkpoint_and_strips_data_parallel_prefixes(tmp_path, resnet8_weights):
    famkd_path, parallel_path = tmp_path / "last.pt", tmp_path / "parallel.pth"
    torch.save({"student": resnet8_weights, "config": {"student": "resnet8"}}, famkd_path)
    torch.save({"model": {f"module.{k}": v for k, v in resnet8_weights.items()}}, parallel_path)
    for path in (famkd_path, parallel_path):
        teacher = load_teacher(TeacherConfig(name="resnet8", checkpoint=str(path)), num_classes=10)
        assert torch.equal(teacher.state_dict()["fc.weight"], resnet8_weights["fc.weight"])


def test_teacher_sha256_mismatch_shows_both_hashes(tmp_path, resnet8_weights):
    path = tmp_path / "teacher.pth"
    torch.save({"model": resnet8_weights}, path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    load_teacher(TeacherConfig(name="resnet8", checkpoint=str(path), sha256=actual.upper()), num_classes=10)
    wrong = "0" * 64
    with pytest.raises(FamkdError) as error:
        load_teacher(TeacherConfig(name="resnet8", checkpoint=str(path), sha256=wrong), num_classes=10)
    assert wrong in str(error.value) and actual in str(error.value) and str(path) in str(error.value)


def test_teacher_of_the_wrong_architecture_names_checkpoint_arch_and_keys(tmp_path, resnet8_weights):
    path = tmp_path / "teacher.pth"
    torch.save({"model": resnet8_weights}, path)
    with pytest.raises(FamkdError) as error:
        load_teacher(TeacherConfig(name="resnet20", checkpoint=str(path)), num_classes=10)
    message = str(error.value)
    assert str(path) in message and "'resnet20'" in message
    missing = [k for k in create_model("resnet20", num_classes=10).state_dict() if k not in resnet8_weights]
    assert f"missing keys: {', '.join(missing[:5])} (+{len(missing) - 5} more)" in message
    assert "teacher.name" in message


def test_teacher_with_other_class_count_says_so(tmp_path, resnet8_weights):
    path = tmp_path / "teacher.pth"
    torch.save({"model": resnet8_weights}, path)
    with pytest.raises(FamkdError, match=r"holds a resnet8 with a 10-class head, but the data has 100 classes"):
        load_teacher(TeacherConfig(name="resnet8", checkpoint=str(path)), num_classes=100)


def test_plain_state_dict_without_a_name_asks_for_one(tmp_path, resnet8_weights):
    path = tmp_path / "student_best.pt"
    torch.save(resnet8_weights, path)
    with pytest.raises(FamkdError, match="does not say which architecture.*teacher.name=NAME"):
        load_teacher(TeacherConfig(checkpoint=str(path)), num_classes=10)


# ---- run log -------------------------------------------------------------------------------


def test_resumed_run_log_drops_epochs_after_the_checkpoint(tmp_path):
    records = ({"epoch": e, "global_step": 10 * e, "x": e} for e in (1, 2, 3))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    log = RunLog(tmp_path, tensorboard=False, resume_step=20)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    log.log_epoch({"epoch": 3, "global_step": 30, "x": 33})
    assert read_metrics(tmp_path)[-1] == {"epoch": 3, "global_step": 30, "x": 33}


# ---- progress accounting, NaN and Ctrl-C ---------------------------------------------------


def test_epoch_progress_means_and_first_non_finite_step():
    progress = PeriodProgress(epoch=1)
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    batch = (torch.zeros(2, 3, 4, 4), labels)
    counts = task_module.TASK.train_counts(logits, batch)
    progress.add({"ce": torch.tensor(2.0), "kd": torch.tensor(1.0)}, counts, 2, global_step=7)
    means, counted, images = progress.read()
    assert means == {"loss_ce": 2.0, "loss_kd": 1.0}
    assert task_module.TASK.train_metrics(counted, images) == {"train_acc": 50.0}
    progress.add({"ce": torch.tensor(4.0), "kd": torch.tensor(float("nan"))}, counts, 2, global_step=8)
    progress.add({"ce": torch.tensor(float("inf")), "kd": torch.tensor(float("nan"))}, counts, 2, global_step=9)
    assert {n: int(s) for n, s in progress.first_bad_step.items()} == {"ce": 9, "kd": 8}
    assert progress.images_seen == 6 and progress.steps_done == 3


def quick_config(tmp_path, *overrides):
    return load_config(
        None,
        [
            "student=resnet8",
            "device=cpu",
            "run.tensorboard=false",
            f"run.dir={tmp_path / 'run'}",
            "train.batch_size=8",
            "train.max_steps_per_epoch=3",
            "train.log_interval=100",
            *overrides,
        ],
    )


def test_nan_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(task_module, "build_datasets", lambda data_cfg: tiny_datasets())
    calls = []
    plain_forward = Vanilla.forward

    def forward_with_penalty(self, images, targets, epoch):
        logits, losses = plain_forward(self, images, targets, epoch)
        calls.append(epoch)
        bad = epoch == 2 and calls.count(2) == 2  # second step of the second epoch
        return logits, {**losses, "penalty": torch.tensor(float("nan") if bad else 0.0)}

    monkeypatch.setattr(Vanilla, "forward", forward_with_penalty)
    with pytest.raises(NonFiniteLossError) as error:
        train(quick_config(tmp_path, "train.epochs=3"))
    message = str(error.value)
    assert "'penalty' became nan at epoch 2, step 2 of 3 (global step 5)" in message
    assert "last good checkpoint is kept" in message and "(epoch 1)" in message
    run = tmp_path / "run"
    kept = load_checkpoint(run / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1 and kept["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in kept["student"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "penalty" in summary["error"] and summary["epochs_completed"] == 1


def test_first_ctrl_c_requests_a_stop_and_the_second_aborts():
    found = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs as a background job
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is found


def test_progress_without_a_terminal_prints_a_line_with_eta(capsys, monkeypatch):
    clock = iter([100.0, 108.0])  # construction, then the show() call 8 s later
    monkeypatch.setattr(run_log.time, "perf_counter", lambda: next(clock))
    display = run_log.ProgressDisplay(total=10, description="epoch 1/3", line_every_s=5.0)
    assert display.bar.disable  # pytest captures stderr, so it is no terminal
    for _ in range(4):
        display.step()
    display.show(loss=1.5, metrics={"train_acc": 25.0}, images_per_s=100.0)
    display.close()
    # 4 steps in 8 s -> 2 s per step, 6 steps left.
    assert capsys.readouterr().out == "epoch 1/3 step 4/10  loss 1.5000  acc 25.0%  100 img/s  ETA 12 s\n"


# ---- channels-last, safe loading, progress bars ---------------------------------------------


def test_channels_last_training_matches_channels_first(tmp_path, monkeypatch):
    """Two fam_kd steps with train.channels_last=true give the channels-first losses and weights to float
    tolerance; the convolution weights are channels-last and FAM's 5-D filter keeps its layout."""
    monkeypatch.setattr(task_module, "build_datasets", lambda data_cfg: tiny_datasets())
    torch.manual_seed(1)
    teacher_path = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher_path)
    built = []
    plain_create = task_module.create_distiller
    monkeypatch.setattr(
        task_module, "create_distiller", lambda *a, **k: built.append(plain_create(*a, **k)) or built[-1]
    )
    runs = {}
    for layout in ("false", "true"):
        run_dir = tmp_path / f"channels_last_{layout}"
        train(
            load_config(
                None,
                [
                    "method=fam_kd",
                    "student=resnet8",
                    "teacher.name=resnet8",
                    f"teacher.checkpoint={teacher_path}",
                    "device=cpu",
                    "run.tensorboard=false",
                    "run.deterministic=true",
                    f"run.dir={run_dir}",
                    "train.batch_size=8",
                    "train.max_steps_per_epoch=2",
                    "train.epochs=1",
                    f"train.channels_last={layout}",
                ],
            )
        )
        runs[layout] = (read_metrics(run_dir)[0], load_checkpoint(run_dir / "checkpoints" / "last.pt"))
    (first, first_state), (last, last_state) = runs["false"], runs["true"]
    for term in ("loss_ce", "loss_fam_kd"):
        assert last[term] == pytest.approx(first[term], rel=1e-4, abs=1e-6)
    for part in ("student", "heads"):
        for key, value in first_state[part].items():
            torch.testing.assert_close(last_state[part][key], value, rtol=1e-4, atol=1e-5)
    distiller = built[-1]
    conv = distiller.student.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fam = distiller.heads[-1].fam
    assert fam.global_filter.dim() == 5 and fam.global_filter.stride() == built[0].heads[-1].fam.global_filter.stride()


def test_a_checkpoint_the_safe_loader_refuses_is_explained_without_unsafe_advice(tmp_path):
    path = tmp_path / "pickled_model.pt"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module, not a state dict
    with pytest.raises(FamkdError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"cannot read checkpoint {path}: it is not made of plain tensors and containers")
    assert "torch.nn.modules.linear.Linear" in message and "state dict" in message
    assert "weights_only" not in message


def test_evaluation_shows_a_named_progress_bar_only_when_asked(monkeypatch):
    opened = []

    def recording_tqdm(iterable, **options):
        opened.append(options)
        return iterable

    evaluate_module = importlib.import_module("famkd.classification.evaluation")
    monkeypatch.setattr(evaluate_module, "tqdm", recording_tqdm)
    batches = [(torch.eye(3), torch.arange(3))]
    assert evaluate(nn.Identity(), batches, description="teacher test")["top1"] == 100.0
    evaluate(nn.Identity(), batches)
    assert [(o["desc"], o["disable"], o["leave"]) for o in opened] == [
        ("teacher test", None, False),
        (None, True, False),
    ]


def test_a_teacher_can_come_from_torchvisions_weights_api(monkeypatch, resnet8_weights):
    """`teacher.checkpoint=torchvision:<Weights>.<entry>` resolves the entry and loads its state dict (here a
    local one: the download itself needs a network)."""
    from torchvision.models import ResNet18_Weights

    torch.manual_seed(0)
    published = create_model("resnet18", num_classes=1000).state_dict()
    fetched = []
    monkeypatch.setattr(
        ResNet18_Weights, "get_state_dict", lambda self, progress=False: fetched.append(self) or published
    )
    teacher, arch = load_teacher_and_name(
        TeacherConfig(name="resnet18", checkpoint="torchvision:ResNet18_Weights.IMAGENET1K_V1"), num_classes=1000
    )
    assert fetched == [ResNet18_Weights.IMAGENET1K_V1] and arch == "resnet18"
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in published.items())
    with pytest.raises(FamkdError, match="torchvision:ResNet18_Weights.NOPE: not a torchvision weights entry"):
        load_teacher(TeacherConfig(name="resnet18", checkpoint="torchvision:ResNet18_Weights.NOPE"), 1000)


def test_atomically_written_files_get_the_permissions_of_a_plain_write(tmp_path):
    from famkd.files import write_text_atomic

    previous = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "summary.json", "{}\n")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = (tmp_path / "summary.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["plain.txt", "summary.json"]
