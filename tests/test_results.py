"""`famkd results`: runs grouped over seeds into a methods x pairs table, checked against hand-worked values
and `statistics`; runs that differ in settings are never averaged; the published numbers match docs/method.md."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml

from famkd.cli import main
from famkd.recipes import PUBLISHED_DISTILLATION_TOP1, PUBLISHED_VANILLA_TOP1

METHOD_DOC = Path(__file__).resolve().parents[1] / "docs" / "method.md"
CIFAR = "CIFAR-100 (npy layout at /data/cifar100), train, 50000 images"


def write_run(root, name, method, best, last, *, teacher="resnet56", student="resnet20", config=None, **fields):
    """A run folder with a summary.json as the trainer writes it (and config.yaml when `config` is given)."""
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "status": "completed",
        "method": method,
        "student": student,
        "teacher": None if method == "vanilla" else teacher,
        "best_acc": best,
        "last_acc": last,
        "epochs_completed": 240,
        "epochs": 240,
        "teacher_acc": None if method == "vanilla" else 72.34,
        "dataset": CIFAR,
        "seed": 0,
        **fields,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def results(capsys, *argv):
    assert main(["results", *map(str, argv)]) == 0
    return capsys.readouterr().out


def table_cells(printed: str) -> dict[str, dict[str, str]]:
    """{row label: {column: cell}} of the markdown table in `printed`."""
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    table = {}
    for line in lines[1:]:
        label, *cells = [c.strip() for c in line.strip("|").split("|")]
        table[label] = {column: cell for column, cell in zip(columns, cells) if cell}
    return table


def test_seeds_are_averaged_with_mean_and_sample_std(tmp_path, capsys):
    write_run(tmp_path, "fam_kd/s0", "fam_kd", 70.0, 69.0, seed=0)
    write_run(tmp_path, "fam_kd/s1", "fam_kd", 72.0, 70.0, seed=1)
    write_run(tmp_path, "fam_kd/s2", "fam_kd", 74.0, 74.0, seed=2)
    write_run(tmp_path, "kd/s0", "kd", 68.5, 68.25)
    write_run(tmp_path, "kd/s1", "kd", 99.0, 99.0, status="interrupted")  # not counted
    rows_file = tmp_path / "rows.json"
    table = table_cells(results(capsys, tmp_path, "--json", rows_file))
    # best: mean 72, sample std sqrt((4 + 0 + 4) / 2) = 2; last: mean 71, std sqrt((4 + 1 + 9) / 2) = sqrt(7)
    assert table["fam_kd"] == {"resnet56 -> resnet20": "72.00 ± 2.00 / 71.00 ± 2.65 (n=3)"}
    # a single run has no sample std: "-" in the table, null in JSON, empty in CSV
    assert table["kd"] == {"resnet56 -> resnet20": "68.50 ± - / 68.25 ± - (n=1)"}
    rows = {row["label"]: row for row in json.loads(rows_file.read_text())}
    fam_kd = rows["fam_kd"]["cells"]["resnet56 -> resnet20"]
    assert fam_kd["n"] == 3 and fam_kd["seeds"] == [0, 1, 2]
    assert fam_kd["best_mean"] == statistics.fmean([70.0, 72.0, 74.0]) == 72.0
    assert fam_kd["last_std"] == pytest.approx(7**0.5, abs=1e-12) == statistics.stdev([69.0, 70.0, 74.0])
    assert rows["kd"]["cells"]["resnet56 -> resnet20"]["best_std"] is None

    csv_rows = list(csv.DictReader(io.StringIO(results(capsys, tmp_path, "--format", "csv"))))
    assert [(r["row"], r["column"], r["n"]) for r in csv_rows] == [
        ("fam_kd", "resnet56 -> resnet20", "3"),
        ("kd", "resnet56 -> resnet20", "1"),
    ]
    assert float(csv_rows[0]["last_std"]) == statistics.stdev([69.0, 70.0, 74.0])
    assert csv_rows[1]["best_std"] == "" and float(csv_rows[1]["last_mean"]) == 68.25


def test_vanilla_runs_fill_the_teacher_and_student_rows_of_each_pair(tmp_path, capsys):
    write_run(tmp_path, "kd", "kd", 70.0, 69.0)
    write_run(tmp_path, "r20/s0", "vanilla", 69.0, 68.0, student="resnet20")
    write_run(tmp_path, "r20/s1", "vanilla", 71.0, 70.0, student="resnet20")
    write_run(tmp_path, "r56", "vanilla", 72.0, 71.5, student="resnet56")
    write_run(tmp_path, "r8", "vanilla", 30.0, 29.0, student="resnet8")  # in no pair: a column of its own
    table = table_cells(results(capsys, tmp_path))
    assert list(table) == ["teacher", "vanilla", "kd"]
    assert table["teacher"] == {"resnet56 -> resnet20": "72.00 ± - / 71.50 ± - (n=1)"}
    assert table["vanilla"] == {
        "resnet56 -> resnet20": f"70.00 ± {statistics.stdev([69.0, 71.0]):.2f} / 69.00 ± 1.41 (n=2)",
        "resnet8": "30.00 ± - / 29.00 ± - (n=1)",
    }


def test_runs_with_different_epochs_are_never_averaged(tmp_path, capsys):
    write_run(tmp_path, "a", "kd", 60.0, 59.0, epochs=2, epochs_completed=2)
    write_run(tmp_path, "b", "kd", 62.0, 61.0, epochs=2, epochs_completed=2)
    write_run(tmp_path, "c", "kd", 20.0, 19.0, epochs=1, epochs_completed=1)
    write_run(tmp_path, "d", "kd", 50.0, 49.0, student="resnet32", teacher="resnet110", epochs=2)
    table = table_cells(results(capsys, tmp_path))
    assert table == {
        "kd [train.epochs=1]": {"resnet56 -> resnet20": "20.00 ± - / 19.00 ± - (n=1)"},
        "kd [train.epochs=2]": {
            "resnet110 -> resnet32": "50.00 ± - / 49.00 ± - (n=1)",
            "resnet56 -> resnet20": "61.00 ± 1.41 / 60.00 ± 1.41 (n=2)",
        },
    }


def test_distill_options_teacher_and_data_slice_split_rows_but_data_location_does_not(tmp_path, capsys):
    config = {"method": "fam_kd", "distill": {"hpf": "ideal", "cutoff": 0.1}, "train": {"lr": 0.05}}
    gaussian = {**config, "distill": {"hpf": "gaussian", "cutoff": 0.1}}
    # same setting, data read from another folder and layout: averaged together
    write_run(tmp_path, "ideal0", "fam_kd", 70.0, 70.0, config=config)
    write_run(
        tmp_path,
        "ideal1",
        "fam_kd",
        72.0,
        72.0,
        config=config,
        dataset=CIFAR.replace("npy layout at /data", "pickle layout at /mnt"),
    )
    write_run(tmp_path, "gauss", "fam_kd", 71.0, 71.0, config=gaussian)
    write_run(tmp_path, "other_teacher", "fam_kd", 60.0, 60.0, config=config, teacher_acc=70.01)
    sliced = "CIFAR-100 (npy layout at /data/cifar100), train, first 50 per class, 5000 images"
    write_run(tmp_path, "slice", "fam_kd", 40.0, 40.0, config=config, dataset=sliced)
    table = table_cells(results(capsys, tmp_path))
    column = "resnet56 -> resnet20"
    cells = {label: cells[column] for label, cells in table.items()}
    same = "data=CIFAR-100, train, 50000 images, distill.hpf={hpf}, teacher=? (top-1 {acc})"
    assert cells == {
        f"fam_kd [{same.format(hpf='gaussian', acc='72.34')}]": "71.00 ± - / 71.00 ± - (n=1)",
        f"fam_kd [{same.format(hpf='ideal', acc='70.01')}]": "60.00 ± - / 60.00 ± - (n=1)",
        f"fam_kd [{same.format(hpf='ideal', acc='72.34')}]": "71.00 ± 1.41 / 71.00 ± 1.41 (n=2)",
        "fam_kd [data=CIFAR-100, train, first 50 per class, 5000 images, distill.hpf=ideal, teacher=? (top-1 72.34)]": (
            "40.00 ± - / 40.00 ± - (n=1)"
        ),
    }


def test_the_teacher_sha256_identifies_the_teacher_when_recorded(tmp_path, capsys):
    write_run(tmp_path, "a", "kd", 70.0, 70.0, teacher_sha256="ab" * 32, teacher_acc=72.0)
    write_run(tmp_path, "b", "kd", 72.0, 72.0, teacher_sha256="cd" * 32, teacher_acc=72.0)
    table = table_cells(results(capsys, tmp_path))
    assert set(table) == {f"kd [teacher=sha256 {'ab' * 6}]", f"kd [teacher=sha256 {'cd' * 6}]"}


def test_unreadable_summaries_are_skipped_with_a_warning_naming_them(tmp_path, capsys):
    write_run(tmp_path, "good", "kd", 70.0, 69.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text('{"status": "completed", "method"')
    lacking = write_run(tmp_path, "lacking", "kd", 1.0, 1.0)
    (lacking / "summary.json").write_text(json.dumps({"status": "completed", "method": "kd"}))
    assert main(["results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert table_cells(out)["kd"] == {"resnet56 -> resnet20": "70.00 ± - / 69.00 ± - (n=1)"}
    warnings = err.splitlines()
    assert len(warnings) == 2 and all(line.startswith("famkd: warning: skipped ") for line in warnings)
    assert str((tmp_path / "broken" / "summary.json").resolve()) in warnings[0] and "not valid JSON" in warnings[0]
    assert str((lacking / "summary.json").resolve()) in warnings[1]
    assert "lacks student, best_acc, last_acc, epochs" in warnings[1]


@pytest.mark.parametrize("case", ["empty folder", "only unfinished runs", "missing folder"])
def test_results_without_completed_runs_is_a_clear_error(case, tmp_path, capsys):
    if case == "only unfinished runs":
        write_run(tmp_path, "a", "kd", 10.0, 10.0, status="interrupted")
    folder = tmp_path / "nowhere" if case == "missing folder" else tmp_path
    assert main(["results", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("famkd: error: ") and err.count("\n") == 1
    assert ("is not a folder" if case == "missing folder" else "no completed run") in err


def test_reference_adds_the_published_numbers_of_the_tables_columns(tmp_path, capsys):
    write_run(tmp_path, "fam_kd", "fam_kd", 74.0, 73.0, teacher="resnet110", student="resnet32")
    write_run(tmp_path, "r32", "vanilla", 71.0, 70.5, student="resnet32")
    table = table_cells(results(capsys, tmp_path, "--reference"))
    column = "resnet110 -> resnet32"
    famkd_paper, repdistiller, mdistiller = "FAM-KD paper, best", "RepDistiller README, last", "mdistiller README, best"
    assert {label: cells[column] for label, cells in table.items()} == {
        f"teacher (published: {repdistiller})": "- / 74.31",
        "vanilla": "71.00 ± - / 70.50 ± - (n=1)",
        f"vanilla (published: {repdistiller})": "- / 71.14",
        f"at (published: {repdistiller})": "- / 72.31",
        f"crd (published: {repdistiller})": "- / 73.48",
        f"dkd (published: {mdistiller})": "74.11 / -",
        "fam_kd": "74.00 ± - / 73.00 ± - (n=1)",
        f"fam_kd (published: {famkd_paper})": "74.45 / -",
        f"fam_kd [distill.hpf=butterworth] (published: {famkd_paper})": "74.50 / -",
        f"fam_kd [distill.hpf=gaussian] (published: {famkd_paper})": "74.49 / -",
        f"fam_reviewkd (published: {famkd_paper})": "74.28 / -",
        f"fitnet (published: {repdistiller})": "- / 71.06",
        f"kd (published: {repdistiller})": "- / 73.08",
        f"reviewkd (published: {famkd_paper})": "73.89 / -",
    }
    assert "resnet32x4 -> resnet8x4" not in results(capsys, tmp_path, "--reference")  # only the table's columns


def test_reference_for_resnet56_resnet20_prints_every_published_number_with_source_and_epoch(tmp_path, capsys):
    """Issue 19's acceptance: a resnet56 -> resnet20 run, read against every number published for that pair in the
    sources on disk. The expected numbers are copied from RepDistiller's README (b84f547; last epoch, as its
    train_student.py says) and mdistiller's README (a08d46f; best epoch), not from famkd.recipes. ReviewKD, FAM-KD and
    WCoRD numbers for this pair are in no source on disk (docs/method.md says so), so no row claims one."""
    write_run(tmp_path, "kd", "kd", 70.9, 70.5)
    printed = results(capsys, tmp_path, "--reference")
    cells = {label: row["resnet56 -> resnet20"] for label, row in table_cells(printed).items() if row}
    assert cells == {
        "teacher (published: RepDistiller README, last)": "- / 72.34",
        "vanilla (published: RepDistiller README, last)": "- / 69.06",
        "at (published: RepDistiller README, last)": "- / 70.55",
        "crd (published: RepDistiller README, last)": "- / 71.16",
        "dkd (published: mdistiller README, best)": "71.97 / -",
        "fitnet (published: RepDistiller README, last)": "- / 69.21",
        "kd": "70.90 ± - / 70.50 ± - (n=1)",
        "kd (published: RepDistiller README, last)": "- / 70.66",
    }
    assert not any(label.startswith(("reviewkd", "fam_kd", "fam_reviewkd", "wcord")) for label in cells)
    assert "- kd, resnet56 -> resnet20: 240 epochs, data CIFAR-100, train, 50000 images; comparable" in printed


def test_reference_marks_runs_off_the_published_setting_and_lists_runs_left_out(tmp_path, capsys):
    sliced = "CIFAR-100 (npy layout at /data/cifar100), train, first 20 per class, 2000 images"
    write_run(tmp_path, "quick", "kd", 30.0, 29.0, epochs=2, epochs_completed=2, dataset=sliced)
    write_run(tmp_path, "full", "dkd", 71.5, 71.2)
    write_run(tmp_path, "broke", "kd", 1.0, 1.0, status="failed", epochs_completed=3, error="loss is nan at step 17")
    write_run(tmp_path, "stopped", "fam_kd", 9.0, 9.0, status="interrupted", epochs_completed=100)
    printed = results(capsys, tmp_path, "--reference")
    column = "resnet56 -> resnet20"
    table = table_cells(printed)
    assert table["kd"][column] == "30.00 ± - / 29.00 ± - (n=1) (not comparable)"
    assert table["dkd"][column] == "71.50 ± - / 71.20 ± - (n=1)"
    settings = printed.split("Measured cells, their setting and whether it is the published one:\n", 1)[1]
    assert (
        "- kd, resnet56 -> resnet20: 2 epochs, data CIFAR-100, train, first 20 per class, 2000 images; NOT comparable: "
        "2 epochs, published 240; data CIFAR-100, train, first 20 per class, 2000 images, published the whole "
        "CIFAR-100 training set" in settings
    )
    assert "- dkd, resnet56 -> resnet20: 240 epochs, data CIFAR-100, train, 50000 images; comparable" in settings
    left_out = printed.split("Left out (did not complete):\n", 1)[1].splitlines()
    assert left_out == [
        f"- {(tmp_path / 'broke').resolve()}: failed, 3 of 240 epochs: loss is nan at step 17",
        f"- {(tmp_path / 'stopped').resolve()}: interrupted, 100 of 240 epochs",
    ]
    # without --reference nothing is judged, but the runs left out are still listed
    plain = results(capsys, tmp_path)
    assert "(not comparable)" not in plain and "Measured cells" not in plain and "Left out" in plain
    # CSV: the setting and the verdict are columns; the runs left out go to stderr
    assert main(["results", str(tmp_path), "--reference", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    kd = next(row for row in csv.DictReader(io.StringIO(out)) if row["row"] == "kd")
    assert kd["setting"].startswith("2 epochs, data CIFAR-100") and kd["not_comparable"].startswith("2 epochs")
    assert err.count("famkd: note: left out ") == 2


def reference_tables() -> tuple[list[list[str]], list[list[str]]]:
    """The rows of docs/method.md's "Published distillation results" and "Published models trained alone"."""
    section = METHOD_DOC.read_text().split("## Reference numbers", 1)[1].split("\n## ", 1)[0]

    def rows(heading: str) -> list[list[str]]:
        part = section.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
        lines = [line for line in part.splitlines() if line.startswith("| ")][1:]  # the header; the rule is "|---"
        return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]

    return rows("Published distillation results"), rows("Published models trained alone")


def test_the_published_numbers_and_docs_method_md_list_the_same_results():
    """Each number of famkd.recipes is a row of docs/method.md's tables (method or model, pair, top-1, best/last,
    source) and each row there is a number of famkd.recipes: change both together."""
    distillation, vanilla = reference_tables()
    expected = []
    for result in PUBLISHED_DISTILLATION_TOP1:
        option, _, value = result.variant.partition("=")
        method = f"`{result.method}`" + (f" (`{option}: {value}`)" if result.variant else "")
        pair = f"{result.teacher} -> {result.student}"
        expected.append([method, pair, f"{result.top1:.2f}", result.source.epoch, result.source.name])
    assert sorted(distillation) == sorted(expected)
    assert sorted(vanilla) == sorted(
        [model.model, f"{model.top1:.2f}", model.source.epoch, model.source.name] for model in PUBLISHED_VANILLA_TOP1
    )


def test_repdistiller_numbers_are_last_epoch_and_mdistiller_and_famkd_best():
    """RepDistiller's train_student.py: "The results reported in the paper/README is from the last epoch";
    mdistiller's trainer keeps best_acc, and FAM-KD's code is built on it."""
    sources = {result.source.name: result.source.epoch for result in PUBLISHED_DISTILLATION_TOP1}
    assert sources["RepDistiller README"] == "last"
    assert sources["mdistiller README"] == sources["FAM-KD paper"] == "best"
    assert {m.source.epoch for m in PUBLISHED_VANILLA_TOP1 if m.source.name == "RepDistiller README"} == {"last"}
