"""Solution to tutorial 05's exercise (try it first)."""

from __future__ import annotations

import numpy as np

import minires as mr

__all__ = ["stack_input_grad"]


def _branch(block, x):
    """F(x) of a PreActBlock: its layers without the shortcut."""
    return block.conv2(block.relu(block.bn2(block.conv1(block.relu(block.bn1(x))))))


def stack_input_grad(blocks, x, g):
    """Exercise 5.A: dL/dx for L = <g, x_L>, x_L = blocks applied in order to x.

    Forward, keeping every block's input; then from the last block down,
    g <- g + J_F^T g, with J_F^T g from one backward through the branch alone.
    """
    inputs = []
    with mr.no_grad():
        h = mr.tensor(x)
        for block in blocks:
            inputs.append(h.data.copy())
            h = block(h)
    g = np.asarray(g, dtype=np.float64)
    for block, x_i in zip(reversed(blocks), reversed(inputs)):
        leaf = mr.tensor(x_i, requires_grad=True)
        _branch(block, leaf).backward(g)
        g = g + leaf.grad  # the identity carries g; the branch adds J_F^T g
    return g
