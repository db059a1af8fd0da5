"""What one training step asks of a GPU: launches, host syncs, layout copies, bytes moved.

    python tests/gpu_census.py --model resnet20 --batch 128
    python tests/gpu_census.py --model resnet50 --batch 32

Runs one real training step of ``minires train``'s code path (the batch
copied to the device, forward, cross-entropy, backward, SGD with momentum and
weight decay, the schedule's step) on the CUDA backend, with CuPy played by
the stand-in of tests/cupy_standin: no GPU needed, and every kernel launch,
cuBLAS call, host<->device copy, host sync and layout copy is counted with
the line of minires that asked for it. Prints a table, then one JSON line.

The step counted is the second: the first creates the momentum buffers
(a copy each instead of an update), so it is run first, on 2 images, and not
counted. The counts of launches, syncs and copies depend on the model's
structure, not on the batch or image size; the kernels run on CPU threads,
so a large input is slow, and ``--size`` can shrink the images of an
ImageNet model (the default for them is 64x64, which the output says).
bytes_moved is then also given for the full-size input: only the copy of the
images depends on their size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # tests/ (the stand-in) and the repository

import cupy_standin  # noqa: E402

import minires as mr  # noqa: E402
from minires.backends.device import to_device  # noqa: E402
from minires.models import get_model, list_models  # noqa: E402
from minires.train.build import build_optimizer  # noqa: E402
from minires.train.config import TrainConfig  # noqa: E402
from minires.train.step import StepResult, train_step  # noqa: E402

# Image size each kind of model is built for, and the size the census uses
# for it unless --size says otherwise.
FULL_SIZE = {"cifar": 32, "imagenet": 224}
DEFAULT_SIZE = {"cifar": 32, "imagenet": 64}


IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def kind_of(model_name: str) -> str:
    return "imagenet" if model_name in IMAGENET_MODELS else "cifar"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=list_models())
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, help="image height and width (default: see above)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--top", type=int, default=12, help="rows in each list of contributors")
    return p.parse_args(argv)


def run_step(model: mr.nn.Module, opt, sched, images: np.ndarray, labels: np.ndarray) -> StepResult:
    """One step as the Trainer runs it: copy the batch over, train_step, the
    schedule's step. Returns train_step's StepResult, its loss still on the
    device (reading it is a host sync, which the caller makes after counting)."""
    result = train_step(model, opt, to_device(images, "cuda"), to_device(labels, "cuda"))
    sched.step()
    return result


def census(args: argparse.Namespace) -> dict:
    kind = kind_of(args.model)
    size = args.size or DEFAULT_SIZE[kind]
    num_classes = 10 if kind == "cifar" else 1000
    rng = np.random.default_rng(0)
    dtype = np.dtype(args.dtype)

    def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.standard_normal((n, 3, size, size)).astype(dtype), rng.integers(
            0, num_classes, n
        )

    cupy_standin.prebuild_minires_kernels()
    with cupy_standin.install() as gpu:
        mr.manual_seed(0)
        model = get_model(args.model, num_classes=num_classes).to(dtype).to("cuda")
        model.train()
        cfg = TrainConfig(model=args.model, batch_size=args.batch, device="cuda")
        opt, sched = build_optimizer(cfg, model, steps_per_epoch=100)
        run_step(model, opt, sched, *batch(2))  # creates the momentum buffers; not counted
        images, labels = batch(args.batch)
        gpu.counts.reset()
        start = time.perf_counter()
        step = run_step(model, opt, sched, images, labels)
        seconds = time.perf_counter() - start
        counts = gpu.counts.snapshot()
        loss = step.loss  # a host sync, after the snapshot: not the step's
    full_images = images.nbytes // (size * size) * FULL_SIZE[kind] ** 2
    result = {
        "model": args.model,
        "batch": args.batch,
        "image_size": size,
        "full_image_size": FULL_SIZE[kind],
        "dtype": args.dtype,
        "parameter_tensors": len(list(model.parameters())),
        **counts.summary(),
        "bytes_moved_full_size": counts.bytes_moved - images.nbytes + full_images,
        "loss": loss,
        "seconds_on_cpu": round(seconds, 1),
    }
    return {"result": result, "counts": counts}


def _rows(counter, top: int) -> list[str]:
    rows = [f"  {n:6d}  {what}" for what, n in counter.most_common(top)]
    rest = sum(counter.values()) - sum(n for _, n in counter.most_common(top))
    if rest:
        rows.append(f"  {rest:6d}  ... {len(counter) - top} more")
    return rows or ["       -"]


def report(run: dict, top: int) -> str:
    r, c = run["result"], run["counts"]
    lines = [
        f"GPU census: {r['model']}, batch {r['batch']}, {r['dtype']}, input "
        f"3x{r['image_size']}x{r['image_size']}, one training step (SGD momentum 0.9, "
        f"weight decay 5e-4; the second step, after the momentum buffers exist)",
        "counted through tests/cupy_standin: CuPy's calls as minires makes them, "
        "kernels run on the CPU",
    ]
    if r["image_size"] != r["full_image_size"]:
        lines.append(
            f"NOTE: images are {r['image_size']}x{r['image_size']}, not the model's "
            f"{r['full_image_size']}x{r['full_image_size']} (--size): launches, syncs and "
            "copies depend on the structure only; bytes_moved_full_size is for the full size"
        )
    kinds = ", ".join(
        f"{k} {r[f'{k}_events']}"
        for k in ("kernel", "elementwise", "reduction", "copy", "fill", "cublas")
    )
    lines += [
        "",
        f"  launches          {r['launches']:>10,}   ({kinds})",
        f"  host_syncs        {r['host_syncs']:>10,}",
        f"  layout_copies     {r['layout_copies']:>10,}",
        f"  bytes_moved       {r['bytes_moved']:>10,}   (h2d {r['h2d_bytes']:,} in "
        f"{r['h2d_events']} copies, d2h {r['d2h_bytes']:,} in {r['d2h_events']} copies)",
    ]
    if r["image_size"] != r["full_image_size"]:
        lines.append(f"  bytes_moved_full_size {r['bytes_moved_full_size']:>6,}")
    lines.append(f"  parameter tensors {r['parameter_tensors']:>10,}")
    launch_kinds = cupy_standin.counts.LAUNCH_KINDS
    sections = [
        ("launches, by what was launched", c.by(*launch_kinds, key="what")),
        ("launches, by the line of minires that asked", c.by(*launch_kinds, key="site")),
        ("host syncs", c.by("sync", key="both")),
        ("layout copies", c.by("layout_copy", key="both")),
        ("host-to-device copies", c.by("h2d", key="both")),
    ]
    for title, counter in sections:
        lines += ["", title, *_rows(counter, top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = census(args)
    print(report(run, args.top))
    print(json.dumps(run["result"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
