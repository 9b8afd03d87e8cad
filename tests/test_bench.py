"""`famkd bench` in-process on tiny settings: the JSON schema, the ratios and the error messages; what
it times (a fake step on a fake clock); methods that need sample indices."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from famkd.bench import (
    TRAIN_SET_SIZE,
    Competitor,
    add_arguments,
    benchmark,
    competitor_benchmark,
    competitor_cpu,
    format_competitor_table,
    parse_thread_counts,
)
from famkd.cli import main
from famkd.distill import Distiller, register_distiller
from famkd.distill.registry import DISTILLERS
from famkd.errors import FamkdError

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
        (["--methods", "kd", "--student", "timm:convnext_atoo"], "--student: unknown timm model 'convnext_atoo'"),
    ],
)
def test_bad_arguments_are_clear_errors(argument, message, capsys):
    assert main(TINY + argument) == 1  # a repeated option: argparse keeps the last
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- what is timed

WARMUP_STEPS = 2
WARMUP_STEP_S = 100.0  # every warm-up step: timing one would show in the median, the mean and the maximum
# The timed steps, in order. Medians 3 and 30 ms; means 4 and 38 ms.
TIMED_STEP_S = {"vanilla": [0.003, 0.001, 0.010, 0.002, 0.004], "kd": [0.020, 0.090, 0.030, 0.010, 0.040]}


class FakeClock:
    """Seconds that pass only when a fake step advances them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bench_args(*arguments: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([*TINY[1:], *arguments])


def test_ms_per_step_is_the_median_of_the_timed_steps_after_the_warmup():
    clock = FakeClock()
    steps_taken = dict.fromkeys(TIMED_STEP_S, 0)

    def fake_step(bench_run, images, labels, indices, autocast):
        taken = steps_taken[bench_run.method]
        steps_taken[bench_run.method] += 1
        clock.now += WARMUP_STEP_S if taken < WARMUP_STEPS else TIMED_STEP_S[bench_run.method][taken - WARMUP_STEPS]

    args = bench_args("--steps", "5", "--warmup", str(WARMUP_STEPS), "--no-memory")
    results = benchmark(args, list(TIMED_STEP_S), torch.device("cpu"), step=fake_step, clock=clock)

    assert steps_taken == {"vanilla": 7, "kd": 7}
    vanilla, kd = results
    assert (vanilla["method"], kd["method"]) == ("vanilla", "kd")
    assert vanilla["ms_per_step"] == pytest.approx(3.0, rel=1e-9)
    assert kd["ms_per_step"] == pytest.approx(30.0, rel=1e-9)
    assert (vanilla["ms_per_step_min"], vanilla["ms_per_step_max"]) == pytest.approx((1.0, 10.0), rel=1e-9)
    assert (kd["ms_per_step_min"], kd["ms_per_step_max"]) == pytest.approx((10.0, 90.0), rel=1e-9)
    assert vanilla["images_per_s"] == pytest.approx(4 / 0.003, rel=1e-9)
    assert vanilla["ratio_to_kd"] == pytest.approx(0.1, rel=1e-9)


# ---------------------------------------------------------------- methods that need sample indices

INDEX_METHOD = "test_index_recorder"


@pytest.fixture
def index_recorder(monkeypatch):
    """Registers INDEX_METHOD for this test only: a method that needs sample indices and records, in the
    namespace returned, the training-set size it was built for and the indices each forward received."""
    record = SimpleNamespace(num_samples=[], indices=[])

    class IndexRecorder(Distiller):
        needs_sample_indices = True

        def __init__(self, student, teacher, options, data):
            super().__init__(student, teacher)
            record.num_samples.append(data.num_samples)

        def forward(self, images, targets, epoch, indices):
            record.indices.append(indices.clone())
            logits = self.student(images)
            return logits, {"ce": F.cross_entropy(logits, targets)}

    classification = DISTILLERS["classification"]
    monkeypatch.setattr(classification, "_builders", dict(classification._builders))  # restored after the test
    register_distiller(INDEX_METHOD)(IndexRecorder)
    return record


def test_a_method_that_needs_sample_indices_gets_fixed_ones(index_recorder, tmp_path):
    out = tmp_path / "bench.json"
    # kd takes no indices: its forward would fail if it were given some.
    assert main(TINY + ["--methods", f"kd,{INDEX_METHOD}", "--no-memory", "--json", str(out)]) == 0
    assert [r["method"] for r in json.loads(out.read_text())] == ["kd", INDEX_METHOD]
    assert index_recorder.num_samples == [TRAIN_SET_SIZE] == [50000]
    first, *others = index_recorder.indices
    assert len(others) == 2  # one warm-up step and two timed ones
    assert first.shape == (4,) and first.dtype == torch.int64
    assert first.min() >= 0 and first.max() < TRAIN_SET_SIZE and len(set(first.tolist())) == 4  # distinct
    assert all(torch.equal(first, indices) for indices in others)


def test_the_test_only_method_is_registered_for_its_test_alone():
    assert INDEX_METHOD not in DISTILLERS["classification"]


# ---------------------------------------------------------------- image size and classes


def test_image_size_and_num_classes_shape_the_batch_and_the_heads():
    seen, clock = {}, FakeClock()

    def fake_step(bench_run, images, labels, indices, autocast):
        seen["images"], seen["labels"] = images.shape, labels
        seen["fam_sizes"] = [head.fam.size for head in bench_run.distiller.heads]
        clock.now += 0.01

    args = bench_args("--image-size", "16", "--num-classes", "7", "--steps", "1", "--warmup", "0", "--no-memory")
    (record,) = benchmark(args, ["fam_kd"], torch.device("cpu"), step=fake_step, clock=clock)

    assert seen["images"] == (4, 3, 16, 16)
    assert seen["labels"].max() < 7
    assert seen["fam_sizes"] == [1, 4, 8, 16]  # resnet8 at 16 x 16: stages at strides 1, 2, 4, then the pooled level
    assert (record["image_size"], record["num_classes"]) == (16, 7)


def test_the_image_size_defaults_to_cifar_and_must_be_positive(capsys):
    assert bench_args().image_size == 32
    assert main(TINY + ["--methods", "kd", "--image-size", "0"]) == 1
    assert "--image-size must be >= 1, got 0" in capsys.readouterr().err


def test_timm_and_torchvision_names_are_benchmarked(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "bench.json"
    names = ["--teacher", "timm:resnet10t", "--student", "torchvision:mobilenet_v3_small", "--image-size", "32"]
    argv = TINY + names + ["--methods", "kd,fam_kd", "--steps", "1", "--warmup", "0", "--no-memory", "--json", str(out)]
    assert main(argv) == 0
    records = json.loads(out.read_text())
    assert [r["method"] for r in records] == ["kd", "fam_kd"]
    assert (records[1]["teacher"], records[1]["student"]) == ("timm:resnet10t", "torchvision:mobilenet_v3_small")
    assert records[0]["head_params"] == 0 < records[1]["head_params"]


def competitor_args(**changes) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(TINY[1:] + ["--competitor"])
    return argparse.Namespace(**{**vars(args), **changes})


def test_competitor_mode_alternates_the_phases_and_divides_the_medians():
    busy_calls, now, threads_seen = [], [0.0], []
    cost = {"kd": 1.0, "fam_kd": 3.0}

    def set_busy(running: bool) -> None:
        busy_calls.append(running)

    def step(bench_run, images, labels, indices, autocast):  # twice as slow beside the competitor
        threads_seen.append(torch.get_num_threads())
        now[0] += cost[bench_run.method] * (2.0 if busy_calls[-1] else 1.0)

    before = torch.get_num_threads()
    results = competitor_benchmark(
        competitor_args(steps=3, warmup=1), ["kd", "fam_kd"], [1, 2], set_busy, step=step, clock=lambda: now[0]
    )
    assert torch.get_num_threads() == before and sorted(set(threads_seen)) == [1, 2]
    assert [(r["threads"], r["method"]) for r in results] == [(1, "kd"), (1, "fam_kd"), (2, "kd"), (2, "fam_kd")]
    for r in results:
        assert r["ms_per_step_alone"] == 1000.0 * cost[r["method"]] and r["slowdown"] == 2.0
    rounds = [busy_calls[i : i + 3] for i in range(0, 4 * 3, 3)]  # per round: two phases, then paused
    assert rounds == [[False, True, False], [True, False, False]] * 2
    assert "slowdown" in format_competitor_table(results) and "2.00x" in format_competitor_table(results)


def test_the_competitor_runs_when_busy_pauses_otherwise_and_is_killed_on_exit():
    def state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    with Competitor(competitor_cpu()) as competitor:
        pid = competitor.process.pid
        assert state(pid) == "T"  # started paused
        competitor.busy(True)
        assert state(pid) in "RS"
        competitor.busy(False)
        time.sleep(0.05)
        assert state(pid) == "T"
    assert competitor.process.returncode is not None


def test_competitor_threads_are_checked():
    assert parse_thread_counts("1,2") == [1, 2]
    with pytest.raises(FamkdError, match="--competitor-threads"):
        parse_thread_counts("0,x")
