"""Tensor and Function: the two halves of reverse-mode automatic differentiation.

A ``Tensor`` holds an array (NumPy or CuPy) and the ``Function`` that made it.
A Function knows its forward (arrays in, arrays out) and its backward (output
gradients in, input gradients out); calling one on Tensors records a node of
the graph. ``Tensor.backward()`` hands the graph to ``run_backward``
(backward.py), which walks it back to the leaves in reverse topological order,
applying the chain rule at every node. Functions hold their inputs strongly and
their outputs weakly, so the graph is freed as soon as it is no longer needed.
The Functions behind Tensor's operators and methods live here too (Tensor's
``+`` needs Add, and Add makes Tensors); the network ops, the only callers of
a device's backend, live in functional.py.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends.device import add_at, device_of, get_array_module, is_array, to_device
from .backward import backward, grad, record_saved  # noqa: F401 - mr.autograd.grad
from .dtypes import as_array, is_lower_kind, result_dtype, same_float_dtype
from .grad_mode import is_grad_enabled
from .tensor_methods import TensorMethods, axes, shape_args

Array = Any  # numpy.ndarray or cupy.ndarray

# --------------------------------------------------------------------------
# Tensor
# --------------------------------------------------------------------------


class Tensor(TensorMethods):
    """An n-dimensional array that remembers how it was computed.

    Attributes:
        data: the values, a NumPy or CuPy array. A direct write into it is not
            tracked (as PyTorch's ``.data``); ``mr.detect_anomaly()`` catches
            one that would change a gradient.
        grad: after ``backward()``, the gradient of the output with respect to
            this tensor (an array of the same shape and dtype), or None.
        requires_grad: whether gradients should flow to this tensor.
        creator: the Function that produced it (None for a leaf).
    """

    # Makes ``ndarray + Tensor`` call Tensor.__radd__ instead of NumPy's add.
    __array_priority__ = 1000

    def __init__(self, data: object, requires_grad: bool = False):
        self.data: Array = as_array(data.data if isinstance(data, Tensor) else data)
        self.grad: Array | None = None
        self.requires_grad = bool(requires_grad)
        self.creator: Function | None = None
        self.generation = 0
        self._retain_grad = False
        # Counts the in-place changes made through minires (an optimiser step,
        # load_state_dict): a Function that saved this tensor checks it. One
        # counter (a list) is shared by the tensors that share the memory:
        # Tensor(t), t.detach() and views (a reshape, a transpose, a slice).
        self._versions = data._versions if isinstance(data, Tensor) else [0]

    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: device_of(self.data), doc='"cpu" or "cuda"')
    is_leaf = property(lambda self: self.creator is None)
    _version = property(lambda self: self._versions[0])

    __len__ = lambda self: len(self.data)

    def __repr__(self) -> str:
        body = str(self.data).replace("\n", "\n" + " " * 7)
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        return f"tensor({body}{extra})"

    numpy = lambda self: to_device(self.data, "cpu")  # copied from the GPU if needed
    detach = lambda self: Tensor(self)  # a new leaf sharing this tensor's data (and version)
    cuda = lambda self: self.to("cuda")
    cpu = lambda self: self.to("cpu")
    zero_grad = lambda self: setattr(self, "grad", None)
    new_tensor = lambda self, data: Tensor(data)  # a new leaf, as torch's new_tensor

    def item(self) -> float | int:
        if self.numel() != 1:
            raise ValueError(f"item(): expected a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (as PyTorch)."""
        self._retain_grad = True

    def bump_version(self) -> None:
        """Record that ``data`` was changed in place: graphs that saved it are stale."""
        self._versions[0] += 1

    def to(self, target: object) -> Tensor:
        """``to("cuda")``, ``to("cpu")`` or ``to(np.float64)``; differentiable."""
        if isinstance(target, str):
            if target not in ("cpu", "cuda"):
                raise ValueError(f"Tensor.to: expected 'cpu' or 'cuda', got {target!r}")
            return self if target == self.device else ToDevice(target)(self)
        dtype = np.dtype(target)  # raises TypeError for nonsense
        return self if dtype == self.dtype else Cast(dtype)(self)

    backward = backward  # t.backward(gradient=None, retain_graph=None, create_graph=False)

    # Operators and methods: each records one Function (defined below).
    __add__ = lambda self, other: Add()(self, other)
    __radd__ = lambda self, other: Add()(other, self)
    __sub__ = lambda self, other: Sub()(self, other)
    __rsub__ = lambda self, other: Sub()(other, self)
    __mul__ = lambda self, other: Mul()(self, other)
    __rmul__ = lambda self, other: Mul()(other, self)
    __truediv__ = lambda self, other: Div()(self, other)
    __rtruediv__ = lambda self, other: Div()(other, self)
    __matmul__ = lambda self, other: MatMul()(self, other)
    __rmatmul__ = lambda self, other: MatMul()(other, self)
    __neg__ = lambda self: Neg()(self)
    __pow__ = lambda self, exponent: Pow(exponent)(self)
    __rpow__ = lambda self, base: RPow()(base, self)
    __getitem__ = lambda self, index: GetItem(index)(self)
    exp = lambda self: Exp()(self)
    log = lambda self: Log()(self)

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        return Sum(dim, keepdim)(self)

    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        return Reshape(shape_args(shape))(self)

    def permute(self, *dims: int | Sequence[int]) -> Tensor:
        return Permute(shape_args(dims))(self)


def tensor(data: object, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Make a leaf Tensor, like ``torch.tensor``."""
    return Tensor(as_array(data, dtype), requires_grad=requires_grad)


def as_tensor(x: object) -> Tensor:
    """``x`` if it is a Tensor, else a new leaf holding it."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _as_tensors(inputs: Sequence[object]) -> list[Tensor]:
    """A Function's inputs as Tensors, in the dtype PyTorch would compute in
    (dtypes.result_dtype); operands of a lower kind are cast to it."""
    inputs = [Tensor(x) if is_array(x) else x for x in inputs]
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    if not tensors:
        return [as_tensor(x) for x in inputs]
    numbers = [x for x in inputs if not isinstance(x, Tensor)]
    dtype = result_dtype([t.dtype for t in tensors], numbers)
    xp = get_array_module(tensors[0].data)
    cast = lambda t: Cast(dtype)(t) if is_lower_kind(t.dtype, dtype) else t  # noqa: E731
    return [cast(x) if isinstance(x, Tensor) else Tensor(xp.asarray(x, dtype)) for x in inputs]


# --------------------------------------------------------------------------
# Function
# --------------------------------------------------------------------------


class Function:
    """One differentiable operation: ``forward`` on arrays, ``backward`` on grads.

    Subclasses implement ``forward(*arrays) -> array or tuple of arrays`` and
    ``backward(*grad_outputs) -> grad or tuple of grads`` (one per input; None
    where an input needs no gradient). Anything backward needs is saved on
    ``self`` during forward; ``self.needs_input_grad`` says which inputs want a
    gradient, so backward can skip the work for the others.

    ``saved_inputs`` lists (by position) the inputs whose values backward
    reads (None: all); if one is changed in place through minires before
    backward runs, backward raises rather than return a wrong gradient
    (record_saved and check_saved in backward.py). ``saved_outputs`` lists
    the outputs it reads (checked in detect_anomaly).

    ``differentiable_backward(*grad_outputs)``, where a Function has it, is the
    same backward written with Tensor operations on ``self.inputs``: it is what
    ``backward(create_graph=True)`` records, so gradients can be differentiated
    again (a Function without it raises there, naming itself).
    """

    generation: int = 0
    needs_input_grad: tuple[bool, ...] = ()
    saved_inputs: tuple[int, ...] | None = None
    saved_outputs: tuple[int, ...] = ()
    views = False  # whether the output may be a view of input 0 (then it shares its versions)

    def __call__(self, *inputs: object) -> Any:
        tensors = _as_tensors(inputs)
        self.needs_input_grad = tuple(t.requires_grad for t in tensors)
        ys = self.forward(*[t.data for t in tensors])
        single = not isinstance(ys, tuple)
        outputs = [Tensor(y) for y in ((ys,) if single else ys)]
        if self.views and get_array_module(ys).may_share_memory(ys, tensors[0].data):
            outputs[0]._versions = tensors[0]._versions  # in place on one is in place on both
        if is_grad_enabled() and any(self.needs_input_grad):
            self.generation = max(t.generation for t in tensors)
            for out in outputs:
                out.creator, out.requires_grad = self, True
                out.generation = self.generation + 1
            self.inputs = tensors
            # Weak references: an output holding its creator and the creator
            # holding the output would be a cycle that only the GC can free.
            self.outputs = [weakref.ref(out) for out in outputs]
            self.output_meta = [(out.shape, out.dtype) for out in outputs]
            record_saved(self, tensors, outputs)  # backward checks they are unchanged
        return outputs[0] if single else tuple(outputs)

    def forward(self, *xs: Array) -> Array | tuple[Array, ...]:
        raise NotImplementedError

    def backward(self, *gys: Array) -> Array | None | tuple[Array | None, ...]:
        raise NotImplementedError

    def release(self) -> None:
        """Drop everything saved for backward; the node stays, marked freed."""
        generation = self.generation
        self.__dict__.clear()
        self.generation, self.released = generation, True


# --------------------------------------------------------------------------
# The Functions behind Tensor's operators and methods. Each forward is the
# array expression; each backward is its derivative times the upstream
# gradient gy, summed back to the input's shape where the forward broadcast
# it (sum_to). Written one rule per line, like a table of derivatives.
# --------------------------------------------------------------------------


def sum_to(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum g over the axes that broadcasting expanded, back to ``shape``.

    If x of shape (3, 1) was broadcast to (2, 3, 4) in the forward pass, each
    x value was used 2*4 times, so its gradient is the sum over those uses.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    expanded = [lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1]
    return g.sum(axis=tuple(range(lead)) + tuple(expanded), keepdims=True).reshape(shape)


def _sum_to(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """sum_to for the recorded backward (create_graph): a Function when it sums."""
    return g if g.shape == shape else SumTo(shape)(g)


# fmt: off
class Add(Function):
    saved_inputs = ()
    def forward(self, a, b):
        same_float_dtype("add", a, b)
        self.shapes = a.shape, b.shape
        return a + b
    def backward(self, gy): return sum_to(gy, self.shapes[0]), sum_to(gy, self.shapes[1])
    def differentiable_backward(self, gy): return _sum_to(gy, self.shapes[0]), _sum_to(gy, self.shapes[1])  # noqa: E501


class Sub(Function):
    saved_inputs = ()
    def forward(self, a, b):
        same_float_dtype("sub", a, b)
        self.shapes = a.shape, b.shape
        return a - b
    def backward(self, gy): return sum_to(gy, self.shapes[0]), sum_to(-gy, self.shapes[1])
    def differentiable_backward(self, gy): return _sum_to(gy, self.shapes[0]), _sum_to(-gy, self.shapes[1])  # noqa: E501


class Mul(Function):
    def forward(self, a, b):
        same_float_dtype("mul", a, b)
        self.a, self.b = a, b
        return a * b
    def backward(self, gy):
        ga = sum_to(gy * self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb
    def differentiable_backward(self, gy):
        a, b = self.inputs
        return _sum_to(gy * b, a.shape), _sum_to(gy * a, b.shape)


class Div(Function):
    """a / b; integers divide into float32, as in PyTorch."""
    def forward(self, a, b):
        same_float_dtype("div", a, b)
        self.a, self.b = a, b
        return a / b if a.dtype.kind == "f" or b.dtype.kind == "f" else (a / b).astype(np.float32)
    def backward(self, gy):
        ga = sum_to(gy / self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(-gy * self.a / (self.b * self.b), self.b.shape) if self.needs_input_grad[1] else None  # noqa: E501
        return ga, gb
    def differentiable_backward(self, gy):
        a, b = self.inputs
        return _sum_to(gy / b, a.shape), _sum_to(-gy * a / (b * b), b.shape)


class MatMul(Function):
    """a @ b for 2-D (or batched, broadcasting) operands."""
    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            what = "inner dimensions differ" if min(a.ndim, b.ndim) >= 2 else "expected operands with at least 2 dimensions"  # noqa: E501
            raise ValueError(f"matmul: {what}: a is {a.shape}, b is {b.shape} "
                             "(a.shape[-1] must equal b.shape[-2])")
        same_float_dtype("matmul", a, b)
        self.a, self.b = a, b
        return a @ b
    def backward(self, gy):
        a, b = self.a, self.b
        ga = sum_to(gy @ b.swapaxes(-1, -2), a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(a.swapaxes(-1, -2) @ gy, b.shape) if self.needs_input_grad[1] else None
        return ga, gb
    def differentiable_backward(self, gy):
        a, b = self.inputs
        return _sum_to(gy @ b.transpose(-1, -2), a.shape), _sum_to(a.transpose(-1, -2) @ gy, b.shape)  # noqa: E501


class Neg(Function):
    saved_inputs = ()
    def forward(self, a): return -a
    def backward(self, gy): return -gy
    differentiable_backward = backward


class Pow(Function):
    """x ** c for a constant exponent c (an int tensor to a float power: float32)."""
    def __init__(self, exponent: float):
        if isinstance(exponent, Tensor):
            raise TypeError("pow: the exponent must be a number, not a Tensor")
        # .item(): a NumPy float64 exponent would promote float32 to float64.
        self.c = exponent.item() if isinstance(exponent, np.generic) else exponent
    def forward(self, a):
        self.a = a.astype(np.float32) if isinstance(self.c, float) and a.dtype.kind in "biu" else a
        y = self.a ** self.c  # NumPy: bool ** bool is int8; PyTorch keeps bool
        return y.astype(bool) if isinstance(self.c, bool) and a.dtype.kind == "b" else y
    def backward(self, gy): return gy * (self.c * self.a ** (self.c - 1))
    def differentiable_backward(self, gy): return gy * (self.c * self.inputs[0] ** (self.c - 1))


class RPow(Function):
    """c ** x for a number c (``2 ** t``); d/dx = c ** x * log(c)."""
    saved_inputs, saved_outputs = (0,), (0,)
    def forward(self, c, a):
        if c.dtype.kind == "b" and a.dtype.kind == "b":
            raise TypeError("pow: a bool base to a bool power is not supported (as PyTorch)")
        self.c, self.y = c, c ** a
        return self.y
    def backward(self, gy): return None, gy * self.y * get_array_module(gy).log(self.c)
    def differentiable_backward(self, gy): return None, gy * RPow()(*self.inputs) * self.inputs[0].log()  # noqa: E501


class Exp(Function):
    saved_inputs, saved_outputs = (), (0,)  # backward reads the output, not the input
    def forward(self, a): self.y = get_array_module(a).exp(a); return self.y  # noqa: E702
    def backward(self, gy): return gy * self.y
    def differentiable_backward(self, gy): return gy * self.inputs[0].exp()


class Log(Function):
    def forward(self, a): self.a = a; return get_array_module(a).log(a)  # noqa: E702
    def backward(self, gy): return gy / self.a
    def differentiable_backward(self, gy): return gy / self.inputs[0]


class Sum(Function):
    saved_inputs = ()
    def __init__(self, axis, keepdims): self.axis, self.keepdims = axis, keepdims
    def forward(self, a):
        self.shape, self.axes = a.shape, axes(self.axis, a.ndim, "sum: dim")
        return a.sum(axis=self.axes, keepdims=self.keepdims)
    def backward(self, gy):  # every summed value receives gy
        xp = get_array_module(gy)
        gy = gy if self.keepdims or not self.axes else xp.expand_dims(gy, self.axes)
        return xp.broadcast_to(gy, self.shape).copy()
    def differentiable_backward(self, gy):
        kept = tuple(1 if d in self.axes else n for d, n in enumerate(self.shape))
        return BroadcastTo(self.shape)(gy.reshape(kept))


class Reshape(Function):
    saved_inputs, views = (), True
    def __init__(self, shape): self.shape = shape
    def forward(self, a):
        self.in_shape = a.shape
        try:
            return a.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {a.shape} "
                             f"({a.size} elements) into {self.shape}") from None
    def backward(self, gy): return gy.reshape(self.in_shape)
    differentiable_backward = backward


class Permute(Function):
    saved_inputs, views = (), True
    def __init__(self, dims): self.dims = tuple(dims)
    def forward(self, a):
        if sorted(axes(self.dims, a.ndim, "permute: dim")) != list(range(a.ndim)):
            raise ValueError(f"permute: {self.dims} is not an ordering of the {a.ndim} dimensions")
        return a.transpose(self.dims)
    def backward(self, gy):  # the inverse permutation
        return gy.transpose(tuple(np.argsort(axes(self.dims, gy.ndim)).tolist()))
    def differentiable_backward(self, gy): return gy.permute(np.argsort(axes(self.dims, gy.ndim)).tolist())  # noqa: E501


class GetItem(Function):
    saved_inputs, views = (), True
    def __init__(self, index): self.index = index.data if isinstance(index, Tensor) else index
    def forward(self, a): self.shape, self.dtype = a.shape, a.dtype; return a[self.index]  # noqa: E702, E501
    def backward(self, gy): return IndexAdd(self.shape, self.index).forward(gy)
    def differentiable_backward(self, gy): return IndexAdd(self.shape, self.index)(gy)


class IndexAdd(Function):
    """GetItem's adjoint: ``g`` added into a zero array of ``shape`` at ``index``."""
    saved_inputs = ()
    def __init__(self, shape, index): self.shape, self.index = shape, index
    def forward(self, g):
        out = get_array_module(g).zeros(self.shape, dtype=g.dtype)
        add_at(out, self.index, g)  # a repeated index receives every share
        return out
    def backward(self, gy): return gy[self.index]
    def differentiable_backward(self, gy): return GetItem(self.index)(gy)


class SumTo(Function):
    """sum_to as a Function: a broadcast operand's gradient, recordable."""
    saved_inputs = ()
    def __init__(self, shape): self.shape = shape
    def forward(self, a): self.in_shape = a.shape; return sum_to(a, self.shape)  # noqa: E702
    def backward(self, gy): return get_array_module(gy).broadcast_to(gy, self.in_shape).copy()
    def differentiable_backward(self, gy): return BroadcastTo(self.in_shape)(gy)


class BroadcastTo(Function):
    saved_inputs = ()
    def __init__(self, shape): self.shape = tuple(shape)
    def forward(self, a):
        self.in_shape = a.shape
        return get_array_module(a).broadcast_to(a, self.shape).copy()
    def backward(self, gy): return sum_to(gy, self.in_shape)
    def differentiable_backward(self, gy): return SumTo(self.in_shape)(gy)


class Cast(Function):
    saved_inputs = ()
    def __init__(self, dtype): self.dtype = dtype
    def forward(self, a): self.in_dtype = a.dtype; return a.astype(self.dtype)  # noqa: E702
    def backward(self, gy): return gy.astype(self.in_dtype)
    def differentiable_backward(self, gy): return gy.to(self.in_dtype)


class ToDevice(Function):
    """A copy to another device ("cpu" or "cuda"); the gradient is copied back."""
    saved_inputs = ()
    def __init__(self, device): self.device = device
    def forward(self, a): self.from_device = device_of(a); return to_device(a, self.device)  # noqa: E702, E501
    def backward(self, gy): return to_device(gy, self.from_device)
    def differentiable_backward(self, gy): return gy.to(self.from_device)
# fmt: on
