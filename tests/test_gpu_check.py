"""`minires gpu-check` and `minires bench --device cuda`'s precision, on the CuPy stand-in.

The command is made for a machine with a GPU; here the stand-in of
tests/cupy_standin plays CuPy, so every step runs for real (the kernels on
CPU threads), with ``--quick`` sizes. Also: the one-line answer and exit
status 3 where there is no GPU, a broken GPU op failing the check, a step
past its time limit, and bench's TF32 switches on both sides.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cupy_standin  # noqa: E402
from cuda_harness import harness  # noqa: E402

from minires import bench, cli, gpu_check  # noqa: E402
from minires.backends import cuda_backend  # noqa: E402


@pytest.fixture(scope="module")
def compiled() -> None:
    if harness.find_compiler() is None:
        pytest.skip("no C++ compiler (g++, clang++ or $CXX) to build the CUDA CPU harness")
    cupy_standin.prebuild_minires_kernels()


@pytest.fixture
def gpu(compiled) -> cupy_standin.Standin:
    with cupy_standin.install() as standin:
        yield standin


# --------------------------------------------------------------------------
# No GPU: one line, exit status 3
# --------------------------------------------------------------------------


def test_without_a_gpu_it_says_why_in_one_line_and_exits_3(capsys):
    if cuda_backend.gpu_available():
        pytest.skip("a GPU is usable here")
    assert cli.main(["gpu-check"]) == 3
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("minires gpu-check: no usable GPU here: ")
    assert "CuPy" in out and 'pip install "minires[gpu]"' in out


def test_a_machine_whose_cupy_sees_no_device_exits_3(compiled, capsys):
    with cupy_standin.install(device_count=0):
        assert cli.main(["gpu-check", "--quick"]) == 3
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA device is visible" in out


def test_the_help_documents_exit_status_3(capsys):
    assert cli.main(["gpu-check", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "3 if there is no usable GPU here" in text and "--quick" in text
    assert "3 `minires gpu-check`: no usable GPU here" in text


# --------------------------------------------------------------------------
# The whole command, --quick, on the stand-in
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(compiled) -> tuple[int, str]:
    """`minires gpu-check --quick`, once for the tests below (about a minute on 2 cores,
    most of it resnet50's BatchNorm kernels on CPU threads)."""
    import contextlib
    import io

    out = io.StringIO()
    with cupy_standin.install(), contextlib.redirect_stdout(out):
        status = cli.main(["gpu-check", "--quick"])
    return status, out.getvalue()


def test_quick_run_passes_every_check_and_ends_with_one_summary(quick_run):
    status, out = quick_run
    assert status == 0, out
    summary = out[out.index("\nminires gpu-check on ") :].strip().splitlines()
    assert summary[0] == (
        "minires gpu-check on cupy stand-in (NumPy, kernels run on the CPU): 5 of 5 checks passed"
    )
    names = ["ops", "gradcheck", "train", "bench resnet20", "bench resnet50"]
    for line, name in zip(summary[1:6], names):
        assert line.split()[: len(name.split()) + 1] == [*name.split(), "PASS"], line
    assert "14 cases, forward and backward" in summary[1]
    assert "batch 4 of 16x16 images" in summary[3]
    record = json.loads(summary[-1])
    assert record["checks"] == dict.fromkeys(names, "PASS") and record["quick"] is True
    assert all(0 < record["seconds"][n] < gpu_check.STEPS[n] for n in names)


def test_quick_run_reports_the_benchmarks_figures_and_precision(quick_run):
    _, out = quick_run
    record = json.loads(out.strip().splitlines()[-1])
    r20, r50 = record["bench"]["resnet20"], record["bench"]["resnet50"]
    assert (r20["model"], r20["image_size"], r20["device"]) == ("resnet20", 16, "cuda")
    assert (r50["model"], r50["image_size"], r50["batch"]) == ("resnet50", 32, 4)
    for r in (r20, r50):
        assert r["minires_train_img_s"] > 0 and r["minires_infer_img_s"] > 0
        assert r["precision"] == "fp32" and r["minires_tf32"] is False
        assert "no usable CUDA" in r["torch"]  # this PyTorch is a CPU build: said, not hidden
    assert "PyTorch not timed (PyTorch" in out and "precision FP32" in out


# --------------------------------------------------------------------------
# The checks can fail, and time limits hold
# --------------------------------------------------------------------------


def test_a_broken_gpu_backward_fails_the_ops_and_train_checks(gpu, monkeypatch):
    original = cuda_backend.relu_backward

    def leaky(*args):
        return original(*args) * 1.0001  # a 1e-4 error: far above float64's tolerance

    monkeypatch.setattr(cuda_backend, "relu_backward", leaky)
    with pytest.raises(gpu_check.CheckFailed, match="relu, gradient of input 0"):
        gpu_check.check_ops(quick=True, seed=0)
    outcome = gpu_check._run_step("train", lambda: gpu_check.check_training(True, 0), 60, 60)
    assert outcome.status == "FAIL" and outcome.detail.startswith("step 2: the loss: the GPU")


def test_a_step_past_its_limit_times_out_and_the_next_ones_still_run(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "STEPS", dict.fromkeys(gpu_check.STEPS, 0.3))
    monkeypatch.setattr(gpu_check, "check_ops", lambda quick, seed: time.sleep(5))
    monkeypatch.setattr(gpu_check, "check_gradients", lambda quick, seed: "fine")
    monkeypatch.setattr(gpu_check, "check_training", lambda quick, seed: 1 / 0)
    figures = {"minires_train_img_s": 1.0, "minires_infer_img_s": 2.0, "precision": "fp32"}
    monkeypatch.setattr(
        gpu_check, "run_bench", lambda m, b, q, t, s: {**figures, "image_size": 8, "batch": b}
    )
    start = time.perf_counter()
    outcomes = gpu_check.run(quick=True)
    assert time.perf_counter() - start < 3
    assert [o.status for o in outcomes] == ["TIMEOUT", "PASS", "FAIL", "PASS", "PASS"]
    assert "ran past its limit of 0 s" in outcomes[0].detail
    assert outcomes[2].detail.startswith("ZeroDivisionError: division by zero (at ")
    assert outcomes[4].figures["batch"] == 32 and "8x8, batch 32" in outcomes[4].detail


def test_steps_that_no_longer_fit_in_the_total_are_skipped(monkeypatch):
    monkeypatch.setattr(gpu_check, "TOTAL_S", 1.0)
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    monkeypatch.setattr(gpu_check, "check_ops", lambda quick, seed: time.sleep(0.6) or "ok")
    outcomes = gpu_check.run(quick=True)
    assert outcomes[0].status == "PASS"
    assert [o.status for o in outcomes[1:]] == ["SKIPPED"] * 4
    assert outcomes[1].detail.endswith("s of the 1 s were left")


# --------------------------------------------------------------------------
# minires bench --device cuda: the same precision on both sides
# --------------------------------------------------------------------------

TINY = ["--device", "cuda", "--batch-size", "2", "--image-size", "8", "--steps", "1"]
TINY += ["--warmup", "0", "--pause", "0", "--json"]


def _bench(capsys, *extra: str) -> dict:
    assert cli.main(["bench", *TINY, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_on_the_gpu_is_fp32_by_default_and_tf32_when_asked(gpu, capsys):
    from minires.backends import cuda_precision

    r = _bench(capsys, "--no-torch")
    assert r["precision"] == "fp32" and r["minires_tf32"] is False and r["image_size"] == 8
    r = _bench(capsys, "--no-torch", "--tf32")
    assert r["precision"] == "tf32" and r["minires_tf32"] is True
    assert cuda_precision.tf32_enabled() is False  # restored after the run


def test_bench_turns_pytorchs_tf32_off_for_the_comparison(gpu, capsys, monkeypatch):
    """PyTorch allows TF32 in cuDNN by default: the FP32 comparison must turn it off."""
    torch = pytest.importorskip("torch")
    seen = []

    def fake_torch_runner(model, batch, device, seed, threads, size=None):
        def step() -> None:  # what PyTorch would run under, read while it is timed
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

        return step, step, lambda: None

    monkeypatch.setattr(bench, "_torch_runner", fake_torch_runner)
    # PyTorch's switches are properties of module objects that newer pytest's
    # monkeypatch cannot undo (it deletes them): saved and restored by hand.
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    cudnn.allow_tf32, matmul.allow_tf32 = True, False  # PyTorch's defaults
    try:
        _check_bench_precision(capsys, torch, seen)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def _check_bench_precision(capsys, torch, seen) -> None:
    r = _bench(capsys)
    assert set(seen) == {(False, False)}
    assert (r["torch_matmul_tf32"], r["torch_cudnn_tf32"], r["minires_tf32"]) == (0, 0, 0)
    seen.clear()
    r = _bench(capsys, "--tf32")
    assert set(seen) == {(True, True)}
    assert (r["torch_matmul_tf32"], r["torch_cudnn_tf32"], r["minires_tf32"]) == (1, 1, 1)
    assert torch.backends.cudnn.allow_tf32 is True  # both restored
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert cli.main(["bench", *TINY[:-1], "--tf32"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("precision:"))
    assert line == (
        "precision: TF32 asked; minires (CuPy's cuBLAS) TF32 allowed, "
        "PyTorch matmul TF32 allowed, cuDNN TF32 allowed"
    )


def test_tf32_asked_on_a_gpu_without_it_is_said(gpu, capsys, monkeypatch):
    monkeypatch.setattr(gpu.cupy.cuda.Device, "compute_capability", "75")
    r = _bench(capsys, "--no-torch", "--tf32")
    assert r["minires_tf32"] is False and "compute capability < 8.0" in r["precision_note"]


def test_tf32_on_the_cpu_is_a_usage_error(capsys):
    assert cli.main(["bench", "--tf32", "--steps", "1"]) == 2
    assert "--tf32 needs --device cuda" in capsys.readouterr().err


def test_cupy_tf32_env_is_what_cupy_starts_with(compiled, monkeypatch):
    from minires.backends import cuda_precision

    monkeypatch.setenv("CUPY_TF32", "1")
    with cupy_standin.install():
        assert cuda_precision.tf32_enabled() is True
    monkeypatch.delenv("CUPY_TF32")
    with cupy_standin.install():
        assert cuda_precision.tf32_enabled() is False


def test_the_gpu_extra_brings_cupys_cuda_libraries():
    """`pip install ".[gpu]"` needs only the driver: CuPy's [ctk] extra (CuPy >= 14) brings
    NVRTC, cuBLAS and cuRAND as wheels; the README and the probe's advice say the same."""
    import re

    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert re.search(r'^gpu = \["cupy-cuda12x\[ctk\]>=14"\]$', pyproject, re.M)
    readme = (root / "README.md").read_text()
    assert "`cupy-cuda12x[ctk]`" in readme and '"cupy-cuda13x[ctk]"' in readme
    assert "cupy-cuda12x[ctk]" in cuda_backend._CUPY_INSTALL_HINT
