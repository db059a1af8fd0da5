"""Run minires's CUDA kernels on the CPU, through cuda_backend itself.

How it fits together:

1. :func:`parse_kernels` reads the ``template <typename T> __global__ void
   name(...)`` signatures out of ``kernels/*.cu``.
2. :func:`build_library` writes, for each .cu file, a small C++ file that
   includes ``cuda_cpu.h`` (CUDA's built-ins mapped onto C++ threads) and the
   .cu file, plus one ``extern "C"`` launcher per kernel and type, e.g.
   ``minires_cpu_im2col_float(grid..., block..., const float* x, ...)``. It
   compiles them with g++ (or $CXX) into one shared library. The glue is
   generated from the kernels' own signatures, so it cannot drift from them.
3. :class:`CpuKernel` wraps a launcher so that it is called exactly like a
   ``cupy.RawKernel``: ``kernel(grid, block, args)``. It checks every
   argument against the kernel's parameter list the way the GPU silently
   does not: arrays must be C-contiguous with the right dtype, and every
   scalar must be a NumPy scalar of the declared C type (a Python ``int`` or
   ``float`` is refused: on the GPU it would be passed as 64 bits / a double,
   the RawKernel scalar trap).
4. :func:`cpu_cuda_backend` points ``cuda_backend``'s two seams (``_cupy``,
   ``_kernel``) at NumPy and at these kernels. The whole CUDA backend, Python
   marshalling and kernels together, then runs on the CPU and can be
   compared with ``numpy_backend``. Outputs come from :class:`FakeCupy`'s
   ``empty``, which fills them with NaN (an element a kernel forgets to write
   shows up) and surrounds them with guard zones that are checked after
   every launch (a kernel writing out of bounds shows up). It also counts
   the ``ascontiguousarray`` calls that copied and records every launch, so
   a test can check that the backend handed a kernel an array's own memory.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

HARNESS_DIR = Path(__file__).resolve().parent
REPO = HARNESS_DIR.parents[1]
KERNEL_DIR = REPO / "kernels"
SELFTEST_SOURCE = HARNESS_DIR / "selftest.cu"

# The C types a kernel parameter may have, as NumPy dtypes and ctypes types.
# "T" is the template parameter: float or double.
_SCALARS = {
    "int": (np.dtype(np.int32), ctypes.c_int32),
    "long long": (np.dtype(np.int64), ctypes.c_int64),
    "float": (np.dtype(np.float32), ctypes.c_float),
    "double": (np.dtype(np.float64), ctypes.c_double),
}
T_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


# --------------------------------------------------------------------------
# Reading kernel signatures
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One kernel parameter, e.g. ``const T* __restrict__ x`` or ``int C``."""

    name: str
    base: str  # "T", "int", "long long", "float" or "double"
    pointer: bool
    const: bool

    def c_type(self, t: str) -> str:
        base = t if self.base == "T" else self.base
        return f"{'const ' if self.const else ''}{base}{'*' if self.pointer else ''}"

    def dtype(self, t: str) -> np.dtype:
        return _SCALARS[t if self.base == "T" else self.base][0]


@dataclass(frozen=True)
class KernelSignature:
    name: str
    params: tuple[Param, ...]
    template: bool = True  # False: a plain ``extern "C"`` kernel (no T)


_KERNEL_RE = re.compile(
    r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(([^)]*)\)"
)
# A kernel that is not a template, as cupy.RawKernel sources declare them
# (minires's own GPU probe in cuda_backend.py is one).
_PLAIN_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def strip_comments(source: str) -> str:
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", "", source)


def _parse_param(text: str) -> Param:
    tokens = text.replace("*", " * ").split()
    tokens = [t for t in tokens if t != "__restrict__"]
    name = tokens[-1]
    pointer = "*" in tokens
    const = "const" in tokens
    base = " ".join(t for t in tokens[:-1] if t not in ("const", "*"))
    if base not in ("T", *_SCALARS):
        raise ValueError(f"unsupported kernel parameter type in {text!r}")
    return Param(name=name, base=base, pointer=pointer, const=const)


def parse_kernels(source: str) -> list[KernelSignature]:
    """The template kernels of a .cu source, in order of appearance."""
    kernels = []
    for m in _KERNEL_RE.finditer(strip_comments(source)):
        params = tuple(_parse_param(p) for p in m.group(2).split(",") if p.strip())
        kernels.append(KernelSignature(m.group(1), params))
    return kernels


def parse_plain_kernels(source: str) -> list[KernelSignature]:
    """The ``extern "C" __global__`` (non-template) kernels of a source."""
    kernels = []
    for m in _PLAIN_KERNEL_RE.finditer(strip_comments(source)):
        params = tuple(_parse_param(p) for p in m.group(2).split(",") if p.strip())
        kernels.append(KernelSignature(m.group(1), params, template=False))
    return kernels


def kernel_sources() -> list[Path]:
    return sorted(KERNEL_DIR.glob("*.cu"))


# --------------------------------------------------------------------------
# Building the shared library
# --------------------------------------------------------------------------


def find_compiler() -> str | None:
    """A C++17 compiler: $CXX, else g++, clang++ or c++ from PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else []
    candidates += ["g++", "clang++", "c++"]
    for c in candidates:
        path = shutil.which(c)
        if path:
            return path
    return None


def _symbol(name: str, t: str) -> str:
    return f"minires_cpu_{name}_{t}"


def glue_source(cu_file: Path, kernels: list[KernelSignature]) -> str:
    """C++ that includes a .cu file and exports one launcher per kernel and type."""
    lines = [
        f"// Generated by tests/cuda_harness/harness.py from {cu_file.name}.",
        '// One extern "C" launcher per kernel and type, called through ctypes.',
        '#include "cuda_cpu.h"',
        f'#include "{cu_file.as_posix()}"',
        "",
    ]
    for k in kernels:
        # A plain kernel has no T: it gets the same launcher under both names.
        for t in T_TYPES.values():
            decls = ", ".join(f"{p.c_type(t)} {p.name}" for p in k.params)
            names = ", ".join(p.name for p in k.params)
            function = f"{k.name}<{t}>" if k.template else k.name
            lines += [
                f'extern "C" int {_symbol(k.name, t)}(',
                "    unsigned grid_x, unsigned grid_y, unsigned grid_z,",
                "    unsigned block_x, unsigned block_y, unsigned block_z,",
                f"    {decls})",
                "{",
                f"    return cuda_cpu::launch(&{function},",
                "                            dim3(grid_x, grid_y, grid_z),",
                "                            dim3(block_x, block_y, block_z),",
                f"                            {names});",
                "}",
                "",
            ]
    return "\n".join(lines)


def build_library(out_dir: Path, sources: list[Path] | None = None) -> CpuKernels:
    """Compile ``sources`` (default: kernels/*.cu and the harness self-test) on the CPU."""
    cxx = find_compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler found (set CXX, or install g++)")
    sources = sources if sources is not None else [*kernel_sources(), SELFTEST_SOURCE]
    out_dir.mkdir(parents=True, exist_ok=True)
    # -ffp-contract=off: no a * b + c fused into one FMA, as on the GPU where
    # the kernels ask for a product rounded on its own (__fmul_rn).
    flags = ["-std=c++17", "-O1", "-fPIC", "-pthread", "-Wall", "-Wextra", "-Werror",
             "-ffp-contract=off"]  # fmt: skip
    signatures = _signatures(sources)
    jobs = []
    for cu in sources:
        text = cu.read_text()
        kernels = parse_kernels(text) + parse_plain_kernels(text)
        glue = out_dir / f"glue_{cu.stem}.cpp"
        glue.write_text(glue_source(cu, kernels))
        obj = out_dir / f"glue_{cu.stem}.o"
        cmd = [cxx, *flags, "-I", str(HARNESS_DIR), "-c", str(glue), "-o", str(obj)]
        jobs.append((cmd, obj, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
    for cmd, _, proc in jobs:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"compiling failed: {' '.join(cmd)}\n{err}")
    library = out_dir / LIBRARY_NAME
    link = [cxx, "-shared", "-pthread", "-o", str(library), *(str(obj) for _, obj, _ in jobs)]
    subprocess.run(link, check=True, capture_output=True, text=True)
    return CpuKernels(library, signatures)


LIBRARY_NAME = "libminires_cuda_cpu.so"


def _signatures(sources: list[Path]) -> dict[str, KernelSignature]:
    signatures: dict[str, KernelSignature] = {}
    for cu in sources:
        text = cu.read_text()
        for k in parse_kernels(text) + parse_plain_kernels(text):
            if k.name in signatures:
                raise ValueError(f"kernel {k.name} is defined twice")
            signatures[k.name] = k
    return signatures


def load_library(out_dir: Path, sources: list[Path]) -> CpuKernels:
    """The library build_library(out_dir, sources) made earlier (in another process)."""
    return CpuKernels(out_dir / LIBRARY_NAME, _signatures(sources))


# --------------------------------------------------------------------------
# Calling the kernels like cupy.RawKernel
# --------------------------------------------------------------------------


class LaunchError(RuntimeError):
    pass


def _dims(value: Any, what: str) -> tuple[int, int, int]:
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3:
        raise TypeError(f"{what} must be a tuple of 1 to 3 ints (as for cupy.RawKernel)")
    dims = [int(v) for v in value] + [1] * (3 - len(value))
    return dims[0], dims[1], dims[2]


class CpuKernel:
    """One kernel instantiation, called like ``cupy.RawKernel``: ``k(grid, block, args)``."""

    def __init__(
        self,
        function: Any,
        signature: KernelSignature,
        t: str,
        after: Callable[[], None] | None = None,
    ):
        self.function, self.signature, self.t, self.after = function, signature, t, after

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        name = self.signature.name + (f"<{self.t}>" if self.signature.template else "")
        if shared_mem:
            raise NotImplementedError("dynamic shared memory: the kernels do not use it")
        params = self.signature.params
        if len(args) != len(params):
            raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
        c_args: list[Any] = []
        for p, a in zip(params, args):
            expected = p.dtype(self.t)
            where = f"{name}, parameter {p.c_type(self.t)} {p.name}"
            if p.pointer:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where}: needs an array, got {type(a).__name__}")
                if a.dtype != expected:
                    raise TypeError(f"{where}: got an array of {a.dtype}, needs {expected}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{where}: the array is not C-contiguous")
                if not p.const and not a.flags.writeable:
                    raise ValueError(f"{where}: the kernel writes to a read-only array")
                c_args.append(ctypes.c_void_p(a.ctypes.data))
            else:
                if not isinstance(a, np.generic):
                    raise TypeError(
                        f"{where}: got a Python {type(a).__name__}; pass a NumPy scalar of the "
                        f"declared type ({expected.name}): CuPy passes a Python int as 64 bits "
                        "and a float as a double, whatever the kernel declared"
                    )
                if a.dtype != expected:
                    raise TypeError(f"{where}: got a NumPy {a.dtype} scalar, needs {expected}")
                c_args.append(_SCALARS[p.base if p.base != "T" else self.t][1](a.item()))
        result = self.function(*_dims(grid, "grid"), *_dims(block, "block"), *c_args)
        if result == 1:
            raise LaunchError(f"{name}: invalid launch configuration grid={grid} block={block}")
        if result == 2:
            raise LaunchError(
                f"{name}: a __syncthreads() was not reached by every thread of a block "
                "(undefined behaviour on a GPU, usually a hang)"
            )
        if self.after is not None:
            self.after()


class CpuKernels:
    """The compiled library: ``kernel(name, dtype)`` gives a callable kernel."""

    def __init__(self, library: Path, signatures: dict[str, KernelSignature]):
        self.library = library
        self.signatures = signatures
        self._lib = ctypes.CDLL(str(library))

    def kernel(self, name: str, dtype: Any, after: Callable[[], None] | None = None) -> CpuKernel:
        t = T_TYPES[np.dtype(dtype)]
        signature = self.signatures[name]
        function = getattr(self._lib, _symbol(name, t))
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_uint] * 6 + [
            ctypes.c_void_p if p.pointer else _SCALARS[t if p.base == "T" else p.base][1]
            for p in signature.params
        ]
        return CpuKernel(function, signature, t, after)


# --------------------------------------------------------------------------
# NumPy standing in for CuPy
# --------------------------------------------------------------------------

_GUARD = 16  # elements of guard zone on each side of an output array


class FakeCupy:
    """The corner of CuPy's namespace that cuda_backend uses, backed by NumPy.

    Everything is NumPy's except ``empty``: its arrays are filled with NaN
    (or -7777 for integers) so that an element no kernel writes is caught,
    and sit between guard zones that :meth:`check_guards` checks, so that a
    kernel writing past either end of an output is caught.
    """

    __name__ = "numpy (standing in for cupy)"
    ndarray = np.ndarray

    def __init__(self) -> None:
        self._allocations: list[tuple[np.ndarray, Any]] = []
        # What the backend did, for tests that check it made no needless
        # copy: how many ascontiguousarray calls copied their argument, and
        # every kernel launch as (kernel name, args).
        self.copies = 0
        self.launches: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def ascontiguousarray(self, a: Any, dtype: Any = None) -> np.ndarray:
        out = np.ascontiguousarray(a, dtype=dtype)
        if not (isinstance(a, np.ndarray) and np.may_share_memory(out, a)):
            self.copies += 1
        return out

    def empty(self, shape: Any, dtype: Any = np.float64) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        n = math.prod(shape)
        floating = dtype.kind == "f"
        guard, fill = (7777.25, np.nan) if floating else (7777, -7777)
        buffer = np.full(n + 2 * _GUARD, guard, dtype=dtype)
        buffer[_GUARD : _GUARD + n] = fill
        self._allocations.append((buffer, guard))
        return buffer[_GUARD : _GUARD + n].reshape(shape)

    def check_guards(self) -> None:
        for buffer, guard in self._allocations:
            head, tail = buffer[:_GUARD], buffer[len(buffer) - _GUARD :]
            if not (np.all(head == guard) and np.all(tail == guard)):
                raise AssertionError("a kernel wrote outside the bounds of an output array")


@contextmanager
def cpu_cuda_backend(
    cuda_backend: ModuleType,
    kernels: CpuKernels,
    threads: int = 32,
    max_blocks: int = 3,
    reduce_threads: int = 32,
) -> Iterator[FakeCupy]:
    """Run ``cuda_backend`` on the CPU: NumPy arrays, kernels from ``kernels``.

    threads / max_blocks / reduce_threads replace the backend's launch sizes;
    small ones keep thread counts low and make the grid-stride loops work.
    """
    fake = FakeCupy()

    def kernel(name: str, dtype: Any) -> Callable[..., None]:
        k = kernels.kernel(name, dtype, after=fake.check_guards)

        def launch(grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
            fake.launches.append((name, args))
            k(grid, block, args, shared_mem)

        return launch

    replacements = {
        "_cupy": lambda: fake,
        "_kernel": kernel,
        "_address": lambda a: a.ctypes.data,  # NumPy's pointer, where CuPy has a.data.ptr
        "THREADS": threads,
        "MAX_BLOCKS": max_blocks,
        "REDUCE_THREADS": reduce_threads,
    }
    saved = {name: getattr(cuda_backend, name) for name in replacements}
    for name, value in replacements.items():
        setattr(cuda_backend, name, value)
    try:
        yield fake
    finally:
        for name, value in saved.items():
            setattr(cuda_backend, name, value)
