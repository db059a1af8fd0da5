"""Data-parallel training: the Trainer on every rank of an MPI process group.

    mpiexec -n 2 minires train ...        or: minires train --nproc 2 ...

Every process runs the same Trainer on the same model; what changes is:

* the data: each process takes its block of every global batch of
  nproc * batch_size images (minires.data.DistributedDataLoader), so the
  epoch has the steps one process at batch nproc * batch_size would take;
* the step (``distributed_train_step``): forward on the shard, the loss and
  accuracy summed over the processes (so every process decides alike whether
  the loss is finite), backward, the gradients averaged in a few bucketed
  all-reduces, the same SGD step everywhere; then rank 0's buffers are
  broadcast, so that even plain BatchNorm's running statistics stay equal;
* BatchNorm: SyncBatchNorm (statistics of the global batch) unless
  ``sync_bn`` is off;
* the engine: MPI on CPUs; with ``--device cuda`` one GPU per process and
  NCCL for the gradients and SyncBatchNorm's sums, on the device (MPI still
  carries the few host numbers: the loss, the stop flag, the fingerprints);
* evaluation: each process evaluates its share of the test set, the sums are
  all-reduced;
* rank 0 alone writes the checkpoint, metrics, config and plot, and prints;
  at every checkpoint the processes prove that they hold bit-identical
  weights, buffers and momentum (a SHA-256 of each, compared);
* a stop (Ctrl-C, SIGTERM: mpiexec passes them on to every process) is agreed
  on after each step, so every process stops after the *same* step and rank 0
  saves it. Resuming with the same number of processes continues exactly, as
  a one-process run does.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as mdata
from .. import functional as F
from ..autograd import Tensor
from ..backends.device import to_device
from ..backends.parallel import set_num_threads
from ..distributed import Communicator, GradientBuckets, broadcast_arrays, check_ranks_agree
from ..distributed.group import init_process_group, with_nccl
from ..distributed.launch import threads_per_process
from ..nn import Module, convert_sync_batchnorm
from ..optim import Optimizer
from .build import build_optimizer
from .config import TrainConfig
from .errors import UserError
from .evaluate import evaluate
from .run_folder import RunFolder
from .signals import say
from .step import StepResult, count_correct
from .trainer import Trainer


def distributed_train_step(
    model: Module, optimizer: Optimizer, buckets: GradientBuckets, images: Any, labels: Any
) -> StepResult:
    """train_step (step.py) on this process's shard, with the gradients averaged over all.

    Returns the loss and accuracy of the *global* batch, the same on every
    process; a NaN or infinite loss anywhere means no update anywhere.
    """
    comm = buckets.comm
    logits = model(Tensor(images))
    loss = F.cross_entropy(logits, labels)
    n = len(labels)
    sums = np.array([float(loss.item()) * n, count_correct(logits, labels), n], np.float64)
    comm.all_reduce(sums)
    result = StepResult(loss=float(sums[0] / sums[2]), correct=int(sums[1]))
    if math.isfinite(result.loss):
        optimizer.zero_grad()
        loss.backward()
        buckets.all_reduce_gradients()
        optimizer.step()
    return result


class _QuietFolder(RunFolder):
    """The run folder as ranks other than 0 see it: read, never written."""

    def prepare(self) -> list[Path]:
        return []  # rank 0 makes the folder and removes what a killed run left

    def _write(self, path: Path, write: Callable[[], None]) -> None: ...
    def save_checkpoint(self, state: dict[str, Any]) -> None: ...
    def write_config(self, config: dict[str, Any]) -> None: ...
    def write_metrics(self, history: list[dict[str, Any]]) -> None: ...
    def append_metrics(self, record: dict[str, Any]) -> None: ...


def collectively(comm: Communicator, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank; if it failed on any rank, raise on every rank.

    (Otherwise the ranks that succeeded would wait forever, in their next
    collective, for the one that failed.) The failing rank raises its own error.
    """
    error: BaseException | None = None
    try:
        result = fn()
    except Exception as e:  # re-raised below, on every rank
        error = e
    if comm.agree(error is not None):
        if error is not None:
            raise error
        raise UserError("another process of this run failed (its message is above)")
    return result


class DistributedTrainer(Trainer):
    """A Trainer for one rank of ``comm`` (default: the MPI group mpiexec started).

    Same arguments as Trainer; ``cfg.nproc`` must be the number of processes.
    """

    def __init__(
        self,
        cfg: TrainConfig | None,
        out_dir: str | Path,
        resume: bool = False,
        overrides: dict[str, Any] | None = None,
        progress: str = "auto",
        log: Callable[[str], None] = print,
        comm: Communicator | None = None,
    ) -> None:
        self.comm = comm if comm is not None else init_process_group()
        self.is_writer = self.comm.rank == 0
        self._pending_signal: int | None = None
        if not self.is_writer:
            progress, log = "none", _silent
        collectively(
            self.comm,
            lambda: Trainer.__init__(self, cfg, out_dir, resume, overrides, progress, log),
        )
        if not self.is_writer:
            self.folder = _QuietFolder(self.folder.path)
        if self.cfg.nproc != self.comm.world_size:
            raise UserError(
                f"this run trains on {self.cfg.nproc} process(es) but {self.comm.world_size} "
                f"were started; use --nproc {self.cfg.nproc}"
            )

    # -- setting up -------------------------------------------------------------

    def _setup(self) -> None:
        if self.cfg.device == "cuda":
            # One GPU per process, chosen before the model is moved to it;
            # gradients and SyncBatchNorm's sums are then reduced by NCCL.
            self.comm = collectively(self.comm, lambda: with_nccl(self.comm))
        comm = self.comm
        if comm.world_size > 1:
            set_num_threads(threads_per_process(_local_processes(comm)))
        collectively(comm, super()._setup)
        if self.cfg.sync_bn:
            convert_sync_batchnorm(self.model, comm)
        check_ranks_agree(self._state_arrays(), comm, "initial weights")
        self.buckets = GradientBuckets(self.model.parameters(), comm)
        self.train_loader = _shard_train_loader(self.train_loader, comm)
        self.test_loader = _shard_test_loader(self.test_loader, comm)
        # The schedule counts steps, and an epoch now has fewer (global batches).
        self.opt, self.sched = build_optimizer(self.cfg, self.model, len(self.train_loader))
        if self.saved is not None:
            self.opt.load_state_dict(self.saved["optimizer"])
            self.sched.load_state_dict(self.saved["scheduler"])

    def _log_start(self) -> None:
        super()._log_start()
        cfg, W = self.cfg, self.comm.world_size
        bn = "synchronised" if cfg.sync_bn else "per-process (not synchronised)"
        engine = "NCCL (device arrays) and MPI" if self.comm.name == "nccl" else "MPI"
        self.log(
            f"  data parallel: {W} processes x batch {cfg.batch_size} = "
            f"{W * cfg.batch_size} images per step, {bn} BatchNorm, "
            f"{threads_per_process(_local_processes(self.comm))} thread(s) per process, "
            f"collectives over {engine}"
        )

    # -- the hooks of the loop --------------------------------------------------

    def _step(self, x: Any, y: Any) -> tuple[StepResult, int]:
        device = self.cfg.device
        x, y = to_device(x, device), to_device(y, device)
        step = distributed_train_step(self.model, self.opt, self.buckets, x, y)
        broadcast_arrays(list(self.model.buffers()), self.comm)  # plain BN: rank 0's statistics
        return step, len(y) * self.comm.world_size

    def _evaluate(self) -> tuple[float, float]:
        loss, acc = evaluate(self.model, self.test_loader, self.cfg.device)
        n = len(self.test_loader.labels)
        sums = self.comm.all_reduce(np.array([loss * n, round(acc * n), n], np.float64))
        return float(sums[0] / max(sums[2], 1)), float(sums[1] / max(sums[2], 1))

    def _state(self) -> dict[str, Any]:
        check_ranks_agree(self._state_arrays(), self.comm, "weights, buffers or momentum")
        return super()._state()

    def _state_arrays(self) -> list[Any]:
        return list(self.model.state_dict().values()) + _walk_arrays(self.opt.state)

    # -- stopping together --------------------------------------------------------

    def request_stop(self, signum: int | None = None) -> None:
        """Note the signal; the processes agree on it after the step (see run)."""
        self._pending_signal = signum if signum is not None else int(signal.SIGINT)
        if self.is_writer:
            name = signal.Signals(self._pending_signal).name
            say(f"\n{name}: every process stops after this step; rank 0 saves a checkpoint\n")

    def run(self, on_step: Callable[[Trainer], None] | None = None) -> Any:
        def then_agree(trainer: Trainer) -> None:
            if on_step is not None:
                on_step(trainer)
            pending = np.array([self._pending_signal or 0], np.int64)
            signum = int(self.comm.all_reduce(pending, op="max")[0])
            if signum:
                self._stop_signal = signum

        return super().run(then_agree)


def _silent(text: str) -> None:
    """The log of ranks other than 0."""


def _local_processes(comm: Communicator) -> int:
    """How many processes of the group share this machine (MPI's launchers say)."""
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return comm.world_size


def _walk_arrays(obj: Any) -> list[Any]:
    """Every array inside nested dicts and lists (an optimiser's state), in order."""
    if isinstance(obj, dict):
        return [a for k in sorted(obj, key=str) for a in _walk_arrays(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [a for v in obj for a in _walk_arrays(v)]
    return [obj] if hasattr(obj, "dtype") and hasattr(obj, "shape") else []


def _shard_train_loader(base: mdata.DataLoader, comm: Communicator) -> mdata.DataLoader:
    """This rank's DistributedDataLoader, at the base loader's position."""
    W = comm.world_size
    loader = mdata.DistributedDataLoader(
        base.images,
        base.labels,
        base.batch_size,
        num_replicas=W,
        rank=comm.rank,
        shuffle=True,
        drop_last=len(base.labels) > base.batch_size * W,
        seed=base.seed,
        transform=base.transform,
    )
    loader.load_state_dict(base.state_dict())
    return loader


def _shard_test_loader(base: mdata.DataLoader, comm: Communicator) -> mdata.DataLoader:
    """Every W-th test image, from this rank's: the ranks evaluate the test set between them."""
    mine = slice(comm.rank, None, comm.world_size)
    return mdata.DataLoader(
        base.images[mine], base.labels[mine], base.batch_size, transform=base.transform
    )
