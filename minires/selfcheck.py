"""``minires gradcheck``: check every op's backward on this machine, in float64.

Each case builds small random float64 inputs (kept away from the kinks of
ReLU and the ties of max-pooling), runs ``mr.gradcheck`` on it and prints one
line: the case, the check's mode, the number of gradient entries checked, the
time, and PASS or FAIL with the checker's message. The same cases run on the
GPU with ``--device cuda``. The exit status is 0 only if every case passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import functional as F
from . import models, nn
from .autograd import Tensor
from .gradcheck import GradcheckError, gradcheck
from .nn.init import manual_seed


@dataclass
class Case:
    name: str
    fn: Callable[..., Tensor]
    inputs: list[Tensor]
    params: list[Tensor]
    mode: str = "auto"


def _leaf(a: np.ndarray, device: str) -> Tensor:
    t = Tensor(a).to(device).detach()
    t.requires_grad = True
    return t


def _spread(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values whose magnitudes are >= 0.1 and pairwise distinct: no ReLU kink, no max tie."""
    n = int(np.prod(shape))
    magnitudes = 0.1 + np.arange(n) * (2.0 / n)
    signs = rng.choice([-1.0, 1.0], n)
    return (rng.permutation(magnitudes) * signs).reshape(shape)


def cases(device: str, seed: int) -> list[Case]:
    """The checked cases: every differentiable op, two blocks and a small net."""
    rng = np.random.default_rng(seed)

    def leaf(shape: tuple[int, ...], scale: float = 1.0, offset: float = 0.0) -> Tensor:
        return _leaf(offset + scale * rng.standard_normal(shape), device)

    x = leaf((2, 3, 7, 6))
    w = leaf((4, 3, 3, 3), 0.5)
    b = leaf((4,))
    bn_x = leaf((3, 4, 5, 5), 5.0, 12.0)  # not centred: BN must remove the mean
    gamma, beta = leaf((4,), 0.5, 1.0), leaf((4,))
    mean = np.zeros(4) if device == "cpu" else Tensor(np.zeros(4)).to(device).data
    var = np.ones(4) if device == "cpu" else Tensor(np.ones(4)).to(device).data
    pool_x = _leaf(_spread(rng, (2, 3, 7, 7)), device)
    logits, labels = leaf((5, 7), 3.0), np.array([0, 6, 3, 2, 2])
    lin_x, lin_w, lin_b = leaf((4, 6)), leaf((3, 6)), leaf((3,))

    def conv(algorithm: str) -> Callable[..., Tensor]:
        def run(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
            previous = F.set_conv_algorithm(algorithm)
            try:
                return F.conv2d(x, w, b, stride=1, padding=1)
            finally:
                F.set_conv_algorithm(previous)

        return run

    result = [
        Case("conv2d 3x3, im2col", conv("im2col"), [x, w, b], []),
        Case("conv2d 3x3, shifted GEMM", conv("shifted"), [x, w, b], []),
        Case(
            "conv2d 3x3, stride 2",
            lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
            [x, w, b],
            [],
        ),
        Case(
            "batch_norm, training",
            lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True),
            [bn_x, gamma, beta],
            [],
        ),
        Case(
            "batch_norm, evaluation",
            lambda x, g, b: F.batch_norm(x, mean, var, g, b, training=False),
            [bn_x, gamma, beta],
            [],
        ),
        Case("relu", F.relu, [pool_x], []),
        Case("max_pool2d 3x3/2 pad 1", lambda x: F.max_pool2d(x, 3, 2, 1), [pool_x], []),
        Case("avg_pool2d 3x3/2 pad 1", lambda x: F.avg_pool2d(x, 3, 2, 1), [pool_x], []),
        Case("adaptive_avg_pool2d(1)", lambda x: F.adaptive_avg_pool2d(x, 1), [pool_x], []),
        Case("linear", F.linear, [lin_x, lin_w, lin_b], []),
        Case("cross_entropy", lambda z: F.cross_entropy(z, labels), [logits], []),
    ]

    manual_seed(seed)
    basic = models.BasicBlock(4, 4).to(np.float64)
    bottleneck = models.Bottleneck(8, 2, stride=2, downsample=_projection(8, 8, 2)).to(np.float64)
    small_net = models.cifar_resnet(8).to(np.float64)
    for module in (basic, bottleneck, small_net):
        if device != "cpu":
            module.to(device)
    block_x = leaf((2, 4, 6, 6))
    bottleneck_x = leaf((2, 8, 6, 6))
    net_x = leaf((2, 3, 8, 8))
    result += [
        Case("BasicBlock (residual add)", basic, [block_x], list(basic.parameters())),
        Case(
            "Bottleneck, stride 2, projection",
            bottleneck,
            [bottleneck_x],
            list(bottleneck.parameters()),
        ),
        Case(
            "resnet8 (CIFAR), end to end",
            small_net,
            [net_x],
            list(small_net.parameters()),
            mode="directional",
        ),
    ]
    return result


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


def run(device: str = "cpu", seed: int = 0) -> bool:
    """Run every case, print a table, return whether all passed."""
    print(f"minires gradcheck: float64 central differences vs backprop, device {device}")
    print(f"{'case':36}{'mode':>13}{'entries':>10}{'seconds':>9}  result")
    all_passed = True
    for case in cases(device, seed):
        entries = sum(t.numel() for t in case.inputs + case.params)
        start = time.perf_counter()
        try:
            gradcheck(case.fn, case.inputs, params=case.params, mode=case.mode, seed=seed)
            outcome, detail = "PASS", ""
        except GradcheckError as e:
            outcome, detail, all_passed = "FAIL", str(e), False
        elapsed = time.perf_counter() - start
        mode = case.mode if case.mode != "auto" else "elementwise"
        print(f"{case.name:36}{mode:>13}{entries:>10}{elapsed:>9.2f}  {outcome}")
        if detail:
            print("    " + detail.replace("\n", "\n    "))
    print("all passed" if all_passed else "SOME CHECKS FAILED")
    return all_passed
