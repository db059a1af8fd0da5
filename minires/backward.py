"""The backward walk: the chain rule applied to a recorded graph, in order.

``Tensor.backward()`` (minires/autograd.py) hands its graph to
``run_backward``. Three things make the walk correct, and each is where the
code below makes it so:
1. Order. A Function may run its backward only when the gradients of all its
   outputs are complete, i.e. after every Function that consumed them. Each
   Function's *generation* is one more than the largest generation among
   its inputs' creators, so consumers always have larger generations: a heap
   that pops the largest generation first is a reverse topological order.
   No recursion, so a ResNet-1202 needs no recursion limit.
2. Sums. A tensor used twice (the residual fork ``y = F(x) + x``) receives
   one gradient per use; they are summed in ``grads`` before its creator runs.
3. Memory. Each Function drops what it saved once its backward has run
   (unless ``retain_graph``), so activations are freed while the walk goes on.
4. Freshness. A Function's backward reads values saved at forward; if one was
   changed in place since (an optimiser step between two backward passes of
   a retained graph), the gradient would be silently wrong, so the walk
   raises instead (record_saved / check_saved below).

It reads only attributes of Tensors and Functions, so it needs nothing from
autograd.py at run time (the names below are for type checkers).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .backends.device import get_array_module, is_array
from .grad_mode import is_anomaly_enabled, set_grad_enabled

if TYPE_CHECKING:
    from .autograd import Function, Tensor

Array = Any  # numpy.ndarray or cupy.ndarray


def record_saved(fn: Function, inputs: list[Tensor], outputs: list[Tensor]) -> None:
    """At forward: note the versions of the inputs ``fn.backward`` reads.

    ``fn.saved_inputs`` names them (None: all). In ``detect_anomaly()`` also
    keep copies of them and of ``fn.saved_outputs``, to catch a direct write
    into ``.data``, which no version counter sees.
    """
    saved = range(len(inputs)) if fn.saved_inputs is None else fn.saved_inputs
    fn.versions = {i: inputs[i]._version for i in saved if i < len(inputs)}
    if is_anomaly_enabled():
        kept = [(f"input {i}", inputs[i].data) for i in fn.versions]
        kept += [(f"output {i}", outputs[i].data) for i in fn.saved_outputs]
        fn.copies = [(what, a, a.copy()) for what, a in kept]


def check_saved(fn: Function) -> None:
    """Before ``fn.backward``: raise if a value it reads was changed since forward."""
    for i, version in fn.versions.items():
        if fn.inputs[i]._version != version:
            raise RuntimeError(
                f"{type(fn).__name__}.backward: its input {i} (shape {fn.inputs[i].shape}) "
                "was changed in place after the forward pass (by an optimiser step or "
                "load_state_dict), so the gradient would be wrong; run the forward again"
            )
    for what, array, copy in getattr(fn, "copies", ()):
        # NaNs that were there at forward are no change (equal_nan for floats).
        if not get_array_module(copy).array_equal(array, copy, copy.dtype.kind in "fc"):
            raise RuntimeError(
                f"{type(fn).__name__}.backward (detect_anomaly): its {what} (shape "
                f"{copy.shape}) was overwritten after the forward pass (a write to .data?), "
                "so the gradient would be wrong"
            )


def _seed(t: Tensor, gradient: object, op: str) -> Array:
    """The upstream gradient for output ``t``: ``gradient`` as an array of t's
    shape and dtype, or 1 for a one-element output."""
    if not t.requires_grad:
        raise RuntimeError(
            f"{op}: this tensor does not require grad and has no graph "
            "(was it computed under no_grad(), or from inputs without requires_grad?)"
        )
    xp = get_array_module(t.data)
    if gradient is None:
        if t.numel() != 1:
            raise RuntimeError(
                f"{op}: the gradient can be omitted only for a one-element output, "
                f"got shape {t.shape}; pass gradient= of that shape"
            )
        return xp.ones_like(t.data)
    values = gradient if is_array(gradient) else getattr(gradient, "data", gradient)  # a Tensor's
    seed = xp.array(values, dtype=t.dtype)
    if seed.shape != t.shape:
        raise ValueError(
            f"{op}: the gradient must have the output's shape {t.shape}, got {seed.shape}"
        )
    return seed


def backward(
    t: Tensor, gradient: object = None, retain_graph: bool | None = None, create_graph: bool = False
) -> None:
    """``t.backward()``: accumulate d(t)/d(leaf) into ``leaf.grad`` for every leaf.

    Args:
        gradient: the upstream gradient, same shape as t. May be omitted
            only when t has one element (a loss), then it is 1.
        retain_graph: keep the graph and its saved buffers so backward can be
            called again; by default they are freed as it goes.
        create_graph: record the backward pass itself, so that the gradients
            can be differentiated again (a Hessian-vector product, a gradient
            penalty). ``leaf.grad`` then holds a Tensor, as in PyTorch, and
            the graph is kept (``retain_graph`` defaults to True).
    """
    seed = _seed(t, gradient, "backward()")
    retain = create_graph if retain_graph is None else retain_graph
    run_backward([(t, seed)], retain, create_graph)


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: object = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """The gradients of ``outputs`` with respect to ``inputs``, as torch.autograd.grad.

    Returns one Tensor per input and changes no ``.grad``. With
    ``create_graph=True`` the returned gradients are themselves differentiable:
    ``grad((g * v).sum(), w)`` of ``g = grad(loss, w, create_graph=True)`` is a
    Hessian-vector product. An input that the outputs do not depend on is an
    error, or None with ``allow_unused=True``.
    """
    outputs = [outputs] if not isinstance(outputs, (list, tuple)) else list(outputs)
    inputs = [inputs] if not isinstance(inputs, (list, tuple)) else list(inputs)
    if grad_outputs is None or not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs] * len(outputs)
    roots = [(y, _seed(y, g, "grad()")) for y, g in zip(outputs, grad_outputs)]
    captured: dict[int, Any] = {id(x): None for x in inputs}
    retain = create_graph if retain_graph is None else retain_graph
    run_backward(roots, retain, create_graph, captured)
    results = []
    for i, x in enumerate(inputs):
        g = captured[id(x)]
        if g is None and not allow_unused:
            raise RuntimeError(
                f"grad(): input {i} (shape {x.shape}) was not used to compute the outputs "
                "(pass allow_unused=True to get None for it)"
            )
        results.append(g if g is None or create_graph else x.new_tensor(g))
    return tuple(results)


def run_backward(
    roots: list[tuple[Tensor, Array]],
    retain_graph: bool,
    create_graph: bool = False,
    captured: dict[int, Any] | None = None,
) -> None:
    """Walk the graph below the roots in reverse topological order.

    ``grads`` maps a tensor (by id) to the tensor and the sum of the gradients
    it has received so far. Holding the tensor there keeps it alive until its
    creator has run: the Functions that consumed it may already be released.
    A Function runs only after every Function that consumed its outputs has
    run: those have a larger generation, and the heap pops the largest first.

    With ``create_graph`` the gradients are Tensors and each Function's
    ``differentiable_backward`` (its backward written with Tensor operations)
    runs with the graph recorded. With ``captured`` (from ``grad()``), the
    gradients of the tensors it names are kept there, and no ``.grad`` changes.
    """
    with set_grad_enabled(create_graph):
        _walk(roots, retain_graph, create_graph, captured)


def _walk(roots, retain_graph, create_graph, captured) -> None:  # noqa: C901 - one loop, read as one
    grads: dict[int, tuple[Tensor, Any]] = {}
    order = itertools.count()  # tie-breaker so the heap never compares Functions
    heap: list[tuple[int, int, Function]] = []
    queued: set[int] = set()
    # Memory already handed out as some tensor's .grad, by the id of the array
    # that owns it: a view (Reshape and Permute return views of gy) shares its
    # base's memory, so the check follows .base to the owner.
    handed_out: set[int] = set()

    def push(fn: Function | None) -> None:
        if fn is not None and id(fn) not in queued:
            if getattr(fn, "released", False):
                raise RuntimeError(
                    "backward(): the graph was already freed by an earlier backward(); "
                    "call backward(retain_graph=True) the first time to go through it twice"
                )
            queued.add(id(fn))
            heapq.heappush(heap, (-fn.generation, next(order), fn))

    def own(g: Any) -> Any:
        """g, or a copy if its memory is already another tensor's .grad."""
        if create_graph:
            return g  # a Tensor: never changed in place
        base = g
        while getattr(base, "base", None) is not None:
            base = base.base
        if id(base) in handed_out:
            return g.copy()
        handed_out.add(id(base))
        return g

    def store(t: Tensor, g: Any) -> None:
        """Keep g as t's gradient: leaves accumulate into .grad, others into grads."""
        if captured is not None and id(t) in captured:
            previous = captured[id(t)]
            captured[id(t)] = g if previous is None else previous + g
        if t.creator is None:
            if captured is None:
                # Accumulate into .grad out of place (never +=: g may be the
                # very array another tensor also received, e.g. from Add).
                t.grad = own(g) if t.grad is None else t.grad + g
            return
        key = id(t)
        grads[key] = (t, g) if key not in grads else (t, grads[key][1] + g)
        push(t.creator)

    for root, seed in roots:
        store(root, root.new_tensor(seed) if create_graph else seed)
    while heap:
        fn = heapq.heappop(heap)[2]
        check_saved(fn)
        gys = []
        for ref, (shape, dtype) in zip(fn.outputs, fn.output_meta):
            out = ref()
            g = grads.pop(id(out), (None, None))[1] if out is not None else None
            if out is not None and out._retain_grad and g is not None and captured is None:
                out.grad = own(g) if out.grad is None else out.grad + g
            if g is None:
                g = get_array_module(roots[0][1]).zeros(shape, dtype=dtype)
                g = roots[0][0].new_tensor(g) if create_graph else g
            gys.append(g)
        gxs = _differentiable_backward(fn, gys) if create_graph else fn.backward(*gys)
        gxs = gxs if isinstance(gxs, tuple) else (gxs,)
        for x, gx, wanted in zip(fn.inputs, gxs, fn.needs_input_grad):
            if wanted and gx is not None:
                if gx.shape != x.shape:
                    raise RuntimeError(
                        f"{type(fn).__name__}.backward returned a gradient of shape {gx.shape} "
                        f"for an input of shape {x.shape}"
                    )
                store(x, gx)
        if not retain_graph:
            fn.release()


def _differentiable_backward(fn: Function, gys: list[Tensor]) -> Any:
    if not hasattr(fn, "differentiable_backward"):
        raise NotImplementedError(
            f"create_graph=True: {type(fn).__name__} has no differentiable backward, so "
            "its gradient cannot be differentiated again (docs/architecture.md lists "
            "the ops that support higher-order gradients)"
        )
    return fn.differentiable_backward(*gys)
