"""A user's mistake or a damaged file ends in one clear line and a documented status.

Every case goes through `minires.cli.main([...])` (or `python -m minires` in a
subprocess where real signals are needed) and checks three things: the exit
status, the one line on stderr (which file or option, what was expected,
what was found), and that no Python traceback was printed. The damaged
checkpoints are made here from a real one: a section dropped, another
model's optimiser state swapped in, strings where numbers belong, arrays of
the wrong dtype or shape, a truncated file, a header claiming 7 TiB.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minires
import minires.checkpoint as ckpt
import minires.train.run_folder as run_folder
import minires.train.trainer as trainer_module
from minires.checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint
from minires.cli import EXIT_STATUS, build_parser, main

REPO = Path(minires.__file__).resolve().parents[1]
TINY = ["--num-train", "96", "--num-test", "40", "--batch-size", "32", "--progress", "none"]


def train(out: Path, *extra: str, epochs: int = 1) -> int:
    return main(["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra])


def one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    """Run `argv`; assert its status, one error line on stderr, no traceback.

    The line is all of stderr, except for argparse's usage errors (a bad option
    value), which print the command's usage first, as every argparse tool does.
    """
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert err == lines[0] + "\n" or err.startswith("usage: minires"), err
    return lines[0]


def _env() -> dict[str, str]:
    path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One-epoch runs of resnet20 (the base of every damaged file) and of resnet32."""
    root = tmp_path_factory.mktemp("runs")
    assert train(root / "r20") == 0
    assert train(root / "r32", "--model", "resnet32") == 0
    return {"r20": root / "r20", "r32": root / "r32"}


# --------------------------------------------------------------------------- #
# Damaged checkpoints: --resume and eval
# --------------------------------------------------------------------------- #


def _set(path: list, value):
    def mutate(state, other):
        node = state
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]], other) if callable(value) else value

    return mutate


def _drop(section: str):
    return lambda state, other: state.pop(section)


def _other_optimizer(state, other):
    state["optimizer"] = other["optimizer"]


MOMENTUM = ["optimizer", "state", "0", "momentum_buffer"]
RESUME_CASES = {
    # A section dropped (load_run_checkpoint names the three that eval needs too).
    "no optimizer": (_drop("optimizer"), "optimizer: missing (a run's checkpoint holds config"),
    "no scheduler": (_drop("scheduler"), "scheduler: missing"),
    "no rng": (_drop("rng"), "rng: missing"),
    "no run": (_drop("run"), "run: missing"),
    "no history": (_drop("history"), "history: missing"),
    "no data": (_drop("data"), "is not a training checkpoint (no data)"),
    "data not a dict": (_set(["data"], [1]), "data: expected a dict, found a list of 1"),
    # Another model's optimiser state (resnet32's 95 parameters for resnet20's 59).
    "resnet32's optimizer": (
        _other_optimizer,
        "optimizer.param_groups: expected state for [59] parameters (this model's), "
        "found [95]: another model's optimiser state?",
    ),
    # Wrong types and dtypes.
    "config not a dict": (_set(["config"], [1]), "config: expected a dict, found a list of 1"),
    "epochs a string": (
        _set(["config", "epochs"], "ten"),
        "config: --epochs must be a positive integer, got 'ten'",
    ),
    "augment a string": (
        _set(["config", "augment"], "yes"),
        "config.augment: expected true or false, found 'yes' (str)",
    ),
    "scheduler counter a string": (
        _set(["scheduler", "last_epoch"], "x"),
        "scheduler.last_epoch: expected an integer, found 'x' (str)",
    ),
    "loader batch past the end": (
        _set(["loader", "batch"], 99),
        "loader.batch: expected an integer in [0, 2], found 99",
    ),
    "rng state a string": (_set(["rng", "init"], "x"), "rng.init: expected a dict, found 'x'"),
    "rng key too short": (
        _set(["rng", "numpy", "state", "key"], np.zeros(3, np.uint32)),
        "rng.numpy.state.key: expected a uint32 array of shape (624,), found a uint32 array "
        "of shape (3,)",
    ),
    "epoch count a bool": (
        _set(["run", "epoch"], True),
        "run.epoch: expected an integer >= 0, found True (bool)",
    ),
    "running sums renamed": (
        _set(["run", "partial"], {"a": 1}),
        "run.partial: expected keys ['loss_sum', 'correct', 'seen', 'time_s', 'lr'], found ['a']",
    ),
    "momentum float64": (
        _set(MOMENTUM, lambda v, o: v.astype(np.float64)),
        "optimizer.state.0.momentum_buffer: expected a float32 array of shape (16, 3, 3, 3), "
        "found a float64 array of shape (16, 3, 3, 3)",
    ),
    "momentum as text": (
        _set(MOMENTUM, lambda v, o: v.astype(str)),
        "found a <U32 array of shape (16, 3, 3, 3)",
    ),
    "momentum for parameter 999": (
        _set(["optimizer", "state"], {"999": {}}),
        "optimizer.state.999: expected a parameter number < 59",
    ),
    "lr a string": (
        _set(["optimizer", "param_groups", 0, "lr"], "x"),
        "optimizer.param_groups[0].lr: expected a number, found 'x' (str)",
    ),
    "three channel means for digits": (
        _set(["data", "mean"], [0.1, 0.2, 0.3]),
        "data.std: expected a list of 3, found a list of 1",
    ),
    "zero std": (_set(["data", "std"], [0.0]), "data.std: expected positive numbers, found [0.0]"),
    "three classes": (_set(["data", "num_classes"], 3), "data.num_classes: expected 10, found 3"),
    "history cut": (
        _set(["history"], []),
        "history: expected a list of 1 (one per epoch), found a list of 0",
    ),
    "history entry": (_set(["history", 0, "test_acc"], None), "history[0].test_acc: expected a "),
    "weights as text": (
        _set(["model", "conv1.weight"], lambda v, o: v.astype(str)),
        "does not fit this model: load_state_dict for CifarResNet: conv1.weight: "
        "expected real numbers for float32, got dtype <U32",
    ),
    "weights not a dict": (_set(["model"], [1]), "model: expected a dict of arrays"),
}


def damaged_run(runs: dict[str, Path], folder: Path, mutate) -> Path:
    """A copy of the resnet20 run whose checkpoint `mutate(state, resnet32_state)` changed."""
    state = load_checkpoint(runs["r20"] / "checkpoint.npz")
    mutate(state, load_checkpoint(runs["r32"] / "checkpoint.npz"))
    folder.mkdir()
    save_checkpoint(folder / "checkpoint.npz", state)
    return folder


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_from_a_damaged_checkpoint(capsys, runs, tmp_path, case):
    mutate, message = RESUME_CASES[case]
    run = damaged_run(runs, tmp_path / "run", mutate)
    before = (run / "checkpoint.npz").read_bytes()
    line = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--progress", "none"])
    assert str(run / "checkpoint.npz") in line and message in line
    # Nothing was written: the damaged file is there to be looked at, as it was.
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz"]
    assert (run / "checkpoint.npz").read_bytes() == before


EVAL_CASES = [
    "no data",
    "data not a dict",
    "config not a dict",
    "epochs a string",
    "epoch count a bool",
    "three channel means for digits",
    "three classes",
    "weights as text",
    "weights not a dict",
]


@pytest.mark.parametrize("case", EVAL_CASES)
def test_eval_of_a_damaged_checkpoint(capsys, runs, tmp_path, case):
    mutate, message = RESUME_CASES[case]
    run = damaged_run(runs, tmp_path / "run", mutate)
    line = one_line_error(capsys, ["eval", "--checkpoint", str(run)])
    assert str(run / "checkpoint.npz") in line and message in line


def test_eval_checks_the_statistics_against_the_data_set(capsys, runs, tmp_path):
    """Three means and stds are well-formed, but the digits have one channel."""
    mutate = _set(["data"], {"mean": [0.1] * 3, "std": [0.3] * 3, "num_classes": 10})
    run = damaged_run(runs, tmp_path / "run", mutate)
    line = one_line_error(capsys, ["eval", "--checkpoint", str(run)])
    assert "data.mean: expected a list of 1, found a list of 3" in line
    line = one_line_error(capsys, ["train", "--out", str(run), "--resume"])
    assert "data.mean: expected a list of 1, found a list of 3" in line


def test_a_check_that_misses_still_gives_one_line(capsys, runs, tmp_path, monkeypatch):
    """Defence in depth: with the checks off, restoring a damaged file is still one line."""
    monkeypatch.setattr(trainer_module, "check_resume_state", lambda *args: None)
    run = damaged_run(runs, tmp_path / "run", _set(["loader", "batch"], "x"))
    line = one_line_error(capsys, ["train", "--out", str(run), "--resume"])
    assert "restoring it: ValueError: invalid literal for int()" in line


def test_truncated_and_oversized_checkpoints(capsys, runs, tmp_path):
    raw = (runs["r20"] / "checkpoint.npz").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "checkpoint.npz").write_bytes(raw[: len(raw) * 2 // 3])
    for argv in (["eval", "--checkpoint"], ["train", "--resume", "--out"]):
        line = one_line_error(capsys, [*argv, str(tmp_path / "cut")])
        assert "is not a readable checkpoint (truncated or corrupt?)" in line

    # A well-formed zip (every CRC right) whose array header claims 7 TiB.
    huge = tmp_path / "huge.npz"
    meta = {"format": "minires-checkpoint", "version": 1, "tree": {"a": {"__array__": "a"}}}
    with zipfile.ZipFile(huge, "w") as zf:
        with zf.open("a.npy", "w") as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
            np.lib.format.write_array_header_1_0(member, header)
            member.write(bytes(64))
        with zf.open("__meta__.npy", "w") as member:
            text = np.frombuffer(json.dumps(meta).encode(), np.uint8)
            np.lib.format.write_array(member, text)
    line = one_line_error(capsys, ["eval", "--checkpoint", str(huge)])
    assert "holds an array too large for this machine's memory" in line


# --------------------------------------------------------------------------- #
# Options out of range
# --------------------------------------------------------------------------- #


def test_seed_beyond_numpys_range(capsys, tmp_path):
    for command in (["train", "--out", str(tmp_path / "r")], ["gradcheck"]):
        line = one_line_error(capsys, [*command, "--seed", str(2**32)])
        assert line.endswith("--seed: must be an integer in [0, 2**32), got '4294967296'")
    assert not (tmp_path / "r").exists()
    assert train(tmp_path / "r", "--seed", str(2**32 - 1)) == 0  # the largest one works


def test_exit_statuses_are_documented():
    text = build_parser().format_help()
    assert "exit status:" in text and EXIT_STATUS.strip() in text
    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    for name in ("train", "eval"):
        assert EXIT_STATUS.strip() in commands.choices[name].format_help()
    for status in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {status}" in EXIT_STATUS


# --------------------------------------------------------------------------- #
# Outputs that cannot be written
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_output_file_that_cannot_be_written_at_the_start(capsys, tmp_path, name):
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)  # a folder where the file should go
    line = one_line_error(capsys, ["train", *TINY, "--out", str(run)])
    assert f"cannot write {str(run / name)!r}: Is a directory; no checkpoint was saved" in line


def test_metrics_that_cannot_be_appended_mid_run(capsys, tmp_path, monkeypatch):
    """Epoch 1's checkpoint is saved, then metrics.jsonl fails: the message says what is safe."""
    run = tmp_path / "run"
    append = run_folder.RunFolder.append_metrics

    def append_into_a_folder(self, record):
        self.metrics.unlink()
        self.metrics.mkdir()  # a real failure of a real write: EISDIR
        append(self, record)

    monkeypatch.setattr(run_folder.RunFolder, "append_metrics", append_into_a_folder)
    line = one_line_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(run)])
    assert (
        f"cannot write {str(run / 'metrics.jsonl')!r}: Is a directory; "
        f"{run / 'checkpoint.npz'} (taken at the end of epoch 1) is intact: "
        f"continue with minires train --out {run} --resume"
    ) in line
    # Nothing is lost: fix the folder, resume, and metrics.jsonl has both epochs.
    monkeypatch.undo()
    (run / "metrics.jsonl").rmdir()
    assert main(["train", "--out", str(run), "--resume", "--progress", "none"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_checkpoint_that_cannot_be_written_mid_run(capsys, tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_npz, calls = ckpt._write_npz, []

    def disk_full_on_the_second_save(f, arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        write_npz(f, arrays)

    monkeypatch.setattr(ckpt, "_write_npz", disk_full_on_the_second_save)
    line = one_line_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(run)])
    assert f"cannot write {str(run / 'checkpoint.npz')!r}: No space left on device; " in line
    assert "(taken at the end of epoch 1) is intact: continue with minires train" in line
    assert load_checkpoint(run / "checkpoint.npz")["run"]["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_curves_that_cannot_be_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    (run / "curves.png").mkdir(parents=True)
    line = one_line_error(capsys, ["train", *TINY, "--out", str(run)])
    assert line == (
        f"minires: error: cannot write {str(run / 'curves.png')!r}: Is a directory "
        "(the run itself finished; its other files are saved)"
    )
    assert load_checkpoint(run / "checkpoint.npz")["run"]["finished"]


# --------------------------------------------------------------------------- #
# Data sets that cannot be read
# --------------------------------------------------------------------------- #


def cifar_folder(root: Path, rows: int = 8) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": rng.integers(0, 10, rows).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_damaged_cifar_batches(capsys, tmp_path, monkeypatch):
    folder = cifar_folder(tmp_path / "data")
    argv = ["train", "--data", "cifar10", "--data-dir", str(folder), "--epochs", "1"]
    argv += ["--batch-size", "8", "--progress", "none", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    capsys.readouterr()
    raw = (folder / "test_batch").read_bytes()

    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])  # truncated
    line = one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "run")])
    assert f"load_cifar10: {str(folder / 'test_batch')!r} is not a readable CIFAR-10 pickle" in line

    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 12]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(bad, protocol=2))
    line = one_line_error(capsys, [*argv[:-1], str(tmp_path / "run2")])
    assert "data_batch_2" in line and "label 12 at index 1 is outside 0..9" in line

    (folder / "test_batch").unlink()
    line = one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "run")])
    assert "no complete CIFAR-10 folder" in line and "these are missing: test_batch" in line

    (folder / "test_batch").write_bytes(raw)
    (folder / "data_batch_2").write_bytes(raw)

    def no_permission(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", no_permission)
    line = one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "run")])
    assert f"load_cifar10: cannot read {str(folder / 'data_batch_1')!r}: Permission denied" in line


# --------------------------------------------------------------------------- #
# Ctrl-C twice: the message tells the truth about what is on disk
# --------------------------------------------------------------------------- #

# Runs `minires train` with two real SIGINTs sent to itself during training step
# number STEP: the first asks for a stop after the step, the second aborts it.
DOUBLE_CTRL_C = """
import os, signal, sys
import minires.train.trainer as t
from minires.cli import main
step, calls = int(sys.argv[1]), []
real = t.train_step
def train_step(*args):
    calls.append(1)
    if len(calls) == step:
        os.kill(os.getpid(), signal.SIGINT)
    result = real(*args)
    if len(calls) == step:
        os.kill(os.getpid(), signal.SIGINT)
    return result
t.train_step = train_step
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "step, expected",
    [
        (1, "aborted in epoch 1, batch 1, before any checkpoint was saved: there is nothing "
            "to resume in r/; start the run again to train it"),
        (5, "aborted in epoch 2, batch 2, without saving it. The last checkpoint, "
            "r/checkpoint.npz (taken at the end of epoch 1), is intact; continue with: "
            "minires train --out r --resume"),
    ],
)  # fmt: skip
def test_double_ctrl_c_names_the_checkpoint_that_exists(tmp_path, step, expected):
    argv = ["train", *TINY, "--epochs", "3", "--out", "r"]
    done = subprocess.run(
        [sys.executable, "-c", DOUBLE_CTRL_C, str(step), *argv],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert "Traceback" not in done.stderr
    assert expected in done.stderr.splitlines()
    if step == 1:
        assert not (tmp_path / "r" / "checkpoint.npz").exists()
    else:
        assert load_checkpoint(tmp_path / "r" / "checkpoint.npz")["run"]["epoch"] == 1


# --------------------------------------------------------------------------- #
# kill -9 in the middle of a checkpoint write
# --------------------------------------------------------------------------- #

# Writes half of the second checkpoint, then SIGKILLs itself: what kill -9 leaves.
KILL_MID_WRITE = """
import os, signal, sys
import minires.checkpoint as ckpt
from minires.cli import main
calls = []
def write_npz(f, arrays):
    calls.append(1)
    if len(calls) == 2:
        f.write(b"PK half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    ckpt_write(f, arrays)
ckpt_write, ckpt._write_npz = ckpt._write_npz, write_npz
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_mid_write_leaves_a_temp_file_that_resume_removes(tmp_path, capsys):
    argv = ["train", *TINY, "--epochs", "2", "--out", "r"]
    done = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, *argv],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL
    run = tmp_path / "r"
    (stale,) = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert stale.name.startswith(".checkpoint.npz.")
    assert main(["train", "--out", str(run), "--resume", "--progress", "none"]) == 0
    assert f"removed {stale.name}, left by a run killed while writing" in capsys.readouterr().out
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run / "checkpoint.npz")["run"]["epoch"] == 2


STALE = [".checkpoint.npz.a1b2c3d4.tmp", ".metrics.jsonl.x_9y8z7w.tmp", ".config.json.00000000.tmp"]
NOT_OURS = [
    ".notes.txt.a1b2c3d4.tmp",  # another file's temp
    ".checkpoint.npz.tmp",  # no random part
    "checkpoint.npz.a1b2c3d4.tmp",  # no leading dot
    ".checkpoint.npz.a1b2c3d4e.tmp",  # 9 random characters
    "mine.tmp",
]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in STALE + NOT_OURS:
        (run / name).write_bytes(b"x")
    assert train(run) == 0  # a new run in a folder with no checkpoint
    out = capsys.readouterr().out
    for name in STALE:
        assert not (run / name).exists() and f"removed {name}" in out
    for name in NOT_OURS:
        assert (run / name).read_bytes() == b"x", name
    assert sorted(p.name for p in remove_stale_temp_files(run, ["checkpoint.npz"])) == []


# --------------------------------------------------------------------------- #
# The umask
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]
)
def test_outputs_respect_the_umask(tmp_path, umask, file_mode, folder_mode):
    old = os.umask(umask)
    try:
        assert train(tmp_path / "run") == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    files = sorted(run.iterdir())
    expected = {"checkpoint.npz", "metrics.jsonl", "config.json"}
    assert expected <= {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path.name
    assert stat.S_IMODE(run.stat().st_mode) == folder_mode


def test_one_line_even_when_a_message_has_newlines(capsys, monkeypatch):
    from minires import cli
    from minires.train import UserError

    def broken(args):
        raise UserError("first\nsecond")

    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    commands.choices["models"].set_defaults(func=broken)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert one_line_error(capsys, ["models"]) == "minires: error: first second"
