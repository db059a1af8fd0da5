"""``cupy.RawModule`` and ``cupy.RawKernel``, compiled for the CPU.

The CUDA source a RawModule is given (minires passes the text of a
``kernels/*.cu`` file) is compiled by the C++ compiler through the CPU
harness (tests/cuda_harness: CUDA's threads, blocks, shared memory and
barriers on std::thread), and ``get_function("im2col<float>")`` returns a
:class:`Function` that runs that very kernel when called as
``kernel(grid, block, args)``.

Compiled sources are cached for the whole process by the hash of their text,
so each .cu file is compiled once per test session (``prebuild`` compiles
several in parallel). A launch checks what a GPU would silently get wrong
(the harness's checks: argument count, dtypes, contiguity, NumPy scalars of
the declared C type) and, after it, the guard zones of the arrays it was
given; and it is counted.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import libraries
from .array import check_guards, ndarray, unsupported
from .counts import record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cuda_harness import harness  # noqa: E402

_BUILD_DIR: Path | None = None
_LIBRARIES: dict[str, harness.CpuKernels] = {}  # sha256 of the source text -> library


def _build_dir() -> Path:
    global _BUILD_DIR
    if _BUILD_DIR is None:
        _BUILD_DIR = Path(tempfile.mkdtemp(prefix="minires-cupy-standin-"))
        atexit.register(shutil.rmtree, _BUILD_DIR, True)
    return _BUILD_DIR


def _key(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()[:20]


def prebuild(paths: list[Path], folder: Path | None = None) -> None:
    """Compile these .cu files now, in parallel, into one library shared by them.

    folder: where to build it; when it already holds the library (built by
    the test that started this process, from the same sources), it is loaded.
    """
    if folder is not None and not (folder / harness.LIBRARY_NAME).exists():
        # Built there even if this process has them already: the processes
        # the test starts next load the library from the folder.
        library = harness.build_library(folder, paths)
        for p in paths:
            _LIBRARIES.setdefault(_key(p.read_text()), library)
        return
    todo = [p for p in paths if _key(p.read_text()) not in _LIBRARIES]
    if not todo:
        return
    if folder is not None:
        library = harness.load_library(folder, todo)
    else:
        library = harness.build_library(folder or _build_dir() / f"lib{len(_LIBRARIES)}", todo)
    for p in todo:
        _LIBRARIES[_key(p.read_text())] = library


def library(code: str) -> harness.CpuKernels:
    """The compiled library for a CUDA source text (compiled on first use)."""
    key = _key(code)
    if key not in _LIBRARIES:
        if harness.find_compiler() is None:
            raise RuntimeError("cupy stand-in: no C++ compiler (g++, clang++ or $CXX)")
        folder = _build_dir() / key
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "source.cu"
        source.write_text(code)
        _LIBRARIES[key] = harness.build_library(folder, [source])
    return _LIBRARIES[key]


class Function:
    """A compiled kernel: ``f(grid, block, args, shared_mem=0)``, as ``cupy.RawKernel``."""

    __module__ = "cupy.cuda.function"

    def __init__(self, kernel: harness.CpuKernel, name: str):
        self.kernel, self.name = kernel, name

    def __call__(
        self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0, stream: Any = None
    ) -> None:
        host_args = []
        for a in args:
            if isinstance(a, np.ndarray):  # host memory: CuPy refuses it too
                raise unsupported(a)
            host_args.append(a._a if isinstance(a, ndarray) else a)
        record("kernel", self.name)
        self.kernel(grid, block, tuple(host_args), shared_mem)
        check_guards([a for a in host_args if isinstance(a, np.ndarray)], self.name)


_EXPRESSION = re.compile(r"^\s*(\w+)\s*<\s*(float|double)\s*>\s*$")


def _function(lib: harness.CpuKernels, name: str, expression: str) -> Function:
    m = _EXPRESSION.match(expression)
    kernel_name, t = (m.group(1), m.group(2)) if m else (expression, "float")
    signature = lib.signatures.get(kernel_name)
    if signature is None or signature.template != bool(m):
        raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {expression!r}")
    dtype = np.float32 if t == "float" else np.float64
    return Function(lib.kernel(kernel_name, dtype), name)


class RawModule:
    """``cupy.RawModule(code=..., name_expressions=[...])``."""

    __module__ = "cupy._core.raw"

    def __init__(self, code: str | None = None, *, name_expressions: Any = None, **options: Any):
        if code is None:
            raise NotImplementedError("cupy stand-in: RawModule(path=...) is not modelled")
        self.code = code
        self.name_expressions = tuple(name_expressions or ())
        libraries.load("nvrtc")
        self._lib = library(code)  # NVRTC compiles when the module is loaded; so here

    def get_function(self, name: str) -> Function:
        if _EXPRESSION.match(name) and name not in self.name_expressions:
            # NVRTC instantiates only the templates it was asked for.
            raise RuntimeError(
                f"CUDA_ERROR_NOT_FOUND: {name!r} is not among the name_expressions "
                f"{self.name_expressions}"
            )
        return _function(self._lib, name, name)


class RawKernel:
    """``cupy.RawKernel(code, name)``: one ``extern "C"`` kernel, compiled on first call."""

    __module__ = "cupy._core.raw"

    def __init__(self, code: str, name: str, **options: Any):
        self.code, self.name = code, name
        self._function: Function | None = None

    def __call__(self, grid: tuple, block: tuple, args: tuple, **kwargs: Any) -> None:
        if self._function is None:
            libraries.load("nvrtc")
            self._function = _function(library(self.code), self.name, self.name)
        self._function(grid, block, args, **kwargs)
