"""Stochastic gradient descent and learning-rate schedules, as in PyTorch.

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = MultiStepLR(opt, milestones=[100, 150], gamma=0.1)
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        sched.step()                      # once per epoch here

A parameter is any object with `.data` (a NumPy or CuPy array, updated in
place, so every other reference to that array sees the new values) and
`.grad` (an array of the same shape and dtype, or None to skip the parameter).
The update (`sgd_update`) is written with array operators and methods only,
so the same code runs on both kinds of array. On a GPU, `SGD.step` hands the
parameters of a group to the CUDA backend instead, which applies the same
rule to all of them in one kernel launch (kernels/sgd.cu) rather than 5 to 7
launches per parameter, with the same numbers.

SGD's rule, PyTorch's exactly (g is the gradient, p the parameter, b the
momentum buffer; lr, m, wd, d the hyperparameters):

    g = g + wd * p                      weight decay (L2), added to the gradient
    b = g                               on the first step
    b = m * b + (1 - d) * g             on later steps
    g = g + m * b  if nesterov  else  b
    p = p - lr * g

Note that the learning rate multiplies the buffer, not the gradient inside it
(unlike Sutskever et al.'s formulation): changing lr mid-run changes the step
at once, with no momentum lag.

Dtype discipline: hyperparameters enter the arithmetic as Python floats, which
under NumPy 2's promotion rules (NEP 50) never change an array's dtype; a
NumPy float64 scalar would silently turn a float32 update into a float64 one.
"""

from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import backends
from .backends.device import full_like_device, is_cupy_array
from .grad_mode import enable_grad


def _is_number(value: Any) -> bool:
    """A real number (Python or NumPy), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _array_like(data: Any, value: Any) -> Any:
    """A new array holding `value`, of the same kind (NumPy or CuPy) and dtype as `data`.

    Used to load a saved buffer: a checkpoint written on one device may be
    read on the other.
    """
    return full_like_device(value, data).copy()


def _is_int(value: Any) -> bool:
    """An integer (Python or NumPy), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Optimizer:
    """What every optimiser shares: param groups, per-parameter state,
    zero_grad and (de)serialisation. Subclasses define `step` and `_validate`.

    `param_groups` is a list of dicts, each with "params" (a list of
    parameters) and that group's hyperparameters (the defaults, overridden by
    whatever the group dict gives). `state[i]` holds the state of parameter i,
    numbering all parameters in group order.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self._index: dict[int, int] = {}  # id(param) -> its number
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if isinstance(params[0], dict):
            for group in params:
                self.add_param_group(group)
        else:
            self.add_param_group({"params": params})

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters."""
        name = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(
                f"{name}: a param group must be a dict with a 'params' key, got {group!r:.80}"
            )
        params = group["params"]
        params = [params] if hasattr(params, "grad") else list(params)
        seen: set[int] = set()
        for p in params:
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(
                    f"{name}: parameters must have .data and .grad attributes, "
                    f"got {type(p).__name__}"
                )
            if id(p) in self._index or id(p) in seen:
                raise ValueError(f"{name}: a parameter appears more than once")
            seen.add(id(p))
        full = {**self.defaults, **group, "params": params}
        self._validate(full)
        for p in params:
            self._index[id(p)] = len(self._index)
        self.param_groups.append(full)

    def _validate(self, group: dict[str, Any]) -> None:
        pass

    def _params(self) -> list[Any]:
        """All parameters, in their numbering order."""
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: set every .grad to None (or fill it with zeros)."""
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def state_dict(self) -> dict[str, Any]:
        """{"state": {i: {name: array}}, "param_groups": [{hyper..., "params": [i, ...]}]}.

        Arrays are copies: later steps do not change a saved state_dict.
        """
        state = {
            i: {k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()}
            for i, s in self.state.items()
        }
        groups = []
        for group in self.param_groups:
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = [self._index[id(p)] for p in group["params"]]
            groups.append(saved)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and buffers saved by `state_dict`.

        Buffers are copied into new arrays of the parameter's array type and
        dtype, so a float32 run resumes bit for bit.
        """
        name = f"{type(self).__name__}.load_state_dict"
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: the state has {len(groups)} param groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{name}: a param group has {len(group['params'])} parameters here "
                    f"but {len(saved['params'])} in the state"
                )
        params = self._params()
        new_state: dict[int, dict[str, Any]] = {}
        for key, s in state_dict["state"].items():
            i = int(key)  # keys may have become strings in a file format
            if not 0 <= i < len(params):
                raise ValueError(f"{name}: state for parameter {i}, but there are {len(params)}")
            data = params[i].data
            new_state[i] = {}
            for k, v in s.items():
                if hasattr(v, "shape"):
                    if tuple(v.shape) != tuple(data.shape):
                        raise ValueError(
                            f"{name}: {k} of parameter {i} has shape {tuple(v.shape)}, "
                            f"the parameter has shape {tuple(data.shape)}"
                        )
                    v = _array_like(data, v)
                new_state[i][k] = v
        for saved, group in zip(groups, self.param_groups):
            hyper = {k: v for k, v in saved.items() if k != "params"}
            self._validate({**group, **hyper})
            group.update(hyper)
        self.state = new_state

    def step(self) -> None:
        raise NotImplementedError


def sgd_update(
    param: Any,
    grad: Any,
    buf: Any | None,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> Any | None:
    """One parameter's SGD step, in place: the rule of the module docstring.

    param, grad and buf (the momentum buffer, None before the first step)
    are arrays of one shape and dtype; param (and buf) are updated in place.
    Returns the buffer (a new one on the first step; None without momentum).
    kernels/sgd.cu applies the same rule to every parameter in one launch.
    """
    g = -grad if maximize else grad
    if weight_decay != 0.0:
        g = g + weight_decay * param  # a new array: grad is left alone
    if momentum != 0.0:
        if buf is None:
            buf = g.copy()  # a copy: must not alias grad
        else:
            buf *= momentum
            buf += (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    param -= lr * g  # in place: other references see the update
    return buf


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum
    and weight decay; PyTorch's `torch.optim.SGD` update rule exactly (see the
    module docstring).

    Args:
        params: an iterable of parameters, or of param-group dicts such as
            {"params": bn_params, "weight_decay": 0.0} whose keys override
            the defaults below for that group.
        lr: learning rate (>= 0).
        momentum: momentum factor m (>= 0; 0 means plain SGD, no buffer).
        dampening: d in b = m * b + (1 - d) * g.
        weight_decay: L2 penalty wd (>= 0), added to the gradient as wd * p.
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: ascend the objective instead (the gradient's sign flipped).

    The signature, order and defaults are PyTorch's, so a positional call such
    as ``SGD(params, 0.1, 0.9, 0, 5e-4)`` means the same in both (dampening 0,
    weight decay 5e-4); ``nesterov`` must be a bool, so a number passed there
    by mistake is an error, not a silent switch.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        for key in ("lr", "momentum", "weight_decay"):
            value = group[key]
            if not _is_number(value) or value < 0:
                raise ValueError(f"SGD: {key} must be a number >= 0, got {value!r}")
        if not _is_number(group["dampening"]):
            raise ValueError(f"SGD: dampening must be a number, got {group['dampening']!r}")
        for key in ("nesterov", "maximize"):
            if not isinstance(group.get(key, False), (bool, np.bool_)):
                raise TypeError(f"SGD: {key} must be True or False, got {group[key]!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "SGD: nesterov=True needs momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient, in place.

        ``closure``, as in PyTorch: a function that clears the gradients,
        recomputes the loss, calls backward and returns the loss; it is called
        (with the graph recorded) before the update, and its loss returned.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            # float(): a NumPy float64 here (from a schedule or a loaded
            # checkpoint) would promote a float32 update to float64.
            lr = float(group["lr"])
            momentum = float(group["momentum"])
            dampening = float(group["dampening"])
            weight_decay = float(group["weight_decay"])
            nesterov = bool(group["nesterov"])
            maximize = bool(group.get("maximize", False))
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.shape != p.data.shape or p.grad.dtype != p.data.dtype:
                    raise ValueError(
                        f"SGD.step: a parameter of shape {p.data.shape} and dtype "
                        f"{p.data.dtype} has a gradient of shape {p.grad.shape} and dtype "
                        f"{p.grad.dtype}"
                    )
            index = [self._index[id(p)] for p in params]
            buffers = [self.state.get(i, {}).get("momentum_buffer") for i in index]
            hyper = (lr, momentum, dampening, weight_decay, nesterov, maximize)
            on_gpu = [is_cupy_array(p.data) for p in params]
            if any(on_gpu):
                # The CUDA backend's fused update: every parameter in one
                # launch, with the rule of sgd_update.
                gpu = [i for i, yes in enumerate(on_gpu) if yes]
                new = backends.cuda().sgd_step(
                    [params[i].data for i in gpu],
                    [params[i].grad for i in gpu],
                    [buffers[i] for i in gpu],
                    *hyper,
                )
                for i, buf in zip(gpu, new):
                    buffers[i] = buf
            for i, p in enumerate(params):
                if not on_gpu[i]:
                    buffers[i] = sgd_update(p.data, p.grad, buffers[i], *hyper)
                if buffers[i] is not None:
                    self.state.setdefault(index[i], {})["momentum_buffer"] = buffers[i]
                if hasattr(p, "bump_version"):  # a graph that saved p is now stale
                    p.bump_version()
        return loss


# --------------------------------------------------------------------------- #
# Learning-rate schedules
# --------------------------------------------------------------------------- #


class LRScheduler:
    """Sets each param group's "lr" from a formula of a step counter.

    The counter, `last_epoch` (PyTorch's name), is whatever you advance with
    `step()`: call it once per epoch and milestones/step_size/T_max count
    epochs; once per iteration and they count iterations. Construction sets
    the learning rate for counter 0. Each group's starting rate is kept in
    the group as "initial_lr" (and in `base_lrs`).

    Subclasses define `lr_at(epoch)`: the rates of all groups at that count,
    in closed form, so any point of the schedule can be computed directly.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = []
        self.step()

    def lr_at(self, epoch: int) -> list[float]:
        raise NotImplementedError

    def step(self) -> None:
        """Advance the counter by one and set the learning rates."""
        self.last_epoch += 1
        self._last_lr = [float(lr) for lr in self.lr_at(self.last_epoch)]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The rates set by the last step (one per param group)."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (which has its own state_dict)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


def _check_number(fn: str, name: str, value: Any, minimum: float, strict: bool = False) -> None:
    ok = _is_number(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{fn}: {name} must be a number {relation} {minimum}, got {value!r}")


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size): divide by 1/gamma every step_size."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        if not _is_int(step_size) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be an int >= 1, got {step_size!r}")
        _check_number("StepLR", "gamma", gamma, 0.0, strict=True)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int) -> list[float]:
        return [base * self.gamma ** (epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= epoch).

    He et al. 2016 (CIFAR-10): lr 0.1, divided by 10 at 32k and 48k
    iterations; per epoch at batch 128 that is about milestones=[82, 123].
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        milestones = list(milestones)
        if any(not _is_int(m) for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"MultiStepLR: milestones must be increasing ints, got {milestones!r}")
        _check_number("MultiStepLR", "gamma", gamma, 0.0, strict=True)
        self.milestones = milestones
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int) -> list[float]:
        passed = bisect_right(self.milestones, epoch)
        return [base * self.gamma**passed for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2.

    Falls from base_lr at epoch 0 to eta_min at epoch T_max (Loshchilov &
    Hutter's SGDR without restarts).
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        if not _is_int(T_max) or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be an int >= 1, got {T_max!r}")
        _check_number("CosineAnnealingLR", "eta_min", eta_min, 0.0)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int) -> list[float]:
        cos = (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0
        return [self.eta_min + (base - self.eta_min) * cos for base in self.base_lrs]


class _Warmup(LRScheduler):
    """Multiplies another schedule by a warm-up factor for the first epochs.

    The wrapped schedule sees the same (absolute) counter, so its milestones
    keep their meaning: MultiStepLR([100, 150]) under a 5-epoch warm-up still
    divides at 100 and 150. (PyTorch's SequentialLR restarts the second
    schedule at 0 instead.) Pass the optimizer itself instead of a schedule
    for a warm-up to a constant rate.
    """

    def __init__(
        self,
        scheduler: LRScheduler | Optimizer,
        warmup_epochs: int,
        start_factor: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        name = type(self).__name__
        if not _is_int(warmup_epochs) or warmup_epochs < 0:
            raise ValueError(f"{name}: warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        _check_number(name, "start_factor", start_factor, 0.0)
        if start_factor > 1:
            raise ValueError(f"{name}: start_factor must be <= 1, got {start_factor!r}")
        if isinstance(scheduler, LRScheduler):
            self.scheduler: LRScheduler | None = scheduler
            optimizer = scheduler.optimizer
        elif isinstance(scheduler, Optimizer):
            self.scheduler, optimizer = None, scheduler
        else:
            raise TypeError(
                f"{name}: expected an LRScheduler or an Optimizer, got {type(scheduler).__name__}"
            )
        self.warmup_epochs = warmup_epochs
        self.start_factor = start_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        raise NotImplementedError

    def lr_at(self, epoch: int) -> list[float]:
        inner = self.scheduler.lr_at(epoch) if self.scheduler is not None else self.base_lrs
        f = self.factor(epoch) if epoch < self.warmup_epochs else 1.0
        return [lr * f for lr in inner]

    def step(self) -> None:
        super().step()
        if self.scheduler is not None:  # keep the wrapped counter in step
            self.scheduler.last_epoch = self.last_epoch
            self.scheduler._last_lr = self.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in super().state_dict().items() if k != "scheduler"}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        inner = state_dict.pop("scheduler", None)
        self.__dict__.update(state_dict)
        if inner is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(inner)


class LinearWarmup(_Warmup):
    """Ramp the rate linearly from start_factor * lr up to lr over warmup_epochs
    (Goyal et al. 2017), then follow the wrapped schedule.

    factor(e) = start_factor + (1 - start_factor) * e / warmup_epochs  for e < warmup_epochs.
    """

    def factor(self, epoch: int) -> float:
        return self.start_factor + (1.0 - self.start_factor) * epoch / self.warmup_epochs


class ConstantWarmup(_Warmup):
    """Hold the rate at start_factor * lr for warmup_epochs, then follow the
    wrapped schedule. He et al. 2016 train ResNet-110 on CIFAR-10 this way:
    0.01 (start_factor=0.1 of 0.1) for the first ~400 iterations.
    """

    def factor(self, epoch: int) -> float:
        return self.start_factor
