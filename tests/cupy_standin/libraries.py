"""CUDA libraries the stand-in can play as missing: CuPy's errors when they are not installed.

CuPy loads NVRTC at the first kernel it compiles and cuBLAS at the first
matrix product, and without them raises (CuPy 13, Linux)::

    RuntimeError: CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot
        open shared object file: No such file or directory
    ImportError: libcublas.so.12: cannot open shared object file: No such file or directory

``install(missing_libraries=("cublas",))`` makes the stand-in raise the same
at the same moments, so that minires's GPU probe can be tested on them.
"""

from __future__ import annotations

MISSING: set[str] = set()  # of "nvrtc", "cublas"


def load(library: str) -> None:
    """Raise CuPy's error for ``library`` if it is played as missing."""
    if library not in MISSING:
        return
    reason = f"lib{library}.so.12: cannot open shared object file: No such file or directory"
    if library == "nvrtc":
        raise RuntimeError(f"CuPy failed to load libnvrtc.so.12: OSError: {reason}")
    raise ImportError(reason)
