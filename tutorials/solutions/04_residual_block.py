"""Solutions to tutorial 04's exercise (try it first)."""

from __future__ import annotations

import minires as mr
import minires.functional as F

__all__ = ["basic_block_forward", "preact_block_forward"]


def basic_block_forward(block, x):
    """Exercise 4.A: CifarBasicBlock's forward from its layers."""
    out = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    if block.shortcut is not None:
        out = out + block.shortcut(x)
    return F.relu(out)  # the ReLU after the add: the original block


def preact_block_forward(block, x):
    """Exercise 4.A: PreActBlock's forward from its layers; nothing after the add."""
    pre = F.relu(block.bn1(x))
    out = block.conv2(F.relu(block.bn2(block.conv1(pre))))
    if block.shortcut is None:
        return out
    projection = isinstance(block.shortcut, mr.nn.Sequential)  # option B reads relu(bn1(x))
    return out + block.shortcut(pre if projection else x)
