"""Two torchrun processes (gloo, CPU) when one of them is preempted or dies.

Each run is `torchrun --standalone --nproc_per_node 2 tests/signalling_famkd.py train ...`, which is `famkd train`
whose rank-1 worker sends itself a signal right after a given optimiser step (a signal from outside, at a known
step). The runs are fam_kd on the tiny CIFAR-100 with a random resnet14 teacher, deterministic, so a run that was
stopped and resumed must end with the metrics and the tensors of the uninterrupted run. Times (from the signal to
every process's exit) are printed, never asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from famkd.engine.run_log import read_metrics
from famkd.models import create_model
from famkd.weights import load_checkpoint

DRIVER = Path(__file__).with_name("signalling_famkd.py")
TIMING_KEYS = {"epoch_time_s", "images_per_s", "data_wait_fraction", "interval_time_s"}
EPOCHS = ["train.epochs=2", "train.log_interval=2"]  # 7 steps per epoch; the processes agree every 2 steps
# 12 iterations, a metrics record every 4, a checkpoint every 3 (mid-interval: with the period's partial sums)
ITERATIONS = ["train.epochs=0", "train.iterations=12", "train.log_interval=4", "train.checkpoint_every=3"]
ITERATIONS.append("train.eval_every=0")  # evaluated at the end only


@pytest.fixture(scope="module")
def fam_kd_argv(tiny_cifar_npy, tmp_path_factory) -> list[str]:
    teacher = tmp_path_factory.mktemp("teacher") / "resnet14.pth"
    torch.manual_seed(0)
    torch.save(create_model("resnet14", num_classes=10).state_dict(), teacher)
    return [
        "method=fam_kd",
        "student=resnet8",
        "teacher.name=resnet14",
        f"teacher.checkpoint={teacher}",
        f"data.root={tiny_cifar_npy}",
        "data.classes=10",
        "device=cpu",
        "run.deterministic=true",
        "run.tensorboard=false",
        "train.batch_size=8",
        "train.eval_batch_size=4",
    ]


def torchrun(argv: list[str], *launcher: str, signal_name: str = "", at_step: int = 0, log: Path | None = None):
    """(the finished torchrun, the time it exited, the time the signal was sent or None)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    if signal_name:
        assert log is not None
        env.update(
            FAMKD_TEST_SIGNAL=signal_name,
            FAMKD_TEST_SIGNAL_RANK="1",
            FAMKD_TEST_SIGNAL_STEP=str(at_step),
            FAMKD_TEST_SIGNAL_LOG=str(log),
        )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher]
    completed = subprocess.run(
        [*command, str(DRIVER), "train", *argv],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no terminal's signals, however pytest was started
        timeout=900,
    )
    exited = time.time()
    sent = float(log.read_text().split()[0]) if log is not None and log.is_file() else None
    return completed, exited, sent


def output(completed: subprocess.CompletedProcess) -> str:
    return completed.stdout + completed.stderr


def worker_exit_codes(out: str) -> dict[int, int]:
    """Each failed worker's exit status, by rank, as torchrun's failure summary gives them (a signal: minus it)."""
    found = re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*exitcode\s*: (-?\d+)", out)
    return {int(rank): int(code) for rank, code in found}


def check(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode == 0, output(completed)[-5000:]
    return output(completed)


def metrics_without_timing(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in read_metrics(run_dir)]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference)
    ours, theirs = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (run_dir, reference))
    assert ours["global_step"] == theirs["global_step"]
    for part in ("student", "heads"):
        assert ours[part].keys() == theirs[part].keys() and ours[part]
        for name, tensor in theirs[part].items():
            assert torch.equal(ours[part][name], tensor), f"{part} {name}"


@pytest.fixture(scope="module")
def epoch_reference(fam_kd_argv, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("epoch_reference") / "run"
    check(torchrun([*fam_kd_argv, *EPOCHS, f"run.dir={run_dir}"])[0])
    return run_dir


@pytest.fixture(scope="module")
def iteration_reference(fam_kd_argv, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("iteration_reference") / "run"
    check(torchrun([*fam_kd_argv, *ITERATIONS, f"run.dir={run_dir}"])[0])
    return run_dir


def test_sigterm_to_one_torchrun_process_stops_both_resumably_and_the_same_command_resumes(
    fam_kd_argv, epoch_reference, tmp_path
):
    """SIGTERM to rank 1 after step 9 (epoch 2, step 2): the processes agree at step 10 (a log interval), process 0
    saves the checkpoint, both say what stopped them and exit 75; the unchanged command (run.resume=auto) then ends
    like the uninterrupted run."""
    run_dir = tmp_path / "run"
    argv = [*fam_kd_argv, *EPOCHS, f"run.dir={run_dir}", "run.resume=auto"]
    completed, exited, sent = torchrun(argv, signal_name="SIGTERM", at_step=9, log=tmp_path / "signal.log")
    out = output(completed)
    assert sent is not None, out[-5000:]
    print(f"\nSIGTERM to rank 1 -> every process exited: {exited - sent:.2f} s")
    assert completed.returncode != 0  # torchrun's own status when a worker exits non-zero (outside famkd)
    stopped = "famkd: stopped by SIGTERM during epoch 2, after step 3; saved"
    assert out.count(stopped) == 2, out[-5000:]  # rank 0, which was not signalled, says what asked too
    assert worker_exit_codes(out) == {0: 75, 1: 75}, out[-5000:]  # both workers: stopped, resumable
    assert "Continue with: the same torchrun command and `famkd train --resume" in out
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["global_step"] == 10 and checkpoint["partial_period"]["steps_done"] == 3

    out = check(torchrun(argv)[0])
    assert "resuming epoch 2 after step 3" in out
    assert_same_run(run_dir, epoch_reference)


@pytest.mark.parametrize("timeout", [None, 20], ids=["default-timeout", "dist_timeout-20"])
def test_a_killed_torchrun_process_ends_the_others_with_one_line_naming_it(fam_kd_argv, tmp_path, timeout):
    """SIGKILL to rank 1 after iteration 8: rank 0 leaves its collective with one famkd line naming rank 1, the last
    checkpoint (iteration 6) and the resume command, and no transport traceback."""
    run_dir = tmp_path / "run"
    argv = [*fam_kd_argv, *ITERATIONS, f"run.dir={run_dir}"]
    if timeout is not None:
        argv.append(f"train.dist_timeout={timeout}")
    completed, exited, sent = torchrun(argv, signal_name="SIGKILL", at_step=8, log=tmp_path / "kill.log")
    out = output(completed)
    assert sent is not None, out[-5000:]
    setting = "default 300" if timeout is None else timeout
    print(f"\nSIGKILL to rank 1 -> every process exited: {exited - sent:.2f} s (train.dist_timeout {setting})")
    assert completed.returncode != 0
    famkd_lines = [line for line in out.splitlines() if line.startswith("famkd: ")]
    assert len(famkd_lines) == 1, out[-5000:]
    line = famkd_lines[0]
    assert line.startswith("famkd: error: lost rank 1 of the 2 torchrun processes after iteration 8"), line
    assert f"the last checkpoint is {run_dir / 'checkpoints' / 'last.pt'} (iteration 6)" in line
    assert f"`famkd train --resume {run_dir}`" in line and "run.resume=auto" in line
    assert "Connection reset" not in out and "[rank0]" not in out, out[-5000:]  # no traceback of famkd's
    assert worker_exit_codes(out) == {0: 1, 1: -9}, out[-5000:]  # rank 0 exited by itself, with its line


def test_torchrun_restarts_after_a_killed_process_and_auto_resume_ends_like_the_uninterrupted_run(
    fam_kd_argv, iteration_reference, tmp_path
):
    """`torchrun --max-restarts 1` and run.resume=auto: rank 1 killed once after iteration 8, the restarted
    processes resume from the iteration-6 checkpoint and end with the uninterrupted run's metrics and tensors."""
    run_dir = tmp_path / "run"
    argv = [*fam_kd_argv, *ITERATIONS, f"run.dir={run_dir}", "run.resume=auto"]
    log = tmp_path / "kill.log"
    completed, exited, sent = torchrun(argv, "--max-restarts", "1", signal_name="SIGKILL", at_step=8, log=log)
    out = check(completed)
    assert sent is not None, out[-5000:]
    print(f"\nSIGKILL to rank 1 -> restarted and finished: {exited - sent:.2f} s")
    assert "lost rank 1 of the 2 torchrun processes after iteration 8" in out
    assert "resuming after iteration 6" in out
    assert_same_run(run_dir, iteration_reference)


def test_train_dist_timeout_is_the_process_groups_timeout(monkeypatch):
    """join_processes passes train.dist_timeout to init_process_group (a killed peer is seen at once by gloo, so
    the runs above do not show the bound); a transport error is told from other errors."""
    from datetime import timedelta

    import torch.distributed as dist

    from famkd.config import TrainConfig
    from famkd.engine import distributed

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "attempt_store", lambda rank, world_size, timeout: "store")
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **options: joined.update(options))
    monkeypatch.setattr(distributed, "gather_objects", lambda value: [("other", 1), value])
    processes = distributed.join_processes("cpu", 20)
    assert joined == {"store": "store", "rank": 1, "world_size": 2, "timeout": timedelta(seconds=20)}
    assert processes.rank == 1
    assert processes.hosts_and_pids[1][1] == os.getpid()
    assert TrainConfig(epochs=1).dist_timeout == 300
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:42394: Connection reset by peer")
    assert distributed.lost_peer_error(gloo) and not distributed.lost_peer_error(RuntimeError("shape mismatch"))
    assert distributed.lost_ranks(distributed.Processes(1, 0, 0, ()), wait_s=0) == []


def test_each_torchrun_attempt_keeps_its_keys_apart(monkeypatch):
    """After a restart the process group must not read the dead attempt's addresses: every key goes under
    famkd/attempt-<TORCHELASTIC_RESTART_COUNT>/ of torchrun's store."""
    from datetime import timedelta

    import torch.distributed as dist

    from famkd.engine.distributed import attempt_store

    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # the agent's store: every process is a client
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    attempt_store(0, 1, timedelta(seconds=10)).set("rank_0", "address")
    assert server.get("famkd/attempt-2/rank_0") == b"address"
    assert not server.check(["rank_0"])
