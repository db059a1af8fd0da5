"""Draw the graph that autograd recorded: which Functions made a tensor, from what.

``to_dot(y)`` walks back from ``y`` along ``.creator`` (the Function that
made a tensor) and ``.inputs`` (the tensors that Function read): the graph
that ``y.backward()`` walks. It returns Graphviz dot source, a plain string:
a box for each tensor (its name if you give one, its shape and dtype), an
ellipse for each Function (its class name, or its ``graph_label``, e.g.
"BatchNormFunction + ReLU" for the fused op), and edges input -> Function ->
output. A tensor used twice, like ``x`` in the residual fork
``y = F(x) + x``, is one box with two outgoing edges (drawn in red).
``render(y, "graph.svg")`` turns that text into a picture with Graphviz::

    x = mr.tensor([1.0, 2.0], requires_grad=True)
    w = mr.tensor([3.0, 4.0], requires_grad=True)
    y = (x * w + x).sum()
    y.backward(retain_graph=True)          # keep the graph, to draw it
    print(mr.viz.to_dot(y, show_grad=True, names={x: "x", w: "w"}))
    mr.viz.render(y, "y.svg", show_grad=True, names={x: "x", w: "w"})

The graph has to be there to be drawn: ``backward()`` frees it as it goes
unless called as ``backward(retain_graph=True)``, and to_dot raises if it
meets a freed Function. Draw before backward, or retain the graph.

Rendering needs Graphviz twice over: the Python package ``graphviz`` and the
``dot`` program from the system's packages (see INSTALL below). to_dot needs
neither.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.device import get_array_module
from .backward import check_saved
from .checkpoint import atomic_write

if TYPE_CHECKING:
    from .autograd import Function, Tensor

FORMATS = ("svg", "png", "pdf")

INSTALL = (
    "Install both: the Python package with `pip install graphviz` (or "
    '`pip install "minires[viz]"`), and the `dot` program from your system\'s '
    "package named graphviz: `apt-get install graphviz` (Debian, Ubuntu), "
    "`dnf install graphviz` (Fedora), `brew install graphviz` (macOS), "
    "`conda install graphviz`, or the installer from graphviz.org (Windows; "
    "add its bin folder to PATH). to_dot() needs neither: it returns the dot "
    "text, which any Graphviz viewer draws."
)

# An edge: (source, target, i), tensor -> Function with i the input's position,
# or Function -> tensor with i None.
Edge = tuple[Any, Any, "int | None"]


class GraphvizMissing(RuntimeError):
    """render() was called where the graphviz package or the dot program is missing."""


def _walk(root: Tensor) -> tuple[list[Tensor], list[Function], list[Edge]]:
    """The tensors and Functions behind ``root``, and the edges between them.

    Breadth first from root, with a queue, not recursion (a ResNet-1202's
    graph is thousands of nodes deep), so the order, and with it every node
    id, is the same on every run. Each tensor and each Function is visited
    once however many edges reach it: a fork is one node.
    """
    tensors, functions = {id(root): root}, {}  # dicts keep the order of discovery
    edges: list[Edge] = []
    queue = deque([root])
    while queue:
        t = queue.popleft()
        fn = t.creator
        if fn is None:
            continue  # a leaf: an input, a parameter or a constant
        if getattr(fn, "released", False):
            raise RuntimeError(
                f"to_dot: this graph was freed by backward() (it met a released "
                f"{type(fn).__name__}): draw it before backward, or call "
                "backward(retain_graph=True) to keep it"
            )
        edges.append((fn, t, None))
        if id(fn) in functions:
            continue  # a Function with several outputs, reached again
        functions[id(fn)] = fn
        for i, x in enumerate(fn.inputs):
            edges.append((x, fn, i))  # x * x gives two edges: x is used twice
            if id(x) not in tensors:
                tensors[id(x)] = x
                queue.append(x)
    return list(tensors.values()), list(functions.values()), edges


def _edge_grads(root: Tensor, functions: list[Function]) -> dict[tuple[int, int], Any]:
    """The gradient each edge x -> fn carries back, keyed (id(fn), input position).

    The chain rule once more, from ``root`` with seed 1, in run_backward's
    order (backward.py: consumers have larger generations, so the largest
    goes first), but keeping what each Function sends to each input instead
    of only the sums, and writing no ``.grad``.
    """
    xp = get_array_module(root.data)
    grads = {id(root): xp.ones_like(root.data)}  # id(tensor) -> the sum received so far
    carried = {}
    for fn in sorted(functions, key=lambda f: -f.generation):  # stable: ties keep walk order
        check_saved(fn)  # raises if a parameter was changed since forward
        gys = []
        for ref, (shape, dtype) in zip(fn.outputs, fn.output_meta):
            g = grads.get(id(ref()))  # an output that is gone received nothing
            gys.append(xp.zeros(shape, dtype=dtype) if g is None else g)
        gxs = fn.backward(*gys)
        gxs = gxs if isinstance(gxs, tuple) else (gxs,)
        for i, (x, gx, wanted) in enumerate(zip(fn.inputs, gxs, fn.needs_input_grad)):
            if wanted and gx is not None:
                carried[id(fn), i] = gx
                grads[id(x)] = gx if id(x) not in grads else grads[id(x)] + gx
    return carried


def _label(*parts: str) -> str:
    """A quoted dot label, one line per part."""
    escaped = (p.replace("\\", "\\\\").replace('"', '\\"') for p in parts)
    return '"' + "\\n".join(escaped) + '"'


def _norm(g: Any) -> str:
    return f"{float(get_array_module(g).linalg.norm(g)):.4g}"


def _names(names: Mapping[Tensor, str] | None) -> dict[int, str]:
    from .autograd import Tensor  # at call time: autograd is below viz, never the reverse

    by_id = {}
    for t, name in (names or {}).items():
        if not isinstance(t, Tensor):
            raise TypeError(f"to_dot: names maps tensors to names, as {{x: 'x'}}; got key {t!r}")
        by_id[id(t)] = str(name)
    return by_id


def to_dot(
    tensor: Tensor, show_grad: bool = False, names: Mapping[Tensor, str] | None = None
) -> str:
    """The recorded graph behind ``tensor``, as Graphviz dot source.

    Args:
        tensor: any Tensor; a leaf gives a graph of one node.
        show_grad: also show the norm of ``.grad`` on every tensor that has
            one (leaves after backward, and non-leaves that called
            ``retain_grad()``); and, when ``tensor`` has one element (a loss),
            label each edge that leaves a fork with the norm of the gradient
            it carries back (the chain rule is run again from ``tensor`` with
            seed 1 to find it): the fork's gradient is their sum. Call
            ``backward(retain_graph=True)`` first.
        names: labels for some tensors, e.g. ``{x: "x"}``; a module's
            parameters by ``{p: n for n, p in model.named_parameters()}``.

    Node ids are t0, t1, ... for tensors and f0, f1, ... for Functions, in
    the order a breadth-first walk back from ``tensor`` meets them (t0 is
    ``tensor``), so the text is the same on every run. Fills: the output
    green, leaves that require grad blue, Functions grey.

    Raises:
        RuntimeError: the graph was freed by a backward() without retain_graph.
    """
    label_of = _names(names)
    tensors, functions, edges = _walk(tensor)
    node_id = {id(t): f"t{i}" for i, t in enumerate(tensors)}
    node_id.update({id(f): f"f{i}" for i, f in enumerate(functions)})
    uses: dict[int, int] = {}  # a tensor's outgoing edges
    for source, _, i in edges:
        if i is not None:
            uses[id(source)] = uses.get(id(source), 0) + 1
    carried = _edge_grads(tensor, functions) if show_grad and tensor.numel() == 1 else {}

    lines = [
        "digraph minires {",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=10, fontcolor=red];',
    ]
    for t in tensors:
        parts = [label_of[id(t)]] if id(t) in label_of else []
        parts.append(f"{tuple(t.shape)} {t.dtype}")
        if show_grad and t.grad is not None:
            parts.append(f"|grad| = {_norm(t.grad)}")
        leaf_param = t.creator is None and t.requires_grad
        fill = "palegreen" if t is tensor else "lightblue" if leaf_param else "white"
        lines.append(
            f"  {node_id[id(t)]} [shape=box, style=filled, fillcolor={fill}, "
            f"label={_label(*parts)}];"
        )
    for f in functions:
        lines.append(
            f"  {node_id[id(f)]} [shape=ellipse, style=filled, fillcolor=lightgrey, "
            f"label={_label(getattr(f, 'graph_label', type(f).__name__))}];"
        )
    for source, target, i in edges:
        attrs = []
        if i is not None and uses[id(source)] > 1:  # an edge out of a fork
            attrs.append("color=red")
            if (id(target), i) in carried:
                attrs.append(f"label={_label('|g| = ' + _norm(carried[id(target), i]))}")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {node_id[id(source)]} -> {node_id[id(target)]}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _graphviz() -> Any:
    """The graphviz module, or GraphvizMissing naming what is not installed."""
    missing = []
    try:
        import graphviz
    except ImportError:
        graphviz = None
        missing.append("the Python package `graphviz`")
    if shutil.which("dot") is None:
        missing.append("the Graphviz program `dot` (not on PATH)")
    if missing:
        what = " and ".join(missing)
        raise GraphvizMissing(f"render() needs Graphviz, and this machine lacks {what}. {INSTALL}")
    return graphviz


def can_render() -> bool:
    """Whether render() can work here: the graphviz package and `dot` are both installed."""
    try:
        _graphviz()
    except GraphvizMissing:
        return False
    return True


def render(
    tensor: Tensor,
    path: str | Path,
    format: str | None = None,
    show_grad: bool = False,
    names: Mapping[Tensor, str] | None = None,
) -> Path:
    """Draw ``to_dot(tensor, show_grad, names)`` into ``path`` with Graphviz.

    Args:
        format: "svg", "png" or "pdf"; None takes it from path's suffix.

    The file is written atomically (a temporary file renamed over ``path``), so
    a failed render leaves any earlier picture as it was. Returns ``path``.

    Raises:
        GraphvizMissing: the graphviz package or the dot program is not
            installed; the message says how to get both.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    fmt = (format or suffix).lower()
    if fmt not in FORMATS:
        raise ValueError(
            f"render: format must be one of {FORMATS}, given or as path's suffix; "
            f"got format={format!r} and path {str(path)!r}"
        )
    if suffix in FORMATS and suffix != fmt:
        raise ValueError(f"render: format={fmt!r} but path {str(path)!r} ends .{suffix}")
    graphviz = _graphviz()
    source = to_dot(tensor, show_grad=show_grad, names=names)
    try:
        picture = graphviz.Source(source).pipe(format=fmt)
    except graphviz.ExecutableNotFound as e:  # on PATH, but does not run
        raise GraphvizMissing(f"render(): Graphviz's `dot` did not run ({e}). {INSTALL}") from e
    atomic_write(path, lambda f: f.write(picture))
    return path
