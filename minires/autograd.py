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
from .backward import record_saved, run_backward
from .grad_mode import is_grad_enabled

Array = Any  # numpy.ndarray or cupy.ndarray

# --------------------------------------------------------------------------
# Tensor
# --------------------------------------------------------------------------


def _as_array(data: object, dtype: Any = None) -> Array:
    """Arrays keep their dtype; Python numbers and lists follow PyTorch: ``[1.0]``
    is float32 (NumPy would make it float64, silently twice as slow), ``[1]`` int64."""
    if is_array(data):
        return data if dtype is None else data.astype(dtype, copy=False)
    arr = np.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.generic):
        return arr.astype(np.float32)
    return arr


class Tensor:
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
        self.data: Array = _as_array(data.data if isinstance(data, Tensor) else data)
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
    size = property(lambda self: self.data.size)
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

    def item(self) -> float | int:
        if self.size != 1:
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

    def backward(self, grad: object = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf.

        Args:
            grad: the upstream gradient, same shape as self. May be omitted
                only when self has one element (a loss), then it is 1.
            retain_graph: keep the graph and its saved buffers so backward can
                be called again; by default they are freed as it goes.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward(): this tensor does not require grad and has no graph "
                "(was it computed under no_grad(), or from inputs without requires_grad?)"
            )
        if grad is None and self.size != 1:
            raise RuntimeError(
                f"backward(): grad can be omitted only for a one-element output, "
                f"got shape {self.shape}; pass grad= of that shape"
            )
        xp = get_array_module(self.data)
        if grad is None:
            seed = xp.ones_like(self.data)
        else:
            seed = xp.array(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
        if seed.shape != self.shape:
            raise ValueError(
                f"backward(): grad must have the output's shape {self.shape}, got {seed.shape}"
            )
        run_backward(self, seed, retain_graph)

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
    T = property(lambda self: Transpose(None)(self))

    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        return Sum(axis, keepdims)(self)

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        count = int(np.prod([self.shape[a] for a in _axes(axis, self.ndim)]))
        return Sum(axis, keepdims)(self) / count

    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        return Reshape(_shape_args(shape))(self)

    def transpose(self, *axes: int) -> Tensor:
        return Transpose(_shape_args(axes) or None)(self)

    def flatten(self, start_dim: int = 0) -> Tensor:
        """Merge dimensions start_dim.. into one, as torch.flatten:
        (N, C, H, W) -> (N, C*H*W) for start_dim=1; everything into one for 0."""
        if not 0 <= start_dim < max(self.ndim, 1):
            raise ValueError(f"flatten: start_dim must be in [0, {self.ndim}), got {start_dim}")
        return self.reshape(self.shape[:start_dim] + (int(np.prod(self.shape[start_dim:])),))


def _shape_args(args: tuple) -> tuple[int, ...]:
    """``f(2, 3)`` and ``f((2, 3))`` alike."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def tensor(data: object, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Make a leaf Tensor, like ``torch.tensor``."""
    return Tensor(_as_array(data, dtype), requires_grad=requires_grad)


def _scalar_dtype(value: object, like: np.dtype) -> np.dtype:
    """The dtype of a Python number that meets a tensor of dtype ``like``, as PyTorch.

    A number never widens the tensor's dtype (float32 * 0.5 stays float32:
    under NumPy 2 an np.float64 scalar would silently make it float64), but
    it can change its kind: an int or bool tensor times 0.5 gives the default
    float dtype, float32; a bool tensor plus 1 gives int64.
    """
    if isinstance(value, (float, np.floating)) and like.kind in "biu":
        return np.dtype(np.float32)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and like.kind == "b":
        return np.dtype(np.int64)
    return like


def as_tensor(x: object) -> Tensor:
    """``x`` if it is a Tensor, else a new leaf holding it."""
    return x if isinstance(x, Tensor) else Tensor(x)


_KIND_RANK = {"b": 0, "i": 1, "u": 1, "f": 2}  # bool < integer < floating


def _as_tensors(inputs: Sequence[object]) -> list[Tensor]:
    """A Function's inputs as Tensors, promoted as in PyTorch: the highest kind of
    tensor wins whatever its size (float32 times an int64 tensor is float32; a
    bool tensor plus an int one is int), then a Python number may raise the kind
    (_scalar_dtype); operands of a lower kind are cast. Two float dtypes never
    mix: the operators raise (same_float_dtype)."""
    inputs = [Tensor(x) if is_array(x) else x for x in inputs]
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    if not tensors:
        return [as_tensor(x) for x in inputs]
    dtype = max((t.dtype for t in tensors), key=lambda d: _KIND_RANK.get(d.kind, 3))
    for x in inputs:
        if not isinstance(x, Tensor):
            dtype = _scalar_dtype(x, dtype)
    xp, rank = get_array_module(tensors[0].data), _KIND_RANK.get(dtype.kind, 3)
    cast = lambda t: Cast(dtype)(t) if _KIND_RANK.get(t.dtype.kind, 3) < rank else t  # noqa: E731
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


def same_float_dtype(op: str, a: Array, b: Array) -> None:
    """float32 and float64 never mix silently: the operators raise instead."""
    if a.dtype != b.dtype and a.dtype.kind == "f" and b.dtype.kind == "f":
        raise TypeError(
            f"{op}: operands must have the same floating dtype, got {a.dtype} and {b.dtype} "
            f"(convert one with .to(np.{b.dtype}) or .to(np.{a.dtype}))"
        )


def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    axes = tuple(range(ndim)) if axis is None else (axis,) if isinstance(axis, int) else axis
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"sum: axis {a} is out of range for a {ndim}-d tensor")
    return tuple(a % ndim for a in axes)


# fmt: off
class Add(Function):
    saved_inputs = ()
    def forward(self, a, b):
        same_float_dtype("add", a, b)
        self.shapes = a.shape, b.shape
        return a + b
    def backward(self, gy): return sum_to(gy, self.shapes[0]), sum_to(gy, self.shapes[1])


class Sub(Function):
    saved_inputs = ()
    def forward(self, a, b):
        same_float_dtype("sub", a, b)
        self.shapes = a.shape, b.shape
        return a - b
    def backward(self, gy): return sum_to(gy, self.shapes[0]), sum_to(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        same_float_dtype("mul", a, b)
        self.a, self.b = a, b
        return a * b
    def backward(self, gy):
        ga = sum_to(gy * self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


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


class Neg(Function):
    saved_inputs = ()
    def forward(self, a): return -a
    def backward(self, gy): return -gy


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


class RPow(Function):
    """c ** x for a number c (``2 ** t``); d/dx = c ** x * log(c)."""
    saved_inputs, saved_outputs = (0,), (0,)
    def forward(self, c, a):
        if c.dtype.kind == "b" and a.dtype.kind == "b":
            raise TypeError("pow: a bool base to a bool power is not supported (as PyTorch)")
        self.c, self.y = c, c ** a
        return self.y
    def backward(self, gy): return None, gy * self.y * get_array_module(gy).log(self.c)


class Exp(Function):
    saved_inputs, saved_outputs = (), (0,)  # backward reads the output, not the input
    def forward(self, a): self.y = get_array_module(a).exp(a); return self.y  # noqa: E702
    def backward(self, gy): return gy * self.y


class Log(Function):
    def forward(self, a): self.a = a; return get_array_module(a).log(a)  # noqa: E702
    def backward(self, gy): return gy / self.a


class Sum(Function):
    saved_inputs = ()
    def __init__(self, axis, keepdims): self.axis, self.keepdims = axis, keepdims
    def forward(self, a):
        self.shape, self.axes = a.shape, _axes(self.axis, a.ndim)
        return a.sum(axis=self.axes, keepdims=self.keepdims)
    def backward(self, gy):  # every summed value receives gy
        xp = get_array_module(gy)
        gy = gy if self.keepdims or not self.axes else xp.expand_dims(gy, self.axes)
        return xp.broadcast_to(gy, self.shape).copy()


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


class Transpose(Function):
    saved_inputs, views = (), True
    def __init__(self, axes): self.axes = None if axes is None else tuple(axes)
    def forward(self, a): return a.transpose(self.axes)
    def backward(self, gy):  # the inverse permutation
        return gy.transpose(None if self.axes is None else tuple(np.argsort(self.axes).tolist()))


class GetItem(Function):
    saved_inputs, views = (), True
    def __init__(self, index): self.index = index.data if isinstance(index, Tensor) else index
    def forward(self, a): self.shape, self.dtype = a.shape, a.dtype; return a[self.index]  # noqa: E702, E501
    def backward(self, gy):
        g = get_array_module(gy).zeros(self.shape, dtype=self.dtype)
        add_at(g, self.index, gy)  # a repeated index receives every share
        return g


class Cast(Function):
    saved_inputs = ()
    def __init__(self, dtype): self.dtype = dtype
    def forward(self, a): self.in_dtype = a.dtype; return a.astype(self.dtype)  # noqa: E702
    def backward(self, gy): return gy.astype(self.in_dtype)


class ToDevice(Function):
    """A copy to another device ("cpu" or "cuda"); the gradient is copied back."""
    saved_inputs = ()
    def __init__(self, device): self.device = device
    def forward(self, a): self.from_device = device_of(a); return to_device(a, self.device)  # noqa: E702, E501
    def backward(self, gy): return to_device(gy, self.from_device)
# fmt: on
