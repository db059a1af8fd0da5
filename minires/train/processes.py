"""Which trainer a command line gets, and how many processes run it.

``minires train --nproc N`` started by hand runs ``mpiexec -n N`` on the same
command line (launch_processes); each of the N processes then sees that
mpiexec started it and builds a DistributedTrainer (make_trainer). Only rank 0
reports; the others leave with the same exit status (quiet_exit_status).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..distributed.comm import launched_world_size
from ..distributed.launch import run_mpiexec
from .config import TrainConfig
from .distributed import DistributedTrainer
from .errors import UserError
from .trainer import RunResult, Trainer

__all__ = [
    "launch_processes",
    "launched_world_size",
    "make_trainer",
    "quiet_exit_status",
    "with_world_size",
]


def make_trainer(cfg: TrainConfig | None, out_dir: str | Path, **kwargs: Any) -> Trainer:
    """A Trainer, or a DistributedTrainer when mpiexec started several processes."""
    if launched_world_size() > 1:
        return DistributedTrainer(cfg, out_dir, **kwargs)
    trainer = Trainer(cfg, out_dir, **kwargs)
    if trainer.cfg.nproc != 1:
        raise UserError(
            f"this run trains on {trainer.cfg.nproc} processes; continue it with "
            f"--nproc {trainer.cfg.nproc}"
        )
    return trainer


def with_world_size(given: dict[str, Any]) -> dict[str, Any]:
    """The command line's options, with nproc set to the processes mpiexec started."""
    W = launched_world_size()
    if W > 1:
        if given.get("nproc", W) != W:
            raise UserError(f"--nproc {given['nproc']} but mpiexec started {W} processes")
        given = {**given, "nproc": W}
    return given


def launch_processes(nproc: int, argv: Sequence[str]) -> int:
    """Run this command line (``minires ARGV``) on ``nproc`` processes; their exit status."""
    try:
        return run_mpiexec(nproc, argv)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def quiet_exit_status(result: RunResult) -> int:
    """The exit status of a run, for the processes that do not print it (see cli.cmd_train)."""
    if result.status == "aborted":
        return 128 + int(signal.SIGINT)
    if result.status == "interrupted":
        return 128 + int(result.signal or signal.SIGINT)
    return 0
