"""train.threads: the automatic number of intra-op threads from the affinity mask, the cgroup CPU quota (v2 and v1
files written in tmp_path), the processes on the host and OMP_NUM_THREADS; the setting and the run header; the
famkd command's OpenMP wait policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from famkd.classification import task as task_module
from famkd.classification import train
from famkd.cli import busy_cpus_between, short_openmp_spins
from famkd.config import load_config
from famkd.engine import threads as threads_module
from famkd.engine.threads import auto_threads, cgroup_cpu_limit, local_processes, omp_num_threads, training_threads
from famkd.errors import ConfigError
from tiny_cifar import tiny_datasets


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path):
    write(tmp_path / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path, folder):
    write(tmp_path / folder / "cpu.cfs_quota_us", "300000\n")
    write(tmp_path / folder / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3.0
    write(tmp_path / folder / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_or_unreadable_ones_mean_no_quota(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    write(tmp_path / "cpu.max", "garbage\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_auto_threads_is_the_usable_cpus_shared_by_the_local_processes():
    assert auto_threads(affinity=8, cpu_limit=None, local_processes=1) == 8
    assert auto_threads(affinity=8, cpu_limit=2.0, local_processes=1) == 2  # the quota caps the affinity
    assert auto_threads(affinity=2, cpu_limit=16.0, local_processes=1) == 2  # and the affinity the quota
    assert auto_threads(affinity=8, cpu_limit=1.5, local_processes=1) == 1  # a fractional CPU rounds down
    assert auto_threads(affinity=8, cpu_limit=None, local_processes=4) == 2
    assert auto_threads(affinity=2, cpu_limit=None, local_processes=4) == 1  # at least one
    assert auto_threads(affinity=8, cpu_limit=0.5, local_processes=1) == 1
    assert auto_threads(affinity=8, cpu_limit=None, local_processes=2, omp_threads=1) == 1  # torchrun's default
    assert auto_threads(affinity=8, cpu_limit=None, local_processes=2, omp_threads=16) == 4


def test_the_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert local_processes() == 4 and omp_num_threads() == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert local_processes() == 1 and omp_num_threads() is None


def test_training_threads_takes_an_explicit_setting_or_the_automatic_value(monkeypatch, tmp_path):
    write(tmp_path / "cpu.max", "200000 100000\n")
    monkeypatch.setattr(threads_module, "affinity_cpus", lambda: 16)
    monkeypatch.setattr(threads_module, "CGROUP_ROOT", tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert training_threads(0) == 2 and training_threads(5) == 5


def test_the_setting():
    assert load_config(None).train.threads == 0
    assert load_config(None, ["train.threads=1"]).train.threads == 1
    with pytest.raises(ConfigError, match="train.threads=-1 is too small"):
        load_config(None, ["train.threads=-1"])
    assert load_config(None).train.grad_compression == "none"
    with pytest.raises(ConfigError, match="train.grad_compression='int8' is not allowed"):
        load_config(None, ["train.grad_compression=int8"])


def test_a_run_uses_its_threads_says_so_and_restores_the_callers(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(task_module, "build_datasets", lambda data_cfg: tiny_datasets())
    seen = []
    overrides = ["student=resnet8", "data.classes=10", "device=cpu", "run.tensorboard=false", "train.epochs=1"]
    overrides += ["train.batch_size=8", "train.max_steps_per_epoch=1", f"run.dir={tmp_path / 'run'}", "train.threads=3"]
    before = torch.get_num_threads()
    train(load_config(None, overrides), on_step=lambda *_: seen.append(torch.get_num_threads()))
    assert seen == [3] and torch.get_num_threads() == before
    assert "device cpu, 3 threads, amp off" in capsys.readouterr().out


def test_openmp_threads_spin_briefly_on_busy_cpus_unless_the_user_chose():
    for given, busy, expected in (
        ({}, 1.0, {"GOMP_SPINCOUNT": "1000"}),
        ({}, 0.5, {"GOMP_SPINCOUNT": "1000"}),
        ({}, 0.2, {}),  # idle CPUs keep libgomp's default
        ({"GOMP_SPINCOUNT": "300000"}, 2.0, {"GOMP_SPINCOUNT": "300000"}),
        ({"OMP_WAIT_POLICY": "passive"}, 2.0, {"OMP_WAIT_POLICY": "passive"}),
    ):
        environ = dict(given)
        short_openmp_spins(environ, lambda busy=busy: busy)
        assert environ == expected


def test_the_cpus_are_not_watched_where_the_user_chose_the_wait():
    def watch() -> float:
        raise AssertionError("the CPUs were watched although the user chose the wait")

    for given in ({"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "passive"}):
        short_openmp_spins(dict(given), watch)


def proc_stat(*cpus: tuple[int, ...]) -> str:
    """A /proc/stat text: the aggregate line, then one line of 10 times per CPU."""
    lines = ["cpu  1 1 1 1 1 0 0 0 0 0"]
    lines += [f"cpu{index} " + " ".join(map(str, times)) for index, times in enumerate(cpus)]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 5"]) + "\n"


def test_busy_cpus_are_counted_from_proc_stat_over_the_allowed_cpus():
    # ticks: user nice system idle iowait irq softirq steal guest guest_nice (guest is within user already)
    before = proc_stat((100, 0, 50, 1000, 10, 0, 0, 0, 40, 0), (5, 0, 5, 2000, 0, 0, 0, 0, 0, 0))
    # over 100 ticks per CPU: cpu0 80 busy (60 user incl. 20 guest, 10 system, 5 irq, 5 steal), 20 idle + iowait;
    # cpu1 10 busy (system), 90 idle
    after = proc_stat((160, 0, 60, 1015, 15, 5, 0, 5, 60, 0), (5, 0, 15, 2090, 0, 0, 0, 0, 0, 0))
    assert busy_cpus_between(before, after, {0, 1}) == pytest.approx(2 * 90 / 200)
    assert busy_cpus_between(before, after, {0}) == pytest.approx(0.8)
    assert busy_cpus_between(before, after, {1}) == pytest.approx(0.1)
    assert busy_cpus_between(before, before, {0, 1}) == 0.0


def test_the_famkd_command_sets_the_spin_count_before_torch_is_loaded_beside_a_busy_process():
    """A busy loop on the CPU the famkd process may use: the count is set, and torch was not loaded yet. (Whether an
    idle CPU keeps libgomp's default depends on the machine's other load, which a test cannot choose.)"""
    cpu = min(os.sched_getaffinity(0))
    busy = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
    )
    try:
        code = (
            f"import os, sys; os.sched_setaffinity(0, {{{cpu}}}); import famkd.cli; "
            "print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT', 'unset'))"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    finally:
        busy.kill()
        busy.wait()
    assert completed.stdout.split() == ["False", "1000"]
