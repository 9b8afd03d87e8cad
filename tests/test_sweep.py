"""`famkd sweep` end to end on a tiny CIFAR-100: kd and fam_kd students of a resnet8 teacher over two seeds,
one seed interrupted (Ctrl-C) before the sweep and resumed by it, one seed that fails, a rerun that skips the
completed seeds; the results table is checked against the runs' summary.json with `statistics`. Then the
errors that stop a sweep before any process starts."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import statistics
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from famkd.classification import train
from famkd.cli import main
from famkd.config import load_config
from famkd.errors import TrainingInterrupted
from famkd.settings import dump_settings
from famkd.sweep import parse_seeds, sweep_root

SHORT_RUN = [
    "device=cpu",
    "train.epochs=2",
    "train.batch_size=8",
    "train.max_steps_per_epoch=2",
    "train.lr_milestones=[1]",
    "train.log_interval=2",
    "run.deterministic=true",
    "run.tensorboard=false",
    "data.classes=10",  # 10 outputs for the 10 labels of the tiny set, so accuracies differ between seeds
]
PAIR = "resnet8 -> resnet8"
# Seeds whose runs reach different accuracies here (the expected values are computed from their summaries,
# so the checks hold whatever they reach). kd: seed 1 fresh, seed 2 interrupted and resumed, seed 3 broken.
KD_SEEDS = (1, 2)
FAM_KD_SEEDS = (0, 1)
FAM_KD_LR = 0.2


def write_config(folder: Path, method: str, teacher: Path, data_root: Path, lr: float = 0.05) -> Path:
    config = folder / f"{method}.yaml"
    values = {
        "method": method,
        "student": "resnet8",
        "teacher": {"name": "resnet8", "checkpoint": str(teacher)},
        "data": {"root": str(data_root)},
        "train": {"lr": lr},
    }
    config.write_text(yaml.safe_dump(values))
    return config


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_cifar_npy) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", "student=resnet8", *SHORT_RUN, f"data.root={tiny_cifar_npy}", f"run.dir={run_dir}"]) == 0
    return run_dir


def interrupt_in_epoch_2(config: Path, seed_dir: Path, seed: int) -> None:
    """Train seed `seed` as the sweep would, and press Ctrl-C at the first step of epoch 2."""

    def press_ctrl_c(epoch, step, global_step):
        if global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = load_config(config, [*SHORT_RUN, f"run.seed={seed}", f"run.dir={seed_dir}"])
    with pytest.raises(TrainingInterrupted):
        train(cfg, on_step=press_ctrl_c)


def corrupt_resumable_seed(config: Path, seed_dir: Path, seed: int) -> None:
    """A seed folder the sweep will resume (its config matches) whose checkpoint cannot be read."""
    (seed_dir / "checkpoints").mkdir(parents=True)
    (seed_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    cfg = load_config(config, [*SHORT_RUN, f"run.seed={seed}", f"run.dir={seed_dir}"])
    (seed_dir / "config.yaml").write_text(dump_settings(cfg))


@dataclass
class Swept:
    """What the module's sweeps left: the roots, the fam_kd config, the teacher run, each command's output."""

    roots: dict[str, Path]
    fam_kd_config: Path
    teacher_run: Path
    interrupted_epoch_1: str  # seed 2's metrics.jsonl as the interrupted session left it
    fam_kd_files_before_rerun: dict[Path, bytes]
    outputs: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # name -> (status, stdout, stderr)


def run_captured(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def swept(tmp_path_factory, teacher_run, tiny_cifar_npy) -> Swept:
    """kd over seeds 1,2,3 (2 at a time; 2 interrupted before, 3 broken), fam_kd over 0,1, then fam_kd again."""
    folder = tmp_path_factory.mktemp("sweeps")
    teacher = teacher_run / "student_best.pt"
    kd = write_config(folder, "kd", teacher, tiny_cifar_npy)
    fam_kd = write_config(folder, "fam_kd", teacher, tiny_cifar_npy, lr=FAM_KD_LR)
    roots = {"kd": folder / "kd", "fam_kd": folder / "fam_kd"}
    interrupt_in_epoch_2(kd, roots["kd"] / "seed2", seed=2)
    interrupted_epoch_1 = (roots["kd"] / "seed2" / "metrics.jsonl").read_text()
    corrupt_resumable_seed(kd, roots["kd"] / "seed3", seed=3)
    kd_sweep = ["sweep", str(kd), *SHORT_RUN, f"run.dir={roots['kd']}", "--seeds", "1,2,3", "--jobs", "2"]
    outputs = {"kd": run_captured(kd_sweep)}
    fam_kd_sweep = ["sweep", str(fam_kd), *SHORT_RUN, f"run.dir={roots['fam_kd']}", "--seeds", "0,1"]
    outputs["fam_kd"] = run_captured(fam_kd_sweep)
    files_before = {f: f.read_bytes() for f in roots["fam_kd"].rglob("*") if f.is_file()}
    outputs["fam_kd again"] = run_captured(fam_kd_sweep)
    return Swept(roots, fam_kd, teacher_run, interrupted_epoch_1, files_before, outputs)


def summaries(root: Path, seeds) -> list[dict]:
    return [json.loads((root / f"seed{seed}" / "summary.json").read_text()) for seed in seeds]


def expected_cell(runs: list[dict]) -> str:
    """The table cell of `runs`, computed here with `statistics`."""
    best, last = [r["best_acc"] for r in runs], [r["last_acc"] for r in runs]
    return (
        f"{statistics.fmean(best):.2f} ± {statistics.stdev(best):.2f} / "
        f"{statistics.fmean(last):.2f} ± {statistics.stdev(last):.2f} (n={len(runs)})"
    )


def table_cells(printed: str) -> dict[str, dict[str, str]]:
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    return {label: {column: cell for column, cell in zip(columns, cells) if cell} for label, *cells in rows}


def test_the_interrupted_seed_is_resumed_and_a_failed_seed_does_not_stop_the_others(swept):
    status, out, err = swept.outputs["kd"]
    root = swept.roots["kd"]
    lines = out.splitlines()
    assert status == 1
    assert f"seed 1: started, log {root / 'seed1' / 'train.log'}" in lines
    assert f"seed 2: resumed, log {root / 'seed2' / 'train.log'}" in lines
    assert {line.split(" completed in ")[0] for line in lines if " completed in " in line} == {"seed 1:", "seed 2:"}
    failed = next(line for line in lines if line.startswith("seed 3: failed"))
    assert failed.startswith("seed 3: failed with exit status 1 after ")
    assert failed.endswith(f"log {root / 'seed3' / 'train.log'}:")
    assert f"    famkd: error: cannot read checkpoint {root / 'seed3' / 'checkpoints' / 'last.pt'}" in out
    assert err == (
        f"famkd: error: 1 of 3 seeds failed: seed 3 (exit status 1, log {root / 'seed3' / 'train.log'}). Fix the "
        "cause and run the same famkd sweep again: completed seeds are skipped and interrupted ones resumed\n"
    )
    # resumed, not restarted: epoch 1 as the interrupted session logged it (its timings included), then epoch 2
    metrics = (root / "seed2" / "metrics.jsonl").read_text()
    assert metrics.startswith(swept.interrupted_epoch_1) and len(metrics.splitlines()) == 2
    log = (root / "seed2" / "train.log").read_text()
    assert f"famkd train --resume {root / 'seed2'} device=cpu train.log_interval=2 run.tensorboard=false" in log
    assert "resuming epoch 2 after step 1" in log
    assert "resuming" not in (root / "seed1" / "train.log").read_text()
    for summary, seed in zip(summaries(root, KD_SEEDS), KD_SEEDS):
        assert (summary["status"], summary["epochs_completed"], summary["seed"]) == ("completed", 2, seed)


def test_a_rerun_skips_the_completed_seeds(swept):
    status, out, _ = swept.outputs["fam_kd again"]
    root = swept.roots["fam_kd"]
    assert status == 0 and swept.outputs["fam_kd"][0] == 0
    assert [line for line in out.splitlines() if line.startswith("seed ")] == [
        f"seed 0: skipped, completed before ({root / 'seed0'})",
        f"seed 1: skipped, completed before ({root / 'seed1'})",
    ]
    after = {f: f.read_bytes() for f in root.rglob("*") if f.is_file()}
    assert after == swept.fam_kd_files_before_rerun  # nothing rewritten, no log line appended


def test_the_sweeps_table_matches_the_summaries(swept):
    for name, seeds in (("kd", KD_SEEDS), ("fam_kd", FAM_KD_SEEDS), ("fam_kd again", FAM_KD_SEEDS)):
        root = swept.roots[name.split()[0]]
        cells = table_cells(swept.outputs[name][1])
        assert cells == {name.split()[0]: {PAIR: expected_cell(summaries(root, seeds))}}


def test_results_over_the_sweeps_and_the_teacher(swept, tmp_path, capsys):
    folders = [str(swept.roots["kd"]), str(swept.roots["fam_kd"]), str(swept.teacher_run)]
    rows_file = tmp_path / "rows.json"
    assert main(["results", *folders, "--json", str(rows_file)]) == 0
    teacher = json.loads((swept.teacher_run / "summary.json").read_text())
    one_run = f"{teacher['best_acc']:.2f} ± - / {teacher['last_acc']:.2f} ± - (n=1)"
    expected = {
        "teacher": {PAIR: one_run},  # the vanilla resnet8 run is the pair's teacher and its student alone
        "vanilla": {PAIR: one_run},
        "fam_kd": {PAIR: expected_cell(summaries(swept.roots["fam_kd"], FAM_KD_SEEDS))},
        "kd": {PAIR: expected_cell(summaries(swept.roots["kd"], KD_SEEDS))},
    }
    assert table_cells(capsys.readouterr().out) == expected
    rows = {row["label"]: row for row in json.loads(rows_file.read_text())}
    assert main(["results", *folders, "--format", "csv"]) == 0
    csv_rows = {row["row"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    for method, seeds in (("kd", KD_SEEDS), ("fam_kd", FAM_KD_SEEDS)):
        runs = summaries(swept.roots[method], seeds)
        cell = rows[method]["cells"][PAIR]
        assert cell["seeds"] == list(seeds) and cell["runs"] == [
            str((swept.roots[method] / f"seed{k}").resolve()) for k in seeds
        ]
        for stat, values in (("best", [r["best_acc"] for r in runs]), ("last", [r["last_acc"] for r in runs])):
            assert cell[f"{stat}_mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert cell[f"{stat}_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert float(csv_rows[method][f"{stat}_mean"]) == cell[f"{stat}_mean"]
            assert float(csv_rows[method][f"{stat}_std"]) == cell[f"{stat}_std"]


def test_a_seed_folder_made_with_other_settings_is_refused_before_anything_runs(swept, capsys):
    root = swept.roots["fam_kd"]
    before = (root / "seed0" / "train.log").read_text()
    argv = [str(swept.fam_kd_config), *SHORT_RUN, f"run.dir={root}", "distill.cutoff=0.3", "--seeds", "0,1"]
    assert main(["sweep", *argv]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"famkd: error: {root / 'seed0'} holds a run made with other settings (distill.cutoff=0.1 there, 0.3 here); "
        "give this sweep its own run.dir=..., or run it with the settings of that run\n"
    )
    assert (root / "seed0" / "train.log").read_text() == before


# ---- the rules, without training ------------------------------------------------------------------


def test_the_default_root_is_stable_and_names_the_pair():
    kd = load_config(None, ["method=kd", "teacher.name=resnet56"])
    assert sweep_root(kd) == sweep_root(kd) == Path("runs/kd/resnet56_resnet20-sweep")
    assert sweep_root(load_config(None, ["student=resnet8"])) == Path("runs/vanilla/resnet8-sweep")
    assert sweep_root(load_config(None, ["run.dir=/tmp/mine"])) == Path("/tmp/mine")


def test_seeds_keep_their_order():
    assert parse_seeds("2, 0,1") == [2, 0, 1] and parse_seeds("7") == [7]


SEED_ERRORS = {
    "": "--seeds is empty",
    "0,,1": "--seeds '0,,1' has an empty item (an extra comma)",
    "0,": "--seeds '0,' has an empty item",
    "a,b": "--seeds 'a,b': 'a' is not an integer",
    "1.5": "'1.5' is not an integer",
    "-1": "--seeds '-1': seed -1 is negative",
    "0,1,0": "--seeds '0,1,0': seed 0 is given twice",
}


@pytest.fixture
def vanilla_config(tmp_path) -> Path:
    config = tmp_path / "vanilla.yaml"
    config.write_text(f"student: resnet8\nrun: {{dir: {tmp_path / 'sweep'}}}\n")
    return config


@pytest.mark.parametrize("seeds", list(SEED_ERRORS))
def test_malformed_seeds_are_a_clear_error(seeds, vanilla_config, tmp_path, capsys):
    assert main(["sweep", str(vanilla_config), f"--seeds={seeds}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("famkd: error: ") and err.count("\n") == 1 and SEED_ERRORS[seeds] in err
    assert "e.g. --seeds 0,1,2" in err and not (tmp_path / "sweep").exists()


def sweep_errors(config: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    return {
        "typo": ([str(config), "train.epoch=2"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        "run.seed": ([str(config), "run.seed=3"], "'run.seed=3': the sweep sets run.seed for each seed"),
        "no config": (["student=resnet8"], "famkd sweep needs a config file first, got 'student=resnet8'"),
        "stray item": ([str(config), "train.epochs"], "expected key=value overrides after the config file"),
        "jobs": ([str(config), "--jobs", "0"], "--jobs 0: give the number of seeds to train at a time, at least 1"),
        "no teacher file": (
            [str(config), "method=kd", f"teacher.checkpoint={tmp_path / 'gone.pt'}"],
            f"teacher.checkpoint not found: {tmp_path / 'gone.pt'}",
        ),
        "missing config": ([str(tmp_path / "nope.yaml")], "cannot read config file"),
    }


@pytest.mark.parametrize(
    "case", ["typo", "run.seed", "no config", "stray item", "jobs", "no teacher file", "missing config"]
)
def test_bad_arguments_fail_before_any_process_starts(case, vanilla_config, tmp_path, capsys):
    argv, expected = sweep_errors(vanilla_config, tmp_path)[case]
    assert main(["sweep", *argv, "--seeds", "0,1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("famkd: error: ") and expected in err
    assert not (tmp_path / "sweep").exists()
