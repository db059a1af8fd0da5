"""What a run computes: ``TrainConfig``, its defaults per data set, and its validation.

    cfg = TrainConfig.for_data("digits", epochs=5)   # the digits defaults, then epochs=5

Every setting is checked here and only here: ``TrainConfig.validate`` raises a
``UserError`` naming the first bad one, and the command line parses its
numeric options with the same ``NUMBER_OPTIONS`` (see minires/options.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import models
from ..backends.device import DEVICES
from ..options import (
    FRACTION,
    NONNEGATIVE_FLOAT,
    NONNEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    NumberOption,
)
from .errors import UserError

DATASETS = ("digits", "cifar10", "procedural")
NUM_CLASSES = 10  # all three have ten classes
SCHEDULES = ("cosine", "step", "constant")

# Defaults that depend on the data set. The digits default is what a bare
# `minires train` runs: the goal is >= 97% test accuracy in under three
# minutes on a 2-core CPU; measured, it reaches 98.9-99.4% (seeds 0-4) in
# about 12 s on an idle machine (~2 min when other processes fight for the
# cores). 12 epochs take 7 s but end at 98.3-99.4%: less margin. The
# digits are 1-channel; the CIFAR nets take 3, so the channel is repeated
# (see datasets.make_transforms). cifar10's defaults are He et al. 2016's recipe
# for ResNet-20 (64k iterations at batch 128 = 164 epochs, lr / 10 at 50% and 75%).
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"model": "resnet20", "epochs": 20, "batch_size": 64, "weight_decay": 5e-4},
    "procedural": {
        "model": "resnet20",
        "epochs": 10,
        "batch_size": 128,
        "weight_decay": 5e-4,
        "num_train": 10_000,
        "num_test": 2_000,
    },
    "cifar10": {
        "model": "resnet20",
        "epochs": 164,
        "batch_size": 128,
        "weight_decay": 1e-4,
        "schedule": "step",
    },
}

# The values each numeric setting accepts (None is also accepted where the
# field's default is None). warmup_epochs must also be < epochs.
NUMBER_OPTIONS: dict[str, NumberOption] = {
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "num_train": POSITIVE_INT,
    "num_test": POSITIVE_INT,
    "seed": SEED,
    "lr": POSITIVE_FLOAT,
    "momentum": FRACTION,
    "weight_decay": NONNEGATIVE_FLOAT,
    "warmup_epochs": NONNEGATIVE_INT,
    "nproc": POSITIVE_INT,
}
_OPTIONAL = ("num_train", "num_test")


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides what a run computes (where it is saved is not part of it)."""

    model: str = "resnet20"
    data: str = "digits"
    data_dir: str | None = None  # the CIFAR-10 folder; unused by digits / procedural
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine: to 0 over the run; step: / 10 at 50% and 75%
    warmup_epochs: int = 0  # linear warm-up from lr / 10, in epochs
    augment: bool = True
    num_train: int | None = None  # use only the first N training images (a random subset)
    num_test: int | None = None
    seed: int = 0
    device: str = "cpu"
    nproc: int = 1  # processes of a data-parallel run (batch_size is per process)
    sync_bn: bool = True  # with nproc > 1: BatchNorm statistics over every process's images

    @classmethod
    def for_data(cls, data: str = "digits", **overrides: Any) -> TrainConfig:
        """The defaults for `data`, then `overrides` (None values are ignored)."""
        if data not in DATA_DEFAULTS:
            raise UserError(_unknown("data set", data, DATASETS))
        values = {**DATA_DEFAULTS[data], **{k: v for k, v in overrides.items() if v is not None}}
        cfg = cls(data=data, **values)
        cfg.validate()
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from ``to_dict``'s output; keys that are not settings are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise UserError naming the first bad setting."""
        for kind, value, valid in (
            ("model", self.model, models.list_models()),
            ("data set", self.data, DATASETS),
            ("schedule", self.schedule, SCHEDULES),
            ("device", self.device, DEVICES),
        ):
            if value not in valid:
                raise UserError(_unknown(kind, value, valid))
        for name, option in NUMBER_OPTIONS.items():
            value = getattr(self, name)
            if not (value is None and name in _OPTIONAL) and not option.accepts(value):
                raise UserError(f"{_flag(name)} must be {option.what}, got {value!r}")
        if self.warmup_epochs >= self.epochs:
            raise UserError(
                f"--warmup-epochs must be an integer in [0, epochs = {self.epochs}), "
                f"got {self.warmup_epochs!r}"
            )


def resolve_resume_config(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Check the options given on a --resume command line against the saved config.

    A resumed run continues with its saved settings; an option given again
    must agree with them (anything else would not continue the same run).
    Only the device may change. Returns the saved config with the device.
    """
    config = dict(saved)
    for key, value in given.items():
        if key == "device":
            config["device"] = value
        elif key in config and config[key] != value:
            raise UserError(
                f"{_flag(key)} {value} differs from the run's saved setting ({config[key]}); "
                "--resume continues a run with its own settings. Start a new run "
                "(another --out) to change them."
            )
    return config


def _flag(name: str) -> str:
    """The command-line option of a setting: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def _unknown(kind: str, value: str, valid: Any) -> str:
    return f"unknown {kind} {value!r}; valid names: {', '.join(valid)}"
