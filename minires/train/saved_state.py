"""Checking a training checkpoint before anything is taken from it.

A checkpoint that passes its CRC can still be wrong: a section dropped, another
model's optimiser state, a string where a counter should be. Restoring such a
file would fail halfway through (a traceback), or worse, succeed and train on
nonsense. So every section is checked first, and the first problem becomes a
``UserError`` that names the file, the entry, what was expected and what
was found:

    damaged checkpoint 'runs/a/checkpoint.npz': scheduler.last_epoch:
    expected an integer, found 'x' (str)

Most sections are checked against a *template*: the state that the same
config gives a freshly built run (``Trainer._state()`` before training). A
saved section must have the template's dict keys, list lengths, array dtypes
and shapes, strings, and kinds of values. The weights are checked by
``Module.load_state_dict``, which names every bad key; the optimiser's
momentum buffers against the model's parameters.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.device import is_cupy_array
from .config import NUM_CLASSES, TrainConfig
from .errors import UserError
from .metrics import EpochSums

# What restoring a checked checkpoint could still raise, were a check missing.
RESTORE_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError)


class Damaged(UserError):
    """A checkpoint's entry `where` is not what a minires run would have saved."""

    def __init__(self, path: str | Path, where: str, problem: str) -> None:
        super().__init__(f"damaged checkpoint {str(path)!r}: {where}: {problem}")


def describe(value: Any) -> str:
    """A short description of what was found: "'x' (str)", "a list of 3", ..."""
    if isinstance(value, np.ndarray) or is_cupy_array(value):
        return f"a {value.dtype} array of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)!r}"[:120]
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _scalar_problem(found: Any, template: Any) -> str | None:
    """What is wrong with a leaf value, or None if it matches the template's kind."""
    if isinstance(template, (bool, np.bool_)):
        ok, what = isinstance(found, (bool, np.bool_)), "true or false"
    elif _is_int(template):
        ok, what = _is_int(found), "an integer"
    elif _is_real(template):
        ok, what = _is_real(found), "a number"
    elif isinstance(template, str):
        ok, what = found == template, repr(template)
    elif template is None:
        ok, what = found is None, "None"
    else:
        raise TypeError(f"no rule for a template value of type {type(template).__name__}")
    return None if ok else f"expected {what}, found {describe(found)}"


def expect_like(found: Any, template: Any, where: str, path: str | Path) -> None:
    """Raise Damaged unless `found` has the structure and kinds of `template`."""
    if isinstance(template, dict):
        if not isinstance(found, dict):
            raise Damaged(path, where, f"expected a dict, found {describe(found)}")
        missing = [k for k in template if k not in found]
        extra = [k for k in found if k not in template]
        if missing or extra:
            raise Damaged(path, where, f"expected keys {list(template)}, found {list(found)}")
        for key, value in template.items():
            expect_like(found[key], value, f"{where}.{key}", path)
    elif isinstance(template, (list, tuple)):
        if not isinstance(found, list) or len(found) != len(template):
            raise Damaged(
                path, where, f"expected a list of {len(template)}, found {describe(found)}"
            )
        for i, (f, t) in enumerate(zip(found, template)):
            expect_like(f, t, f"{where}[{i}]", path)
    elif isinstance(template, np.ndarray) or is_cupy_array(template):
        if not isinstance(found, np.ndarray) or (found.dtype, found.shape) != (
            template.dtype,
            template.shape,
        ):
            expected = f"a {template.dtype} array of shape {tuple(template.shape)}"
            raise Damaged(path, where, f"expected {expected}, found {describe(found)}")
    else:
        problem = _scalar_problem(found, template)
        if problem:
            raise Damaged(path, where, problem)


def _expect_range(value: int, low: int, high: int, where: str, path: str | Path) -> None:
    """`value` (an int already) must lie in [low, high]."""
    if not low <= value <= high:
        expected = f"{low}" if low == high else f"an integer in [{low}, {high}]"
        raise Damaged(path, where, f"expected {expected}, found {value}")


# --------------------------------------------------------------------------- #
# What both `minires eval` and `--resume` read: the config and the data section
# --------------------------------------------------------------------------- #


def check_config(config: Any, path: str | Path) -> None:
    """The saved settings: every TrainConfig field, each valid."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if not isinstance(config, dict):
        raise Damaged(path, "config", f"expected a dict, found {describe(config)}")
    missing = [name for name in fields if name not in config]
    if missing:
        raise Damaged(path, "config", f"expected the settings {list(fields)}; missing {missing}")
    if not isinstance(config["augment"], bool):
        raise Damaged(
            path, "config.augment", f"expected true or false, found {describe(config['augment'])}"
        )
    if not (config["data_dir"] is None or isinstance(config["data_dir"], str)):
        raise Damaged(
            path, "config.data_dir", f"expected a folder name, found {describe(config['data_dir'])}"
        )
    try:
        TrainConfig.from_dict(config).validate()
    except UserError as e:
        raise Damaged(path, "config", str(e)) from None


def check_data(data: Any, path: str | Path, channels: int | None = None) -> None:
    """The data section: one mean and one (positive) std per channel, and the class count.

    `channels`: how many the data set has (None: as many as the file says, at least one).
    """
    if channels is None:
        mean = data.get("mean") if isinstance(data, dict) else None
        channels = len(mean) if isinstance(mean, list) and mean else 1
    template = {"mean": [0.0] * channels, "std": [1.0] * channels, "num_classes": NUM_CLASSES}
    expect_like(data, template, "data", path)
    for key in ("mean", "std"):
        values = data[key]
        if not all(math.isfinite(v) and (key == "mean" or v > 0) for v in values):
            what = "finite numbers" if key == "mean" else "positive numbers"
            raise Damaged(path, f"data.{key}", f"expected {what}, found {values}")
    _expect_range(data["num_classes"], NUM_CLASSES, NUM_CLASSES, "data.num_classes", path)


def check_run_epoch(run: Any, path: str | Path) -> None:
    """What `minires eval` reads of the run section: the epochs completed."""
    if not isinstance(run, dict) or not _is_int(run.get("epoch")) or run["epoch"] < 0:
        found = describe(run.get("epoch") if isinstance(run, dict) else run)
        raise Damaged(path, "run.epoch", f"expected an integer >= 0, found {found}")


# --------------------------------------------------------------------------- #
# What only --resume reads
# --------------------------------------------------------------------------- #


def _param_counts(groups: Any) -> list[int] | None:
    """How many parameters each param group lists (None if they are not lists of dicts)."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return None
    if not all(isinstance(g.get("params"), list) for g in groups):
        return None
    return [len(g["params"]) for g in groups]


def _check_optimizer(found: Any, template: dict[str, Any], params: list[Any], path: str | Path):
    """Param groups like the template's; each buffer the dtype and shape of its parameter."""
    if not isinstance(found, dict) or sorted(found) != ["param_groups", "state"]:
        raise Damaged(
            path, "optimizer", f"expected keys state, param_groups; found {describe(found)}"
        )
    groups = found["param_groups"]
    expected, counts = _param_counts(template["param_groups"]), _param_counts(groups)
    if counts is not None and counts != expected:
        raise Damaged(
            path,
            "optimizer.param_groups",
            f"expected state for {expected} parameters (this model's), found {counts}: "
            "another model's optimiser state?",
        )
    expect_like(groups, template["param_groups"], "optimizer.param_groups", path)
    state = found["state"]
    if not isinstance(state, dict):
        raise Damaged(path, "optimizer.state", f"expected a dict, found {describe(state)}")
    for key, buffers in state.items():
        where = f"optimizer.state.{key}"
        if not (key.isascii() and key.isdigit() and int(key) < len(params)):
            raise Damaged(path, where, f"expected a parameter number < {len(params)}")
        p = params[int(key)].data
        if not isinstance(buffers, dict):
            raise Damaged(path, where, f"expected a dict of arrays, found {describe(buffers)}")
        for name, buf in buffers.items():
            expect_like(buf, np.empty(p.shape, p.dtype), f"{where}.{name}", path)


def check_resume_state(saved: dict[str, Any], trainer: Any) -> None:
    """Raise Damaged unless `saved` can continue the run that `trainer` has set up.

    `saved` has passed `load_run_checkpoint` (config, model and data present,
    config valid). `trainer` is the Trainer, built but not yet restored: its
    ``_state()`` is the template, and its model, optimiser, loader and data
    say how many parameters, batches and channels there are.
    """
    template, cfg, path = trainer._state(), trainer.cfg, trainer.ckpt_path
    params = [p for group in trainer.opt.param_groups for p in group["params"]]
    steps_per_epoch = len(trainer.train_loader)
    channels = trainer.data.train_images.shape[1]
    missing = [k for k in template if k not in saved]
    if missing:
        raise Damaged(path, missing[0], f"missing (a run's checkpoint holds {', '.join(template)})")
    _check_optimizer(saved["optimizer"], template["optimizer"], params, path)
    for section in ("scheduler", "loader", "rng", "run"):
        expect_like(saved[section], template[section], section, path)
    check_data(saved["data"], path, channels)
    run, loader = saved["run"], saved["loader"]
    _expect_range(run["epoch"], 0, cfg.epochs, "run.epoch", path)
    _expect_range(loader["epoch"], run["epoch"], run["epoch"], "loader.epoch", path)
    _expect_range(loader["batch"], 0, steps_per_epoch - 1, "loader.batch", path)
    _expect_range(loader["seed"], cfg.seed, cfg.seed, "loader.seed", path)
    history = saved["history"]
    if not isinstance(history, list) or len(history) != run["epoch"]:
        n = run["epoch"]
        raise Damaged(
            path, "history", f"expected a list of {n} (one per epoch), found {describe(history)}"
        )
    record = EpochSums().record(1, 0, 0.0, 0.0, 0.0)
    for i, entry in enumerate(history):
        expect_like(entry, record, f"history[{i}]", path)
