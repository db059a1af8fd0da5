"""minires.viz: the recorded graph as Graphviz dot text, and rendered with Graphviz.

The dot text is checked exactly on small graphs (every node, every edge, the
fork of ``x * w + x``), by counts on a conv-BN-ReLU residual block and a
BasicBlock, for the same text on every run (also in a fresh process), on a
5000-op chain (no recursion), and for clear errors: a freed graph, and
render() where Graphviz is missing. One test renders for real; it skips, with
the reason, only where the `dot` program is absent (the Python package is in
the `test` extra, so in CI its absence fails).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import viz
from minires.models import BasicBlock

NODE = re.compile(r"^  ([tf]\d+) \[.*label=\"(.*)\"\];$", re.M)
EDGE = re.compile(r"^  ([tf]\d+) -> ([tf]\d+)( \[.*\])?;$", re.M)


def parse(dot: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """{node id: label} and [(source, target, attributes)] of to_dot's text."""
    nodes = dict(NODE.findall(dot))
    edges = EDGE.findall(dot)
    assert len(nodes) + len(edges) + 4 == len(dot.splitlines()), "unparsed lines"
    return nodes, edges


def out_edges(edges, node: str) -> list[str]:
    return [target for source, target, _ in edges if source == node]


def node_named(nodes: dict[str, str], name: str) -> str:
    (found,) = [n for n, label in nodes.items() if label.split("\\n")[0] == name]
    return found


def fork_graph():
    x = mr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    w = mr.tensor(np.array([3.0, 4.0]), requires_grad=True)
    return x, w, x * w + x


FORK_DOT = """\
digraph minires {
  node [fontname="Helvetica", fontsize=10];
  edge [fontname="Helvetica", fontsize=10, fontcolor=red];
  t0 [shape=box, style=filled, fillcolor=palegreen, label="y\\n(2,) float64"];
  t1 [shape=box, style=filled, fillcolor=white, label="(2,) float64"];
  t2 [shape=box, style=filled, fillcolor=lightblue, label="x\\n(2,) float64"];
  t3 [shape=box, style=filled, fillcolor=lightblue, label="w\\n(2,) float64"];
  f0 [shape=ellipse, style=filled, fillcolor=lightgrey, label="Add"];
  f1 [shape=ellipse, style=filled, fillcolor=lightgrey, label="Mul"];
  f0 -> t0;
  t1 -> f0;
  t2 -> f0 [color=red];
  f1 -> t1;
  t2 -> f1 [color=red];
  t3 -> f1;
}
"""


def test_fork_exact_text():
    x, w, y = fork_graph()
    dot = viz.to_dot(y, names={x: "x", w: "w", y: "y"})
    assert dot == FORK_DOT
    nodes, edges = parse(dot)
    assert len(nodes) == 6 and len(edges) == 6  # 4 tensors, 2 Functions
    assert sorted(out_edges(edges, "t2")) == ["f0", "f1"]  # x: once, with two consumers
    assert [n for n in nodes if len(out_edges(edges, n)) > 1 and n[0] == "t"] == ["t2"]


FORK_GRAD_DOT_TAIL = """\
  t3 [shape=box, style=filled, fillcolor=lightblue, label="x\\n(2,) float64\\n|grad| = 6.403"];
  t4 [shape=box, style=filled, fillcolor=lightblue, label="w\\n(2,) float64\\n|grad| = 2.236"];
  f0 [shape=ellipse, style=filled, fillcolor=lightgrey, label="Sum"];
  f1 [shape=ellipse, style=filled, fillcolor=lightgrey, label="Add"];
  f2 [shape=ellipse, style=filled, fillcolor=lightgrey, label="Mul"];
  f0 -> t0;
  t1 -> f0;
  f1 -> t1;
  t2 -> f1;
  t3 -> f1 [color=red, label="|g| = 1.414"];
  f2 -> t2;
  t3 -> f2 [color=red, label="|g| = 5"];
  t4 -> f2;
}
"""


def test_show_grad_labels_the_fork_edges_with_what_they_carry():
    x, w, y = fork_graph()
    loss = y.sum()
    loss.backward(retain_graph=True)
    grad_x = x.grad.copy()
    dot = viz.to_dot(loss, show_grad=True, names={x: "x", w: "w"})
    assert dot.endswith(FORK_GRAD_DOT_TAIL), dot
    # x.grad = [4, 5] is the sum of the shortcut's [1, 1] and the product's w = [3, 4]
    np.testing.assert_array_equal(x.grad, [4.0, 5.0])
    np.testing.assert_array_equal(x.grad, grad_x)  # drawing wrote no gradient
    assert viz.to_dot(loss, names={x: "x", w: "w"}).count("|g|") == 0


def test_a_leaf_is_one_node():
    x = mr.tensor(np.zeros((2, 3), np.float32))
    nodes, edges = parse(viz.to_dot(x, names={x: 'a "quoted" name'}))
    assert nodes == {"t0": 'a \\"quoted\\" name\\n(2, 3) float32'} and edges == []


def residual_block(rng):
    """relu(bn(conv(x))) + x: the fork at x, on 2 channels."""
    x = mr.tensor(rng.standard_normal((2, 2, 4, 4)), requires_grad=True)
    w = mr.tensor(0.3 * rng.standard_normal((2, 2, 3, 3)), requires_grad=True)
    gamma = mr.tensor(np.ones(2), requires_grad=True)
    beta = mr.tensor(np.zeros(2), requires_grad=True)
    h = F.batch_norm(F.conv2d(x, w, padding=1), np.zeros(2), np.ones(2), gamma, beta, True)
    y = F.relu(h) + x
    return {x: "x", w: "w", gamma: "gamma", beta: "beta"}, y


def test_residual_block_counts(rng):
    names, y = residual_block(rng)
    nodes, edges = parse(viz.to_dot(y, names=names))
    functions = sorted(label for n, label in nodes.items() if n[0] == "f")
    assert functions == ["Add", "BatchNormFunction", "Conv2dFunction", "ReLUFunction"]
    assert len(nodes) - len(functions) == 8  # x, w, gamma, beta, 3 between, the output
    assert len(edges) == 12  # 8 inputs (Add 2, ReLU 1, BN 3, conv 2) + 4 outputs
    x = node_named(nodes, "x")
    assert sorted(nodes[f] for f in out_edges(edges, x)) == ["Add", "Conv2dFunction"]
    red = [(s, t) for s, t, attrs in edges if "color=red" in attrs]
    assert sorted(red) == sorted((x, f) for f in out_edges(edges, x))


def test_the_fork_edges_sum_to_the_gradient(rng):
    names, y = residual_block(rng)
    x = next(t for t, n in names.items() if n == "x")
    loss = (y * y).sum()
    loss.backward(retain_graph=True)
    _, functions, _ = viz._walk(loss)
    carried = viz._edge_grads(loss, functions)
    into = {type(f).__name__: carried[id(f), i] for f in functions for i, t in enumerate(f.inputs)
            if t is x}  # fmt: skip
    assert sorted(into) == ["Add", "Conv2dFunction"]
    np.testing.assert_allclose(into["Add"], 2 * y.data)  # the shortcut passes dL/dy unchanged
    np.testing.assert_allclose(into["Add"] + into["Conv2dFunction"], x.grad, rtol=1e-12)
    nodes, edges = parse(viz.to_dot(loss, show_grad=True, names=names))
    x_node = node_named(nodes, "x")
    labels = {nodes[t]: attrs for s, t, attrs in edges if s == x_node}
    for f in ("Add", "Conv2dFunction"):  # the norm of each part is on its edge, 4 digits
        assert labels[f] == f' [color=red, label="|g| = {np.linalg.norm(into[f]):.4g}"]'
    # y * y: y is a fork too, both edges carry 2y
    assert sum("color=red" in attrs for _, _, attrs in edges) == 4


def test_basic_block_named_by_its_parameters(rng):
    block = BasicBlock(2, 2).to(np.float64)
    x = mr.tensor(rng.standard_normal((2, 2, 5, 5)), requires_grad=True)
    loss = block(x).sum()
    names = {p: n for n, p in block.named_parameters()} | {x: "x"}
    nodes, edges = parse(viz.to_dot(loss, names=names))
    functions = sorted(label for n, label in nodes.items() if n[0] == "f")
    # bn1's ReLU is fused into it (F.batch_norm_relu); the one after the add is not
    assert functions == sorted(
        ["Conv2dFunction"] * 2
        + ["BatchNormFunction + ReLU", "BatchNormFunction", "Add", "ReLUFunction", "Sum"]
    )
    assert len(nodes) - len(functions) == 14  # 7 named, 6 between, the loss
    assert len(edges) == 14 + 7  # inputs: conv 2 twice, BN 3 twice, Add 2, ReLU 1, Sum 1
    named = {label.split("\\n")[0] for label in nodes.values() if not label.startswith("(")}
    assert named >= {"x", "conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.bias"}
    x_node = node_named(nodes, "x")
    assert sorted(nodes[f] for f in out_edges(edges, x_node)) == ["Add", "Conv2dFunction"]


def test_the_same_text_on_every_run(rng):
    """Node ids come from the walk, not from id() or a set's order: two graphs
    built alike give the same text, here and in a fresh process."""
    texts = [viz.to_dot(residual_block(np.random.default_rng(1))[1]) for _ in range(2)]
    assert texts[0] == texts[1]
    names, y = residual_block(np.random.default_rng(1))
    assert viz.to_dot(y, names=names) == viz.to_dot(y, names=names)
    code = (
        "import sys, numpy as np; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from test_viz import residual_block; from minires import viz\n"
        "print(viz.to_dot(residual_block(np.random.default_rng(1))[1]), end='')\n"
    )
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(here), str(here.parent)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert done.stdout == texts[0]


def test_a_5000_op_chain_is_walked_without_recursion():
    x = mr.tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(5000):
        y = -y
    loss = y.sum()
    loss.backward(retain_graph=True)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(500)  # a recursive walk would need 10,000 frames
    try:
        dot = viz.to_dot(loss, show_grad=True, names={x: "x"})
    finally:
        sys.setrecursionlimit(limit)
    nodes, edges = parse(dot)
    assert len(nodes) == 5002 + 5001 and len(edges) == 2 * 5001
    assert 'label="x\\n(3,) float64\\n|grad| = 1.732"' in dot


def test_a_freed_graph_is_a_clear_error():
    x, w, y = fork_graph()
    loss = y.sum()
    viz.to_dot(loss)  # before backward: there
    loss.backward()  # no retain_graph: the graph is freed as backward goes
    with pytest.raises(RuntimeError, match=r"freed by backward\(\).*retain_graph=True"):
        viz.to_dot(loss)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        viz.to_dot(y, show_grad=True)


def test_names_map_tensors_to_names():
    x, w, y = fork_graph()
    with pytest.raises(TypeError, match="names maps tensors to names"):
        viz.to_dot(y, names={"x": x})


def test_render_without_dot_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    x, w, y = fork_graph()
    assert not viz.can_render()
    with pytest.raises(viz.GraphvizMissing) as info:
        viz.render(y, tmp_path / "y.svg")
    message = str(info.value)
    assert "`dot`" in message and "apt-get install graphviz" in message
    assert "pip install graphviz" in message and "to_dot() needs neither" in message
    assert list(tmp_path.iterdir()) == []


def test_render_without_the_python_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # `import graphviz` now fails
    x, w, y = fork_graph()
    with pytest.raises(viz.GraphvizMissing, match="the Python package `graphviz`"):
        viz.render(y, tmp_path / "y.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path, fmt", [("y.svg", "png"), ("y.jpg", None), ("y", None), ("y.svg", "gif")]
)
def test_render_checks_the_format(tmp_path, path, fmt):
    x, w, y = fork_graph()
    with pytest.raises(ValueError, match="render: format"):
        viz.render(y, tmp_path / path, format=fmt)


def test_render_for_real(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip(
            "Graphviz's `dot` program is not installed (apt-get install graphviz): "
            "the real SVG/PNG render is not checked here"
        )
    pytest.importorskip("graphviz")  # in CI a missing package fails instead (conftest)
    names, y = residual_block(np.random.default_rng(0))
    loss = y.sum()
    loss.backward(retain_graph=True)
    svg = viz.render(loss, tmp_path / "block.svg", show_grad=True, names=names)
    text = svg.read_text()
    assert svg == tmp_path / "block.svg" and "<svg" in text
    assert text.count('class="node"') == 14 and text.count('class="edge"') == 14
    assert "Conv2dFunction" in text and "|g| = " in text
    png = viz.render(loss, tmp_path / "block.out", format="png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.out", "block.svg"]  # no temps
