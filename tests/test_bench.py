"""`famkd bench` in-process on tiny settings: the JSON schema, the ratios and the error messages."""

from __future__ import annotations

import json
import math

import pytest

from famkd.cli import main

REQUIRED_KEYS = {"method", "ms_per_step", "images_per_s", "peak_mem_mb", "ratio_to_kd"}
TINY = [
    "bench",
    "--teacher",
    "resnet8",
    "--student",
    "resnet8",
    "--batch-size",
    "4",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(TINY + ["--methods", "kd,fam_kd", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_json_has_one_object_per_method_in_order(results):
    assert isinstance(results, list)
    assert [r["method"] for r in results] == ["kd", "fam_kd"]
    for record in results:
        assert set(record) >= REQUIRED_KEYS


def test_kd_ratio_is_exactly_one_and_others_follow_the_medians(results):
    kd, fam_kd = results
    assert kd["ratio_to_kd"] == 1.0
    assert math.isclose(fam_kd["ratio_to_kd"], fam_kd["ms_per_step"] / kd["ms_per_step"], rel_tol=1e-12)


def test_throughput_is_batch_over_step_time(results):
    for record in results:
        assert record["ms_per_step"] > 0
        assert math.isclose(record["images_per_s"], 4 * 1000.0 / record["ms_per_step"], rel_tol=1e-12)
        assert record["ms_per_step_min"] <= record["ms_per_step"] <= record["ms_per_step_max"]


def test_cpu_peak_memory_is_a_fresh_process_max_rss(results):
    for record in results:
        assert record["device"] == "cpu"
        assert record["peak_mem_mb"] >= record["baseline_rss_mb"] > 0
    assert results[0]["head_params"] == 0 < results[1]["head_params"]


def test_without_kd_the_ratio_is_null(tmp_path):
    out = tmp_path / "bench.json"
    assert (
        main(TINY + ["--methods", "vanilla", "--steps", "1", "--warmup", "0", "--no-memory", "--json", str(out)]) == 0
    )
    (record,) = json.loads(out.read_text())
    assert record["ratio_to_kd"] is None and record["peak_mem_mb"] is None


@pytest.mark.parametrize(
    "argument, message",
    [
        (["--methods", "kd,famkd"], "unknown method 'famkd' in --methods (did you mean 'fam_kd'?)"),
        (["--methods", "kd,kd"], "--methods lists a method twice"),
        (["--methods", "kd", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["--methods", "kd", "--teacher", "resnet9"], "--teacher: unknown model 'resnet9'"),
    ],
)
def test_bad_arguments_are_clear_errors(argument, message, capsys):
    assert main(TINY + argument) == 1  # a repeated option: argparse keeps the last
    assert message in capsys.readouterr().err
