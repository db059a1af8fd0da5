"""``minires gpu-check``: the package's own checks on this machine's NVIDIA GPU, then timings.

On a machine with a GPU, one command answers "does minires work here, and
how fast?" with the checks that the test suite runs, shipped in the package:

    ops        every case of ``minires gradcheck`` (each op, two residual
               blocks, a small ResNet), forward and backward on the GPU,
               against the NumPy path on the same inputs (float64)
    gradcheck  the same cases' gradients against finite differences, on the
               GPU, in float64 (``minires gradcheck --device cuda``)
    train      two resnet20 training steps (SGD with momentum) on the GPU
               against the same steps on the CPU: loss, accuracy, and every
               weight, buffer and momentum after them (float64)
    bench      ``minires bench --device cuda``: resnet20 at batch 128 and
               resnet50 at batch 32, against PyTorch when it can use the GPU

Each step has its own time limit (STEPS), and all of them together stay
within TOTAL_S (8 minutes): a step that runs out of time is reported as
TIMEOUT and the next one starts; a step that no longer fits is SKIPPED. One
summary ends the output: each check's result and time, the timings, the
device; then one JSON line. ``--quick`` shrinks every size (tiny images,
one timed step): it tests the command, not the GPU's speed.

Exit status: 0 every check passed; 1 a check failed or ran out of time;
3 no usable GPU here (CuPy missing, no device, a CUDA library missing: one
line says which, and what to install).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import bench, selfcheck
from .autograd import Tensor
from .backends.device import device_name, to_device, to_numpy
from .gradcheck import GradcheckError, gradcheck
from .models import resnet20
from .nn.init import manual_seed
from .optim import SGD

EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 3

TOTAL_S = 480.0  # every step together
# Each step's own limit, in seconds (the bench steps include PyTorch's runs).
STEPS = {"ops": 60.0, "gradcheck": 90.0, "train": 60.0, "bench resnet20": 120.0}
STEPS["bench resnet50"] = TOTAL_S - sum(STEPS.values())
MIN_STEP_S = 5.0  # a step is skipped when less than this (or its limit) is left of TOTAL_S

# float64 on both devices: only the order of the sums differs.
RTOL, ATOL = 1e-7, 1e-10


class StepTimeout(Exception):
    """A step ran past its time limit."""


class CheckFailed(Exception):
    """A comparison failed; the message says which and by how much."""


@dataclass
class Outcome:
    name: str
    status: str  # PASS, FAIL, TIMEOUT, SKIPPED
    seconds: float = 0.0
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------


def _close(what: str, gpu: Any, cpu: Any) -> None:
    gpu, cpu = to_numpy(gpu), np.asarray(to_numpy(cpu))
    if gpu.shape != cpu.shape:
        raise CheckFailed(f"{what}: shape {gpu.shape} on the GPU, {cpu.shape} on the CPU")
    if not np.allclose(gpu, cpu, rtol=RTOL, atol=ATOL):
        worst = np.max(np.abs(gpu - cpu) / (ATOL + RTOL * np.abs(cpu)))
        raise CheckFailed(
            f"{what}: the GPU differs from the CPU by up to {worst:.3g} times the "
            f"tolerance (rtol {RTOL:g}, atol {ATOL:g})"
        )


def _run_case(case: selfcheck.Case, upstream_seed: int) -> tuple[Tensor, list[Tensor]]:
    out = case.fn(*case.inputs)
    g = np.random.default_rng(upstream_seed).standard_normal(out.shape)
    out.backward(to_device(g, out.device))
    return out, case.inputs + case.params


def check_ops(quick: bool, seed: int) -> str:
    """Every selfcheck case, forward and backward, GPU against NumPy."""
    cpu_cases, gpu_cases = selfcheck.cases("cpu", seed), selfcheck.cases("cuda", seed)
    for k, (cpu, gpu) in enumerate(zip(cpu_cases, gpu_cases)):
        y, leaves = _run_case(cpu, seed + k)
        yg, leaves_g = _run_case(gpu, seed + k)
        if yg.device != "cuda":
            raise CheckFailed(f"{gpu.name}: the output is on {yg.device}, not on the GPU")
        _close(f"{cpu.name}, forward", yg.data, y.data)
        for i, (a, b) in enumerate(zip(leaves, leaves_g)):
            if (a.grad is None) != (b.grad is None):
                raise CheckFailed(f"{cpu.name}: input {i} has a gradient on one device only")
            if a.grad is not None:
                _close(f"{cpu.name}, gradient of input {i}", b.grad, a.grad)
    return f"{len(cpu_cases)} cases, forward and backward"


def check_gradients(quick: bool, seed: int) -> str:
    """Every selfcheck case's gradients on the GPU against finite differences, float64."""
    cases = selfcheck.cases("cuda", seed)
    for case in cases:
        entries = sum(t.numel() for t in case.inputs + case.params)
        mode = "directional" if quick and entries > 400 else case.mode
        try:
            gradcheck(case.fn, case.inputs, params=case.params, mode=mode, seed=seed)
        except GradcheckError as e:
            raise CheckFailed(f"{case.name}: {e}") from None
    return f"{len(cases)} cases, float64 central differences"


def check_training(quick: bool, seed: int) -> str:
    """Two resnet20 SGD steps on the GPU against the same steps on the CPU (float64)."""
    from .train.step import train_step

    batch, size = (4, 16) if quick else (16, 32)
    rng = np.random.default_rng(seed)
    batches = [
        (rng.standard_normal((batch, 3, size, size)), rng.integers(0, 10, batch)) for _ in range(2)
    ]
    results, states = {}, {}
    for device in ("cpu", "cuda"):
        manual_seed(seed)
        model = resnet20().to(np.float64).to(device)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        results[device] = [
            train_step(model, opt, to_device(x, device), to_device(y, device)) for x, y in batches
        ]
        states[device] = {
            **model.state_dict(),
            **{f"momentum {i}": s["momentum_buffer"] for i, s in opt.state_dict()["state"].items()},
        }
    for k, (a, b) in enumerate(zip(results["cpu"], results["cuda"])):
        _close(f"step {k + 1}: the loss", b.loss, a.loss)
        if a.correct != b.correct:
            raise CheckFailed(f"step {k + 1}: {b.correct} right on the GPU, {a.correct} on the CPU")
    for key, value in states["cpu"].items():
        _close(f"after two steps, {key}", states["cuda"][key], value)
    return f"batch {batch} of {size}x{size} images, {len(states['cpu'])} arrays compared"


def run_bench(model: str, batch: int, quick: bool, no_torch: bool, seed: int) -> dict[str, Any]:
    """``minires bench --device cuda`` for ``model``: its JSON result."""
    args = argparse.Namespace(
        model=model,
        device="cuda",
        # (resnet50's last BatchNorms see N x 1 x 1 values at 32x32: 4 keep them sane)
        batch_size=(2 if model == "resnet20" else 4) if quick else batch,
        image_size=(16 if model == "resnet20" else 32) if quick else None,
        steps=1 if quick else 10,
        warmup=0 if quick else 2,
        block=1 if quick else 5,
        pause=0.0 if quick else 0.5,
        seed=seed,
        no_torch=no_torch,
        no_memory=True,
        tf32=False,
    )
    return bench.run(args)


# --------------------------------------------------------------------------
# Running them: a time limit per step, one summary
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise StepTimeout after ``seconds``: by SIGALRM, so only in the main thread of a
    system that has it (elsewhere the step runs without a limit)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"ran past its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_step(name: str, fn: Callable[[], Any], limit: float, left: float) -> Outcome:
    if left < min(limit, MIN_STEP_S):
        return Outcome(name, "SKIPPED", detail=f"{left:.0f} s of the {TOTAL_S:.0f} s were left")
    start = time.perf_counter()
    try:
        with _time_limit(min(limit, left)):
            value = fn()
    except StepTimeout as e:
        return Outcome(name, "TIMEOUT", time.perf_counter() - start, str(e))
    except CheckFailed as e:
        return Outcome(name, "FAIL", time.perf_counter() - start, str(e))
    except Exception as e:  # a crash is a failed check, said in one line (and its place)
        where = traceback.extract_tb(e.__traceback__)[-1]
        detail = f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})"
        return Outcome(name, "FAIL", time.perf_counter() - start, detail)
    seconds = time.perf_counter() - start
    if isinstance(value, dict):
        return Outcome(name, "PASS", seconds, _bench_line(value), value)
    return Outcome(name, "PASS", seconds, value)


def _bench_line(r: dict[str, Any]) -> str:
    line = (
        f"{r['image_size']}x{r['image_size']}, batch {r['batch']}: minires "
        f"{r['minires_train_img_s']:.0f} train img/s, {r['minires_infer_img_s']:.0f} infer"
    )
    if "torch_train_img_s" in r:
        line += (
            f"; PyTorch {r['torch_train_img_s']:.0f} / {r['torch_infer_img_s']:.0f}; "
            f"ratio {r['train_ratio']:.2f} / {r['infer_ratio']:.2f}"
        )
    elif "torch" in r:
        line += f"; PyTorch not timed ({r['torch']})"
    return f"{line}; precision {r['precision'].upper()}"


def run(quick: bool = False, no_torch: bool = False, seed: int = 0) -> list[Outcome]:
    """Every step in order, each within its limit and all within TOTAL_S."""
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("ops", lambda: check_ops(quick, seed)),
        ("gradcheck", lambda: check_gradients(quick, seed)),
        ("train", lambda: check_training(quick, seed)),
        ("bench resnet20", lambda: run_bench("resnet20", 128, quick, no_torch, seed)),
        ("bench resnet50", lambda: run_bench("resnet50", 32, quick, no_torch, seed)),
    ]
    start, outcomes = time.perf_counter(), []
    for name, fn in steps:
        left = TOTAL_S - (time.perf_counter() - start)
        outcome = _run_step(name, fn, STEPS[name], left)
        print(f"  {name:16}{outcome.status:>8}{outcome.seconds:8.1f} s  {outcome.detail}")
        outcomes.append(outcome)
    return outcomes


def summary(outcomes: list[Outcome], device: str) -> str:
    passed = sum(o.status == "PASS" for o in outcomes)
    lines = ["", f"minires gpu-check on {device}: {passed} of {len(outcomes)} checks passed"]
    for o in outcomes:
        lines.append(f"  {o.name:16}{o.status:>8}{o.seconds:8.1f} s  {o.detail}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from .backends import cuda_backend

    if not cuda_backend.gpu_available():
        reason = cuda_backend.gpu_unavailable_reason().rstrip(". ")
        print(f"minires gpu-check: no usable GPU here: {reason}.")
        return EXIT_NO_GPU
    device = device_name("cuda")
    size = "quick sizes (a test of the command, not of the GPU's speed)" if args.quick else ""
    print(f"minires gpu-check on {device}{': ' + size if size else ''}")
    outcomes = run(args.quick, args.no_torch, args.seed)
    print(summary(outcomes, device))
    record = {
        "device": device,
        "quick": args.quick,
        "checks": {o.name: o.status for o in outcomes},
        "seconds": {o.name: round(o.seconds, 2) for o in outcomes},
        "bench": {o.name.split()[-1]: o.figures for o in outcomes if o.figures},
    }
    print(json.dumps(record))
    return EXIT_OK if all(o.status == "PASS" for o in outcomes) else EXIT_FAILED
