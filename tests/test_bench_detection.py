"""benchmarks/bench_detection.py on tiny settings: the synthetic targets, the JSON report and its arithmetic."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_detection.py"
TINY = "--teacher resnet18 --student resnet18 --batch-size 1 --min-size 64 --max-size 96 --steps 2 --warmup 1"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_detection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script()


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_detection") / "report.json"
    argv = TINY.split() + ["--methods", "vanilla,fam_kd", "--no-memory", "--json", str(out)]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def test_synthetic_targets_are_valid_boxes_inside_the_image(bench):
    images, targets = bench.synthetic_batch(4, 64, 96, 81, torch.device("cpu"))
    for image, target in zip(images, targets):
        assert image.shape == (3, 64, 96) and image.min() >= 0 and image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        x1, y1, x2, y2 = boxes.unbind(1)
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 96).all() and (y2 <= 64).all()
        assert (x2 - x1 >= bench.MIN_BOX_SIDE).all() and (y2 - y1 >= bench.MIN_BOX_SIDE).all()
        assert (labels >= 1).all() and (labels <= 80).all()


def test_report_medians_ratios_and_throughput_follow_the_recorded_times(report):
    assert report["settings"]["image_size"] == [64, 96] and report["settings"]["steps"] == 2
    vanilla, fam_kd = report["results"]
    assert [vanilla["method"], fam_kd["method"]] == ["vanilla", "fam_kd"]
    for result in (vanilla, fam_kd):
        assert len(result["times_ms"]) == 2
        assert math.isclose(result["ms_per_iter"], statistics.median(result["times_ms"]), rel_tol=1e-12)
        assert math.isclose(result["images_per_s"], 1000.0 / result["ms_per_iter"], rel_tol=1e-12)
        assert result["peak_mem_mb"] is None
    assert vanilla["ratio_to_vanilla"] == 1.0
    assert math.isclose(fam_kd["ratio_to_vanilla"], fam_kd["ms_per_iter"] / vanilla["ms_per_iter"], rel_tol=1e-12)
    assert vanilla["head_params"] == 0 < fam_kd["head_params"]


def test_an_unknown_method_is_an_error_naming_the_nearest(bench):
    with pytest.raises(SystemExit, match="did you mean 'fam_kd'"):
        bench.main(TINY.split() + ["--methods", "fam_dk", "--no-memory"])


def test_a_method_may_carry_options(bench):
    assert bench.method_spec("fam_kd") == ("fam_kd", {})
    assert bench.method_spec("fam_kd:form=review:tile_sizes=[8,4,2,2,1]") == (
        "fam_kd",
        {"form": "review", "tile_sizes": [8, 4, 2, 2, 1]},
    )
    with pytest.raises(SystemExit, match="options are written method:key=value"):
        bench.main(TINY.split() + ["--methods", "fam_kd:form", "--no-memory"])
