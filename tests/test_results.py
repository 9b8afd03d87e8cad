"""`famkd results`: runs grouped over seeds into a methods x pairs table, checked against hand-worked values
and `statistics`; runs that differ in settings are never averaged; the published numbers match docs/method.md."""

from __future__ import annotations

import csv
import io
import json
import re
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
    assert {label: cells[column] for label, cells in table.items()} == {
        "teacher (published)": "74.31",
        "vanilla": "71.00 ± - / 70.50 ± - (n=1)",
        "vanilla (published)": "71.14",
        "fam_kd": "74.00 ± - / 73.00 ± - (n=1)",
        "fam_kd (published)": "74.45",
        "fam_kd [distill.hpf=butterworth] (published)": "74.50",
        "fam_kd [distill.hpf=gaussian] (published)": "74.49",
        "fam_reviewkd (published)": "74.28",
        "reviewkd (published)": "73.89",
    }
    assert "resnet32x4 -> resnet8x4" not in results(capsys, tmp_path, "--reference")  # only the table's columns


def reference_section() -> str:
    return METHOD_DOC.read_text().split("## Reference numbers", 1)[1].split("\n## ", 1)[0]


def test_every_published_distillation_number_is_in_docs_method_md():
    """Each number sits in its pair's column of the reference table, in the row naming its method or variant."""
    section = reference_section()
    first_table = section[section.index("\n|") + 1 :].split("\n\n")[0]
    header, _, *lines = first_table.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    for result in PUBLISHED_DISTILLATION_TOP1:
        index = columns.index(f"{result.teacher} -> {result.student}")
        option, _, value = result.variant.partition("=")
        names_it = f"`{option}: {value}`" if result.variant else f"`{result.method}`"
        matches = [row for row in rows if row[index] == f"{result.top1:.2f}"]
        assert any(names_it in row[0] or row[0].lower() == result.method for row in matches), result


def test_every_published_vanilla_number_is_in_docs_method_md():
    section = reference_section()
    for model, top1 in PUBLISHED_VANILLA_TOP1.items():
        assert re.search(rf"\b{model} {top1:.2f}\b", section), (model, top1)
