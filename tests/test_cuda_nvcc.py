"""The CUDA sources compile for real GPUs, without a GPU.

Two compilers, two questions:

* nvcc (where it is on PATH): every kernels/*.cu, with its float and double
  instantiations, compiles for sm_80 (A100) and sm_90 (H100) with every
  warning an error.
* NVRTC (where libnvrtc can be found): every file compiles the way CuPy's
  RawModule compiles it at run time (the same name expressions, C++14,
  nothing but the file's own text: NVRTC has none of the host headers that
  nvcc quietly includes, so a kernel that leans on <math.h> passes nvcc and
  fails here), and every name cuda_backend will ask for is found. NVRTC is
  a plain library that needs no GPU: ``pip install nvidia-cuda-nvrtc``
  (CUDA 13; nvidia-cuda-nvrtc-cu12 for CUDA 12) provides it, or a CUDA
  toolkit, or MINIRES_NVRTC=/path/to/libnvrtc.so.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_harness import harness  # noqa: E402

from minires.backends import cuda_backend  # noqa: E402

ARCHS = ("sm_80", "sm_90")
STEMS = sorted(cuda_backend.KERNELS)


# --------------------------------------------------------------------------
# nvcc
# --------------------------------------------------------------------------


def _instantiating_wrapper(cu: Path) -> str:
    """A .cu that includes a kernel file and takes the address of each kernel<T>.

    Taking the address instantiates the template and makes nvcc compile it;
    the array has external linkage, so nvcc does not warn that it is unused.
    """
    stem = cu.stem
    refs = [
        f"    reinterpret_cast<void*>(&{name}<{t}>),"
        for name in cuda_backend.KERNELS[stem]
        for t in cuda_backend.C_TYPES.values()
    ]
    return "\n".join(
        [f'#include "{cu.as_posix()}"', f"void* minires_{stem}_kernels[] = {{", *refs, "};", ""]
    )


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to check the kernels compile)")
    out = tmp_path_factory.mktemp("nvcc")

    def compile_one(stem: str, arch: str) -> tuple[int, str, float]:
        wrapper = out / f"{stem}_{arch}.cu"
        wrapper.write_text(_instantiating_wrapper(harness.KERNEL_DIR / f"{stem}.cu"))
        cmd = [
            nvcc, "-c", "-o", os.devnull, f"-arch={arch}", "--Werror", "all-warnings",
            "-std=c++14", str(wrapper),
        ]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
        elapsed = time.perf_counter() - start
        return proc.returncode, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}", elapsed

    jobs = [(stem, arch) for stem in STEMS for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda job: compile_one(*job), jobs))
    return dict(zip(jobs, results))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stem", STEMS)
def test_nvcc_compiles_without_warnings(nvcc_results, stem, arch):
    returncode, log, _ = nvcc_results[(stem, arch)]
    assert returncode == 0, log


# --------------------------------------------------------------------------
# NVRTC, as CuPy uses it
# --------------------------------------------------------------------------


def _find_nvrtc() -> str | None:
    candidates = []
    if os.environ.get("MINIRES_NVRTC"):
        candidates.append(os.environ["MINIRES_NVRTC"])
    for entry in sys.path:  # pip's nvidia-cuda-nvrtc(-cu12) wheels
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"):
            candidates += sorted(glob.glob(os.path.join(entry, sub, "libnvrtc.so*")))
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            candidates += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")))
    candidates.append("libnvrtc.so")
    for path in candidates:
        try:
            ctypes.CDLL(path)
        except OSError:
            continue
        return path
    return None


class Nvrtc:
    """The few NVRTC calls CuPy's RawModule makes, through ctypes."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        return major.value, minor.value

    def compile(
        self, source: str, name: str, options: list[str], expressions: list[str]
    ) -> tuple[bool, str, dict[str, str]]:
        """(success, log, {name expression: lowered (mangled) name})."""
        prog = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), name.encode(), 0, None, None
            ),
            "create",
        )
        try:
            for e in expressions:
                self._check(self.lib.nvrtcAddNameExpression(prog, e.encode()), e)
            opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            status = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, log)
            lowered = {}
            if status == 0:
                for e in expressions:
                    out = ctypes.c_char_p()
                    self._check(
                        self.lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(out)), e
                    )
                    lowered[e] = out.value.decode()
            return status == 0, log.value.decode(errors="replace"), lowered
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def nvrtc() -> Nvrtc:
    path = _find_nvrtc()
    if path is None:
        pytest.skip(
            "libnvrtc not found: `pip install nvidia-cuda-nvrtc` (or nvidia-cuda-nvrtc-cu12), a "
            "CUDA toolkit, or MINIRES_NVRTC=/path/to/libnvrtc.so runs this check without a GPU"
        )
    return Nvrtc(path)


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("stem", STEMS)
def test_nvrtc_compiles_like_cupy_rawmodule(nvrtc, stem, arch):
    source = (cuda_backend.kernel_dir() / f"{stem}.cu").read_text()
    expressions = [f"{k}<{t}>" for k in cuda_backend.KERNELS[stem] for t in ("float", "double")]
    # CuPy adds --std=c++14 unless told otherwise, and -arch for the device.
    ok, log, lowered = nvrtc.compile(
        source, f"{stem}.cu", ["--std=c++14", f"-arch={arch}"], expressions
    )
    assert ok, f"NVRTC {nvrtc.version()} failed on {stem}.cu:\n{log}"
    assert not log.strip(), f"NVRTC warnings for {stem}.cu:\n{log}"
    for e in expressions:
        name = e.split("<")[0]
        assert name in lowered[e], (e, lowered[e])


def test_nvrtc_compiles_the_gpu_probe(nvrtc):
    ok, log, _ = nvrtc.compile(cuda_backend._PROBE_SOURCE, "probe.cu", ["--std=c++14"], [])
    assert ok, log
