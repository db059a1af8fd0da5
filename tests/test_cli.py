"""The `minires` command end to end: train, resume, eval, models, and every bad input.

Runs are tiny (96 digits, batch 32: 3 steps an epoch, ResNet-20 on 8x8
images), so a run takes a fraction of a second. Most tests call `main([...])`
in-process; three go through `python -m minires` in a subprocess, which is
what a user runs (exit status, stderr, a real SIGINT).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minires
import minires.plots
from minires.checkpoint import load_checkpoint
from minires.cli import build_parser, default_out_dir, main
from minires.train import (
    NUMBER_OPTIONS,
    Progress,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    UserError,
)

REPO = Path(minires.__file__).resolve().parents[1]
TINY = ["--num-train", "96", "--num-test", "40", "--batch-size", "32", "--progress", "none"]
STEPS_PER_EPOCH = 3


def train(out: Path, *extra: str, epochs: int = 2) -> int:
    return main(["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra])


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # These GEMMs are tiny: a second BLAS thread only adds overhead here, and a
    # great deal of it when other processes compete for the cores.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = _env()
    return subprocess.run(
        [sys.executable, "-m", "minires", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- #
# A training run and its outputs
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """Two epochs, never interrupted: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train(out) == 0
    return out


def test_train_writes_checkpoint_metrics_config_and_curves(straight_run):
    lines = (straight_run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for r in records:
        for key in ("train_loss", "test_loss", "images_per_s"):
            assert np.isfinite(r[key]) and r[key] > 0
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert r["test_acc"] * 40 == round(r["test_acc"] * 40)  # a count out of 40 images
    # Cosine per step over 6 steps; each record has the rate of its epoch's last step.
    for r in records:
        assert r["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * (r["step"] - 1) / 6)) / 2)

    config = json.loads((straight_run / "config.json").read_text())
    assert config["model"] == "resnet20" and config["epochs"] == 2 and config["num_train"] == 96

    state = load_checkpoint(straight_run / "checkpoint.npz")
    assert state["run"]["epoch"] == 2 and state["run"]["finished"] is True
    assert state["loader"] == {"seed": 0, "epoch": 2, "batch": 0}
    assert state["scheduler"]["last_epoch"] == 2 * STEPS_PER_EPOCH
    assert state["model"]["conv1.weight"].shape == (16, 3, 3, 3)
    assert state["model"]["conv1.weight"].dtype == np.float32
    assert len(state["optimizer"]["state"]) == len(list(minires.models.resnet20().parameters()))
    assert state["history"] == records  # the checkpoint carries the metrics too

    png = (straight_run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_eval_reproduces_the_final_test_metrics(straight_run, capsys):
    assert main(["eval", "--checkpoint", str(straight_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    last = json.loads((straight_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["num_test"] == 40 and result["epoch"] == 2
    assert result["test_acc"] == last["test_acc"]
    assert result["test_loss"] == pytest.approx(last["test_loss"], rel=1e-5)


def test_eval_loads_weights_into_a_model_with_the_same_keys(straight_run, capsys):
    # plain20 has exactly resnet20's parameters (option-A shortcuts have none).
    assert main(["eval", "--checkpoint", str(straight_run), "--model", "plain20"]) == 0
    assert "plain20" in capsys.readouterr().out


def test_models_lists_names_and_parameter_counts(capsys):
    assert main(["models", "resnet20", "plain20", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "269,722" in out
    assert "resnet18" in out and "11,689,512" in out
    assert "no shortcuts" in out.splitlines()[2]  # plain20's line


def test_models_lists_resnexts_and_wide_resnets_without_drawing_weights(capsys):
    before = minires.nn.init.get_generator().bit_generator.state
    assert main(["models"]) == 0
    # Shapes are all a count needs: 300M random weights would take seconds.
    assert minires.nn.init.get_generator().bit_generator.state == before
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert len(lines) == len(minires.models.list_models())
    for name, count, kind in [
        ("resnext50_32x4d", "25,028,904", "ResNeXt"),
        ("resnext101_32x8d", "88,791,336", "ResNeXt"),
        ("wide_resnet50_2", "68,883,240", "wide ResNet"),
        ("wide_resnet101_2", "126,886,696", "wide ResNet"),
        ("resnet50", "25,557,032", "ImageNet, torchvision"),
    ]:
        assert lines[name].split()[1] == count and kind in lines[name]


def test_default_out_dir_never_reuses_a_run(tmp_path):
    cfg = TrainConfig.for_data("digits")
    root = tmp_path / "runs"
    assert default_out_dir(cfg, str(root)) == root / "digits-resnet20"
    (root / "digits-resnet20").mkdir(parents=True)
    assert default_out_dir(cfg, str(root)) == root / "digits-resnet20"  # empty: reuse
    (root / "digits-resnet20" / "checkpoint.npz").write_bytes(b"")
    assert default_out_dir(cfg, str(root)) == root / "digits-resnet20-2"


def test_bench_is_delegated(capsys):
    assert main(["bench", "--help"]) == 0
    assert "--no-torch" in capsys.readouterr().out


def test_progress_falls_back_to_text_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    assert Progress("auto").mode == "text" and Progress("bar").mode == "text"
    assert Progress("none").mode == "none"
    p = Progress("text", every_s=0.0)
    p.start("epoch 2/5", total=4, done=1)
    p.update(loss=0.25, acc=0.5, images_per_s=123.4)
    line = capsys.readouterr().err
    assert "epoch 2/5: 2/4 batches  loss 0.2500  acc 50.0%  123 img/s  ETA" in line


def test_without_matplotlib_a_note_replaces_the_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(minires.plots, "matplotlib_available", lambda: False)
    assert train(tmp_path / "r", epochs=1) == 0
    assert "matplotlib is not installed, so no curves.png" in capsys.readouterr().err
    assert not (tmp_path / "r" / "curves.png").exists()
    assert (tmp_path / "r" / "metrics.jsonl").read_text().count("\n") == 1


# --------------------------------------------------------------------------- #
# Resume: bit-identical to a run that was never stopped
# --------------------------------------------------------------------------- #


def _assert_same_run(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "checkpoint.npz"), load_checkpoint(b / "checkpoint.npz")
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert sa["model"][key].dtype == sb["model"][key].dtype
        assert np.array_equal(sa["model"][key], sb["model"][key]), key
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        assert np.array_equal(oa["state"][i]["momentum_buffer"], ob["state"][i]["momentum_buffer"])
    assert sa["scheduler"] == sb["scheduler"] and sa["loader"] == sb["loader"]

    def untimed(history):
        timing = ("images_per_s", "train_time_s", "total_train_time_s")
        return [{k: v for k, v in r.items() if k not in timing} for r in history]

    assert untimed(sa["history"]) == untimed(sb["history"])
    lines_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert untimed(lines_b) == untimed(sa["history"])


@pytest.mark.parametrize(
    "how, at_step",
    [
        ("ctrl-c", 2),  # mid-epoch: resumes at batch 3 of epoch 1
        ("ctrl-c", 3),  # on the last step of epoch 1: evaluates, saves, stops
        ("abort", 5),  # a second Ctrl-C in epoch 2: nothing new saved, epoch 1's checkpoint used
    ],
)
def test_resume_ends_bit_identical(straight_run, tmp_path, capsys, how, at_step):
    out = tmp_path / "run"
    cfg = TrainConfig.for_data("digits", num_train=96, num_test=40, batch_size=32, epochs=2)
    saved_before = {}

    def on_step(trainer: Trainer) -> None:
        if trainer.sched.last_epoch != at_step:
            return
        if how == "ctrl-c":
            trainer.request_stop()  # what the SIGINT handler calls
        else:
            saved_before["bytes"] = (out / "checkpoint.npz").read_bytes()
            raise KeyboardInterrupt

    result = Trainer(cfg, out, progress="none").run(on_step)
    assert result.status == ("interrupted" if how == "ctrl-c" else "aborted")
    state = load_checkpoint(out / "checkpoint.npz")
    if how == "abort":
        assert (out / "checkpoint.npz").read_bytes() == saved_before["bytes"]
        assert state["run"]["epoch"] == 1
    else:
        assert state["scheduler"]["last_epoch"] == at_step
        assert state["loader"]["batch"] == at_step % STEPS_PER_EPOCH

    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--progress", "none"]) == 0
    assert "resuming run" in capsys.readouterr().out
    _assert_same_run(straight_run, out)


def test_resume_of_a_finished_run_changes_nothing(straight_run, tmp_path, capsys):
    before = (straight_run / "checkpoint.npz").read_bytes()
    assert main(["train", "--out", str(straight_run), "--resume", "--progress", "none"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (straight_run / "checkpoint.npz").read_bytes() == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig.for_data("digits", num_train=96, num_test=40, batch_size=32, epochs=3)
    kept = {}

    def poison(trainer: Trainer) -> None:
        if trainer.sched.last_epoch == 4:  # epoch 2, after epoch 1 was saved
            kept["bytes"] = (out / "checkpoint.npz").read_bytes()
            trainer.model.conv1.weight.data[0, 0, 0, 0] = np.nan

    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, batch 2") as e:
        Trainer(cfg, out, progress="none").run(poison)
    assert "last good checkpoint is intact" in str(e.value)
    assert "(taken at the end of epoch 1)" in str(e.value)
    assert (out / "checkpoint.npz").read_bytes() == kept["bytes"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# --------------------------------------------------------------------------- #
# Bad input: a clear message, a non-zero status, no traceback
# --------------------------------------------------------------------------- #


def _error(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
        (["--batch-size", "-4"], "--batch-size: must be a positive integer"),
        (["--lr", "0"], "--lr: must be a positive number"),
        (["--lr", "nan"], "--lr: must be a positive number"),
        (["--lr", "fast"], "--lr: must be a positive number, got 'fast'"),
        (["--momentum", "1"], "--momentum: must be a number in [0, 1)"),
        (["--data", "mnist"], "invalid choice: 'mnist'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_bad_option_values(capsys, tmp_path, flags, message):
    err = _error(capsys, ["train", "--out", str(tmp_path / "r"), *flags])
    assert message in err
    assert not (tmp_path / "r").exists()


def test_numbers_are_judged_by_the_configs_own_rules():
    """One rule a setting: the command line parses with TrainConfig's NUMBER_OPTIONS."""
    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    train_types = {a.dest: a.type for a in commands.choices["train"]._actions}
    for name, option in NUMBER_OPTIONS.items():
        assert train_types[name] is option, name
    with pytest.raises(UserError, match=r"^--epochs must be a positive integer, got 0$"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(UserError, match=r"^--lr must be a positive number, got nan$"):
        TrainConfig(lr=math.nan).validate()
    with pytest.raises(UserError, match=r"^--seed must be an integer in \[0, 2\*\*32\), got True$"):
        TrainConfig(seed=True).validate()
    TrainConfig(num_train=None, num_test=5).validate()  # None: all the images


def test_unknown_data_set_lists_the_valid_ones(capsys, tmp_path):
    err = _error(capsys, ["train", "--data", "mnist", "--out", str(tmp_path / "r")])
    assert "digits" in err and "cifar10" in err and "procedural" in err


def test_unknown_model_lists_the_valid_ones(capsys, tmp_path):
    err = _error(capsys, ["train", "--model", "resnet21", "--out", str(tmp_path / "r")])
    assert "minires: error: unknown model 'resnet21'; valid names:" in err
    assert "resnet20" in err and "plain110" in err and "resnet152" in err
    err = _error(capsys, ["models", "resnet21"])
    assert "unknown model 'resnet21'" in err


def test_warmup_must_be_shorter_than_the_run(capsys, tmp_path):
    err = _error(capsys, ["train", *TINY, "--epochs", "2", "--warmup-epochs", "2",
                          "--out", str(tmp_path / "r")])  # fmt: skip
    assert "--warmup-epochs must be an integer in [0, epochs = 2)" in err


def test_missing_cifar10_folder(capsys, tmp_path):
    err = _error(capsys, ["train", "--data", "cifar10", "--data-dir", str(tmp_path / "nowhere"),
                          "--out", str(tmp_path / "r")])  # fmt: skip
    assert "no complete CIFAR-10 folder" in err and "data_batch_1" in err


def test_output_folder_that_cannot_be_written(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = _error(capsys, ["train", *TINY, "--out", str(blocker / "run")])
    assert "minires: error: cannot write to the output folder" in err


def test_cuda_without_a_gpu(capsys, tmp_path, straight_run):
    from minires.backends import cuda_backend

    if cuda_backend.gpu_available():
        pytest.skip("a GPU is present")
    no_gpu = "minires: error: --device cuda: no usable GPU"
    err = _error(capsys, ["train", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")])
    assert no_gpu in err and "--device cpu" in err
    err = _error(capsys, ["eval", "--checkpoint", str(straight_run), "--device", "cuda"])
    assert no_gpu in err
    assert no_gpu in _error(capsys, ["gradcheck", "--device", "cuda"])
    assert no_gpu in _error(capsys, ["bench", "--device", "cuda", "--no-torch", "--no-memory"])


def test_gradcheck_bad_seed(capsys):
    err = _error(capsys, ["gradcheck", "--seed", "-1"])
    assert "--seed: must be an integer in [0, 2**32), got '-1'" in err


def test_nan_loss_from_the_command_line(capsys, tmp_path):
    err = _error(capsys, ["train", *TINY, "--lr", "1e30", "--out", str(tmp_path / "r")], code=1)
    assert "minires: error: the loss became nan" in err
    assert "Try a smaller --lr" in err
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


def test_checkpoint_problems(capsys, straight_run, tmp_path):
    # Missing.
    err = _error(capsys, ["eval", "--checkpoint", str(tmp_path / "none.npz")])
    assert "no checkpoint file at" in err
    # Not a zip at all.
    (tmp_path / "junk.npz").write_bytes(b"this is not a checkpoint")
    err = _error(capsys, ["eval", "--checkpoint", str(tmp_path / "junk.npz")])
    assert "is not a readable checkpoint (truncated or corrupt?)" in err
    # Truncated, then resumed.
    run = tmp_path / "truncated"
    run.mkdir()
    raw = (straight_run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(raw[: len(raw) // 2])
    err = _error(capsys, ["train", "--out", str(run), "--resume"])
    assert "is not a readable checkpoint (truncated or corrupt?)" in err
    # From another model: the mismatching keys are named.
    err = _error(capsys, ["eval", "--checkpoint", str(straight_run), "--model", "resnet32"])
    assert "does not fit this model" in err and "missing keys: layer1.3.conv1.weight" in err
    err = _error(capsys, ["eval", "--checkpoint", str(straight_run), "--model", "resnet18"])
    assert "does not fit this model" in err


def test_resume_problems(capsys, straight_run, tmp_path):
    err = _error(capsys, ["train", "--resume"])
    assert "--resume needs --out" in err
    err = _error(capsys, ["train", "--resume", "--out", str(tmp_path / "empty")])
    assert "there is no run to continue" in err
    err = _error(capsys, ["train", "--resume", "--out", str(straight_run), "--model", "resnet32"])
    assert "--model resnet32 differs from the run's saved setting (resnet20)" in err
    # A new run must not overwrite an existing one.
    err = _error(capsys, ["train", *TINY, "--out", str(straight_run)])
    assert "already holds a run" in err and "--resume" in err


# --------------------------------------------------------------------------- #
# Through a real process: `python -m minires`
# --------------------------------------------------------------------------- #


def test_subprocess_train_and_eval(tmp_path):
    done = run_cli("train", *TINY, "--epochs", "1", "--out", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "outputs in r/" in done.stdout and "Traceback" not in done.stderr
    for name in ("checkpoint.npz", "metrics.jsonl", "config.json", "curves.png"):
        assert (tmp_path / "r" / name).is_file()

    (tmp_path / "bad.npz").write_bytes((tmp_path / "r" / "checkpoint.npz").read_bytes()[:-100])
    bad = run_cli("eval", "--checkpoint", "bad.npz", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("minires: error:") and "Traceback" not in bad.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_subprocess_signal_saves_and_resumes(tmp_path, signum):
    """A real Ctrl-C (or kill): the run stops after its current step, saves, exits 128 + signum."""
    env = _env()
    # Many epochs: the run is still going when the signal arrives.
    proc = subprocess.Popen(
        [sys.executable, "-m", "minires", "train", *TINY, "--epochs", "1000", "--out", "r"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "r" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert f"{name}: stopping after this step" in err
    assert f"stopped by {name}" in err and "--resume" in err and "Traceback" not in err

    state = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    step = state["scheduler"]["last_epoch"]
    assert step >= STEPS_PER_EPOCH
    assert state["loader"]["epoch"] * STEPS_PER_EPOCH + state["loader"]["batch"] == step
    assert len(state["history"]) == state["run"]["epoch"] >= 1

    # --resume picks up exactly there (stopped again after one step, in-process).
    stopped_at = {}

    def stop_at_once(trainer: Trainer) -> None:
        stopped_at.setdefault("step", trainer.sched.last_epoch)
        trainer.request_stop()

    result = Trainer(None, tmp_path / "r", resume=True, progress="none").run(stop_at_once)
    assert result.status == "interrupted" and stopped_at["step"] == step + 1
