"""Module: a container of parameters, buffers and sub-modules, as in PyTorch.

Assigning a Parameter, a Module or (through ``register_buffer``) an array to
an attribute registers it, so ``named_parameters()`` and ``state_dict()`` can
walk the tree and produce dotted names such as ``layer1.0.conv1.weight``.
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..autograd import Tensor
from ..backends.device import get_array_module, is_cupy_array, to_device
from .parameter import Parameter

Array = Any


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``load_state_dict`` returns: the keys it did not match, as PyTorch's.

    ``missing_keys``: the module's keys absent from the dict (reported when
    strict=False; strict=True raises instead); ``unexpected_keys``: the dict's
    keys the module does not have.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


class StateDictError(RuntimeError, KeyError, ValueError):
    """``load_state_dict`` refused a dict; the message names every bad key.

    A RuntimeError, as PyTorch raises. It is also a KeyError and a ValueError,
    the types minires raised before, so that code catching those still works.
    """

    __str__ = BaseException.__str__  # not KeyError's, which would quote the message


class Module:
    """Base class of every layer and model. Subclasses define ``forward``."""

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    # -- registration -------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self.register_buffer(name, value)  # e.g. `self.num_batches_tracked += 1`
            return
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: look in the three tables.
        for table in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(table)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array: Array | None) -> None:
        """A state array that is saved in state_dict but is not learned."""
        if isinstance(array, Tensor):
            raise TypeError(f"register_buffer: {name} must be a plain array, not a Tensor")
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    def add_module(self, name: str, module: Module | None) -> None:
        self._modules[name] = module

    # -- calling ------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            replaced = hook(self, args, output)
            if replaced is not None:
                output = replaced
        return output

    def register_forward_hook(self, hook: Any) -> RemovableHandle:
        """Call ``hook(module, inputs, output)`` after every forward, as PyTorch does.

        A hook that returns something replaces the output. Returns a handle
        whose ``remove()`` unregisters the hook. Useful to look at (or keep)
        the activations of one layer without changing the model's code.
        """
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # -- walking the tree ---------------------------------------------------

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Every module in the tree (self first), with its dotted name."""
        stack: list[tuple[str, Module]] = [(prefix, self)]
        seen: set[int] = set()
        while stack:  # iterative: a ResNet-1202 is deep
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [
                (f"{name}.{k}" if name else k, m)
                for k, m in module._modules.items()
                if m is not None
            ]
            stack.extend(reversed(children))

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for k, m in self._modules.items():
            if m is not None:
                yield k, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        for mname, module in self.named_modules(prefix):
            for pname, p in module._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        for mname, module in self.named_modules(prefix):
            for bname, b in module._buffers.items():
                if b is not None:
                    yield (f"{mname}.{bname}" if mname else bname), b

    def buffers(self) -> Iterator[Array]:
        for _, b in self.named_buffers():
            yield b

    # -- modes --------------------------------------------------------------

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def apply(self, fn: Any) -> Module:
        for m in self.modules():
            fn(m)
        return self

    # -- state --------------------------------------------------------------

    def state_dict(self) -> OrderedDict[str, Array]:
        """Parameters and buffers by dotted name, as arrays (not copies).

        Parameters come before buffers within each module, module by module,
        in registration order: the order torchvision's models produce.
        """
        state: OrderedDict[str, Array] = OrderedDict()
        for mname, module in self.named_modules():
            dot = f"{mname}." if mname else ""
            for pname, p in module._parameters.items():
                if p is not None:
                    state[dot + pname] = p.data
            for bname, b in module._buffers.items():
                if b is not None:
                    state[dot + bname] = b
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> IncompatibleKeys:
        """Copy arrays into this module's parameters and buffers, in place, as PyTorch.

        Values may be NumPy or CuPy arrays, Tensors or nested lists; each is
        copied into its target, converted to the target's device and dtype.
        Returns ``IncompatibleKeys(missing_keys, unexpected_keys)``, a named
        tuple as PyTorch's ``_IncompatibleKeys``.

        All or nothing: every key, shape and dtype is checked before anything
        is copied, and on any error the module is left unchanged. Errors raise
        ``StateDictError`` (a RuntimeError, as in PyTorch), which names every
        offending key:

        - strict=True (the default): a missing or an unexpected key;
        - always: a shape that differs from the target's, or a value that
          cannot become the target's dtype without changing a number (not
          real numbers, complex values, a fraction into an integer buffer).
          PyTorch casts these silently or with a warning; minires refuses.

        A missing ``num_batches_tracked`` (BatchNorm's counter, absent from
        older torchvision checkpoints) is tolerated as PyTorch tolerates it in
        a dict without version metadata: the buffer keeps its current value
        and the key is not reported missing.
        """
        targets: OrderedDict[str, Array] = OrderedDict()
        params: dict[str, Parameter] = {}  # whose version to bump once copied into
        for mname, module in self.named_modules():
            dot = f"{mname}." if mname else ""
            for pname, p in module._parameters.items():
                if p is not None:
                    targets[dot + pname] = p.data
                    params[dot + pname] = p
            for bname, b in module._buffers.items():
                if b is not None:
                    targets[dot + bname] = b
        missing = [
            k
            for k in targets
            if k not in state_dict and k.rpartition(".")[2] != "num_batches_tracked"
        ]
        unexpected = [k for k in state_dict if k not in targets]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {_short(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {_short(unexpected)}")

        # Check every value, and convert it into a staged copy on the
        # target's device and dtype, before changing anything.
        staged: list[tuple[str, Array, Array]] = []
        bad: list[str] = []
        for key, current in targets.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = value.data if isinstance(value, Tensor) else value
            if not is_cupy_array(value):
                value = np.asarray(value)
            why = _cannot_load(value, current)
            if why:
                bad.append(f"{key}: {why}")
                continue
            xp = get_array_module(current)
            value = to_device(value, "cuda" if is_cupy_array(current) else "cpu")
            staged.append((key, current, xp.asarray(value, dtype=current.dtype)))
        if bad:
            problems.append(
                "; ".join(bad[:10]) + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
            )
        if problems:
            raise StateDictError(
                f"load_state_dict for {type(self).__name__}: " + "; ".join(problems)
            )
        for key, current, value in staged:
            current[...] = value
            if key in params:  # a graph that saved the old values can no longer backward
                params[key].bump_version()
        return IncompatibleKeys(missing, unexpected)

    # -- device and dtype ---------------------------------------------------

    def to(self, target: Any) -> Module:
        """Move to a device ("cpu" / "cuda") or cast floating state to a dtype.

        Changes this module in place (as PyTorch's Module.to) and returns it.
        Integer buffers such as num_batches_tracked keep their dtype.
        """
        if isinstance(target, str):
            if target not in ("cpu", "cuda"):
                raise ValueError(f"Module.to: expected 'cpu', 'cuda' or a dtype, got {target!r}")
            device = target

            def convert(a: Array) -> Array:
                return to_device(a, device)

        else:
            dtype = np.dtype(target)
            if dtype.kind != "f":
                raise TypeError(f"Module.to: expected a floating dtype, got {dtype}")

            def convert(a: Array) -> Array:
                return a.astype(dtype) if a.dtype.kind == "f" else a

        for module in self.modules():
            for p in module._parameters.values():
                if p is not None:
                    p.data = convert(p.data)
                    if p.grad is not None:
                        p.grad = convert(p.grad)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = convert(b)
        return self

    def cuda(self) -> Module:
        return self.to("cuda")

    def cpu(self) -> Module:
        return self.to("cpu")

    def double(self) -> Module:
        return self.to(np.float64)

    def float(self) -> Module:
        return self.to(np.float32)

    # -- printing -----------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class RemovableHandle:
    """Returned by register_forward_hook; ``remove()`` unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks: OrderedDict) -> None:
        self.hooks, self.id = hooks, RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self) -> None:
        self.hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _cannot_load(value: Array, current: Array) -> str:
    """Why ``value`` cannot be copied into ``current`` unchanged, or ''."""
    if tuple(value.shape) != tuple(current.shape):
        return f"expected shape {tuple(current.shape)}, got {tuple(value.shape)}"
    kind = value.dtype.kind
    if kind not in "biuf":
        return f"expected real numbers for {current.dtype}, got dtype {value.dtype}"
    if current.dtype.kind in "iu" and kind == "f":
        xp = get_array_module(value)
        if not bool(xp.all(xp.isfinite(value) & (value == xp.trunc(value)))):
            return f"expected whole numbers for {current.dtype}, got fractions in {value.dtype}"
    return ""


def _short(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")
