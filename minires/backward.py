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
from typing import TYPE_CHECKING, Any

from .backends.device import get_array_module
from .grad_mode import is_anomaly_enabled

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
            t.grad = own(g) if t.grad is None else t.grad + g
            return
        key = id(t)
        grads[key] = (t, g) if key not in grads else (t, grads[key][1] + g)
        push(t.creator)

    if root.creator is None:
        store(root, seed)
        return
    push(root.creator)
    while heap:
        fn = heapq.heappop(heap)[2]
        check_saved(fn)
        gys = []
        for ref, (shape, dtype) in zip(fn.outputs, fn.output_meta):
            out = ref()
            g = grads.pop(id(out), (None, None))[1] if out is not None else None
            if out is not None and out._retain_grad and g is not None:
                out.grad = own(g) if out.grad is None else out.grad + g
            gys.append(get_array_module(seed).zeros(shape, dtype=dtype) if g is None else g)
        gxs = fn.backward(*gys)
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
