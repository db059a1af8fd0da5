"""The GPU path never waits for the GPU except where it reports: counted on the CuPy stand-in.

A host sync (the host waiting for the GPU to finish everything queued, then
reading a value back) stops the host from queueing the next kernels while
the GPU runs: a training step that syncs cannot overlap with the next. So:

* a resnet20 training step on the GPU makes no host sync at all (its loss
  and count stay on the device; labels on the device are range-checked later);
* ``minires train`` syncs only where it reports (a progress line, a
  checkpoint, the end of an epoch), and evaluation once per evaluation;
* no wrong label passes: labels on the host are checked at once, labels on
  the device by ``F.check_labels()``, which the trainer runs at every report;
* a NaN loss on the GPU is still caught, at the next report, naming its batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cupy_standin  # noqa: E402
from cuda_harness import harness  # noqa: E402

import minires as mr  # noqa: E402
import minires.functional as F  # noqa: E402
from minires import label_check  # noqa: E402
from minires.backends.device import to_device  # noqa: E402
from minires.train import TrainConfig, Trainer  # noqa: E402
from minires.train.errors import TrainingDiverged  # noqa: E402
from minires.train.step import train_step  # noqa: E402


@pytest.fixture(scope="module")
def compiled() -> None:
    if harness.find_compiler() is None:
        pytest.skip("no C++ compiler (g++, clang++ or $CXX) to build the CUDA CPU harness")
    cupy_standin.prebuild_minires_kernels()


@pytest.fixture
def gpu(compiled) -> cupy_standin.Standin:
    with cupy_standin.install() as standin:
        yield standin


def _batch(rng, n: int = 4, size: int = 8):
    return rng.standard_normal((n, 3, size, size)).astype(np.float32), rng.integers(0, 10, n)


# --------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------


def test_a_resnet20_training_step_makes_no_host_sync(gpu):
    rng = np.random.default_rng(0)
    mr.manual_seed(0)
    model = mr.models.resnet20().to("cuda")
    opt = mr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    train_step(model, opt, *(to_device(a, "cuda") for a in _batch(rng)))  # the momentum buffers
    images, labels = (to_device(a, "cuda") for a in _batch(rng))
    gpu.counts.reset()
    result = train_step(model, opt, images, labels)
    assert gpu.counts.host_syncs == 0, gpu.counts.by("sync", key="both")
    assert gpu.counts.by("kernel") and gpu.counts.total("cublas") > 0  # it did run
    assert not result.on_host and label_check.pending() == 2
    loss = result.loss  # reading it is the sync
    assert gpu.counts.host_syncs == 1 and np.isfinite(loss) and 0 <= result.correct <= 4
    F.check_labels()  # one sync for every call's labels at once
    assert gpu.counts.host_syncs == 3 and label_check.pending() == 0
    F.check_labels()
    assert gpu.counts.host_syncs == 3  # nothing waited: no sync


def test_the_cpu_step_reads_its_loss_at_once():
    rng = np.random.default_rng(0)
    mr.manual_seed(0)
    model = mr.models.resnet20()
    opt = mr.optim.SGD(model.parameters(), lr=0.1)
    result = train_step(model, opt, *_batch(rng))
    assert result.on_host and isinstance(result.loss_value, float)
    assert isinstance(result.correct_value, int) and label_check.pending() == 0


# --------------------------------------------------------------------------
# Labels: on the host at once, on the device by check_labels
# --------------------------------------------------------------------------


def test_host_labels_with_gpu_logits_are_checked_before_the_copy(gpu):
    logits = mr.tensor(np.zeros((3, 4), np.float32)).to("cuda")
    gpu.counts.reset()  # (the first move to "cuda" probes the GPU: one sync)
    with pytest.raises(ValueError, match=r"cross_entropy: .* \[0, 4\).* values in \[7, 7\]$"):
        F.cross_entropy(logits, np.array([0, 7, 1]))
    assert gpu.counts.host_syncs == 0 and label_check.pending() == 0


def test_a_bad_label_on_the_device_raises_at_the_check(gpu):
    logits = mr.tensor(np.zeros((3, 4), np.float32)).to("cuda")
    good, bad = gpu.cupy.asarray(np.array([0, 3, 1])), gpu.cupy.asarray(np.array([0, 9, -3]))
    gpu.counts.reset()
    F.cross_entropy(logits, good)
    loss = F.cross_entropy(logits, bad)  # no error yet, and no sync
    assert gpu.counts.host_syncs == 0 and label_check.pending() == 2
    assert np.isnan(loss.item())  # the kernel never indexes with it: the loss says so meanwhile
    with pytest.raises(ValueError, match=r"cross_entropy: .* \[0, 4\).*2 outside.*\[-3, 9\]"):
        F.check_labels()
    assert label_check.pending() == 0
    F.check_labels()  # reported once
    F.cross_entropy(logits, gpu.cupy.asarray(np.array([0, -100, 2])))  # ignore_index passes
    F.check_labels()


def test_labels_waiting_beyond_the_limit_are_checked_by_themselves(gpu, monkeypatch):
    monkeypatch.setattr(label_check, "PENDING_LIMIT", 5)
    logits = mr.tensor(np.zeros((3, 4), np.float32)).to("cuda")
    F.cross_entropy(logits, gpu.cupy.asarray(np.array([0, 4, 1])))
    with pytest.raises(ValueError, match="cross_entropy"):
        F.cross_entropy(logits, gpu.cupy.asarray(np.array([0, 1, 1])))  # 6 rows > 5


# --------------------------------------------------------------------------
# The trainer: syncs only where it reports
# --------------------------------------------------------------------------

TINY = dict(num_train=16, num_test=4, batch_size=4, epochs=2, device="cuda")


def _syncs_per_step(gpu, tmp_path, progress: str, every_s: float = 10.0) -> list[int]:
    cfg = TrainConfig.for_data("digits", **TINY)
    trainer = Trainer(cfg, tmp_path / progress, progress=progress, log=lambda s: None)
    trainer.progress.every_s = every_s
    syncs: list[int] = []
    trainer.run(lambda t: syncs.append(gpu.counts.host_syncs))
    return syncs


def test_the_trainer_syncs_only_where_it_reports(gpu, tmp_path):
    syncs = _syncs_per_step(gpu, tmp_path, "none")
    assert len(syncs) == 8  # 2 epochs of 4 steps
    for epoch in (syncs[:4], syncs[4:]):
        assert len(set(epoch)) == 1, syncs  # no sync between the steps of an epoch
    assert syncs[4] > syncs[3]  # the end of epoch 1: the sums, evaluation, checkpoint


def test_a_progress_line_is_a_report(gpu, tmp_path, capsys):
    syncs = _syncs_per_step(gpu, tmp_path, "text", every_s=0.0)  # a line after every step
    assert all(b > a for a, b in zip(syncs, syncs[1:])), syncs
    assert "epoch 1/2: 2/4 batches  loss" in capsys.readouterr().err


def test_a_bad_label_on_the_device_stops_the_epoch(gpu, tmp_path, monkeypatch):
    """The trainer's labels are checked at its reports: by the end of the epoch at the latest."""
    steps = []

    def bad_second_batch(self, x, y):
        y = np.array(y)
        if len(steps) == 1:
            y[2] = 42
        steps.append(len(y))
        return train_step(self.model, self.opt, to_device(x, "cuda"), to_device(y, "cuda")), len(y)

    monkeypatch.setattr(Trainer, "_step", bad_second_batch)
    cfg = TrainConfig.for_data("digits", **TINY)
    run = tmp_path / "bad"
    with pytest.raises(ValueError, match=r"cross_entropy: target labels must be in \[0, 10\).*42"):
        Trainer(cfg, run, progress="none", log=lambda s: None).run()
    assert len(steps) == 4  # found at the end of the epoch, not earlier
    assert not (run / "checkpoint.npz").exists()


def test_a_nan_loss_on_the_gpu_stops_at_the_next_report_naming_its_batch(gpu, tmp_path):
    def poison_third_step(trainer: Trainer) -> None:
        if trainer.train_loader.batch == 2:  # the weights become NaN: the next loss is NaN
            for p in trainer.model.parameters():
                p.data[...] = np.nan

    cfg = TrainConfig.for_data("digits", **TINY)
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="the loss became nan at epoch 1, batch 3"):
        Trainer(cfg, run, progress="none", log=lambda s: None).run(poison_third_step)
    assert not (run / "checkpoint.npz").exists()


def test_the_bar_asks_for_the_figures_only_when_it_shows_them():
    """On a GPU the trainer's bar reads the figures (a sync) at most once a second."""
    pytest.importorskip("tqdm")
    from minires.train.progress import Progress

    asked: list[float] = []

    def figures() -> tuple[float, float, float]:
        asked.append(every_s)
        return 0.5, 0.25, 100.0

    for every_s, expected in ((0.0, 5), (3600.0, 1)):
        progress = Progress("bar", numbers_every_s=every_s)
        progress.start("epoch 1/1", total=5, done=0)
        for _ in range(5):
            progress.step(figures)
        progress.close()
        assert asked.count(every_s) == expected and progress.done == 5
