"""``minires bench``: time a ResNet training step (and inference) against PyTorch.

A training step is forward, cross-entropy loss, backward and an SGD update
(momentum 0.9, weight decay 5e-4), on a fixed batch of float32 images. When
PyTorch is importable, the same architecture is built in PyTorch (not loaded
from torchvision, which may be absent) and timed in the same process,
alternating with minires in blocks of steps, so that both see the same
machine load. The report gives medians and the minires/PyTorch ratio, as a
table and as one JSON line.

Precision is explicit. On a GPU both frameworks run at the same precision:
FP32 by default (PyTorch's TF32 switches for matmul and cuDNN turned off;
CuPy's float32 products kept off TF32), or TF32 on both with ``--tf32``. The
report and its JSON line say what each side was allowed (cuda_precision.py).

Peak memory of a step is measured the same way for both frameworks: each
runs two training steps in a fresh child process, and the growth of the
process's peak resident memory from just before the first step (model, data
and framework already loaded) is reported. minires's own allocations during a
step are also counted exactly with tracemalloc.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import minires as mr
import minires.functional as F

from .backends.device import DEVICES, device_name, synchronize, to_device
from .options import NONNEGATIVE_FLOAT, NONNEGATIVE_INT, POSITIVE_INT
from .train.errors import UserError, check_device

MODEL_INPUT = {"resnet20": (3, 32, 32), "resnet50": (3, 224, 224), "resnet18": (3, 224, 224)}


def _median_time(fn: Callable[[], Any], steps: int, sync: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _input_shape(model_name: str, size: int | None) -> tuple[int, int, int]:
    """(C, H, W) of the model's images: its own size, or ``size`` x ``size``."""
    channels, height, width = MODEL_INPUT[model_name]
    return (channels, size or height, size or width)


def _minires_runner(model_name: str, batch: int, device: str, seed: int, size: int | None = None):
    mr.manual_seed(seed)
    model = getattr(mr.models, model_name)()
    if device == "cuda":
        model.to("cuda")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *_input_shape(model_name, size))).astype(np.float32)
    y = rng.integers(0, 10 if model_name == "resnet20" else 1000, batch)
    xt, y = mr.Tensor(to_device(x, device)), to_device(y, device)
    sync = functools.partial(synchronize, device)
    opt = mr.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step() -> None:
        model.train()
        loss = F.cross_entropy(model(xt), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with mr.no_grad():
            model(xt)

    return train_step, infer, sync


def _torch_runner(
    model_name: str, batch: int, device: str, seed: int, threads: int, size: int | None = None
):
    import torch

    from ._torch_reference import build_torch_model

    if device == "cuda" and not torch.cuda.is_available():
        raise ImportError(f"PyTorch {torch.__version__} has no usable CUDA here")
    torch.manual_seed(seed)
    if device == "cpu":
        torch.set_num_threads(threads)
    dev = torch.device(device)
    model = build_torch_model(model_name).to(dev)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(
        rng.standard_normal((batch, *_input_shape(model_name, size))).astype(np.float32)
    ).to(dev)
    y = torch.from_numpy(rng.integers(0, 10 if model_name == "resnet20" else 1000, batch)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train_step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return train_step, infer, sync


def _peak_rss_mb() -> float:
    """This process's peak resident memory, in MiB.

    Linux's VmHWM belongs to the address space, which exec() makes anew;
    getrusage's ru_maxrss can carry the parent's high-water mark into a
    child started by fork + exec, which would hide the child's own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(
    framework: str, model_name: str, batch: int, seed: int, size: int | None = None
) -> None:
    """Run in a fresh process: print the peak-RSS growth of two training steps."""
    if framework == "torch":
        train, _, _ = _torch_runner(model_name, batch, "cpu", seed, os.cpu_count() or 1, size)
    else:
        train, _, _ = _minires_runner(model_name, batch, "cpu", seed, size)
    before = _peak_rss_mb()
    train()
    train()
    print(json.dumps({"step_peak_mb": _peak_rss_mb() - before}))


def _step_memory_mb(framework: str, args: argparse.Namespace) -> float | None:
    cmd = [sys.executable, "-m", "minires.bench", "--memory-child", framework]
    cmd += ["--model", args.model, "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    if getattr(args, "image_size", None):
        cmd += ["--image-size", str(args.image_size)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["step_peak_mb"])


@contextlib.contextmanager
def _precision(tf32: bool, torch_too: bool) -> Iterator[dict[str, Any]]:
    """Both frameworks at one precision on the GPU for the ``with`` block; what each was
    allowed, read back, as fields of the result. The previous settings are restored."""
    from .backends import cuda_precision

    saved_cupy = cuda_precision.tf32_enabled()
    fields: dict[str, Any] = {"precision": "tf32" if tf32 else "fp32"}
    fields["minires_tf32"] = cuda_precision.set_tf32(tf32)
    if tf32 and not fields["minires_tf32"]:
        fields["precision_note"] = "this GPU has no TF32 (compute capability < 8.0): FP32"
    saved_torch = None
    if torch_too:
        import torch

        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        saved_torch = _torch_tf32(torch)
        matmul.allow_tf32 = cudnn.allow_tf32 = tf32
        fields["torch_matmul_tf32"], fields["torch_cudnn_tf32"] = _torch_tf32(torch)
    try:
        yield fields
    finally:
        cuda_precision.set_tf32(saved_cupy)
        if saved_torch is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_torch


def _torch_tf32(torch: Any) -> tuple[bool, bool]:
    """PyTorch's two TF32 switches: (matmul, cuDNN)."""
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model_name, batch, device = args.model, args.batch_size, args.device
    if model_name not in MODEL_INPUT:
        raise ValueError(f"bench: model must be one of {sorted(MODEL_INPUT)}, got {model_name!r}")
    if getattr(args, "tf32", False) and device != "cuda":
        raise UserError("bench: --tf32 needs --device cuda (a CPU computes float32 in FP32)")
    threads, size = os.cpu_count() or 1, getattr(args, "image_size", None)
    result: dict[str, Any] = {
        "model": model_name,
        "batch": batch,
        "image_size": _input_shape(model_name, size)[1],
        "device": device,
        "machine": device_name(device),
        "steps": args.steps,
    }
    if device == "cpu":
        lib, pinned = _blas_library(), os.environ.get("OPENBLAS_CORETYPE")
        result["blas"] = _blas(lib, pinned)
        note = _blas_note(lib, pinned, _cpu_flags())
        if note:
            result["blas_note"] = note
    mr_train, mr_infer, mr_sync = _minires_runner(model_name, batch, device, args.seed, size)
    torch_runner = None
    if not args.no_torch:
        try:
            torch_runner = _torch_runner(model_name, batch, device, args.seed, threads, size)
        except ImportError as e:
            result["torch"] = "not installed" if isinstance(e, ModuleNotFoundError) else str(e)
    if device == "cpu":
        result["precision"] = "fp32"
        _time(args, result, mr_train, mr_infer, mr_sync, torch_runner)
    else:
        with _precision(getattr(args, "tf32", False), torch_runner is not None) as fields:
            result.update(fields)
            _time(args, result, mr_train, mr_infer, mr_sync, torch_runner)
    return result


def _time(
    args: argparse.Namespace,
    result: dict[str, Any],
    mr_train: Callable[[], None],
    mr_infer: Callable[[], None],
    mr_sync: Callable[[], None],
    torch_runner: tuple | None,
) -> None:
    """Warm up, time both frameworks, and measure memory: the figures, into ``result``."""
    batch, device = args.batch_size, args.device
    # Warm-up, then peak memory of one minires step.
    for _ in range(args.warmup):
        mr_train()
        if torch_runner:
            torch_runner[0]()
    if device == "cpu":
        tracemalloc.start()
        mr_train()
        result["minires_train_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    # Alternate the two frameworks in blocks of steps, so that a drift in the
    # machine's load hits both. Between blocks, pause: PyTorch's OpenMP
    # threads (and OpenBLAS's) keep spinning for a while after their work,
    # and would otherwise steal the cores from the first steps of the other.
    mr_times: list[float] = []
    th_times: list[float] = []
    block = max(1, min(args.block, args.steps))
    while len(mr_times) < args.steps:
        mr_times += _median_time(mr_train, block, mr_sync)
        time.sleep(args.pause)
        if torch_runner:
            th_times += _median_time(torch_runner[0], block, torch_runner[2])
            time.sleep(args.pause)
    result["minires_train_img_s"] = batch / statistics.median(mr_times)
    mr_inf = _median_time(mr_infer, args.steps, mr_sync)
    time.sleep(args.pause)
    result["minires_infer_img_s"] = batch / statistics.median(mr_inf)
    if torch_runner:
        result["torch_train_img_s"] = batch / statistics.median(th_times)
        th_inf = _median_time(torch_runner[1], args.steps, torch_runner[2])
        result["torch_infer_img_s"] = batch / statistics.median(th_inf)
        result["train_ratio"] = result["minires_train_img_s"] / result["torch_train_img_s"]
        result["infer_ratio"] = result["minires_infer_img_s"] / result["torch_infer_img_s"]
        result["torch_threads"] = os.cpu_count() or 1
    if device == "cpu" and not args.no_memory:
        result["minires_step_rss_mb"] = _step_memory_mb("minires", args)
        if torch_runner:
            result["torch_step_rss_mb"] = _step_memory_mb("torch", args)
            if result["minires_step_rss_mb"] and result["torch_step_rss_mb"]:
                result["memory_ratio"] = result["minires_step_rss_mb"] / result["torch_step_rss_mb"]


def _blas_library() -> dict[str, str]:
    """NumPy's BLAS: its ``name``, ``version`` and, where known, ``architecture``.

    threadpoolctl reads the library actually loaded, including the kernels
    OpenBLAS chose (e.g. "Haswell" for AVX2, "SkylakeX" for AVX-512); without
    it, NumPy's build configuration names the library.
    """
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        info = []
    if info:
        lib = info[0]
        return {
            "name": lib["internal_api"],
            "version": lib.get("version") or "",
            "architecture": lib.get("architecture") or "",
        }
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return {
        "name": blas.get("name", "unknown"),
        "version": blas.get("version", ""),
        "architecture": "",
    }


def _blas(lib: dict[str, str], pinned: str | None) -> str:
    """NumPy's BLAS and the kernels it runs: most of a CPU step is its GEMMs.

    OpenBLAS picks its kernels by the CPU when it loads, unless
    OPENBLAS_CORETYPE (``pinned``) names them; the same machine can run twice
    as fast on one as on the other (docs/benchmarks.md), while PyTorch's
    oneDNN always uses the widest.
    """
    text = f"{lib['name']} {lib['version']}".strip()
    if lib["architecture"]:
        text += f", {lib['architecture']} kernels"
    return f"{text} (OPENBLAS_CORETYPE={pinned})" if pinned else text


# OpenBLAS's kernel families that use AVX-512, as it names them.
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is none."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _blas_note(lib: dict[str, str], pinned: str | None, cpu_flags: set[str]) -> str | None:
    """A warning when OPENBLAS_CORETYPE keeps NumPy's GEMMs off the CPU's AVX-512.

    PyTorch's oneDNN uses AVX-512 wherever the CPU has it, so the ratio then
    compares two instruction sets as much as two frameworks: on the 2-core
    AVX-512 machine of docs/benchmarks.md, pinning OpenBLAS to its AVX2
    ("Haswell") kernels takes the resnet20 ratio from 0.59-0.60 to 0.46-0.48.
    The variable matters only to OpenBLAS; the kernels judged are the ones it
    reports running, or the pinned name where it reports none.
    """
    if not pinned or lib["name"].lower() != "openblas" or "avx512f" not in cpu_flags:
        return None
    if (lib["architecture"] or pinned).lower() in _AVX512_KERNELS:
        return None
    return (
        f"OPENBLAS_CORETYPE={pinned} keeps NumPy's BLAS off this CPU's AVX-512, which "
        "PyTorch uses; unset it to let OpenBLAS choose its kernels"
    )


def report(result: dict[str, Any]) -> str:
    lines = [
        f"minires bench: {result['model']}, batch {result['batch']}"
        f"{_size_note(result)}, {result['device']} "
        f"({result['machine']}), median of {result['steps']} steps",
        *([f"NumPy's BLAS: {result['blas']}"] if "blas" in result else []),
        *([f"note: {result['blas_note']}"] if "blas_note" in result else []),
        *([_precision_line(result)] if "minires_tf32" in result else []),
        f"{'':12}{'train img/s':>14}{'infer img/s':>14}",
        f"{'minires':12}{result['minires_train_img_s']:14.1f}{result['minires_infer_img_s']:14.1f}",
    ]
    if "torch_train_img_s" in result:
        lines.append(
            f"{'PyTorch':12}{result['torch_train_img_s']:14.1f}{result['torch_infer_img_s']:14.1f}"
        )
        lines.append(f"{'ratio':12}{result['train_ratio']:14.2f}{result['infer_ratio']:14.2f}")
    if "minires_train_peak_mb" in result:
        lines.append(
            f"minires peak memory of a training step: {result['minires_train_peak_mb']:.0f} MB"
        )
    return "\n".join(lines)


def _size_note(result: dict[str, Any]) -> str:
    """ ", 16x16 images" when the images are not the model's own size."""
    size = result.get("image_size")
    own = MODEL_INPUT.get(result["model"], (0, size))[1]
    return f", {size}x{size} images" if size is not None and size != own else ""


def _precision_line(result: dict[str, Any]) -> str:
    """What precision each side was allowed, from the result's fields."""

    def said(allowed: bool) -> str:
        return "TF32 allowed" if allowed else "FP32 (TF32 off)"

    line = f"precision: {result['precision'].upper()} asked; minires (CuPy's cuBLAS) " + said(
        result["minires_tf32"]
    )
    if "torch_matmul_tf32" in result:
        line += (
            f", PyTorch matmul {said(result['torch_matmul_tf32'])}, "
            f"cuDNN {said(result['torch_cudnn_tf32'])}"
        )
    if "precision_note" in result:
        line += f" ({result['precision_note']})"
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive, count, seconds = POSITIVE_INT, NONNEGATIVE_INT, NONNEGATIVE_FLOAT
    parser.add_argument("--model", default="resnet20", choices=sorted(MODEL_INPUT))
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--batch-size", type=positive, default=128)
    parser.add_argument(
        "--image-size",
        type=positive,
        help="image height and width (default: the model's own, 32 or 224)",
    )
    parser.add_argument("--steps", type=positive, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=count, default=2)
    parser.add_argument(
        "--block", type=positive, default=5, help="steps run back to back before switching"
    )
    parser.add_argument(
        "--pause", type=seconds, default=0.5, help="seconds of rest when switching framework"
    )
    parser.add_argument("--seed", type=count, default=0)
    parser.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="with --device cuda: allow TF32 in float32 matrix products on both sides "
        "(default: FP32 on both, PyTorch's TF32 turned off)",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--memory-child", choices=["minires", "torch"], help=argparse.SUPPRESS)


def main(args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(prog="minires bench", description=__doc__)
        add_arguments(parser)
        args = parser.parse_args()
    if getattr(args, "memory_child", None):
        _memory_child(args.memory_child, args.model, args.batch_size, args.seed, args.image_size)
        return 0
    check_device(args.device)
    result = run(args)
    if not args.json:
        print(report(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:  # e.g. --device cuda without a usable GPU
        print(f"minires bench: error: {e}", file=sys.stderr)
        sys.exit(2)
