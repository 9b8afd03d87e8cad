"""`famkd results`: grouping runs over seeds, mean and sample std against hand-worked values."""

from __future__ import annotations

import json

import pytest

from famkd.cli import main


def write_run(root, name, method, best, last, teacher="resnet56", status="completed"):
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "method": method,
        "teacher": teacher,
        "student": "resnet20",
        "best_acc": best,
        "last_acc": last,
        "status": status,
    }
    (run / "summary.json").write_text(json.dumps(summary))


def test_results_group_seeds_with_mean_and_sample_std(tmp_path, capsys):
    write_run(tmp_path, "fam_kd/s0", "fam_kd", 70.0, 69.0)
    write_run(tmp_path, "fam_kd/s1", "fam_kd", 72.0, 70.0)
    write_run(tmp_path, "fam_kd/s2", "fam_kd", 74.0, 74.0)
    write_run(tmp_path, "kd/s0", "kd", 68.5, 68.25)
    write_run(tmp_path, "kd/s1", "kd", 99.0, 99.0, status="failed")  # not counted
    out = tmp_path / "rows.json"
    assert main(["results", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    # fam_kd best: mean 72, sample std sqrt(((-2)^2 + 0 + 2^2) / 2) = 2;
    # last: mean 71, std sqrt((4 + 1 + 9) / 2) = sqrt(7)
    assert "| fam_kd | resnet56 | resnet20 | 3 | 72.00 ± 2.00 | 71.00 ± 2.65 |" in printed
    assert "| kd | resnet56 | resnet20 | 1 | 68.50 ± 0.00 | 68.25 ± 0.00 |" in printed
    rows = json.loads(out.read_text())
    assert rows[0]["last_std"] == pytest.approx(7**0.5, abs=1e-12)


def test_results_without_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["results", str(tmp_path)]) == 1
    assert "no completed run" in capsys.readouterr().err
