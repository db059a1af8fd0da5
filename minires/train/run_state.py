"""What a run's checkpoint holds, taken from a Trainer and given back to one.

``collect`` is everything the rest of the run depends on (weights, optimiser,
schedule, data loader position, random generators, the epoch's sums so far,
the history); ``restore`` is its inverse, so that ``--resume`` continues
exactly where the checkpoint was taken. (saved_state.py checks a checkpoint
against a fresh run's ``collect`` before ``restore`` takes anything from it.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..nn import init as nn_init
from .build import load_model_state
from .metrics import EpochSums

if TYPE_CHECKING:
    from .trainer import Trainer


def collect(trainer: Trainer) -> dict[str, Any]:
    """Everything the rest of ``trainer``'s run depends on: what the checkpoint holds."""
    return {
        "config": trainer.cfg.to_dict(),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.opt.state_dict(),
        "scheduler": trainer.sched.state_dict(),
        "loader": trainer.train_loader.state_dict(),
        "rng": {
            "init": nn_init.get_generator().bit_generator.state,
            "numpy": np.random.get_state(legacy=False),
        },
        "run": {
            "epoch": trainer.epoch,
            "partial": trainer.sums.to_dict(),
            "train_time_s": trainer.train_time,
            "finished": trainer.epoch >= trainer.cfg.epochs,
        },
        "data": {
            "mean": list(trainer.data.mean),
            "std": list(trainer.data.std),
            "num_classes": trainer.data.num_classes,
        },
        "history": trainer.history,
    }


def restore(trainer: Trainer, saved: dict[str, Any]) -> None:
    """The inverse of ``collect``: ``trainer`` continues exactly where ``saved`` was taken."""
    load_model_state(trainer.model, saved["model"], f"the checkpoint {str(trainer.ckpt_path)!r}")
    # (Momentum buffers are copied to wherever their parameters live.)
    trainer.opt.load_state_dict(saved["optimizer"])
    trainer.sched.load_state_dict(saved["scheduler"])
    trainer.train_loader.load_state_dict(saved["loader"])
    nn_init.get_generator().bit_generator.state = saved["rng"]["init"]
    np.random.set_state(saved["rng"]["numpy"])
    run = saved["run"]
    trainer.epoch = int(run["epoch"])
    trainer.sums = EpochSums.from_dict(run["partial"])
    trainer.train_time = float(run["train_time_s"])
    trainer.history = list(saved["history"])
