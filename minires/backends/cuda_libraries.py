"""Which CUDA library a failing GPU call lacks, and what to install to get it.

CuPy loads NVIDIA's libraries only when first used: NVRTC (the run-time
compiler, for minires's kernels) at the first kernel, cuBLAS at the first
matrix product. A machine with the driver but not these libraries imports
CuPy fine and fails later, with CuPy's words::

    RuntimeError: CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot
        open shared object file: No such file or directory
    ImportError: libcublas.so.12: cannot open shared object file: No such file or directory

(``nvrtc64_120_0.dll``, ``cublas64_12.dll`` on Windows). The GPU probe
(cuda_backend._probe) runs a kernel and a matrix product before any work,
and :func:`explain` turns such an error into what to install.
"""

from __future__ import annotations

import re

# The libraries minires's GPU path loads, and what each is for.
LIBRARIES = {
    "nvrtc": "NVRTC, CUDA's run-time compiler (it compiles minires's kernels)",
    "cublas": "cuBLAS, CUDA's matrix products (convolutions and linear layers)",
    "curand": "cuRAND, CUDA's random numbers",
    "cudart": "the CUDA runtime",
}

_LIBRARY = re.compile(r"(?:lib)?(nvrtc|cublas|curand|cudart)(?:Lt)?(?:\.so|64_)", re.IGNORECASE)
_MAJOR = re.compile(r"\.so\.(\d+)|64_(\d\d)")


def missing_library(error: BaseException) -> tuple[str, int | None] | None:
    """(library, CUDA major version or None) that ``error`` says could not be loaded, or None."""
    text = f"{type(error).__name__}: {error}"
    if not re.search(r"failed to load|cannot open shared object|could not find module", text, re.I):
        return None
    found = _LIBRARY.search(text)
    if found is None:
        return None
    library = found.group(1).lower()
    # The soname's number is the CUDA version for these three (libcublas.so.12 is
    # CUDA 12's); cuRAND numbers its own (libcurand.so.10 ships with CUDA 11 and 12).
    major = _MAJOR.search(text[found.start() :]) if library != "curand" else None
    return library, int(next(g for g in major.groups() if g)) if major else None


def install_hint(major: int | None) -> str:
    """What to install to get CUDA ``major``'s libraries (12 when unknown)."""
    if major is not None and major < 12:  # CuPy for CUDA 11 stops at 13.6: no [ctk] extra
        return f"install the CUDA Toolkit {major}.x (CuPy for CUDA {major} cannot bring it)"
    cuda = major or 12
    return (
        f'`pip install "minires[gpu]"` (CuPy with its CUDA {cuda} libraries: '
        f'cupy-cuda{cuda}x[ctk]), or `pip install "cupy-cuda{cuda}x[ctk]"` yourself, or '
        f"install the CUDA Toolkit {cuda}.x"
    )


def explain(error: BaseException, what: str) -> str | None:
    """One message for a failed ``what`` when ``error`` names a missing library, else None."""
    missing = missing_library(error)
    if missing is None:
        return None
    library, major = missing
    cuda = f" for CUDA {major}" if major else ""
    return (
        f"{what} failed because {LIBRARIES[library]}{cuda} is not installed: "
        f"{install_hint(major)}. Original error: {type(error).__name__}: {error}"
    )
