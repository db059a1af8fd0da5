"""`minires train` on 2 MPI processes: rank 0 alone reports and writes, the ranks stop
together, and a resumed run ends bit-identical to one that was never stopped.

Each run is small (64 digits, 2 x 16 images a step, 3 epochs: 6 steps), one
BLAS thread per process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpi_helpers import REPO, mpi_env, require_mpi, run_mpi

from minires.checkpoint import load_checkpoint
from minires.cli import main
from minires.train import processes

TINY = ["--num-train", "64", "--num-test", "40", "--batch-size", "16", "--progress", "none"]
STEPS_PER_EPOCH = 2  # 64 images / (2 processes x 16)


def _minires(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "minires", *args]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 2-process run of 3 epochs, started with --nproc 2."""
    require_mpi()
    cwd = tmp_path_factory.mktemp("straight")
    args = _minires("train", "--nproc", "2", *TINY, "--epochs", "3", "--out", "r", cwd=cwd)
    done = subprocess.run(args, cwd=cwd, env=mpi_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("done: 3 epochs") == 1, done.stdout  # rank 0 alone reports
    assert done.stdout.count("data parallel: 2 processes x batch 16 = 32 images per step") == 1
    return cwd / "r"


def _assert_same_run(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "checkpoint.npz"), load_checkpoint(b / "checkpoint.npz")
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert np.array_equal(sa["model"][key], sb["model"][key]), key
    for i in sa["optimizer"]["state"]:
        ma, mb = (s["optimizer"]["state"][i]["momentum_buffer"] for s in (sa, sb))
        assert np.array_equal(ma, mb)
    assert sa["scheduler"] == sb["scheduler"] and sa["loader"] == sb["loader"]
    timing = ("images_per_s", "train_time_s", "total_train_time_s")

    def untimed(history):
        return [{k: v for k, v in r.items() if k not in timing} for r in history]

    assert untimed(sa["history"]) == untimed(sb["history"])
    lines = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert untimed(lines) == untimed(sa["history"])


def test_rank_0_writes_the_run(straight):
    for name in ("checkpoint.npz", "metrics.jsonl", "config.json", "curves.png"):
        assert (straight / name).is_file()
    assert sorted(p.name for p in straight.iterdir() if p.name.startswith(".")) == []
    config = json.loads((straight / "config.json").read_text())
    assert config["nproc"] == 2 and config["sync_bn"] is True
    state = load_checkpoint(straight / "checkpoint.npz")
    assert state["scheduler"]["last_epoch"] == 3 * STEPS_PER_EPOCH
    assert len((straight / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("at_step", [3])  # mid-epoch 2 (4, its last step, passes too)
def test_stop_on_one_rank_stops_both_and_resume_is_bit_identical(straight, tmp_path, at_step):
    out = tmp_path / "r"
    worker = str(REPO / "tests" / "mpi_train_worker.py")
    done = run_mpi(2, [worker, str(out), str(at_step)])
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in (0, 1):  # the same step on both, though only rank 1 was asked
        assert f"rank {rank}: interrupted {int(signal.SIGTERM)} {at_step}" in done.stdout
    assert load_checkpoint(out / "checkpoint.npz")["scheduler"]["last_epoch"] == at_step

    resumed = run_mpi(2, ["-m", "minires", "train", "--out", str(out), "--resume", *TINY[-2:]])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("resuming run") == 1
    _assert_same_run(straight, out)


def test_sigterm_to_the_launcher_stops_every_rank_cleanly(tmp_path):
    require_mpi()
    args = _minires("train", "--nproc", "2", *TINY, "--epochs", "1000", "--out", "r", cwd=tmp_path)
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "r" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert err.count("stopped by SIGTERM") == 1 and "Traceback" not in err, err
    assert err.count("SIGTERM: every process stops after this step") == 1
    state = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    step = state["scheduler"]["last_epoch"]
    assert state["loader"]["epoch"] * STEPS_PER_EPOCH + state["loader"]["batch"] == step


def test_a_2_process_run_resumes_only_on_2(straight, capsys):
    assert main(["train", "--out", str(straight), "--resume", "--progress", "none"]) == 2
    assert "--nproc 2" in capsys.readouterr().err


def test_nproc_without_mpiexec_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(processes, "run_mpiexec", _no_mpiexec)
    assert main(["train", "--nproc", "2", "--out", str(tmp_path / "r")]) == 2
    assert "minires[dist]" in capsys.readouterr().err


def _no_mpiexec(nproc, argv):
    from minires.distributed.launch import INSTALL_HINT

    raise FileNotFoundError(f"--nproc needs MPI's mpiexec, which is not installed: {INSTALL_HINT}")


def test_world_size_from_the_launcher(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "3")
    assert processes.with_world_size({}) == {"nproc": 3}
    with pytest.raises(processes.UserError, match="mpiexec started 3"):
        processes.with_world_size({"nproc": 2})
    monkeypatch.delenv("PMI_SIZE")
    assert processes.with_world_size({"nproc": 2}) == {"nproc": 2}
