"""End to end through the `famkd` command on a tiny CIFAR-100 written in both formats.

A resnet8 teacher is trained with method vanilla (npy layout), then a resnet8 fam_kd student
(pickle layout holding the same images); the run outputs, exact resume after Ctrl-C, `famkd eval`
and the error messages are checked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from famkd.classification import train
from famkd.cli import main
from famkd.config import load_config
from famkd.distill import create_distiller
from famkd.engine.run_log import read_metrics
from famkd.errors import FamkdError, TrainingInterrupted
from famkd.models import create_model
from famkd.settings import settings_to_dict
from famkd.weights import load_checkpoint

TIMING_KEYS = {"epoch_time_s", "images_per_s", "data_wait_fraction"}
EPOCH_KEYS = {"epoch", "global_step", "lr", "loss", "train_acc", "test_acc", "test_top5", "test_loss", "test_images"}
EPOCH_KEYS |= TIMING_KEYS
CHECKPOINT_KEYS = {
    "task",
    "student",
    "heads",
    "optimizer",
    "grad_scaler",
    "epoch",
    "epoch_steps",
    "global_step",
    "rng",
    "best",
    "best_at",
    "last_eval",
    "teacher_eval",
    "wall_time_s",
    "partial_period",
    "config",
    "versions",
}
SHORT_RUN = [
    "student=resnet8",
    "device=cpu",
    "train.epochs=2",
    "train.batch_size=8",
    "train.max_steps_per_epoch=2",
    "train.lr_milestones=[1]",
    "train.log_interval=2",
    "run.deterministic=true",
]


@pytest.fixture(scope="module")
def data_roots(tiny_cifar_npy, tiny_cifar_pickle):
    """The same tiny CIFAR-100 in the .npy layout and as a cifar-100-python directory."""
    return {"npy": tiny_cifar_npy, "pickle": tiny_cifar_pickle}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, data_roots):
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", *SHORT_RUN, f"data.root={data_roots['npy']}", f"run.dir={run_dir}"]) == 0
    return run_dir


def fam_kd_overrides(teacher_run, data_roots, run_dir):
    return [
        *SHORT_RUN,
        "method=fam_kd",
        "teacher.name=resnet8",
        f"teacher.checkpoint={teacher_run / 'student_best.pt'}",
        f"data.root={data_roots['pickle']}",
        "run.tensorboard=false",
        f"run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def fam_kd_run(tmp_path_factory, teacher_run, data_roots):
    run_dir = tmp_path_factory.mktemp("fam_kd") / "run"
    assert main(["train", *fam_kd_overrides(teacher_run, data_roots, run_dir)]) == 0
    return run_dir


def test_teacher_run_writes_metrics_summary_and_checkpoints(teacher_run):
    records = read_metrics(teacher_run)
    assert [r["epoch"] for r in records] == [1, 2] and [r["global_step"] for r in records] == [2, 4]
    assert all(set(r) == EPOCH_KEYS | {"loss_ce"} for r in records)
    assert [r["lr"] for r in records] == pytest.approx([0.05, 0.005])
    assert all(r["loss"] == r["loss_ce"] and 0 <= r["data_wait_fraction"] < 1 for r in records)

    summary = json.loads((teacher_run / "summary.json").read_text())
    accuracies = [r["test_acc"] for r in records]
    assert summary["status"] == "completed" and summary["method"] == "vanilla" and summary["teacher"] is None
    assert summary["epochs_completed"] == 2 and summary["best_acc"] == max(accuracies)
    assert summary["best_epoch"] == accuracies.index(max(accuracies)) + 1
    assert summary["last_acc"] == accuracies[-1] and summary["teacher_acc"] is None
    assert summary["student_params"] == sum(p.numel() for p in create_model("resnet8").parameters())
    assert summary["head_params"] == 0 and summary["wall_time_s"] > 0

    last = load_checkpoint(teacher_run / "checkpoints" / "last.pt")
    best = load_checkpoint(teacher_run / "checkpoints" / "best.pt")
    assert set(last) == CHECKPOINT_KEYS and last["epoch"] == 2 and last["partial_period"] is None
    assert best["epoch"] == summary["best_epoch"] and last["heads"] == {}
    assert last["config"] == settings_to_dict(load_config(None, [*SHORT_RUN, *_data_and_dir(last)]))
    assert set(last["versions"]) == {"famkd", "torch", "torchvision", "python"}
    for exported, checkpoint in (("student_last.pt", last), ("student_best.pt", best)):
        weights = torch.load(teacher_run / exported, weights_only=True)
        assert weights.keys() == checkpoint["student"].keys()
        assert all(torch.equal(weights[k], checkpoint["student"][k]) for k in weights)
    assert any(name.startswith("events") for name in os.listdir(teacher_run / "tensorboard"))


def _data_and_dir(checkpoint):
    return [f"data.root={checkpoint['config']['data']['root']}", f"run.dir={checkpoint['config']['run']['dir']}"]


def test_fam_kd_student_through_the_cli(fam_kd_run, teacher_run):
    records = read_metrics(fam_kd_run)
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        terms = {k: v for k, v in record.items() if k.startswith("loss_")}
        assert "loss_ce" in terms and len(terms) >= 2
        assert record["loss"] == pytest.approx(sum(terms.values()), rel=1e-12)

    summary = json.loads((fam_kd_run / "summary.json").read_text())
    teacher_summary = json.loads((teacher_run / "summary.json").read_text())
    assert summary["method"] == "fam_kd" and summary["teacher"] == "resnet8" and summary["epochs_completed"] == 2
    # The pickle copy holds the same test images as the npy copy the teacher was evaluated on.
    assert summary["teacher_acc"] == teacher_summary["best_acc"]
    reference = create_distiller(
        "fam_kd", student=create_model("resnet8"), teacher=create_model("resnet8"), image_size=32
    )
    assert summary["head_params"] == reference.num_head_parameters() > 0
    last = load_checkpoint(fam_kd_run / "checkpoints" / "last.pt")
    assert last["heads"].keys() == reference.head_state_dict().keys()


def metrics_without_timing(run_dir) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in read_metrics(run_dir)]


def test_interrupted_and_resumed_run_ends_exactly_like_the_uninterrupted_one(
    fam_kd_run, teacher_run, data_roots, tmp_path
):
    run_dir = tmp_path / "interrupted"

    def press_ctrl_c(epoch, step, global_step):
        if global_step == 3:  # the first step of epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=f"famkd train --resume {run_dir}"):
        train(load_config(None, fam_kd_overrides(teacher_run, data_roots, run_dir)), on_step=press_ctrl_c)
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and saved["partial_period"]["steps_done"] == 1 and saved["global_step"] == 3
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    assert main(["train", "--resume", str(run_dir)]) == 0
    assert metrics_without_timing(run_dir) == metrics_without_timing(fam_kd_run)
    resumed, uninterrupted = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (run_dir, fam_kd_run))
    for part in ("student", "heads"):
        assert all(torch.equal(resumed[part][k], uninterrupted[part][k]) for k in uninterrupted[part])
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run_dir, fam_kd_run)]
    for key in ("best_acc", "last_acc", "best_epoch", "epochs_completed", "teacher_acc", "status"):
        assert summaries[0][key] == summaries[1][key]


def eval_output(capsys, *argv) -> dict[str, float]:
    assert main(["eval", *argv]) == 0
    out = capsys.readouterr().out
    return {name: float(value) for name, value in re.findall(r"^(top-[15]): ([\d.]+)%$", out, re.MULTILINE)}


def test_eval_reads_run_dirs_exported_students_and_community_checkpoints(capsys, teacher_run, data_roots, tmp_path):
    summary = json.loads((teacher_run / "summary.json").read_text())
    data = ["--data", str(data_roots["npy"])]
    from_run = eval_output(capsys, str(teacher_run), *data)
    assert from_run["top-1"] == pytest.approx(summary["best_acc"], abs=0.005)
    exported = eval_output(capsys, str(teacher_run / "student_best.pt"), "--model", "resnet8", *data)
    community = tmp_path / "resnet8.pth"
    torch.save({"model": torch.load(teacher_run / "student_best.pt"), "epoch": 2}, community)
    assert eval_output(capsys, str(community), "--model", "resnet8", *data) == exported == from_run
    best_record = read_metrics(teacher_run)[summary["best_epoch"] - 1]
    assert from_run["top-5"] == pytest.approx(best_record["test_top5"], abs=0.005)


def test_print_config_shows_the_merged_config(capsys, tmp_path):
    config_file = tmp_path / "exp.yaml"
    config_file.write_text("method: kd\nstudent: resnet8\ntrain: {lr: 0.01}\n")
    assert main(["train", str(config_file), "train.epochs=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == settings_to_dict(load_config(config_file, ["train.epochs=7"]))
    assert (printed["method"], printed["train"]["lr"], printed["train"]["epochs"]) == ("kd", 0.01, 7)


def error_cases(teacher_run, data_roots, tmp_path):
    teacher = teacher_run / "student_best.pt"
    data = f"data.root={data_roots['npy']}"
    kd = ["method=kd", "student=resnet8", "train.batch_size=8", data, f"run.dir={tmp_path / 'run'}"]
    return {
        "unknown key": (["train", "train.epoch=2"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        "missing data": (
            ["train", "student=resnet8", f"data.root={tmp_path / 'nowhere'}", "data.download=false"],
            str(tmp_path / "nowhere"),
        ),
        "sha256 mismatch": (
            ["train", *kd, f"teacher.checkpoint={teacher}", "teacher.name=resnet8", f"teacher.sha256={'ab' * 32}"],
            f"sha256 mismatch for {teacher}: expected {'ab' * 32}",
        ),
        "wrong architecture": (
            ["train", *kd, f"teacher.checkpoint={teacher}", "teacher.name=resnet20"],
            f"checkpoint {teacher} does not match architecture 'resnet20'",
        ),
        "no teacher": (["train", *kd], "famkd train configs/cifar100/vanilla/"),
        "unknown student": (["train", "student=resnet9", "data.root=/nowhere"], "student: unknown model 'resnet9'"),
        "unknown distill option": (
            ["train", *kd, f"teacher.checkpoint={teacher}", "teacher.name=resnet8", "distill.temprature=2"],
            "did you mean 'distill.temperature'?",
        ),
        "resume without checkpoint": (["train", "--resume", str(tmp_path)], "checkpoint not found"),
        "eval without --model": (["eval", str(teacher), "--data", str(data_roots["npy"])], "--model=NAME"),
    }


CASES = [
    "unknown key",
    "missing data",
    "sha256 mismatch",
    "wrong architecture",
    "no teacher",
    "unknown student",
    "unknown distill option",
    "resume without checkpoint",
    "eval without --model",
]


@pytest.mark.parametrize("case", CASES)
def test_user_errors_exit_non_zero_with_a_clear_message(case, capsys, teacher_run, data_roots, tmp_path):
    argv, expected = error_cases(teacher_run, data_roots, tmp_path)[case]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("famkd: error: ") and expected in err and "Traceback" not in err
    if case == "sha256 mismatch":
        actual = hashlib.sha256((teacher_run / "student_best.pt").read_bytes()).hexdigest()
        assert re.findall(r"[0-9a-f]{64}", err) == ["ab" * 32, actual]


def test_help_lists_every_subcommand_and_each_has_help(capsys):
    listing = subprocess.run([sys.executable, "-m", "famkd", "--help"], capture_output=True, text=True, check=True)
    assert re.findall(r"^    (\w+)", listing.stdout, re.MULTILINE) == [
        "train",
        "eval",
        "demo",
        "bench",
        "inspect",
        "results",
        "sweep",
        "report",
        "detect",
        "export",
        "predict",
    ]
    commands = (
        ("train", "--resume"),
        ("eval", "--model"),
        ("inspect", "--out"),
        ("results", "--json"),
        ("sweep", "--seeds"),
        ("report", "--out"),
        ("detect", "train"),
    )
    for command, option in commands:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0 and option in capsys.readouterr().out


def test_inspect_prints_gammas_of_the_run_and_writes_figures(fam_kd_run, tmp_path, capsys):
    assert main(["inspect", str(fam_kd_run), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    heads = load_checkpoint(fam_kd_run / "checkpoints" / "last.pt")["heads"]
    gamma_keys = sorted(k for k in heads if k.endswith(".fam.gamma1"))
    assert len(gamma_keys) == 4
    for key in gamma_keys:
        head = key.removesuffix(".gamma1")
        row = next(line for line in printed.splitlines() if line.startswith(head + " "))
        assert row.split()[-2:] == [f"{heads[key].item():.4f}", f"{heads[head + '.gamma2'].item():.4f}"]
    assert (tmp_path / "fam_filter_spectra.png").stat().st_size > 0
    assert (tmp_path / "highpass_masks.png").stat().st_size > 0


def test_inspect_of_a_run_without_fam_is_a_clear_error(teacher_run, capsys):
    assert main(["inspect", str(teacher_run)]) == 1
    assert "no FAM heads" in capsys.readouterr().err


# ---- the method's options, checked at load and recorded ------------------------------------

FAM_KD_CONFIG = "configs/cifar100/fam_kd/resnet56_resnet20.yaml"
# Every fam_kd option with the value the resnet56 -> resnet20 recipe gives or the default (docs/method.md).
FAM_KD_OPTIONS = {
    "loss_weight": 1.0,
    "ce_weight": 1.0,
    "warmup_epochs": 20,
    "student_preact": False,
    "hpf": "ideal",
    "cutoff": 0.1,
    "order": 2,
    "max_mid_channels": 0,
    "pooled_level": "loss",
}


def test_print_config_lists_every_method_option_with_its_value(capsys):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert main(["train", os.path.join(repo, FAM_KD_CONFIG), "distill.cutoff=0.3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["distill"] == {**FAM_KD_OPTIONS, "cutoff": 0.3}


def test_run_config_and_checkpoints_record_every_method_option(fam_kd_run):
    assert yaml.safe_load((fam_kd_run / "config.yaml").read_text())["distill"] == FAM_KD_OPTIONS
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(fam_kd_run / "checkpoints" / name)["config"]["distill"] == FAM_KD_OPTIONS


def test_a_typo_in_a_method_option_fails_before_any_data_or_teacher_is_read(capsys, monkeypatch, tmp_path):
    from famkd.classification import task as trainer

    def must_not_run(*args, **kwargs):
        raise AssertionError("data or teacher touched before the config was checked")

    monkeypatch.setattr(trainer, "build_datasets", must_not_run)
    monkeypatch.setattr(trainer, "load_teacher_and_name", must_not_run)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    missing_root = tmp_path / "nonexistent"
    argv = [
        "train",
        os.path.join(repo, FAM_KD_CONFIG),
        "distill.hpf=gausian",
        f"data.root={missing_root}",
        f"teacher.checkpoint={tmp_path / 'teacher.pth'}",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("famkd: error: distill.hpf='gausian' is not allowed (did you mean 'gaussian'?)")
    assert not missing_root.exists()


def test_an_old_option_name_prints_one_deprecation_line(capsys):
    assert main(["train", "method=fam_kd", "distill.alpha=20", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert (
        err == "famkd: warning: distill.alpha is deprecated for method 'fam_kd'; use distill.loss_weight "
        "(the same setting)\n"
    )
    assert yaml.safe_load(out)["distill"]["loss_weight"] == 20.0


def test_inspect_without_matplotlib_says_which_extra_to_install(fam_kd_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    out_dir = tmp_path / "figures"
    assert main(["inspect", str(fam_kd_run), "--out", str(out_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "matplotlib" in err and "pip install 'famkd[plot]'" in err
    assert not out_dir.exists()


def test_a_fam_training_run_prints_no_line_from_torchs_logger(teacher_run, data_roots, tmp_path):
    """Kernels compiled for the CPU import torch.utils.cpp_extension, which logs a CUDA_HOME warning on a
    machine with a CUDA toolkit and no GPU; a famkd run shows famkd's own output only."""
    overrides = fam_kd_overrides(teacher_run, data_roots, tmp_path / "run")
    overrides = [o for o in overrides if not o.startswith(("train.epochs=", "train.max_steps_per_epoch="))]
    env = dict(os.environ, FAMKD_COMPILE_KERNELS="always")
    completed = subprocess.run(
        [sys.executable, "-m", "famkd", "train", *overrides, "train.epochs=1", "train.max_steps_per_epoch=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    lines = (completed.stdout + completed.stderr).splitlines()
    torch_lines = [line for line in lines if "CUDA_HOME" in line or re.match(r"^[IWE]\d{4} \d\d:\d\d", line)]
    assert torch_lines == [] and any(line.startswith("famkd train: method fam_kd") for line in lines)


def test_resume_reads_the_run_checkpoint_once(fam_kd_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "copy"
    shutil.copytree(fam_kd_run, run_dir)
    from famkd.engine import trainer
    from famkd.weights import files, zoo

    reads = []
    plain_load = files.load_checkpoint

    def counting_load(path):
        reads.append(Path(path))
        return plain_load(path)

    for module in (trainer, files, zoo):
        monkeypatch.setattr(module, "load_checkpoint", counting_load)
    assert main(["train", "--resume", str(run_dir), "train.epochs=3"]) == 0
    assert reads.count(run_dir / "checkpoints" / "last.pt") == 1
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]


def test_each_record_logs_the_weight_a_warm_up_gives_its_term(fam_kd_run):
    """weight_fam_kd = loss_weight * min(epoch / warmup_epochs, 1), as the term was scaled in that epoch."""
    options = yaml.safe_load((fam_kd_run / "config.yaml").read_text())["distill"]
    expected = [options["loss_weight"] * min(epoch / options["warmup_epochs"], 1) for epoch in (1, 2)]
    assert options["warmup_epochs"] > 2  # the weight is still ramping
    assert [record["weight_fam_kd"] for record in read_metrics(fam_kd_run)] == pytest.approx(expected, rel=1e-12)


def test_relative_paths_are_recorded_absolute_so_the_run_works_from_anywhere(data_roots, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(data_roots["npy"], work / "data")
    monkeypatch.chdir(work)
    assert main(["train", *SHORT_RUN, "data.root=data", "run.dir=runs/rel", "run.tensorboard=false"]) == 0
    saved = yaml.safe_load((work / "runs" / "rel" / "config.yaml").read_text())
    assert saved["data"]["root"] == str(work / "data") and saved["run"]["dir"] == str(work / "runs" / "rel")
    monkeypatch.chdir(tmp_path)  # elsewhere: eval and resume find the data and the run
    assert main(["eval", str(work / "runs" / "rel"), "--device", "cpu"]) == 0
    assert main(["train", "--resume", str(work / "runs" / "rel"), "train.epochs=3"]) == 0


def test_print_config_may_stand_between_the_config_and_the_overrides(tmp_path, capsys):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("student: resnet8\n")
    assert main(["train", str(config_file), "--print-config", "train.epochs=7", "train.weight_decay=5e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 7 and printed["train"]["weight_decay"] == 5e-4
    with pytest.raises(SystemExit):  # not an override: argparse's error, exit status 2
        main(["train", str(config_file), "--print-config", "stray"])


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_stops_resumably_and_the_same_command_resumes_exactly(
    fam_kd_run, teacher_run, data_roots, tmp_path, signal_name
):
    """A scheduler's SIGTERM (or SIGUSR1, SLURM's --signal) mid-epoch: a checkpoint at the step boundary, exit
    status 75, then the unchanged command with run.resume=auto (a requeued job) ends like the uninterrupted run."""
    run_dir = tmp_path / "preempted"
    command = ["train", *fam_kd_overrides(teacher_run, data_roots, run_dir), "run.resume=auto"]
    number = getattr(signal, signal_name)

    def preempt(epoch, step, global_step):
        if global_step == 3:  # the first step of epoch 2
            os.kill(os.getpid(), number)

    found = signal.getsignal(number)
    with pytest.raises(TrainingInterrupted, match=f"stopped by {signal_name} during epoch 2") as stopped:
        train(load_config(None, command[1:]), on_step=preempt)
    assert stopped.value.exit_status == 75 and signal.getsignal(number) is found
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["partial_period"]["steps_done"] == 1
    assert main(command) == 0
    assert metrics_without_timing(run_dir) == metrics_without_timing(fam_kd_run)
    records = read_metrics(run_dir)
    assert main(command) == 0  # complete: nothing more to train
    assert read_metrics(run_dir) == records


def test_auto_resume_refuses_a_folder_holding_another_experiment(teacher_run, data_roots, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(teacher_run, run_dir)
    argv = ["train", *SHORT_RUN, f"data.root={data_roots['npy']}", f"run.dir={run_dir}", "run.resume=auto"]
    assert main([*argv, "train.lr=0.2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds another experiment (train.lr=0.05 there, 0.2 here)" in err
    assert main(argv[:-1]) == 1 and "or run.resume=auto" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["flipped bytes", "cut short"])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_resumes(teacher_run, tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(teacher_run, run_dir)
    last, previous = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "previous-1.pt"
    assert load_checkpoint(previous)["epoch"] == 1 and load_checkpoint(last)["epoch"] == 2  # run.keep_checkpoints=2
    data = bytearray(last.read_bytes())
    if damage == "flipped bytes":  # torch.load reads such a file without complaint: the checksum catches it
        data[len(data) // 2] ^= 0xFF
    last.write_bytes(data if damage == "flipped bytes" else data[: len(data) // 2])
    assert main(["train", "--resume", str(run_dir), "train.epochs=3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{last} is damaged" in err, err
    assert f"resume from the previous one: famkd train --resume {previous}" in err
    assert main(["train", "--resume", str(previous), "train.epochs=3"]) == 0
    records = metrics_without_timing(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[:2] == metrics_without_timing(teacher_run)


def test_a_full_disk_keeps_the_last_good_checkpoint_and_says_what_to_do(teacher_run, data_roots, tmp_path, capsys):
    run_dir = tmp_path / "run"
    real_save, training_checkpoints = torch.save, []

    def disk_full_at_the_second(state, file, *args, **kwargs):
        if isinstance(state, dict) and "optimizer" in state:
            training_checkpoints.append(state["epoch"])
            if len(training_checkpoints) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state, file, *args, **kwargs)

    argv = ["train", *SHORT_RUN, f"data.root={data_roots['npy']}", f"run.dir={run_dir}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", disk_full_at_the_second)
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err and "MiB free in" in err
    assert f"the last good checkpoint is kept: {run_dir / 'checkpoints' / 'last.pt'} (epoch 1)" in err
    assert f"continue with: famkd train --resume {run_dir}" in err
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256"]
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert metrics_without_timing(run_dir) == metrics_without_timing(teacher_run)


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs mounted at tmp_path / "disk" (needs CAP_SYS_ADMIN: where it cannot be mounted, the test is
    skipped; test_a_full_disk_keeps_the_last_good_checkpoint_and_says_what_to_do injects the same error)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or mounted.returncode})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_disk_loses_nothing_and_the_run_resumes_exactly(teacher_run, data_roots, small_disk):
    run_dir = small_disk / "run"
    filler = small_disk / "filler"

    def fill_the_disk(epoch, step, global_step):
        if global_step == 3:  # in epoch 2: its end's writes find the disk full
            free = shutil.disk_usage(small_disk).free
            with open(filler, "wb") as file:
                file.write(b"\0" * (free - 64 * 1024))

    cfg = load_config(None, [*SHORT_RUN, f"data.root={data_roots['npy']}", f"run.dir={run_dir}"])
    with pytest.raises(FamkdError, match="no space left on the device") as stopped:
        train(cfg, on_step=fill_the_disk)
    message = str(stopped.value)
    assert "\n" not in message and f"continue with: famkd train --resume {run_dir}" in message
    checkpoints = run_dir / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256"]
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 1
    filler.unlink()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert metrics_without_timing(run_dir) == metrics_without_timing(teacher_run)
