"""Tensor's PyTorch-spelled conveniences, each built from its core methods.

``Tensor`` (minires/autograd.py) records a Function for each of its core
operations: ``reshape``, ``permute``, ``sum``, ``max``, ``min``, the
arithmetic operators. Everything here is made of those, so it needs no
Function of its own and nothing from autograd.py: ``Tensor`` inherits it.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import numpy as np


def axes(dim: int | Sequence[int] | None, ndim: int, what: str = "dim") -> tuple[int, ...]:
    """``dim`` (None: every dimension; negative counts from the end) as a tuple
    of non-negative dimension indices, checked against ``ndim``; ``what``
    names the op and argument in the error (e.g. "sum: dim")."""
    dims = tuple(range(ndim)) if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    n = max(ndim, 1)
    for d in dims:
        if not -n <= d < n:
            raise ValueError(
                f"{what} {d} is out of range for a {ndim}-d tensor (expected {-n} to {n - 1})"
            )
    return tuple(d % n for d in dims)


def shape_args(args: tuple) -> tuple[int, ...]:
    """``f(2, 3)`` and ``f((2, 3))`` alike."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


MinMax = namedtuple("MinMax", ["values", "indices"])  # as torch.return_types.max


class TensorMethods:
    """Mixed into Tensor; ``self`` is a Tensor."""

    shape: tuple[int, ...]
    ndim: int
    data: Any

    def size(self, dim: int | None = None) -> tuple[int, ...] | int:
        """The shape, or its length along ``dim`` (torch's ``size()``)."""
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        """The number of elements."""
        return int(self.data.size)

    def dim(self) -> int:
        return self.ndim

    @property
    def T(self) -> Any:
        """The dimensions in reverse order (a matrix's transpose)."""
        return self.permute(tuple(range(self.ndim))[::-1])

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Any:
        count = int(np.prod([self.shape[d] for d in axes(dim, self.ndim, "mean: dim")]))
        return self.sum(dim, keepdim) / count

    def max(self, dim: int | None = None, keepdim: bool = False) -> Any:
        """The largest value, or along ``dim`` the named pair (values, indices)."""
        return self._extreme("max", dim, keepdim)

    def min(self, dim: int | None = None, keepdim: bool = False) -> Any:
        """The smallest value, or along ``dim`` the named pair (values, indices)."""
        return self._extreme("min", dim, keepdim)

    def _extreme(self, which: str, dim: int | None, keepdim: bool) -> Any:
        """max or min as indexing, so the gradient is GetItem's: it goes to the
        entries picked. Along ``dim`` that is the first extreme (the index
        returned); over the whole tensor it is shared evenly among ties, as
        PyTorch's max() does (a NaN, if any, is the extreme)."""
        data = self.data
        if dim is None:
            best = data.max() if which == "max" else data.min()
            picked = data != data if best != best else data == best
            return self[picked].mean()
        dim = axes(dim, self.ndim, f"{which}: dim")[0]
        index = data.argmax(axis=dim) if which == "max" else data.argmin(axis=dim)
        grid = list(np.indices(index.shape, sparse=True))  # every other coordinate
        grid.insert(dim, index)
        values = self[tuple(grid)]
        if keepdim:
            values, index = values.unsqueeze(dim), np.expand_dims(index, dim)
        return MinMax(values, self.new_tensor(index.astype(np.int64)))

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> Any:
        """Indices (int64) of the largest values; of the flattened tensor without ``dim``."""
        data = self.data
        if dim is None:
            index = data.reshape(-1).argmax().astype(np.int64)
            return self.new_tensor(index.reshape((1,) * self.ndim) if keepdim else index)
        index = data.argmax(axis=dim).astype(np.int64)
        return self.new_tensor(
            index.reshape(self.shape[: dim % self.ndim] + (1,) + self.shape[dim % self.ndim + 1 :])
            if keepdim
            else index
        )

    def view(self, *shape: int | Sequence[int]) -> Any:
        """As reshape, but never a copy: raises where the memory layout would need one."""
        probe = self.data.view()
        try:
            probe.shape = shape_args(shape)  # NumPy refuses a shape that needs a copy
        except (AttributeError, ValueError) as e:
            raise RuntimeError(
                f"view: cannot view a tensor of shape {self.shape} as {shape_args(shape)} "
                f"without copying ({e}); use reshape()"
            ) from None
        return self.reshape(*shape)

    def transpose(self, dim0: int, dim1: int) -> Any:
        """Swap two dimensions (``permute`` reorders them all)."""
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return self.permute(tuple(dims))

    def unsqueeze(self, dim: int) -> Any:
        """A new dimension of size 1 at ``dim``."""
        dim = axes(dim, self.ndim + 1, "unsqueeze: dim")[0]
        return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])

    def squeeze(self, dim: int | Sequence[int] | None = None) -> Any:
        """Drop the dimensions of size 1 (among ``dim``, when given)."""
        dims = axes(dim, self.ndim, "squeeze: dim") if self.ndim else ()
        drop = {d for d in dims if self.shape[d] == 1}
        return self.reshape(tuple(n for d, n in enumerate(self.shape) if d not in drop))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Any:
        """Merge dimensions start_dim..end_dim into one, as torch.flatten:
        (N, C, H, W) -> (N, C*H*W) for start_dim=1."""
        if self.ndim == 0:
            return self.reshape(1)
        start = axes(start_dim, self.ndim, "flatten: start_dim")[0]
        end = axes(end_dim, self.ndim, "flatten: end_dim")[0]
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        merged = int(np.prod(self.shape[start : end + 1]))
        return self.reshape(self.shape[:start] + (merged,) + self.shape[end + 1 :])
