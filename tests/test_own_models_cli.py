"""End to end through the `famkd` command with models outside the zoo on an image folder written by the test.

A timm ResNet teacher (random weights, saved as a .safetensors state dict) is distilled into a timm MobileNetV3
student with fam_kd, reviewkd and kd on 3 classes of 64 x 64 JPEG and PNG images; the fam_kd run is interrupted
and resumed and must end exactly like the uninterrupted one; `famkd eval`, `famkd report` and `famkd export` read
the runs.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
import torch

from famkd.classification import train
from famkd.cli import main
from famkd.config import load_config
from famkd.engine.run_log import read_metrics
from famkd.errors import TrainingInterrupted
from famkd.models import create_model
from famkd.weights import load_checkpoint
from tiny_imagefolder import CLASSES, write_tiny_imagefolder

pytest.importorskip("timm", reason="the timm extra is part of the test extra")
safetensors_torch = pytest.importorskip("safetensors.torch")

TEACHER, STUDENT = "timm:resnet10t", "timm:mobilenetv3_small_050"
TIMING_KEYS = {"epoch_time_s", "images_per_s", "data_wait_fraction"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("own_models")
    root = write_tiny_imagefolder(base / "images")
    torch.manual_seed(0)
    teacher = base / "teacher.safetensors"
    safetensors_torch.save_file(create_model(TEACHER, num_classes=3, image_size=64).state_dict(), teacher)
    return base, root, teacher


def overrides(setup, method: str, run_dir) -> list[str]:
    _, root, teacher = setup
    return [
        f"method={method}",
        f"student={STUDENT}",
        f"teacher.name={TEACHER}",
        f"teacher.checkpoint={teacher}",
        "data.dataset=imagefolder",
        f"data.root={root}",
        "data.image_size=64",
        "data.augment=cifar",
        "data.workers=0",
        "train.epochs=2",
        "train.batch_size=6",
        "train.lr_milestones=[1]",
        "device=cpu",
        "run.tensorboard=false",
        f"run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def runs(setup):
    base = setup[0]
    done = {}
    for method in ("fam_kd", "reviewkd", "kd"):
        run_dir = base / method
        assert main(["train", *overrides(setup, method, run_dir)]) == 0
        done[method] = run_dir
    return done


def test_three_methods_train_a_timm_student_from_a_timm_teacher(runs):
    for method, run_dir in runs.items():
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs_completed"] == 2
        records = read_metrics(run_dir)
        assert [r["global_step"] for r in records] == [3, 6]
        losses = {k for k in records[0] if k.startswith("loss_")}
        assert losses == {"loss_ce", f"loss_{method}"}
        card = json.loads((run_dir / "student.json").read_text())
        assert card["arch"] == STUDENT and card["class_names"] == sorted(CLASSES)
        weights = load_checkpoint(run_dir / "student_best.pt")
        # the student's state dict is timm's own: it loads into a fresh timm model
        fresh = create_model(STUDENT, num_classes=3, image_size=64)
        fresh.load_state_dict(weights)
    fam_kd = load_checkpoint(runs["fam_kd"] / "checkpoints" / "last.pt")
    assert fam_kd["heads"] and any(".fam." in key for key in fam_kd["heads"])


def test_an_interrupted_fam_kd_run_resumes_exactly(runs, setup, tmp_path):
    run_dir = tmp_path / "interrupted"

    def press_ctrl_c(epoch, step, global_step):
        if global_step == 4:  # the first step of epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(load_config(None, overrides(setup, "fam_kd", run_dir)), on_step=press_ctrl_c)
    assert main(["train", "--resume", str(run_dir)]) == 0
    strip = [
        [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(d)]
        for d in (run_dir, runs["fam_kd"])
    ]
    assert strip[0] == strip[1]
    resumed, uninterrupted = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (run_dir, runs["fam_kd"]))
    for part in ("student", "heads"):
        assert all(torch.equal(resumed[part][k], uninterrupted[part][k]) for k in uninterrupted[part])


def test_eval_report_and_export_read_a_timm_run(runs, tmp_path, capsys):
    run_dir = runs["fam_kd"]
    summary = json.loads((run_dir / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0
    top1 = float(re.search(r"^top-1: ([\d.]+)%$", capsys.readouterr().out, re.MULTILINE).group(1))
    assert top1 == pytest.approx(summary["best_acc"], abs=0.005)
    assert main(["report", *map(str, runs.values()), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").is_file()
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "s.safetensors")]) == 0
