"""`famkd demo` end to end through the CLI, shrunk to a few steps by replacing its preset settings.

The synthetic path and the --data path (tiny CIFAR-100 in the .npy layout) each train the teacher
and the three students; the checks compare the demo's table and demo_summary.json with what each
run itself wrote (summary.json, metrics.jsonl) and the data with what was asked for.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from famkd import demo
from famkd.cli import main
from famkd.engine.run_log import read_metrics

RUNS = ("teacher", "vanilla", "kd", "fam_kd")
TINY = {
    "teacher": "resnet14",
    "student": "resnet8",
    "teacher_epochs": 2,
    "student_epochs": 1,
    "batch_size": 8,
    "max_steps_per_epoch": 2,
    "teacher_lr_milestones": (1,),
    "student_lr_milestones": (),
}


def tiny_settings(preset: demo.DemoSettings, **changes) -> demo.DemoSettings:
    return dataclasses.replace(preset, **TINY, **changes)


@pytest.fixture(scope="module")
def synthetic_demo(tmp_path_factory):
    """(output dir, printed text) of the demo without --data, at a tiny scale."""
    out = tmp_path_factory.mktemp("demo") / "synthetic"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "SYNTHETIC_DEMO", tiny_settings(demo.SYNTHETIC_DEMO, classes=3, train_per_class=8))
        printed = run_cli(["demo", "--out", str(out)])
    return out, printed


@pytest.fixture(scope="module")
def cifar_demo(tmp_path_factory, tiny_cifar_npy):
    """(output dir, printed text) of the demo with --data on the tiny CIFAR-100 (10 classes, 6 train / 3 test each)."""
    out = tmp_path_factory.mktemp("demo") / "cifar"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "CIFAR_DEMO", tiny_settings(demo.CIFAR_DEMO, classes=4, train_per_class=5))
        printed = run_cli(["demo", "--data", str(tiny_cifar_npy), "--out", str(out)])
    return out, printed


def run_cli(argv: list[str]) -> str:
    """Run `famkd ARGV` in-process, asserting exit status 0; returns what it printed on stdout."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


def read_summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def table_row(printed: str, run: str) -> list[str]:
    """The cells of the printed table's line for `run` (the first word of the line)."""
    table = printed[printed.index("famkd demo results") :]
    lines = [line.split() for line in table.splitlines() if line.split()[:1] == [run] and "points" not in line]
    assert len(lines) == 1, f"expected one table line for {run!r} in:\n{printed}"
    return lines[0]


@pytest.mark.parametrize("which", ["synthetic_demo", "cifar_demo"])
def test_every_run_folder_holds_its_summary_metrics_and_weights(which, request):
    out, _ = request.getfixturevalue(which)
    for run in RUNS:
        summary = read_summary(out / run)
        assert summary["status"] == "completed"
        assert summary["run_dir"] == str(out / run)
        metrics = read_metrics(out / run)
        assert [record["epoch"] for record in metrics] == list(range(1, summary["epochs"] + 1))
        assert (out / run / "student_best.pt").is_file() and (out / run / "config.yaml").is_file()
    assert read_summary(out / "teacher")["epochs"] == TINY["teacher_epochs"]
    assert {read_summary(out / run)["epochs"] for run in RUNS[1:]} == {TINY["student_epochs"]}


@pytest.mark.parametrize("which", ["synthetic_demo", "cifar_demo"])
def test_students_are_one_model_trained_three_ways_from_the_teacher_run(which, request):
    out, _ = request.getfixturevalue(which)
    configs = {run: yaml.safe_load((out / run / "config.yaml").read_text()) for run in RUNS}
    assert configs["teacher"]["method"] == "vanilla" and configs["teacher"]["student"] == TINY["teacher"]
    for method in ("vanilla", "kd", "fam_kd"):
        assert configs[method]["method"] == method
        assert configs[method]["student"] == TINY["student"]
        assert configs[method]["run"]["seed"] == configs["teacher"]["run"]["seed"]
        assert configs[method]["run"]["deterministic"] is True
    for method in ("kd", "fam_kd"):
        assert configs[method]["teacher"]["checkpoint"] == str(out / "teacher" / "student_best.pt")
        assert read_summary(out / method)["teacher"] == TINY["teacher"]
        # The teacher accuracy a student run measured is the teacher run's best epoch.
        assert read_summary(out / method)["teacher_acc"] == read_summary(out / "teacher")["best_acc"]


@pytest.mark.parametrize("which", ["synthetic_demo", "cifar_demo"])
def test_demo_summary_and_printed_table_equal_what_each_run_wrote(which, request):
    out, printed = request.getfixturevalue(which)
    result = json.loads((out / demo.SUMMARY_FILE).read_text())
    assert [row["run"] for row in result["rows"]] == list(RUNS)
    markdown = (out / demo.RESULTS_FILE).read_text()
    for row in result["rows"]:
        summary = read_summary(out / row["run"])
        test_acc = [record["test_acc"] for record in read_metrics(out / row["run"])]
        assert row["best_acc"] == summary["best_acc"] == max(test_acc)
        assert row["last_acc"] == summary["last_acc"] == test_acc[-1]
        assert row["time_s"] == summary["wall_time_s"]
        assert row["model"] == summary["student"]
        cells = [
            row["run"],
            summary["method"],
            summary["student"],
            f"{max(test_acc):.2f}",
            f"{test_acc[-1]:.2f}",
            f"{summary['wall_time_s']:.0f}",
        ]
        assert table_row(printed, row["run"]) == cells
        assert "| " + " | ".join(cells) + " |" in markdown
    best = {run: read_summary(out / run)["best_acc"] for run in RUNS}
    assert f"teacher - vanilla student: {best['teacher'] - best['vanilla']:+.2f} points" in printed
    assert f"fam_kd - vanilla student: {best['fam_kd'] - best['vanilla']:+.2f} points" in printed


def test_without_data_every_output_names_the_synthetic_dataset(synthetic_demo):
    out, printed = synthetic_demo
    header = printed.split("[1/4]")[0]
    table = printed[printed.index("famkd demo results") :]
    for text in (header, table, (out / demo.RESULTS_FILE).read_text()):
        assert "synthetic" in text and "not real images" in text, text
    assert json.loads((out / demo.SUMMARY_FILE).read_text())["synthetic"] is True
    for run in RUNS:
        description = read_summary(out / run)["dataset"]
        assert description.startswith("synthetic") and "3 classes" in description and "24 images" in description


def test_with_data_the_demo_uses_a_class_subset_of_cifar100(cifar_demo, tiny_cifar_npy):
    out, printed = cifar_demo
    table = printed[printed.index("famkd demo results") :]
    assert "CIFAR-100" in table and "synthetic" not in printed
    assert "CIFAR-100" in printed.split("[1/4]")[0]
    for run in RUNS:
        description = read_summary(out / run)["dataset"]
        # 4 classes x the first 5 train images of each (the fixture has 6 per class).
        assert "CIFAR-100" in description and str(tiny_cifar_npy) in description and "20 images" in description
    teacher_fc = torch.load(out / "teacher" / "student_best.pt", weights_only=True)["fc.weight"]
    assert teacher_fc.shape[0] == 4


def test_the_demo_is_reproducible(synthetic_demo, tmp_path, monkeypatch):
    out, _ = synthetic_demo
    monkeypatch.setattr(demo, "SYNTHETIC_DEMO", tiny_settings(demo.SYNTHETIC_DEMO, classes=3, train_per_class=8))
    run_cli(["demo", "--out", str(tmp_path / "again")])
    for run in RUNS:
        assert without_timings(read_metrics(out / run)) == without_timings(read_metrics(tmp_path / "again" / run))


def without_timings(records: list[dict]) -> list[dict]:
    """Epoch records less the keys that measure time (they differ between identical runs)."""
    timing_keys = {"epoch_time_s", "images_per_s", "data_wait_fraction"}
    return [{key: value for key, value in record.items() if key not in timing_keys} for record in records]


def test_a_non_empty_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--out" in err and str(tmp_path) in err and "not empty" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_data_dir_without_cifar100_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["demo", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "CIFAR-100 not found" in err and str(tmp_path / "data") in err


def test_demo_help_names_its_options_and_the_synthetic_default(capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--data DIR" in text and "--out DIR" in text and "synthetic" in text and "CIFAR-100" in text


def test_the_default_output_folder_is_ignored_by_git(monkeypatch):
    """`famkd demo` run from the repository (as the README says) writes famkd-demo-<timestamp>/ there."""
    chosen = []
    monkeypatch.setattr(demo, "run_demo", lambda out_dir, data_root=None: chosen.append(out_dir))
    assert main(["demo"]) == 0
    (out_dir,) = chosen
    assert re.fullmatch(r"famkd-demo-\d{8}-\d{6}", str(out_dir))
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout: nothing to ignore files")
    probe = f"{out_dir}/teacher/summary.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=repo)
    tracked_probe = subprocess.run(["git", "check-ignore", "-q", "src/famkd/demo.py"], cwd=repo)
    assert (ignored.returncode, tracked_probe.returncode) == (0, 1)
