"""The epoch loop: ``Trainer`` runs one training run in one folder, fresh or resumed.

    result = Trainer(cfg, out_dir="runs/demo").run()

An epoch is ``train_step`` (step.py) over the training batches, with the
learning-rate schedule stepped once per *iteration*, then an evaluation on
the test split, a checkpoint and a metrics line. See minires/train/__init__.py
for what makes a run trustworthy (exact resume, Ctrl-C, NaN).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.device import to_device
from ..functional import check_labels
from ..nn import init as nn_init
from . import run_state
from .build import build_model, build_optimizer, input_channels
from .config import TrainConfig, resolve_resume_config
from .datasets import load_data, make_loaders
from .errors import TrainingDiverged, UserError, check_device
from .evaluate import evaluate
from .metrics import EpochSums
from .progress import Progress
from .run_folder import CHECKPOINT_FILE, RunFolder
from .saved_state import RESTORE_ERRORS, Damaged, check_resume_state
from .signals import deferred_signals, say
from .step import StepResult, train_step


@dataclasses.dataclass
class RunResult:
    status: str  # "finished", "interrupted" (saved a checkpoint) or "aborted" (did not)
    out_dir: Path
    history: list[dict[str, Any]]
    epoch: int  # epochs completed
    signal: int | None = None  # the signal that stopped the run, if any
    checkpoint: str | None = None  # the checkpoint on disk at the end (RunFolder.describe_...)


class Trainer:
    """One training run in one folder: fresh, or resumed from its checkpoint.

    Args:
        cfg: the settings of a new run (None when resuming).
        out_dir: the run folder (checkpoint, metrics, config, curves).
        resume: continue from ``out_dir/checkpoint.npz`` with its saved
            settings; `overrides` (e.g. the options given on the command
            line) must agree with them, except "device" (see
            `resolve_resume_config`).
        progress: "auto", "bar", "text" or "none" (see Progress).
        log: where the one-line messages go (default: print to stdout).
    """

    def __init__(
        self,
        cfg: TrainConfig | None,
        out_dir: str | Path,
        resume: bool = False,
        overrides: dict[str, Any] | None = None,
        progress: str = "auto",
        log: Callable[[str], None] = print,
    ) -> None:
        self.folder = RunFolder(out_dir)
        self.out_dir, self.ckpt_path = self.folder.path, self.folder.checkpoint
        self.log = log
        self.progress = Progress(progress)
        self._stop_signal: int | None = None
        self.saved: dict[str, Any] | None = None
        if resume:
            if not self.ckpt_path.exists():
                raise UserError(
                    f"--resume: there is no run to continue in {str(self.out_dir)!r} "
                    f"(no {CHECKPOINT_FILE})"
                )
            self.saved = self.folder.load_checkpoint()
            cfg = TrainConfig.from_dict(
                resolve_resume_config(self.saved["config"], overrides or {})
            )
        elif cfg is None:
            raise ValueError("Trainer: a new run needs a TrainConfig")
        elif self.ckpt_path.exists():
            raise UserError(
                f"{str(self.out_dir)!r} already holds a run ({CHECKPOINT_FILE}); pass "
                "--resume to continue it, or choose another --out"
            )
        cfg.validate()
        self.cfg = cfg

    def request_stop(self, signum: int | None = None) -> None:
        """Stop after the current step, saving a checkpoint of it (what Ctrl-C does)."""
        self._stop_signal = signum if signum is not None else int(signal.SIGINT)
        name = signal.Signals(self._stop_signal).name
        say(
            f"\n{name}: stopping after this step and saving a checkpoint "
            "(press Ctrl-C again to abort now)\n"
        )

    # -- setting up, saving, restoring ----------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        check_device(cfg.device)
        for stale in self.folder.prepare():
            self.log(f"removed {stale.name}, left by a run killed while writing")
        saved = self.saved
        stats = (saved["data"]["mean"], saved["data"]["std"]) if saved else None
        self.data = load_data(cfg, stats)
        # The seed fixes the initial weights (minires.nn.init's generator) and
        # NumPy's global generator, in case anything draws from it.
        nn_init.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = build_model(cfg.model, self.data.num_classes)
        # A GPU's figures are read at most once a second by the bar: each read waits for it.
        self.progress.numbers_every_s = 0.0 if cfg.device == "cpu" else 1.0
        channels = input_channels(self.model)
        self.train_loader, self.test_loader = make_loaders(cfg, self.data, channels)
        if cfg.device != "cpu":
            self.model.to(cfg.device)
        self.opt, self.sched = build_optimizer(cfg, self.model, len(self.train_loader))
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.sums = EpochSums()
        self.train_time = 0.0  # seconds spent in training steps, over all sessions
        if saved is not None:
            self._resume(saved)

    def _state(self) -> dict[str, Any]:
        """Everything the rest of the run depends on: what the checkpoint holds."""
        return run_state.collect(self)

    def _resume(self, saved: dict[str, Any]) -> None:
        """Check the checkpoint against this run's fresh state, then restore it."""
        check_resume_state(saved, self)
        try:  # should the checks above miss something, still one line, no traceback
            self._restore(saved)
        except RESTORE_ERRORS as e:
            raise Damaged(self.ckpt_path, "restoring it", f"{type(e).__name__}: {e}") from None
        self.folder.note_checkpoint(saved)

    def _restore(self, saved: dict[str, Any]) -> None:
        """The inverse of ``_state``: continue exactly where the checkpoint was taken."""
        run_state.restore(self, saved)

    # -- the loop ---------------------------------------------------------------

    def run(self, on_step: Callable[[Trainer], None] | None = None) -> RunResult:
        """Train to cfg.epochs (or until stopped). `on_step(self)` runs after every step."""
        self._setup()
        self.folder.write_config(self.cfg.to_dict())
        self.folder.write_metrics(self.history)
        self._log_start()
        status = "finished"
        # Overflow / invalid-value warnings would only repeat, less clearly, what
        # the loss check reports when training diverges.
        with deferred_signals(self.request_stop), np.errstate(over="ignore", invalid="ignore"):
            try:
                while self.epoch < self.cfg.epochs:
                    if not self._train_epoch(on_step):
                        status = "interrupted"
                        break
            except KeyboardInterrupt:  # the second Ctrl-C: nothing more is saved
                status = "aborted"
        if status == "finished" and self.saved and self.saved["run"].get("finished"):
            self.log(f"the run in {self.out_dir}/ had already finished ({self.cfg.epochs} epochs)")
        kept = self.folder.describe_checkpoint()
        return RunResult(status, self.out_dir, self.history, self.epoch, self._stop_signal, kept)

    def _log_start(self) -> None:
        cfg = self.cfg
        where = "resuming" if self.saved else "writing"
        self.log(
            f"{where} run in {self.out_dir}/: {cfg.model} on {cfg.data} "
            f"({len(self.data.train_labels)} train / {len(self.data.test_labels)} test images), "
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g} ({cfg.schedule}), "
            f"{cfg.device}"
        )
        if self.saved and self.epoch < cfg.epochs:
            batch = self.train_loader.batch
            self.log(
                f"  continuing in epoch {self.epoch + 1} at batch {batch + 1}"
                if batch
                else f"  continuing after epoch {self.epoch}"
            )

    def _train_epoch(self, on_step: Callable[[Trainer], None] | None) -> bool:
        """Train the rest of the current epoch, evaluate, save. False if stopped early."""
        loader = self.train_loader
        self.model.train()
        self.progress.start(f"epoch {self.epoch + 1}/{self.cfg.epochs}", len(loader), loader.batch)
        epoch_t0 = t_last = time.perf_counter()
        try:
            for x, y in loader:
                step, images = self._step(x, y)
                batch = loader.batch or len(loader)
                if step.on_host and not math.isfinite(step.loss):
                    # train_step made no update: the weights in memory and the
                    # checkpoint on disk both stay at the last good state.
                    raise self._diverged(self._bad_loss(step.loss, batch))
                lr = self.opt.param_groups[0]["lr"]  # the rate this step used
                self.sched.step()
                # The time since the last step ended: loading and augmenting
                # the batch count too, evaluation does not.
                now = time.perf_counter()
                self._count(step, images, now - t_last, lr, batch)
                t_last = now
                if on_step is not None:
                    on_step(self)
                if self._stop_signal is not None and loader.batch != 0:
                    # Stopped mid-epoch: save this step; the loader resumes at the next batch.
                    self._read_steps()
                    self.folder.save_checkpoint(self._state())
                    return False
            if self._read_steps():  # the GPU's time for the steps it had still queued
                now = time.perf_counter()
                self.sums.time_s += now - t_last
                self.train_time += now - t_last
        finally:
            self.progress.close()
        self._end_epoch(time.perf_counter() - epoch_t0)
        return self._stop_signal is None

    def _step(self, x: Any, y: Any) -> tuple[StepResult, int]:
        """Train on a batch: (its result, images counted). DistributedTrainer's hook."""
        device = self.cfg.device
        return train_step(self.model, self.opt, to_device(x, device), to_device(y, device)), len(y)

    def _count(
        self, step: StepResult, batch_size: int, seconds: float, lr: float, batch: int
    ) -> None:
        """Add a step (batch number ``batch`` of the epoch) to the running sums; show them."""
        sums = self.sums
        sums.add(step, batch_size, seconds, lr, batch)
        self.train_time += seconds

        def numbers() -> tuple[float, float, float]:
            self._read_steps()
            return sums.loss_sum / sums.seen, sums.correct / sums.seen, sums.seen / sums.time_s

        self.progress.step(numbers)

    def _read_steps(self) -> bool:
        """Bring the GPU's steps to the host, at a report (progress, checkpoint, epoch end)
        only: labels checked first (a bad one makes a NaN loss), then losses. True if any."""
        if not self.sums.unread:
            return False
        check_labels()
        bad = self.sums.read()
        if bad is not None:
            raise self._diverged(self._bad_loss(bad[1], bad[0]))
        return True

    def _bad_loss(self, loss: float, batch: int) -> str:
        return f"the loss became {loss} at epoch {self.epoch + 1}, batch {batch}"

    def _diverged(self, what: str) -> TrainingDiverged:
        saved = self.folder.describe_checkpoint()
        if saved is not None:
            kept = f"the last good checkpoint is intact: {saved}"
        else:
            kept = "no checkpoint had been saved"
        return TrainingDiverged(
            f"{what} (lr {self.opt.param_groups[0]['lr']:.4g}). Stopped without saving; "
            f"{kept}. Try a smaller --lr or --warmup-epochs."
        )

    def _evaluate(self) -> tuple[float, float]:  # DistributedTrainer's hook
        return evaluate(self.model, self.test_loader, self.cfg.device)

    def _end_epoch(self, wall_s: float) -> None:
        test_loss, test_acc = self._evaluate()
        # A finite training loss does not prove finite weights: a huge step can
        # leave BatchNorm's running variance at inf, which only evaluation sees.
        if not math.isfinite(test_loss):
            raise self._diverged(f"the test loss became {test_loss} after epoch {self.epoch + 1}")
        self.epoch += 1
        record = self.sums.record(
            self.epoch, self.sched.last_epoch, test_loss, test_acc, self.train_time
        )
        self.history.append(record)
        self.sums = EpochSums()
        # Checkpoint first, then the metrics line: if the run dies in between,
        # the resume rewrites metrics.jsonl from the checkpoint's history.
        self.folder.save_checkpoint(self._state())
        self.folder.append_metrics(record)
        self.log(
            f"epoch {self.epoch:>3}/{self.cfg.epochs}  "
            f"train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:5.1f}%  "
            f"test loss {test_loss:.4f} acc {100 * test_acc:5.1f}%  "
            f"lr {record['lr']:.4f}  {record['images_per_s']:.0f} img/s  {wall_s:.1f} s"
        )
