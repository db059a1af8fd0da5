"""Finite-difference gradient checks: the proof that every backward is right.

For a function f of some tensors, autograd computes vector-Jacobian products
u^T J. A central difference computes the same thing from forward passes alone:

    d/dx_i <u, f(x)>  ~=  (<u, f(x + eps e_i)> - <u, f(x - eps e_i)>) / (2 eps)

with error O(eps^2) from the Taylor series, plus rounding of order
machine_eps * |f| / eps. In float64 (machine_eps 1e-16) eps = 1e-6 balances
the two near 1e-10; in float32 (1e-7) the rounding term alone is ~0.1, which is
why checks run in float64.

The upstream vector u is random, never all ones: the sum of a BatchNorm output
over the batch does not depend on the input at all, so a check of sum(f)
passes a BatchNorm whose backward returns zeros.

Modes:
    "elementwise"  every input entry, each against u^T J (2 forwards an entry)
    "jacobian"     the whole Jacobian J, column by column from differences and
                   row by row from one-hot backward passes (tiny problems)
    "directional"  <u^T J, v> for random unit directions v over all inputs at
                   once: 2 forwards a direction, whatever the size, so whole
                   blocks and networks are checked end to end
    "auto"         elementwise up to ``max_elements`` entries, else directional

An entry passes when |analytic - numeric| <= atol + rtol * |numeric|.

The numbers themselves, for a check written by hand (the tutorials compare
a formula with them): ``numerical_vjp`` (u^T J, entry by entry),
``numerical_jacobian`` (J, column by column) and ``numerical_directional``
(<u^T J, v> for one direction v). They use forward passes only, never
backward, so they are independent of autograd.

Before comparing, three properties of backward are checked (as PyTorch's
gradcheck does): a second graph gives the same gradients, a zero upstream
gradient gives zero gradients, and every gradient has its tensor's shape and
dtype. Inputs with broadcast (stride-0) dimensions are refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .autograd import Tensor
from .backends.device import full_like_device, to_numpy
from .grad_mode import no_grad


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message names the worst entries."""


@dataclass
class _Mismatch:
    where: str
    analytic: float
    numeric: float

    @property
    def error(self) -> float:
        return abs(self.analytic - self.numeric)


def _outputs(fn: Callable, inputs: Sequence[Tensor]) -> list[Tensor]:
    out = fn(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    for o in outs:
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: fn must return Tensors, got {type(o).__name__}")
    return outs


def gradcheck(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    inputs: Sequence[Tensor] | Tensor,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    *,
    params: Iterable[Tensor | tuple[str, Tensor]] = (),
    mode: str = "auto",
    max_elements: int = 4096,
    n_directions: int = 3,
    seed: int = 0,
    raise_exception: bool = True,
) -> bool:
    """Check the gradients of ``fn(*inputs)`` against central differences.

    Args:
        fn: takes the input Tensors, returns a Tensor or a tuple of Tensors.
        inputs: Tensors; those with requires_grad=True are checked.
        eps: finite-difference step.
        atol, rtol: tolerances (PyTorch's defaults, meant for float64).
        params: more tensors to check that fn uses without taking them as
            arguments, e.g. ``model.parameters()``, or (name, tensor) pairs
            such as ``model.named_parameters()`` so that a failure names
            them. They are perturbed in place.
        mode: "auto", "elementwise", "jacobian" or "directional" (see module doc).
        max_elements: the size up to which "auto" checks every entry.
        n_directions: random directions for the directional check.
        seed: seeds the upstream gradient and the directions.
        raise_exception: raise GradcheckError on failure (else return False).

    Returns:
        True when every checked gradient matches.
    """
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = list(inputs)
    params = [p if isinstance(p, tuple) else (f"param {i}", p) for i, p in enumerate(params)]
    seen: set[int] = set()
    checked: list[tuple[str, Tensor]] = []
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and id(t) not in seen:
            seen.add(id(t))
            checked.append((f"input {i}", t))
    for name, t in params:
        if id(t) not in seen:
            seen.add(id(t))
            checked.append((name, t))
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True and no params were given")
    for name, t in checked:
        if t.dtype != np.float64:
            warnings.warn(
                f"gradcheck: {name} is {t.dtype}, not float64; finite differences in "
                f"low precision are dominated by rounding (convert with .to(np.float64))",
                stacklevel=2,
            )
    for name, t in checked:
        if any(st == 0 for st, n in zip(t.data.strides, t.shape) if n > 1):
            raise ValueError(
                f"gradcheck: {name} has a stride-0 (broadcast) dimension: perturbing one "
                f"entry would move several; pass a copy (e.g. np.array(x))"
            )
    if mode not in ("auto", "elementwise", "jacobian", "directional"):
        raise ValueError(f"gradcheck: unknown mode {mode!r}")
    n_total = sum(t.numel() for _, t in checked)
    if mode == "auto":
        mode = "elementwise" if n_total <= max_elements else "directional"

    rng = np.random.default_rng(seed)
    saved_grads = [t.grad for _, t in checked]
    try:
        with no_grad():
            reference = _outputs(fn, inputs)
        upstream = [rng.standard_normal(o.shape) for o in reference]
        analytic = _analytic(fn, inputs, checked, upstream)
        # Backward must be repeatable: a second graph gives the same gradients.
        again = _analytic(fn, inputs, checked, upstream)
        for (name, _), a, b in zip(checked, analytic, again):
            if not np.allclose(a, b, rtol=0, atol=1e-12 * (1 + np.abs(a).max(initial=0))):
                return _fail(raise_exception, f"gradcheck: backward is not repeatable for {name}")
        # Backward must scale with its upstream gradient: zero in, zero out.
        zeros = _analytic(fn, inputs, checked, [np.zeros_like(u) for u in upstream])
        for (name, _), z in zip(checked, zeros):
            if np.abs(z).max(initial=0) != 0:
                return _fail(
                    raise_exception,
                    f"gradcheck: a zero upstream gradient gave a non-zero gradient for {name} "
                    f"(max |grad| {np.abs(z).max():.3g}); backward must multiply by grad_output",
                )
        if mode == "jacobian":
            mismatches = _check_jacobian(fn, inputs, checked, reference, eps)
        elif mode == "elementwise":
            mismatches = _check_elementwise(fn, inputs, checked, upstream, analytic, eps)
        else:
            mismatches = _check_directional(
                fn, inputs, checked, upstream, analytic, eps, n_directions, rng
            )
    finally:
        for (_, t), g in zip(checked, saved_grads):
            t.grad = g

    bad = [m for m in mismatches if m.error > atol + rtol * abs(m.numeric)]
    if not bad:
        return True
    bad.sort(key=lambda m: m.error, reverse=True)
    lines = [
        f"gradcheck failed ({mode}): {len(bad)} of {len(mismatches)} checked values differ "
        f"beyond atol={atol:g} + rtol={rtol:g}*|numeric|; worst first:"
    ]
    for m in bad[:8]:
        rel = m.error / max(abs(m.analytic) + abs(m.numeric), 1e-300)
        lines.append(
            f"  {m.where}: analytic {m.analytic:.10g}, numeric {m.numeric:.10g}, "
            f"abs error {m.error:.3g}, rel error {rel:.3g}"
        )
    return _fail(raise_exception, "\n".join(lines))


def _fail(raise_exception: bool, message: str) -> bool:
    if raise_exception:
        raise GradcheckError(message)
    return False


def _analytic(fn, inputs, checked, upstream) -> list[np.ndarray]:
    """u^T J for every checked tensor, by backpropagation."""
    for _, t in checked:
        t.grad = None
    outs = _outputs(fn, inputs)
    for k, (o, u) in enumerate(zip(outs, upstream)):
        if o.requires_grad:
            o.backward(_like(u, o), retain_graph=k < len(outs) - 1)
    grads = []
    for name, t in checked:
        if t.grad is None:
            grads.append(np.zeros(t.shape))
            continue
        if t.grad.shape != t.shape or t.grad.dtype != t.dtype:
            raise GradcheckError(
                f"gradcheck: the gradient of {name} has shape {t.grad.shape} and dtype "
                f"{t.grad.dtype}; expected {t.shape} and {t.dtype}"
            )
        grads.append(to_numpy(t.grad).astype(np.float64))
    return grads


def _like(u: np.ndarray, t: Tensor):
    """u as an array of t's dtype, on t's device."""
    return full_like_device(u, t.data)


def _objective(fn, inputs, upstream) -> float:
    """<u, f(x)> in float64, without recording a graph."""
    with no_grad():
        outs = _outputs(fn, inputs)
    return float(sum(np.vdot(u, to_numpy(o.data)) for o, u in zip(outs, upstream)))


def _perturbed(t: Tensor, flat_index: int, delta: float, evaluate):
    """Evaluate with one entry of t shifted by delta, then restore it exactly."""
    view = t.data.reshape(-1)  # a view (t.data is contiguous): perturbed in place
    original = view[flat_index].copy()
    view[flat_index] = original + delta
    try:
        return evaluate()
    finally:
        view[flat_index] = original


def _check_elementwise(fn, inputs, checked, upstream, analytic, eps) -> list[_Mismatch]:
    mismatches = []
    for (name, t), g in zip(checked, analytic):
        _require_contiguous(name, t)
        flat_g = g.reshape(-1)
        for i in range(t.numel()):
            plus = _perturbed(t, i, eps, lambda: _objective(fn, inputs, upstream))
            minus = _perturbed(t, i, -eps, lambda: _objective(fn, inputs, upstream))
            numeric = (plus - minus) / (2 * eps)
            index = np.unravel_index(i, t.shape)
            mismatches.append(_Mismatch(f"{name}{list(map(int, index))}", flat_g[i], numeric))
    return mismatches


def _check_jacobian(fn, inputs, checked, reference, eps) -> list[_Mismatch]:
    """Compare the full Jacobian d out[j] / d in[i], entry by entry."""
    n_out = sum(o.numel() for o in reference)
    # Analytic rows: one backward per output entry, with a one-hot upstream.
    rows = []
    for j in range(n_out):
        onehot = np.zeros(n_out)
        onehot[j] = 1.0
        upstream, start = [], 0
        for o in reference:
            upstream.append(onehot[start : start + o.numel()].reshape(o.shape))
            start += o.numel()
        rows.append(
            np.concatenate([g.reshape(-1) for g in _analytic(fn, inputs, checked, upstream)])
        )
    analytic = np.stack(rows)  # (n_out, n_in)

    def flat_outputs() -> np.ndarray:
        with no_grad():
            outs = _outputs(fn, inputs)
        return np.concatenate([to_numpy(o.data).astype(np.float64).reshape(-1) for o in outs])

    mismatches, col = [], 0
    for name, t in checked:
        _require_contiguous(name, t)
        for i in range(t.numel()):
            plus = _perturbed(t, i, eps, flat_outputs)
            minus = _perturbed(t, i, -eps, flat_outputs)
            numeric = (plus - minus) / (2 * eps)
            index = list(map(int, np.unravel_index(i, t.shape)))
            for j in range(n_out):
                mismatches.append(
                    _Mismatch(f"d out[{j}] / d {name}{index}", analytic[j, col], numeric[j])
                )
            col += 1
    return mismatches


def _check_directional(fn, inputs, checked, upstream, analytic, eps, n_directions, rng):
    """<grad, v> against (f(x + eps v) - f(x - eps v)) / (2 eps), v random unit."""
    mismatches = []
    n_total = sum(t.numel() for _, t in checked)
    for d in range(n_directions):
        # Random signs with magnitudes bounded away from zero (as Chainer
        # does), so that no entry's gradient is left out of the sum.
        parts = []
        for _, t in checked:
            v = rng.uniform(0.5, 1.0, t.shape) * rng.choice([-1.0, 1.0], t.shape)
            parts.append(v)
        norm = np.sqrt(sum((v * v).sum() for v in parts))
        parts = [v / norm for v in parts]
        expected = sum(float((g * v).sum()) for g, v in zip(analytic, parts))

        def shifted(sign: float, parts: list[np.ndarray] = parts) -> float:
            originals = [t.data.copy() for _, t in checked]
            try:
                for (_, t), v in zip(checked, parts):
                    t.data[...] = t.data + _like(sign * eps * v, t)
                return _objective(fn, inputs, upstream)
            finally:
                for (_, t), orig in zip(checked, originals):
                    t.data[...] = orig

        numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
        mismatches.append(_Mismatch(f"direction {d} over {n_total} entries", expected, numeric))
    return mismatches


def _require_contiguous(name: str, t: Tensor) -> None:
    if not t.data.flags.c_contiguous:
        raise ValueError(
            f"gradcheck: {name} must be C-contiguous to be perturbed in place "
            f"(pass np.ascontiguousarray of it)"
        )


# --------------------------------------------------------------------------
# The finite differences themselves, public: for checks written by hand
# --------------------------------------------------------------------------


def _as_inputs(inputs, contiguous: bool = True) -> tuple[list[Tensor], bool]:
    """Tensors to perturb (arrays are copied into new C-contiguous Tensors),
    and whether a single one was given."""
    single = not isinstance(inputs, (list, tuple))
    tensors = []
    for k, t in enumerate([inputs] if single else inputs):
        t = t if isinstance(t, Tensor) else Tensor(np.array(t, order="C"))
        if contiguous:
            _require_contiguous(f"input {k}", t)
        tensors.append(t)
    return tensors, single


def _as_upstream(upstream) -> list[np.ndarray]:
    ups = upstream if isinstance(upstream, (list, tuple)) else [upstream]
    return [np.asarray(to_numpy(u), dtype=np.float64) for u in ups]


def numerical_vjp(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    inputs: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    upstream: np.ndarray | Sequence[np.ndarray],
    eps: float = 1e-6,
) -> np.ndarray | list[np.ndarray]:
    """u^T J by central differences: d<u, fn(*inputs)>/d(input), every entry.

    Two forward passes an entry, no backward: what autograd's
    ``fn(*inputs).backward(u)`` should give, computed without it. ``inputs``
    is one Tensor (or array) or a list of them; every one is differentiated
    (Tensors are perturbed in place and restored exactly). ``upstream`` has
    fn's output shape (a list of arrays if fn returns a tuple). Returns
    float64 arrays shaped like the inputs: one array for one input, else a
    list. Use float64 inputs (see the module doc for the error).
    """
    tensors, single = _as_inputs(inputs)
    ups = _as_upstream(upstream)
    grads = []
    for t in tensors:
        g = np.zeros(t.shape)
        flat = g.reshape(-1)
        for i in range(t.numel()):
            plus = _perturbed(t, i, eps, lambda: _objective(fn, tensors, ups))
            minus = _perturbed(t, i, -eps, lambda: _objective(fn, tensors, ups))
            flat[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads[0] if single else grads


def numerical_jacobian(
    fn: Callable[[Tensor], Tensor], x: Tensor | np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """The Jacobian of a one-input, one-output ``fn`` by central differences.

    J[i, j] = d fn(x).ravel()[i] / d x.ravel()[j], shape (fn(x).size, x.size),
    float64: column j from the two forward passes with entry j of x moved by
    +-eps. No backward is run.
    """
    (t,), _ = _as_inputs(x)

    def flat_output() -> np.ndarray:
        with no_grad():
            out = fn(t)
        if not isinstance(out, Tensor):
            kind = type(out).__name__
            raise TypeError(f"numerical_jacobian: fn must return a Tensor, got {kind}")
        return to_numpy(out.data).astype(np.float64).reshape(-1)

    columns = []
    for i in range(t.numel()):
        plus = _perturbed(t, i, eps, flat_output)
        minus = _perturbed(t, i, -eps, flat_output)
        columns.append((plus - minus) / (2 * eps))
    return np.stack(columns, axis=1)


def numerical_directional(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    inputs: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    upstream: np.ndarray | Sequence[np.ndarray],
    direction: np.ndarray | Sequence[np.ndarray],
    eps: float = 1e-6,
) -> float:
    """<u^T J, v> by one central difference along v: two forward passes, any size.

    (<u, fn(x + eps v)> - <u, fn(x - eps v)>) / (2 eps), with ``direction`` v
    shaped like ``inputs`` (a list for a list). Compare it with
    ``np.vdot(x.grad, v)`` after ``fn(x).backward(u)``: the check that scales
    to whole networks.
    """
    tensors, single = _as_inputs(inputs, contiguous=False)
    ups = _as_upstream(upstream)
    vs = [direction] if single else list(direction)
    if len(vs) != len(tensors):
        raise ValueError(f"numerical_directional: {len(tensors)} inputs, {len(vs)} directions")
    originals = [t.data.copy() for t in tensors]

    def shifted(sign: float) -> float:
        try:
            for t, v in zip(tensors, vs):
                t.data[...] = t.data + _like(sign * eps * np.asarray(v), t)
            return _objective(fn, tensors, ups)
        finally:
            for t, orig in zip(tensors, originals):
                t.data[...] = orig

    return (shifted(1.0) - shifted(-1.0)) / (2 * eps)
