"""The graph is freed by reference counting alone, and training does not leak.

Functions hold their inputs strongly and their outputs weakly, and release
what they saved once backward has used it. So there are no reference cycles:
the moment the last reference to a loss goes, every intermediate Tensor and
Function goes with it, without waiting for the cyclic garbage collector
(tinygrad's test_gc, made stricter: gc is disabled while we look).
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from contextlib import contextmanager

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import Function, Tensor, nn


@contextmanager
def gc_disabled():
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def graph_refs(root: Tensor) -> tuple[list[weakref.ref], list[weakref.ref]]:
    """Weak references to every non-leaf Tensor and every Function below root."""
    tensors: dict[int, Tensor] = {}
    functions: dict[int, Function] = {}
    stack = [root]
    while stack:
        t = stack.pop()
        if t.creator is None or id(t) in tensors:
            continue
        tensors[id(t)] = t
        fn = t.creator
        if id(fn) not in functions:
            functions[id(fn)] = fn
            stack.extend(fn.inputs)
    return [weakref.ref(t) for t in tensors.values()], [weakref.ref(f) for f in functions.values()]


def alive(refs: list[weakref.ref]) -> int:
    return sum(r() is not None for r in refs)


def make_net(dtype=np.float32):
    mr.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )
    return net.to(dtype)


def batch(seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    return r.standard_normal((8, 1, 8, 8)).astype(dtype), r.integers(0, 10, 8)


def residual_loss(net, x, labels):
    h = net[0](x)
    h = net[2](net[1](h)) + h  # a residual fork: h is used twice
    h = net[5](net[4](net[3](h)))
    return F.cross_entropy(h * 0.5, labels)


# --------------------------------------------------------------------------
# (a) No reference cycles: intermediates die without gc.collect()
# --------------------------------------------------------------------------


@pytest.mark.parametrize("run_backward", [True, False], ids=["after-backward", "no-backward"])
def test_graph_is_freed_by_refcount_when_the_loss_is_dropped(run_backward):
    net = make_net()
    xa, labels = batch()
    with gc_disabled():
        x = mr.Tensor(xa, requires_grad=True)
        loss = residual_loss(net, x, labels)
        tensors, functions = graph_refs(loss)
        assert len(tensors) >= 9 and len(functions) >= 9  # one per op
        if run_backward:
            loss.backward()
        del loss
        assert alive(tensors) == 0
        assert alive(functions) == 0
    assert x.grad is not None if run_backward else x.grad is None


def test_backward_releases_the_graph_while_the_loss_is_still_held():
    net = make_net()
    xa, labels = batch()
    with gc_disabled():
        loss = residual_loss(net, mr.Tensor(xa), labels)
        tensors, functions = graph_refs(loss)
        loss.backward()
        # Only the loss itself and its (released) creator remain.
        assert alive(tensors) == 1 and alive(functions) == 1
        assert loss.creator.__dict__.keys() <= {"generation", "released"}


def test_retain_graph_keeps_the_graph_until_the_loss_is_dropped():
    net = make_net()
    xa, labels = batch()
    with gc_disabled():
        loss = residual_loss(net, mr.Tensor(xa), labels)
        tensors, functions = graph_refs(loss)
        loss.backward(retain_graph=True)
        assert alive(functions) == len(functions)
        loss.backward()  # the second pass may free it
        del loss
        assert alive(tensors) == 0 and alive(functions) == 0


def test_intermediate_held_by_the_user_survives_but_its_graph_does_not():
    with gc_disabled():
        x = mr.Tensor(np.ones(3), requires_grad=True)
        h = (x * 2.0).exp()
        h_creator = weakref.ref(h.creator)
        inner = weakref.ref(h.creator.inputs[0])
        y = (h * 3.0).sum()
        y_creator = weakref.ref(y.creator)
        y.backward()
        del y
        assert y_creator() is None
        # h was an intermediate the whole graph released: its creator's
        # saved arrays and inputs are gone, though h itself is the user's.
        assert inner() is None
        assert h_creator() is not None and getattr(h_creator(), "released", False)
        np.testing.assert_allclose(x.grad, 6 * np.exp(2.0))


def test_no_grad_builds_nothing_to_free():
    net = make_net()
    xa, _ = batch()
    with gc_disabled(), mr.no_grad():
        y = net(mr.Tensor(xa))
        assert y.creator is None
        fn = weakref.ref(F.LinearFunction())
        assert fn() is None


def _live_graph_objects() -> tuple[int, int]:
    # type(o), not isinstance: isinstance reads o.__class__, which some
    # foreign objects (torch's deprecated aliases) answer with a warning.
    types = [type(o) for o in gc.get_objects()]
    return (
        sum(issubclass(t, Tensor) for t in types),
        sum(issubclass(t, Function) for t in types),
    )


def test_gc_object_count_is_stable_across_training_steps():
    net = make_net()
    xa, labels = batch()

    def step():
        loss = residual_loss(net, mr.Tensor(xa), labels)
        net.zero_grad()
        loss.backward()

    step()
    gc.collect()
    before = _live_graph_objects()
    for _ in range(5):
        step()
    # No collection here: whatever is left was left by refcounting alone.
    assert _live_graph_objects() == before
    assert before[1] == 0  # not a single Function outlives its step


# --------------------------------------------------------------------------
# (b) 1,000 training steps do not grow memory
# --------------------------------------------------------------------------


def _fill_tuple_freelists() -> None:
    """Fill CPython's free lists of small tuples and lists before tracing.

    A freed small tuple is kept on a free list (up to 2,000 of each length)
    instead of being returned to the allocator, so tracemalloc still counts
    it. A fresh process fills those lists slowly over the first ~700 steps
    (~180 KB here), which would look like a leak. Filling them first, before
    tracemalloc starts, leaves only what minires itself keeps.
    """
    junk = [tuple(range(k)) for k in range(1, 21) for _ in range(2100)]
    junk += [[i] for i in range(2100)]
    del junk


def _train(steps: int, keep: list | None = None, measure_at: int = 100) -> tuple[int, int]:
    """Train; return tracemalloc's current size after step measure_at and at the end."""
    net = make_net()
    xa, labels = batch()
    lr = 0.01
    gc.collect()
    _fill_tuple_freelists()
    tracemalloc.start()
    try:
        for i in range(steps):
            loss = F.cross_entropy(net(mr.Tensor(xa)), labels)
            net.zero_grad()
            loss.backward()
            with mr.no_grad():
                for p in net.parameters():
                    p.data -= lr * p.grad
            if keep is not None:
                keep.append(loss)
            if i + 1 == measure_at:
                early = tracemalloc.get_traced_memory()[0]
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert np.isfinite(loss.item())
    return early, late


SLACK = 16 * 1024  # bytes: allocator noise; one leaked activation per step is 8 KB


def test_training_memory_does_not_grow_over_1000_steps():
    early, late = _train(1000)
    assert late - early < SLACK, f"memory grew by {late - early} bytes from step 100 to 1000"


def test_the_memory_check_sees_a_small_leak():
    # Control: keeping each step's (released) loss alive is a leak of a few
    # hundred bytes a step, and the same measurement must notice it.
    leaked: list = []
    early, late = _train(300, keep=leaked)
    assert late - early > SLACK
