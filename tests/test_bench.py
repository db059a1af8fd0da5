"""`minires bench`: argument checks, the no-GPU error, and a tiny real run."""

from __future__ import annotations

import json
import os
import platform

import pytest

from minires import bench, cli
from minires.backends import cuda_backend


@pytest.mark.parametrize(
    "args, message",
    [
        # The wording of minires/options.py, shared with `minires train`.
        (["--steps", "0"], "--steps: must be a positive integer, got '0'"),
        (["--batch-size", "-3"], "--batch-size: must be a positive integer, got '-3'"),
        (["--pause", "-1"], "--pause: must be a number >= 0, got '-1'"),
        (["--warmup", "two"], "--warmup: must be an integer >= 0, got 'two'"),
    ],
)
def test_bad_arguments_are_usage_errors(args, message, capsys) -> None:
    assert cli.main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_one_line_error(capsys) -> None:
    if cuda_backend.gpu_available():
        pytest.skip("a GPU is usable here")
    assert cli.main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no usable GPU" in err and "Traceback" not in err


def test_a_tiny_run_reports_positive_rates_as_json(capsys) -> None:
    argv = ["--batch-size", "2", "--steps", "2", "--warmup", "0", "--pause", "0"]
    assert cli.main(["bench", *argv, "--no-torch", "--no-memory", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json: only the JSON line
    result = json.loads(out[0])
    assert result["model"] == "resnet20" and result["batch"] == 2 and result["steps"] == 2
    assert result["minires_train_img_s"] > 0 and result["minires_infer_img_s"] > 0
    assert "torch_train_img_s" not in result


def test_report_prints_the_ratio_when_both_frameworks_ran() -> None:
    text = bench.report(
        {
            "model": "resnet20",
            "batch": 128,
            "device": "cpu",
            "machine": "m",
            "steps": 3,
            "minires_train_img_s": 100.0,
            "minires_infer_img_s": 300.0,
            "torch_train_img_s": 250.0,
            "torch_infer_img_s": 1000.0,
            "train_ratio": 0.4,
            "infer_ratio": 0.3,
        }
    )
    assert "ratio" in text and "0.40" in text and "0.30" in text


def test_blas_line_names_the_library_and_a_pinned_coretype() -> None:
    lib = bench._blas_library()
    assert lib["name"] not in ("", "unknown")
    text = bench._blas(lib, "Haswell")
    assert text.startswith(lib["name"]) and text.endswith("(OPENBLAS_CORETYPE=Haswell)")
    assert "OPENBLAS_CORETYPE" not in bench._blas(lib, None)
    kernels = {"name": "openblas", "version": "0.3", "architecture": "Haswell"}
    assert bench._blas(kernels, None) == "openblas 0.3, Haswell kernels"


def test_a_pin_below_the_cpus_avx512_is_noted() -> None:
    avx512 = {"sse2", "avx2", "avx512f"}
    openblas = {"name": "openblas", "version": "0.3", "architecture": ""}
    haswell = {**openblas, "architecture": "Haswell"}
    note = bench._blas_note(haswell, "Haswell", avx512)
    assert note is not None and "OPENBLAS_CORETYPE=Haswell" in note and "AVX-512" in note
    assert bench._blas_note(openblas, "Haswell", avx512) == note  # kernels unreported: the pin
    assert bench._blas_note(openblas, "SkylakeX", avx512) is None  # pinned to AVX-512 kernels
    skylakex = {**openblas, "architecture": "SkylakeX"}
    assert bench._blas_note(skylakex, "Haswell", avx512) is None  # runs AVX-512 kernels anyway
    assert bench._blas_note(haswell, "Haswell", {"avx2"}) is None  # the CPU has no AVX-512
    assert bench._blas_note(openblas, None, avx512) is None  # OpenBLAS chooses
    mkl = {"name": "mkl", "version": "2024", "architecture": ""}
    assert bench._blas_note(mkl, "Haswell", avx512) is None  # the variable is OpenBLAS's only
    text = bench.report(
        {
            "model": "resnet20",
            "batch": 2,
            "device": "cpu",
            "machine": "x",
            "steps": 1,
            "blas": "openblas",
            "blas_note": note,
            "minires_train_img_s": 1.0,
            "minires_infer_img_s": 1.0,
        }
    )
    assert f"note: {note}" in text.splitlines()


def test_cpu_flags_are_read_on_linux() -> None:
    flags = bench._cpu_flags()
    if os.path.exists("/proc/cpuinfo") and platform.machine() in ("x86_64", "AMD64"):
        assert "sse2" in flags  # every x86-64 CPU has it
    assert isinstance(flags, set)


def test_a_cpu_run_records_the_blas_and_prints_it(capsys) -> None:
    argv = ["--batch-size", "2", "--steps", "1", "--warmup", "0", "--pause", "0"]
    assert cli.main(["bench", *argv, "--no-torch", "--no-memory"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["blas"] and f"NumPy's BLAS: {result['blas']}" in out
