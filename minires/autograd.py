"""Tensor and Function: the two halves of reverse-mode automatic differentiation.

A ``Tensor`` holds an array (NumPy or CuPy) and, when it was computed, a link
to the ``Function`` that made it. A ``Function`` knows its own forward (array
in, array out) and its own backward (gradient of its outputs in, gradient of
its inputs out). Calling a Function on Tensors records one node of the graph;
``Tensor.backward()`` walks the recorded graph from the output back to the
leaves and applies the chain rule at every node.

Three choices matter for correctness, and each is spelled out where it is made:
1. The walk is iterative, in reverse topological order, driven by a heap keyed
   on each Function's *generation* (its depth from the leaves). No recursion,
   so a ResNet-1202 or a chain of 10,000 ops needs no recursion limit.
2. A tensor used twice (the residual fork ``y = F(x) + x``) receives the sum
   of both gradients before its own creator runs; the generation order
   guarantees every consumer has finished first.
3. Functions hold their inputs strongly and their outputs weakly, and drop
   what they saved for backward once backward has used it, so the graph and
   its buffers are freed as soon as backward ends (or the loss is dropped).

This module also holds the arithmetic Functions behind Tensor's operators
(Add, Mul, MatMul, Sum, Reshape, ...): Tensor's ``+`` needs Add, and Add makes
Tensors, which is why the two live in one file.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import parallel
from .backends import get_array_module, is_cupy_array

Array = Any  # numpy.ndarray or cupy.ndarray


# --------------------------------------------------------------------------
# Configuration: is the graph being recorded?
# --------------------------------------------------------------------------


class Config:
    """Global switches. ``enable_backprop`` is False inside ``no_grad()``."""

    enable_backprop: bool = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run the block without recording a graph (inference, parameter updates).

    Usable as ``with mr.no_grad():`` or as a decorator ``@mr.no_grad()``.
    """
    previous = Config.enable_backprop
    Config.enable_backprop = False
    try:
        yield
    finally:
        Config.enable_backprop = previous


@contextlib.contextmanager
def enable_grad() -> Iterator[None]:
    """Record the graph again inside a ``no_grad()`` block."""
    previous = Config.enable_backprop
    Config.enable_backprop = True
    try:
        yield
    finally:
        Config.enable_backprop = previous


def is_grad_enabled() -> bool:
    return Config.enable_backprop


# --------------------------------------------------------------------------
# Tensor
# --------------------------------------------------------------------------


def _is_array(x: object) -> bool:
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def _as_array(data: object, dtype: Any = None) -> Array:
    """Arrays keep their dtype; Python numbers and lists follow PyTorch.

    PyTorch makes ``tensor([1.0])`` float32 and ``tensor([1])`` int64; NumPy
    would make the first float64. A from-scratch framework that silently
    computes in float64 is twice as slow and nobody notices, so lists of
    Python floats become float32 here.
    """
    if _is_array(data):
        return data if dtype is None else data.astype(dtype, copy=False)
    if isinstance(data, np.generic):
        return np.asarray(data, dtype=dtype)
    arr = np.asarray(data)
    if dtype is not None:
        return arr.astype(dtype, copy=False)
    if arr.dtype == np.float64:
        return arr.astype(np.float32)
    return arr


class Tensor:
    """An n-dimensional array that remembers how it was computed.

    Attributes:
        data: the values, a NumPy or CuPy array.
        grad: after ``backward()``, the gradient of the output with respect to
            this tensor (an array of the same shape and dtype), or None.
        requires_grad: whether gradients should flow to this tensor.
        creator: the Function that produced it (None for a leaf).
    """

    # Makes ``ndarray + Tensor`` call Tensor.__radd__ instead of NumPy's add.
    __array_priority__ = 1000

    def __init__(self, data: object, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        self.data: Array = _as_array(data)
        self.grad: Array | None = None
        self.requires_grad = bool(requires_grad)
        self.creator: Function | None = None
        self.generation = 0
        self.name = name
        self._retain_grad = False

    # -- array-like properties ----------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def device(self) -> str:
        return "cuda" if is_cupy_array(self.data) else "cpu"

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        body = str(self.data).replace("\n", "\n" + " " * 7)
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        return f"tensor({body}{extra})"

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (copied from the GPU if needed)."""
        if is_cupy_array(self.data):
            return self.data.get()
        return self.data

    def item(self) -> float | int:
        if self.size != 1:
            raise ValueError(f"item(): expected a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def detach(self) -> Tensor:
        """A new leaf sharing this tensor's data, cut from the graph."""
        return Tensor(self.data)

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (as PyTorch)."""
        self._retain_grad = True

    def zero_grad(self) -> None:
        self.grad = None

    # -- device and dtype ---------------------------------------------------

    def to(self, target: object) -> Tensor:
        """``to("cuda")``, ``to("cpu")`` or ``to(np.float64)``; differentiable."""
        if isinstance(target, str):
            if target not in ("cpu", "cuda"):
                raise ValueError(f"Tensor.to: expected 'cpu' or 'cuda', got {target!r}")
            if target == self.device:
                return self
            return ToDevice(target)(self)
        dtype = np.dtype(target)  # raises TypeError for nonsense
        if dtype == self.dtype:
            return self
        return Cast(dtype)(self)

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def cpu(self) -> Tensor:
        return self.to("cpu")

    # -- backward -----------------------------------------------------------

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
        xp = get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward(): grad can be omitted only for a one-element output, "
                    f"got shape {self.shape}; pass grad= of that shape"
                )
            seed = xp.ones_like(self.data)
        else:
            seed = xp.array(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if seed.shape != self.shape:
                raise ValueError(
                    f"backward(): grad must have the output's shape {self.shape}, got {seed.shape}"
                )
        run_backward(self, seed, retain_graph)

    # -- operators (the Functions are defined below) ------------------------

    def __add__(self, other: object) -> Tensor:
        return add(self, other)

    def __radd__(self, other: object) -> Tensor:
        return add(other, self)

    def __sub__(self, other: object) -> Tensor:
        return sub(self, other)

    def __rsub__(self, other: object) -> Tensor:
        return sub(other, self)

    def __mul__(self, other: object) -> Tensor:
        return mul(self, other)

    def __rmul__(self, other: object) -> Tensor:
        return mul(other, self)

    def __truediv__(self, other: object) -> Tensor:
        return div(self, other)

    def __rtruediv__(self, other: object) -> Tensor:
        return div(other, self)

    def __neg__(self) -> Tensor:
        return neg(self)

    def __pow__(self, exponent: float) -> Tensor:
        return pow(self, exponent)

    def __matmul__(self, other: object) -> Tensor:
        return matmul(self, other)

    def __rmatmul__(self, other: object) -> Tensor:
        return matmul(other, self)

    def __getitem__(self, index: object) -> Tensor:
        return GetItem(index)(self)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return sum(self, axis, keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return mean(self, axis, keepdims)

    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def transpose(self, *axes: int) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return transpose(self, axes or None)

    @property
    def T(self) -> Tensor:
        return transpose(self, None)

    def flatten(self, start_dim: int = 0) -> Tensor:
        return flatten(self, start_dim)

    def relu(self) -> Tensor:
        return relu(self)

    def exp(self) -> Tensor:
        return Exp()(self)

    def log(self) -> Tensor:
        return Log()(self)


class Parameter(Tensor):
    """A Tensor that is a learnable parameter of a Module (requires_grad=True)."""

    def __init__(self, data: object, requires_grad: bool = True, name: str | None = None):
        super().__init__(data, requires_grad=requires_grad, name=name)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def tensor(data: object, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Make a leaf Tensor, like ``torch.tensor``."""
    return Tensor(_as_array(data, dtype), requires_grad=requires_grad)


def as_tensor(x: object, like: Tensor | None = None) -> Tensor:
    """A Tensor for ``x``; a Python number takes the dtype and device of ``like``.

    This is where ``x * 0.5`` stays float32: under NumPy 2 an np.float64
    scalar would promote a float32 array to float64 without a word.
    """
    if isinstance(x, Tensor):
        return x
    if like is not None and not _is_array(x):
        xp = get_array_module(like.data)
        return Tensor(xp.asarray(x, dtype=like.dtype))
    return Tensor(x)


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
    """

    generation: int = 0
    needs_input_grad: tuple[bool, ...] = ()

    def __call__(self, *inputs: object) -> Any:
        like = next((x for x in inputs if isinstance(x, Tensor)), None)
        tensors = [as_tensor(x, like) for x in inputs]
        record = Config.enable_backprop and any(t.requires_grad for t in tensors)
        self.needs_input_grad = tuple(t.requires_grad for t in tensors)
        with parallel.blas_guard():
            ys = self.forward(*[t.data for t in tensors])
        single = not isinstance(ys, tuple)
        outputs = [Tensor(y) for y in ((ys,) if single else ys)]
        if record:
            self.generation = max(t.generation for t in tensors)
            for out in outputs:
                out.creator = self
                out.requires_grad = True
                out.generation = self.generation + 1
            self.inputs = tensors
            # Weak references: an output holding its creator and the creator
            # holding the output would be a cycle that only the GC can free.
            self.outputs = [weakref.ref(out) for out in outputs]
            self.output_meta = [(out.shape, out.dtype) for out in outputs]
        return outputs[0] if single else tuple(outputs)

    def forward(self, *xs: Array) -> Array | tuple[Array, ...]:
        raise NotImplementedError

    def backward(self, *gys: Array) -> Array | None | tuple[Array | None, ...]:
        raise NotImplementedError

    def release(self) -> None:
        """Drop everything saved for backward; the node stays, marked freed."""
        generation = self.generation
        self.__dict__.clear()
        self.generation = generation
        self.released = True


def run_backward(root: Tensor, seed: Array, retain_graph: bool) -> None:
    """Walk the graph below ``root`` in reverse topological order.

    ``grads`` maps a tensor (by id) to the tensor and the sum of the gradients
    it has received so far. Holding the tensor there keeps it alive until its
    creator has run: the Functions that consumed it may already be released.
    A Function runs only after every Function that consumed its outputs has
    run: those have a larger generation, and the heap pops the largest first.
    """
    grads: dict[int, tuple[Tensor, Array]] = {id(root): (root, seed)}
    order = itertools.count()  # tie-breaker so the heap never compares Functions
    heap: list[tuple[int, int, Function]] = []
    queued: set[int] = set()
    # Memory already handed out as some tensor's .grad, by the id of the array
    # that owns it: a view (Reshape and Transpose return views of gy) shares
    # its base's memory, so the check follows .base to the owner.
    handed_out: set[int] = {id(seed)}

    def push(fn: Function | None) -> None:
        if fn is not None and id(fn) not in queued:
            if getattr(fn, "released", False):
                raise RuntimeError(
                    "backward(): the graph was already freed by an earlier backward(); "
                    "call backward(retain_graph=True) the first time to go through it twice"
                )
            queued.add(id(fn))
            heapq.heappush(heap, (-fn.generation, next(order), fn))

    def own(g: Array) -> Array:
        """g, or a copy if its memory is already another tensor's .grad."""
        base = g
        while getattr(base, "base", None) is not None:
            base = base.base
        if id(base) in handed_out:
            return g.copy()
        handed_out.add(id(base))
        return g

    def store(t: Tensor, g: Array) -> None:
        """Keep g as t's gradient: leaves accumulate into .grad, others into grads."""
        if t.creator is None:
            # A leaf: accumulate into .grad out of place (never +=, since g may
            # be the very array another tensor also received, e.g. from Add).
            if t.grad is None:
                t.grad = own(g)
            else:
                t.grad = t.grad + g
            return
        key = id(t)
        grads[key] = (t, g) if key not in grads else (t, grads[key][1] + g)
        push(t.creator)

    if root.creator is None:
        store(root, seed)
        return
    push(root.creator)
    # BLAS single-threaded during the walk when minires runs its own threads
    # (see minires/parallel.py); a no-op otherwise.
    with parallel.blas_guard():
        while heap:
            _, _, fn = heapq.heappop(heap)
            gys = []
            for ref, (shape, dtype) in zip(fn.outputs, fn.output_meta):
                out = ref()
                g = grads.pop(id(out), (None, None))[1] if out is not None else None
                if out is not None and out._retain_grad and g is not None:
                    out.grad = own(g) if out.grad is None else out.grad + g
                if g is None:
                    g = get_array_module(seed).zeros(shape, dtype=dtype)
                gys.append(g)
            gxs = fn.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for x, gx, wanted in zip(fn.inputs, gxs, fn.needs_input_grad):
                if wanted and gx is not None:
                    _check_grad(fn, x, gx)
                    store(x, gx)
            if not retain_graph:
                fn.release()


def _check_grad(fn: Function, x: Tensor, gx: Array) -> None:
    if gx.shape != x.shape:
        raise RuntimeError(
            f"{type(fn).__name__}.backward returned a gradient of shape {gx.shape} "
            f"for an input of shape {x.shape}"
        )


# --------------------------------------------------------------------------
# Arithmetic Functions
# --------------------------------------------------------------------------


def sum_to(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum g over the axes that broadcasting expanded, back to ``shape``.

    If x of shape (3, 1) was broadcast to (2, 3, 4) in the forward pass, each
    x value was used 2*4 times, so its gradient is the sum over those uses.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _check_same_dtype(op: str, a: Array, b: Array) -> None:
    if a.dtype != b.dtype and a.dtype.kind == "f" and b.dtype.kind == "f":
        raise TypeError(
            f"{op}: operands must have the same floating dtype, got {a.dtype} and {b.dtype} "
            f"(convert one with .to(np.{b.dtype}) or .to(np.{a.dtype}))"
        )


class Add(Function):
    def forward(self, a: Array, b: Array) -> Array:
        _check_same_dtype("add", a, b)
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, gy: Array) -> tuple[Array, Array]:
        return sum_to(gy, self.shapes[0]), sum_to(gy, self.shapes[1])


class Sub(Function):
    def forward(self, a: Array, b: Array) -> Array:
        _check_same_dtype("sub", a, b)
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, gy: Array) -> tuple[Array, Array]:
        return sum_to(gy, self.shapes[0]), sum_to(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, a: Array, b: Array) -> Array:
        _check_same_dtype("mul", a, b)
        self.a, self.b = a, b
        return a * b

    def backward(self, gy: Array) -> tuple[Array | None, Array | None]:
        ga = sum_to(gy * self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a: Array, b: Array) -> Array:
        _check_same_dtype("div", a, b)
        self.a, self.b = a, b
        return a / b

    def backward(self, gy: Array) -> tuple[Array | None, Array | None]:
        ga = sum_to(gy / self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = None
        if self.needs_input_grad[1]:
            gb = sum_to(-gy * self.a / (self.b * self.b), self.b.shape)
        return ga, gb


class Neg(Function):
    def forward(self, a: Array) -> Array:
        return -a

    def backward(self, gy: Array) -> Array:
        return -gy


class Pow(Function):
    """x ** c for a constant exponent c."""

    def __init__(self, exponent: float):
        self.exponent = exponent

    def forward(self, a: Array) -> Array:
        self.a = a
        return a**self.exponent

    def backward(self, gy: Array) -> Array:
        c = self.exponent
        return gy * (c * self.a ** (c - 1))


class Exp(Function):
    def forward(self, a: Array) -> Array:
        self.y = get_array_module(a).exp(a)
        return self.y

    def backward(self, gy: Array) -> Array:
        return gy * self.y


class Log(Function):
    def forward(self, a: Array) -> Array:
        self.a = a
        return get_array_module(a).log(a)

    def backward(self, gy: Array) -> Array:
        return gy / self.a


class MatMul(Function):
    """a @ b for 2-D (or batched, broadcasting) operands."""

    def forward(self, a: Array, b: Array) -> Array:
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(
                f"matmul: expected operands with at least 2 dimensions, got shapes "
                f"{a.shape} and {b.shape}"
            )
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"matmul: inner dimensions differ: a is {a.shape}, b is {b.shape} "
                f"(a.shape[-1] must equal b.shape[-2])"
            )
        _check_same_dtype("matmul", a, b)
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy: Array) -> tuple[Array | None, Array | None]:
        a, b = self.a, self.b
        ga = sum_to(gy @ b.swapaxes(-1, -2), a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(a.swapaxes(-1, -2) @ gy, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def _normalize_axis(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"sum: axis {a} is out of range for a {ndim}-d tensor")
    return tuple(a % ndim for a in axes)


class Sum(Function):
    def __init__(self, axis: int | Sequence[int] | None, keepdims: bool):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a: Array) -> Array:
        self.shape = a.shape
        self.axes = _normalize_axis(self.axis, a.ndim)
        return a.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy: Array) -> Array:
        xp = get_array_module(gy)
        if not self.keepdims:
            gy = xp.expand_dims(gy, self.axes) if self.axes else gy
        return xp.broadcast_to(gy, self.shape).copy()


class Reshape(Function):
    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def forward(self, a: Array) -> Array:
        self.in_shape = a.shape
        try:
            return a.reshape(self.shape)
        except ValueError:
            raise ValueError(
                f"reshape: cannot reshape a tensor of shape {a.shape} ({a.size} elements) "
                f"into {self.shape}"
            ) from None

    def backward(self, gy: Array) -> Array:
        return gy.reshape(self.in_shape)


class Transpose(Function):
    def __init__(self, axes: Sequence[int] | None):
        self.axes = None if axes is None else tuple(axes)

    def forward(self, a: Array) -> Array:
        return a.transpose(self.axes)

    def backward(self, gy: Array) -> Array:
        if self.axes is None:
            return gy.transpose()
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return gy.transpose(inverse)


class GetItem(Function):
    def __init__(self, index: object):
        self.index = index.data if isinstance(index, Tensor) else index

    def forward(self, a: Array) -> Array:
        self.shape, self.dtype = a.shape, a.dtype
        return a[self.index]

    def backward(self, gy: Array) -> Array:
        xp = get_array_module(gy)
        g = xp.zeros(self.shape, dtype=self.dtype)
        # add.at, not g[index] += gy: a repeated index must receive every share.
        if is_cupy_array(g):
            import cupyx

            cupyx.scatter_add(g, self.index, gy)
        else:
            np.add.at(g, self.index, gy)
        return g


class Cast(Function):
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def forward(self, a: Array) -> Array:
        self.in_dtype = a.dtype
        return a.astype(self.dtype)

    def backward(self, gy: Array) -> Array:
        return gy.astype(self.in_dtype)


class ToDevice(Function):
    def __init__(self, device: str):
        self.device = device

    def forward(self, a: Array) -> Array:
        from .backends import cuda

        return cuda().to_gpu(a) if self.device == "cuda" else cuda().to_cpu(a)

    def backward(self, gy: Array) -> Array:
        from .backends import cuda

        return cuda().to_cpu(gy) if self.device == "cuda" else cuda().to_gpu(gy)


class ReLU(Function):
    def forward(self, x: Array) -> Array:
        from .backends import get_backend

        self.backend = get_backend(x)
        self.y = self.backend.relu_forward(x)
        return self.y

    def backward(self, gy: Array) -> Array:
        return self.backend.relu_backward(gy, self.y)


# Plain-function spellings (used by the operators and by minires.functional).


def add(a: object, b: object) -> Tensor:
    return Add()(a, b)


def sub(a: object, b: object) -> Tensor:
    return Sub()(a, b)


def mul(a: object, b: object) -> Tensor:
    return Mul()(a, b)


def div(a: object, b: object) -> Tensor:
    return Div()(a, b)


def neg(a: object) -> Tensor:
    return Neg()(a)


def pow(a: object, exponent: float) -> Tensor:  # noqa: A001 - mirrors torch.pow
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a number, not a Tensor")
    if isinstance(exponent, np.generic):
        # A NumPy scalar exponent (np.float64(2)) would promote float32 to float64.
        exponent = exponent.item()
    return Pow(exponent)(a)


def matmul(a: object, b: object) -> Tensor:
    return MatMul()(a, b)


def sum(  # noqa: A001 - mirrors torch.sum
    a: Tensor, axis: int | Sequence[int] | None = None, keepdims: bool = False
) -> Tensor:
    return Sum(axis, keepdims)(a)


def mean(a: Tensor, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
    a = as_tensor(a)
    axes = _normalize_axis(axis, a.ndim)
    count = 1
    for ax in axes:
        count *= a.shape[ax]
    return Sum(axis, keepdims)(a) / count


def reshape(a: Tensor, shape: Sequence[int]) -> Tensor:
    return Reshape(tuple(shape))(a)


def transpose(a: Tensor, axes: Sequence[int] | None = None) -> Tensor:
    return Transpose(axes)(a)


def flatten(a: Tensor, start_dim: int = 0) -> Tensor:
    """Merge dimensions start_dim.. into one, as torch.flatten.

    (N, C, H, W) -> (N, C*H*W) for start_dim=1; everything into one for 0.
    """
    a = as_tensor(a)
    if not 0 <= start_dim < max(a.ndim, 1):
        raise ValueError(f"flatten: start_dim must be in [0, {a.ndim}), got {start_dim}")
    return reshape(a, a.shape[:start_dim] + (-1,))


def relu(x: object) -> Tensor:
    return ReLU()(x)
