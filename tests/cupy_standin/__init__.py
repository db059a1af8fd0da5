"""A stand-in for CuPy, so that minires's CUDA path runs, and is counted, without a GPU.

minires reaches CuPy in two places only (backends/device.py and
backends/cuda_backend.py), always through ``import cupy`` / ``import cupyx``
at the moment of use. :func:`install` puts this package's modules in
``sys.modules`` under those names, so the *unchanged* CUDA backend runs on
them:

* arrays are :class:`array.ndarray`: NumPy memory behind CuPy's surface
  (array.py says where the surface is CuPy's and not NumPy's);
* ``cupy.RawModule(code=..., name_expressions=...)`` compiles the real
  ``kernels/*.cu`` with the C++ harness of tests/cuda_harness, and
  ``get_function("im2col<float>")(grid, block, args)`` runs that kernel on
  CPU threads (kernels.py);
* the array-module functions minires calls on ``xp`` (module.py), and
  ``cupyx.scatter_add``, ``cupy.cuda.Device``, ``cupy.cuda.runtime``;
* ``cupy.cuda.nccl`` (nccl.py): NCCL's communicator, its collectives done
  over MPI between the processes of a test started by mpiexec;
* everything a GPU would do is counted (counts.py): kernel launches,
  cuBLAS calls, host<->device copies and their bytes, host syncs, and the
  copies made only to change a layout, each with the line of minires that
  caused it.

Usage::

    with cupy_standin.install() as gpu:
        model.to("cuda")
        ...
        gpu.counts.reset()
        train_step(...)
        print(gpu.counts.summary())

It is a test double: it proves the CUDA path's *logic* (the backend's
marshalling, the kernels, the ops, the autograd and the training loop on
device arrays) and measures its *traffic*; it says nothing of speed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import counts, kernels, libraries
from .array import ndarray
from .counts import Counts
from .module import Device, make_cupy

__all__ = ["install", "Standin", "Counts", "ndarray", "prebuild_minires_kernels"]

_NAMES = (
    "cupy",
    "cupyx",
    "cupy.cuda",
    "cupy.cuda.runtime",
    "cupy.cuda.nccl",
    "cupy._core",
    "cupy._core._routines_linalg",
)

# Launch sizes for the kernels on CPU threads: a block is that many real
# threads, so the backend's own 256 x 4096 would start a million threads per
# launch. Small ones run the same kernels (grid-stride loops, reductions over
# a block) with the same number of launches; the GPU tests use the real ones.
CPU_LAUNCH_SIZES = {"THREADS": 8, "MAX_BLOCKS": 2, "REDUCE_THREADS": 8}


@dataclass
class Standin:
    """What :func:`install` yields: the modules and the running counts."""

    cupy: ModuleType
    cupyx: ModuleType
    counts: Counts


def prebuild_minires_kernels(folder: Path | None = None) -> None:
    """Compile every kernels/*.cu now (in parallel), once per process.

    With ``folder``: build there, or load what an earlier process built there
    (the MPI tests build once, and their processes load it).
    """
    kernels.prebuild(kernels.harness.kernel_sources(), folder)


def _reset_minires_caches() -> None:
    from minires import backends, label_check
    from minires.backends import cuda_backend

    label_check._pending.clear()  # labels of stand-in arrays, not checked yet
    label_check._pending_rows = 0
    cuda_backend._probe.cache_clear()
    cuda_backend._module.cache_clear()
    cuda_backend._function.cache_clear()
    backends._cuda_backend = None


@contextmanager
def install(
    device_count: int = 1,
    launch_sizes: dict | None = None,
    missing_libraries: tuple[str, ...] = (),
) -> Iterator[Standin]:
    """Make ``import cupy`` / ``import cupyx`` give the stand-in, for the ``with`` block.

    minires's cached GPU probe, compiled modules, chosen CUDA backend and
    GPU labels waiting for their check are reset on entry and again on exit,
    and everything replaced (sys.modules entries, the backend's launch sizes)
    is restored, so a real CuPy used later in the same process starts clean.
    ``launch_sizes`` replaces cuda_backend's THREADS / MAX_BLOCKS /
    REDUCE_THREADS (default CPU_LAUNCH_SIZES; pass {} to keep the backend's own).
    ``missing_libraries`` ("nvrtc", "cublas") fail as CuPy does where they are
    not installed (libraries.py).
    """
    from minires.backends import cuda_backend

    sizes = CPU_LAUNCH_SIZES if launch_sizes is None else launch_sizes
    cupy, cupyx = make_cupy()
    standin = Standin(cupy, cupyx, Counts())
    saved_modules = {name: sys.modules.get(name) for name in _NAMES}
    saved_sizes = {name: getattr(cuda_backend, name) for name in sizes}
    saved_counts, saved_devices = counts.CURRENT, (Device.count, Device.current)
    sys.modules.update(
        {
            "cupy": cupy,
            "cupyx": cupyx,
            "cupy.cuda": cupy.cuda,
            "cupy.cuda.runtime": cupy.cuda.runtime,
            "cupy.cuda.nccl": cupy.cuda.nccl,
            "cupy._core": cupy._core,
            "cupy._core._routines_linalg": cupy._core._routines_linalg,
        }
    )
    for name, value in sizes.items():
        setattr(cuda_backend, name, value)
    counts.CURRENT, Device.count, Device.current = standin.counts, device_count, 0
    libraries.MISSING.update(missing_libraries)
    _reset_minires_caches()
    try:
        yield standin
    finally:
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in saved_sizes.items():
            setattr(cuda_backend, name, value)
        counts.CURRENT, (Device.count, Device.current) = saved_counts, saved_devices
        libraries.MISSING.clear()
        _reset_minires_caches()
