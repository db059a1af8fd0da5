"""minires's CUDA path, end to end, on every CI run: CuPy played by tests/cupy_standin.

The GPU tests (test_gpu_end_to_end.py, test_cuda_backend_gpu.py) run only
where there is a GPU. Here the same code path runs everywhere: the stand-in
is installed as ``cupy`` and ``cupyx``, so the unchanged CUDA backend
launches the real kernels of kernels/*.cu (compiled for CPU threads by
tests/cuda_harness), and every op, gradient, model, training step and the
``minires train --device cuda`` command are compared with the NumPy path.

What this proves: the logic of the CUDA path (the backend's marshalling of
arrays and scalars, the kernels, the ops' device-generic code, autograd,
the optimiser, checkpoints) and its traffic (the counts). What it cannot:
that NVRTC compiles the kernels (test_cuda_nvcc.py), the GPU's own rounding,
races that CPU threads do not show, and speed.

Sections:
    the stand-in is CuPy as minires sees it (and refuses what CuPy refuses)
    the backend contract, function by function (cases.py, as on a GPU)
    every functional op, forward and backward, float32 and float64
    float64 gradchecks on the CUDA path
    a BasicBlock net, a Bottleneck net, a grouped (ResNeXt) Bottleneck net,
    CIFAR ResNets (shortcut A and B, and a wide one)
    resnet20: three SGD steps with momentum, then eval mode
    the command line: train, checkpoint, --resume, eval, predict
    the census script
    the GPU test files themselves (every test marked gpu), run on the stand-in
"""

from __future__ import annotations

import inspect
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cupy_standin  # noqa: E402
import test_cuda_backend_gpu  # noqa: E402
import test_gpu_end_to_end  # noqa: E402
from conftest import kink_free  # noqa: E402
from cuda_harness import harness  # noqa: E402
from cuda_harness.cases import DTYPES, BackendChecks, Device  # noqa: E402

import minires as mr  # noqa: E402
import minires.functional as F  # noqa: E402
from minires import nn  # noqa: E402
from minires.backends import cuda_backend, device  # noqa: E402
from minires.models.blocks import BasicBlock, Bottleneck, conv1x1, conv3x3  # noqa: E402

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])


@pytest.fixture(scope="session")
def compiled() -> None:
    """kernels/*.cu compiled for the CPU once per session (in parallel)."""
    if harness.find_compiler() is None:
        pytest.skip("no C++ compiler (g++, clang++ or $CXX) to build the CUDA CPU harness")
    cupy_standin.prebuild_minires_kernels()


@pytest.fixture
def gpu(compiled) -> cupy_standin.Standin:
    """The stand-in installed as cupy/cupyx for one test; everything restored after."""
    with cupy_standin.install() as standin:
        yield standin


def tolerance(dtype) -> dict:
    return {"rtol": 1e-4, "atol": 1e-5} if np.dtype(dtype) == np.float32 else {"rtol": 1e-10}


# --------------------------------------------------------------------------
# The stand-in is CuPy as minires sees it
# --------------------------------------------------------------------------


def test_arrays_are_cupy_arrays_and_refuse_to_be_numpy(gpu):
    cp = gpu.cupy
    x = cp.asarray(np.arange(6.0).reshape(2, 3))
    assert device.is_cupy_array(x) and not isinstance(x, np.ndarray)
    assert device.get_array_module(x) is cp and device.device_of(x) == "cuda"
    assert mr.backends.get_backend(x) is cuda_backend  # runs the GPU probe
    assert gpu.counts.by("kernel") == {"minires_probe": 1} and gpu.counts.by("cublas") == {
        "matmul": 1
    }
    assert gpu.counts.host_syncs == 2  # the kernel's value and the matrix product's, read back
    gpu.counts.reset()
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones(3)  # a host array mixed into device arithmetic
    with pytest.raises(TypeError, match="Unsupported type"):
        np.ones(3) * x
    with pytest.raises(AttributeError):
        x.flags.writeable  # CuPy's flags have no writeable  # noqa: B018
    total = x.sum()
    assert device.is_cupy_array(total) and total.shape == ()  # a 0-d device array, not a scalar
    assert np.sqrt(x).dtype == np.float64 and device.is_cupy_array(np.sqrt(x))  # NumPy dispatches
    assert gpu.counts.host_syncs == 0
    assert float(total) == 15.0 and gpu.counts.host_syncs == 1
    np.testing.assert_array_equal(x.get(), np.arange(6.0).reshape(2, 3))
    assert gpu.counts.host_syncs == 2 and gpu.counts.d2h_bytes == 8 + 48
    with pytest.raises(AttributeError, match="stand-in"):
        cp.fft  # noqa: B018  (not modelled: said so, not faked with NumPy)


def test_what_is_counted(gpu):
    cp = gpu.cupy
    a = cp.ones((4, 3), np.float32)  # a fill
    gpu.counts.reset()
    assert cp.ascontiguousarray(a) is a and gpu.counts.layout_copies == 0
    b = cp.ascontiguousarray(a.T)
    assert b.flags.c_contiguous and gpu.counts.layout_copies == 1
    a.T.reshape(12)  # cannot be a view: an implicit layout copy
    assert gpu.counts.layout_copies == 2
    a @ b
    a + 1.0
    a.sum()
    cp.zeros(3)
    summary = gpu.counts.summary()
    assert summary["cublas_events"] == 1 and summary["reduction_events"] == 1
    assert summary["elementwise_events"] == 1 and summary["fill_events"] == 1
    assert summary["launches"] == 1 + 1 + 1 + 1 + 2  # and the two layout copies
    cp.asarray(np.zeros(5, np.float32))
    assert gpu.counts.h2d_bytes == 20 and gpu.counts.bytes_moved == 20
    ((site_what, n),) = gpu.counts.by("cublas", key="both").items()
    assert n == 1 and site_what.startswith("matmul @ tests/test_cupy_standin.py")


def test_raw_module_runs_the_real_kernel(gpu):
    cp = gpu.cupy
    source = (harness.KERNEL_DIR / "relu.cu").read_text()
    module = cp.RawModule(code=source, name_expressions=["relu_forward<float>"])
    relu = module.get_function("relu_forward<float>")
    x = cp.asarray(np.array([-2.0, -0.5, 0.0, 1.5, 3.0], np.float32))
    y = cp.empty(5, np.float32)
    relu((2,), (2,), (x, y, np.int32(5)))  # 4 threads, 5 items: the grid-stride loop
    np.testing.assert_array_equal(y.get(), [0, 0, 0, 1.5, 3])
    assert gpu.counts.by("kernel") == {"relu_forward<float>": 1}
    with pytest.raises(RuntimeError, match="name_expressions"):
        module.get_function("relu_forward<double>")  # NVRTC made only what it was asked for
    with pytest.raises(TypeError, match="Python int"):
        relu((1,), (8,), (x, y, 5))  # CuPy would pass 64 bits to an int
    with pytest.raises(TypeError, match="Unsupported type"):
        relu((1,), (8,), (np.ones(5, np.float32), y, np.int32(5)))  # host memory


def test_guard_zones_and_poison_catch_kernel_bugs(gpu):
    cp = gpu.cupy
    source = r"""
    template <typename T>
    __global__ void copy_some(const T* __restrict__ x, T* __restrict__ y, int n)
    {
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
            y[i] = x[i];
    }
    """
    copy = cp.RawModule(code=source, name_expressions=["copy_some<float>"]).get_function(
        "copy_some<float>"
    )
    x = cp.ones(6, np.float32)
    y = cp.empty(6, np.float32)
    copy((1,), (4,), (x, y, np.int32(5)))  # one element short: it stays NaN
    assert np.isnan(y.get()[5]) and not np.isnan(y.get()[:5]).any()
    with pytest.raises(AssertionError, match="outside the bounds"):
        copy((1,), (4,), (cp.ones(8, np.float32), y, np.int32(8)))  # two past the end


def test_install_restores_everything(compiled):
    before = {name: sys.modules.get(name) for name in ("cupy", "cupyx")}
    available = cuda_backend.gpu_available()
    threads = cuda_backend.THREADS
    with cupy_standin.install() as standin:
        assert sys.modules["cupy"] is standin.cupy and cuda_backend.gpu_available()
        assert F.relu(mr.tensor(np.ones(2)).to("cuda")).device == "cuda"
        assert cuda_backend._module.cache_info().currsize == 1  # relu.cu, compiled by the stand-in
    assert {name: sys.modules.get(name) for name in ("cupy", "cupyx")} == before
    assert cuda_backend._module.cache_info().currsize == 0  # no stand-in kernel left behind
    assert cuda_backend.THREADS == threads
    assert cuda_backend.gpu_available() == available
    with cupy_standin.install(device_count=0):
        assert "no CUDA device" in cuda_backend.gpu_unavailable_reason()


@pytest.mark.parametrize(
    "library, named", [("cublas", "cuBLAS, CUDA's matrix products"), ("nvrtc", "NVRTC")]
)
def test_the_probe_names_a_missing_library_and_what_to_install(
    compiled, capsys, tmp_path, library, named
):
    """A machine with the driver but without cuBLAS or NVRTC imports CuPy fine: the
    probe's kernel and matrix product find it before any work, and say what to install."""
    from minires.cli import main

    with cupy_standin.install(missing_libraries=(library,)):
        reason = cuda_backend.gpu_unavailable_reason()
        assert f"{named}" in reason and "for CUDA 12 is not installed" in reason
        assert '`pip install "minires[gpu]"`' in reason and "cupy-cuda12x[ctk]" in reason
        assert f"lib{library}.so.12: cannot open shared object file" in reason  # CuPy's words
        with pytest.raises(RuntimeError, match=f"minires cannot use the GPU: .*{named}"):
            mr.tensor(np.ones(2)).to("cuda")
        assert main(["train", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("minires: error: --device cuda: no usable GPU.") and named in err
        assert err.count("\n") == 1
    with cupy_standin.install():
        assert cuda_backend.gpu_available()  # the library is back: so is the GPU


@pytest.mark.parametrize(
    "error, library, major, install",
    [
        (RuntimeError("CuPy failed to load nvrtc64_120_0.dll: FileNotFoundError: Could not "
                      "find module 'nvrtc64_120_0.dll'"), "nvrtc", 12, "cupy-cuda12x[ctk]"),
        (ImportError("libcublas.so.11: cannot open shared object file: No such file or "
                     "directory"), "cublas", 11, "install the CUDA Toolkit 11.x"),
        (RuntimeError("CuPy failed to load libcurand.so.10: OSError: libcurand.so.10: cannot "
                      "open shared object file"), "curand", None, "cupy-cuda12x[ctk]"),
        (RuntimeError("CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot "
                      "open shared object file"), "nvrtc", 13, "cupy-cuda13x[ctk]"),
    ],
)  # fmt: skip
def test_a_missing_library_is_named_from_cupys_error(error, library, major, install):
    from minires.backends import cuda_libraries

    assert cuda_libraries.missing_library(error) == (library, major)
    assert install in cuda_libraries.explain(error, "it")


def test_other_errors_are_not_taken_for_a_missing_library():
    from minires.backends import cuda_libraries

    for error in (
        RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"),
        RuntimeError("cublas: CUBLAS_STATUS_NOT_INITIALIZED"),
        ImportError("No module named 'cupy'"),
    ):
        assert cuda_libraries.explain(error, "it") is None


# --------------------------------------------------------------------------
# The backend contract, function by function (the GPU test's checks)
# --------------------------------------------------------------------------


@dtypes
def test_backend_contract(gpu, dtype):
    checks = BackendChecks(cuda_backend, Device(cuda_backend.to_gpu, cuda_backend.to_cpu))
    rng = np.random.default_rng(0)
    for geometry in [
        (3, 3, 1, 1, 1, 1),
        (3, 3, 2, 2, 1, 1),
        (1, 1, 2, 2, 0, 0),
        (7, 7, 2, 2, 3, 3),
    ]:
        checks.im2col(rng, dtype, 2, 2, 9, 8, *geometry)
    checks.batch_norm(rng, dtype, 3, 37, True)
    checks.batch_norm(rng, dtype, 2, 1, False)
    checks.relu(rng, dtype, (2, 3, 4))
    checks.relu_channel_major(rng, dtype, (2, 3, 4, 5))
    checks.max_pool(rng, dtype, 3, 9, 8, 3, 3, 2, 2, 1, 1, True, 0.1)
    checks.avg_pool(rng, dtype, 3, 7, 7, 3, 3, 2, 2, 1, 1)
    checks.cross_entropy(rng, dtype, 5, 7, 3.0, np.int32)


# --------------------------------------------------------------------------
# Every functional op, forward and backward, against the NumPy path
# --------------------------------------------------------------------------


def _bn(x, w, train=True, fn=F.batch_norm):
    C = x.shape[1]
    rm, rv = w.data[:C, 0, 0, 0] * 0 + 0.5, w.data[:C, 0, 0, 0] * 0 + 2.0
    return fn(x, rm, rv, w[:C, 0, 0, 0] + 1.5, w[:C, 0, 1, 1], training=train), rm, rv


OPS = {
    "conv_s1_bias": lambda x, w: F.conv2d(x, w, w[:, 0, 0, 0], padding=1),
    "conv_s2": lambda x, w: F.conv2d(x, w, stride=2, padding=1),
    "conv_1x1": lambda x, w: F.conv2d(x, w[:, :, :1, :1]),
    "conv_1x1_s2": lambda x, w: F.conv2d(x, w[:, :, 1:2, 1:2], stride=2),
    "bn_train": lambda x, w: _bn(x, w, True)[0],
    "bn_eval": lambda x, w: _bn(x, w, False)[0],
    "bn_relu_train": lambda x, w: _bn(x, w, True, F.batch_norm_relu)[0],
    "bn_relu_eval": lambda x, w: _bn(x, w, False, F.batch_norm_relu)[0],
    "relu_add": lambda x, w: F.relu(x) + x,
    "max_pool": lambda x, w: F.max_pool2d(x, 3, 2, 1),
    "avg_pool": lambda x, w: F.avg_pool2d(x, 3, 2, 1) * w[0, 0, 0, 0],
    "adaptive_pool": lambda x, w: F.adaptive_avg_pool2d(x, 1),
    "linear": lambda x, w: F.linear(
        F.flatten(F.avg_pool2d(x, 2), 1), w.reshape(4, -1)[:, :36], w[:, 1, 1, 1]
    ),
    "cross_entropy": lambda x, w: F.cross_entropy(
        F.linear(F.flatten(F.adaptive_avg_pool2d(x, 1), 1), w.reshape(4, -1)[:, :4], w[:, 0, 0, 1]),
        np.array([0, 3, 1]),
    ),
}


def _leaf(a: np.ndarray, to: str) -> mr.Tensor:
    t = mr.tensor(a).to(to)
    t.requires_grad = True
    return t


def _compare_op(gpu, op, dtype) -> None:
    rng = np.random.default_rng(0)
    x_host = kink_free(rng, (3, 4, 7, 6), gap=1e-2, dtype=dtype)
    w_host = (0.3 * rng.standard_normal((4, 4, 3, 3))).astype(dtype)
    results = {}
    for where in ("cpu", "cuda"):
        x, w = _leaf(x_host, where), _leaf(w_host, where)
        y = op(x, w)
        upstream = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)  # the same twice
        y.backward(device.to_device(upstream, where))
        results[where] = (y, x, w)
    (y, x, w), (yg, xg, wg) = results["cpu"], results["cuda"]
    assert yg.device == "cuda" and device.is_cupy_array(xg.grad) and xg.grad.dtype == dtype
    assert yg.dtype == y.dtype == dtype
    tol = tolerance(dtype)
    np.testing.assert_allclose(yg.numpy(), y.numpy(), **tol)
    for name, cpu, cuda in (("x", x, xg), ("w", w, wg)):
        assert (cuda.grad is None) == (cpu.grad is None), name
        if cpu.grad is not None:
            np.testing.assert_allclose(device.to_numpy(cuda.grad), cpu.grad, **tol, err_msg=name)


@pytest.mark.parametrize("name", sorted(OPS))
@dtypes
def test_op_forward_and_backward_match_numpy(gpu, name, dtype):
    _compare_op(gpu, OPS[name], dtype)


def test_batch_norm_running_statistics_match(gpu):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    stats = {}
    for where in ("cpu", "cuda"):
        rm = device.to_device(np.full(3, 0.5), where)
        rv = device.to_device(np.full(3, 2.0), where)
        for _ in range(2):
            F.batch_norm(mr.tensor(x).to(where), rm, rv, training=True, momentum=0.3)
        y = F.batch_norm(mr.tensor(x).to(where), rm, rv, training=False)
        stats[where] = [device.to_numpy(a) for a in (rm, rv, y.data)]
    for cpu, cuda in zip(stats["cpu"], stats["cuda"]):
        np.testing.assert_allclose(cuda, cpu, rtol=1e-12)


def test_a_broken_backend_function_is_caught(gpu, monkeypatch):
    """The comparisons can fail: BatchNorm's backward with ggamma and gbeta swapped."""
    original = cuda_backend.batch_norm_backward

    def swapped(*args, **kwargs):
        gx, ggamma, gbeta = original(*args, **kwargs)
        return gx, gbeta, ggamma

    monkeypatch.setattr(cuda_backend, "batch_norm_backward", swapped)
    with pytest.raises(AssertionError):
        _compare_op(gpu, OPS["bn_train"], np.float64)


# --------------------------------------------------------------------------
# Gradchecks in float64 on the CUDA path
# --------------------------------------------------------------------------


def test_gradcheck_conv_bn_pool_block(gpu):
    rng = np.random.default_rng(1)
    x = _leaf(rng.standard_normal((1, 2, 5, 4)), "cuda")
    w = _leaf(rng.standard_normal((3, 2, 3, 3)), "cuda")
    g = _leaf(rng.uniform(0.5, 1.5, 3), "cuda")
    b = _leaf(rng.standard_normal(3), "cuda")

    def block(x, w, g, b):
        h = F.batch_norm(F.conv2d(x, w, stride=2, padding=1), None, None, g, b, training=True)
        return F.avg_pool2d(h, 2, 1)

    assert mr.gradcheck(block, [x, w, g, b])


def test_gradcheck_pool_relu_linear_loss(gpu):
    rng = np.random.default_rng(2)
    x = _leaf(kink_free(rng, (2, 2, 5, 5), gap=1e-2), "cuda")
    w = _leaf(rng.standard_normal((5, 2)), "cuda")
    b = _leaf(rng.standard_normal(5), "cuda")

    def head(x, w, b):
        h = F.relu(F.max_pool2d(x, 3, 2, 1))
        logits = F.linear(F.flatten(F.adaptive_avg_pool2d(h, 1), 1), w, b)
        return F.cross_entropy(logits, np.array([4, 0]))

    assert mr.gradcheck(head, [x, w, b])
    y = _leaf(rng.standard_normal((1, 2, 4, 4)), "cuda")
    assert mr.gradcheck(lambda y: F.conv2d(y, w.reshape(5, 2, 1, 1), stride=2), [y])


# --------------------------------------------------------------------------
# Networks: a BasicBlock net, a Bottleneck net, CIFAR ResNets
# --------------------------------------------------------------------------


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))


def basic_net() -> nn.Module:
    return nn.Sequential(
        conv3x3(3, 8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        BasicBlock(8, 8),
        BasicBlock(8, 16, 2, _downsample(8, 16, 2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(16, 5),
    )


def bottleneck_net() -> nn.Module:
    """The ImageNet stem (7x7/2 conv, 3x3/2 max pool), then two Bottlenecks."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        Bottleneck(8, 4, 1, _downsample(8, 16, 1)),
        Bottleneck(16, 4, 2, _downsample(16, 16, 2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(16, 5),
    )


def resnext_net() -> nn.Module:
    """A ResNeXt-style pair of Bottlenecks: inner width 8, 3x3 convs in 4 groups."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        Bottleneck(8, 4, 1, _downsample(8, 16, 1), groups=4, base_width=32),
        Bottleneck(16, 4, 2, _downsample(16, 16, 2), groups=4, base_width=32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(16, 5),
    )


NETS = {
    "basic": (basic_net, 10),
    "bottleneck": (bottleneck_net, 20),
    "resnext": (resnext_net, 8),
    "cifar8_A": (lambda: mr.models.cifar_resnet(8, shortcut="A", num_classes=5), 8),
    "cifar8_B": (lambda: mr.models.cifar_resnet(8, shortcut="B", num_classes=5), 8),
    "cifar8_wide": (lambda: mr.models.cifar_resnet(8, width=2, num_classes=5), 8),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_network_forward_backward_matches_cpu(gpu, name):
    build, size = NETS[name]
    mr.manual_seed(0)
    cpu = build().to(np.float64)
    mr.manual_seed(0)
    cuda = build().to(np.float64).to("cuda")
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((3, 3, size, size)), np.array([0, 4, 2])
    losses = []
    for model, where in ((cpu, "cpu"), (cuda, "cuda")):
        loss = F.cross_entropy(model(mr.tensor(images).to(where)), device.to_device(labels, where))
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    cuda_params = dict(cuda.named_parameters())
    for key, p in cpu.named_parameters():
        np.testing.assert_allclose(
            device.to_numpy(cuda_params[key].grad), p.grad, rtol=1e-9, atol=1e-12, err_msg=key
        )
    cuda_state = cuda.state_dict()  # BatchNorm's running statistics too
    for key, value in cpu.state_dict().items():
        np.testing.assert_allclose(device.to_numpy(cuda_state[key]), value, rtol=1e-12)


def test_whole_network_directional_gradcheck(gpu):
    mr.manual_seed(1)
    model = bottleneck_net().to(np.float64).to("cuda")
    x = _leaf(np.random.default_rng(3).standard_normal((2, 3, 16, 16)), "cuda")
    labels = gpu.cupy.asarray(np.array([1, 3]))
    assert mr.gradcheck(
        lambda x: F.cross_entropy(model(x), labels),
        [x],
        params=model.named_parameters(),
        mode="directional",
    )


# --------------------------------------------------------------------------
# resnet20: three training steps with momentum, then eval mode
# --------------------------------------------------------------------------


def test_resnet20_training_steps_match_the_cpu(gpu):
    from minires.train.step import train_step

    models, results = {}, {}
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 3, 12, 12)), rng.integers(0, 10, 4)) for _ in range(3)]
    for where in ("cpu", "cuda"):
        mr.manual_seed(0)
        model = mr.models.resnet20().to(np.float64).to(where)
        opt = mr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        steps = [
            train_step(model, opt, device.to_device(x, where), device.to_device(y, where))
            for x, y in batches
        ]
        model.eval()
        with mr.no_grad():
            logits = model(mr.tensor(batches[0][0]).to(where))
        models[where], results[where] = model, (steps, logits.numpy())
    (cpu_steps, cpu_logits), (cuda_steps, cuda_logits) = results["cpu"], results["cuda"]
    for a, b in zip(cpu_steps, cuda_steps):
        assert b.loss == pytest.approx(a.loss, rel=1e-12) and a.correct == b.correct
    np.testing.assert_allclose(cuda_logits, cpu_logits, rtol=1e-10, atol=1e-12)
    cuda_state = models["cuda"].state_dict()
    for key, value in models["cpu"].state_dict().items():
        np.testing.assert_allclose(
            device.to_numpy(cuda_state[key]), value, rtol=1e-10, atol=1e-13, err_msg=key
        )


# --------------------------------------------------------------------------
# The command line on "cuda": train, checkpoint, --resume, eval
# --------------------------------------------------------------------------


def test_train_resume_and_eval_on_cuda(gpu, tmp_path, capsys):
    """`minires train --device cuda`, a run stopped mid-epoch and resumed from its
    checkpoint (bit-identical to one never stopped), and `minires eval` on cuda
    (equal to eval on cpu of the same checkpoint)."""
    from minires.checkpoint import load_checkpoint
    from minires.cli import main
    from minires.train import TrainConfig, Trainer

    tiny = ["--num-train", "8", "--num-test", "4", "--batch-size", "4", "--progress", "none"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", *tiny, "--epochs", "2", "--device", "cuda", "--out", str(straight)]) == 0
    assert gpu.counts.by("kernel")  # the run really launched the kernels

    cfg = TrainConfig.for_data(
        "digits", num_train=8, num_test=4, batch_size=4, epochs=2, device="cuda"
    )

    def stop_after_first_step(trainer: Trainer) -> None:
        trainer.request_stop()

    result = Trainer(cfg, stopped, progress="none").run(stop_after_first_step)
    assert result.status == "interrupted"
    assert main(["train", "--out", str(stopped), "--resume", "--progress", "none"]) == 0
    a, b = (load_checkpoint(run / "checkpoint.npz") for run in (straight, stopped))
    for key, value in a["model"].items():
        np.testing.assert_array_equal(b["model"][key], value, err_msg=key)
    for i, state in a["optimizer"]["state"].items():
        np.testing.assert_array_equal(
            b["optimizer"]["state"][i]["momentum_buffer"], state["momentum_buffer"]
        )

    capsys.readouterr()
    scores = {}
    for where in ("cuda", "cpu"):
        assert main(["eval", "--checkpoint", str(straight), "--device", where, "--json"]) == 0
        scores[where] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["cuda"]["test_acc"] == scores["cpu"]["test_acc"]
    assert scores["cuda"]["test_loss"] == pytest.approx(scores["cpu"]["test_loss"], rel=1e-4)


def test_predict_on_cuda(gpu, tmp_path, capsys):
    """`minires predict --device cuda` gives the top 5 of `--device cpu`."""
    from minires.cli import main

    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    image, weights = tmp_path / "noise.png", tmp_path / "r18.safetensors"
    Image.fromarray((rng.random((200, 300, 3)) * 255).astype(np.uint8)).save(image)
    mr.save_safetensors(mr.models.resnet18(), weights)
    top = {}
    for where in ("cpu", "cuda"):
        gpu.counts.reset()
        argv = [str(image), "--model", "resnet18", "--weights", str(weights), "--top", "6"]
        assert main(["predict", *argv, "--device", where, "--json"]) == 0
        top[where] = json.loads(capsys.readouterr().out)["top"]
    # The cuda run launched the network's kernels: 20 convolutions at least.
    assert gpu.counts.launches >= 20, gpu.counts.summary()
    probs = [t["probability"] for t in top["cpu"]]
    assert np.all(np.diff(probs) < -1e-4), probs  # an order float32 noise cannot change
    assert [t["index"] for t in top["cuda"]] == [t["index"] for t in top["cpu"]]
    np.testing.assert_allclose([t["probability"] for t in top["cuda"]], probs, rtol=1e-4)


# --------------------------------------------------------------------------
# The census script
# --------------------------------------------------------------------------


def test_census_counts_depend_on_the_structure_only(compiled, capsys):
    import gpu_census

    runs = []
    for batch, size in ((2, 8), (3, 12)):
        argv = ["--model", "resnet20", "--batch", str(batch), "--size", str(size)]
        assert gpu_census.main(argv) == 0
        output = capsys.readouterr().out
        assert "host syncs" in output and "layout copies" in output
        runs.append(json.loads(output.strip().splitlines()[-1]))
    keys = ("launches", "host_syncs", "layout_copies", "kernel_events", "cublas_events")
    assert all(runs[0][k] > 0 for k in ("launches", "kernel_events", "cublas_events"))
    assert runs[0]["host_syncs"] == runs[0]["layout_copies"] == 0
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert all(np.isfinite(run["loss"]) for run in runs)  # read after the counting
    assert runs[1]["bytes_moved"] > runs[0]["bytes_moved"]  # the images are larger


def test_census_of_a_resnet20_step(compiled):
    """What issue 16 asked of the GPU path, for the kernels' part: SGD in one
    launch, BatchNorm's ReLUs fused (only the 9 after a residual add remain),
    two launches per BatchNorm and direction, no layout copy, no host sync,
    the cross-entropy's mean in 4 launches forward (its kernel, the sums of
    the losses and of the rows' weights, the divide) and 2 backward (the
    mean's gradient, its kernel), and no more launches than measured when
    this was written (docs/benchmarks.md)."""
    import gpu_census

    args = gpu_census.parse_args(["--model", "resnet20", "--batch", "2", "--size", "8"])
    run = gpu_census.census(args)
    result, counts = run["result"], run["counts"]
    what = counts.by(*cupy_standin.counts.LAUNCH_KINDS, key="what")
    sites = counts.by(*cupy_standin.counts.LAUNCH_KINDS, key="site")
    assert what["sgd_step<float>"] == 1
    assert sum(n for site, n in sites.items() if "optim.py" in site.split(" < ")[0]) == 0
    assert what["relu_forward<float>"] == what["relu_backward<float>"] == 9
    for kernel in ("stats", "apply", "backward_reduce", "backward_apply"):
        assert what[f"batch_norm_{kernel}<float>"] == 19
    assert result["layout_copies"] == 0
    assert result["host_syncs"] == 0
    asked_by = Counter(site.split(" < ")[0].split(":")[1] for site in sites.elements())
    assert asked_by["CrossEntropyFunction.forward"] == 3
    assert asked_by["CrossEntropyFunction.backward"] == 1
    assert what["cross_entropy_forward<float>"] == what["cross_entropy_backward<float>"] == 1
    assert result["launches"] <= 250


# --------------------------------------------------------------------------
# The GPU test files themselves, run on the stand-in
# --------------------------------------------------------------------------

# A test of the GPU files that cannot pass on any device, found by running
# them here; strict, so that fixing it makes this list say so.
KNOWN_BROKEN_GPU_TESTS: dict[tuple[str, str, str, object], str] = {
    # (module, test, parameter, value): why
}


def _parametrizations(marks: list) -> list[dict]:
    combos: list[dict] = [{}]
    for mark in (m for m in marks if m.name == "parametrize"):
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        combos = [
            {**c, **dict(zip(names, v if len(names) > 1 else (v,)))} for c in combos for v in values
        ]
    return combos


def _label(value: object) -> str:
    return np.dtype(value).name if isinstance(value, type) else str(value)


def gpu_tests() -> list:
    """Every test marked ``gpu`` in the GPU test files, with each parametrization."""
    cases = []
    for module in (test_cuda_backend_gpu, test_gpu_end_to_end):
        module_marks = list(getattr(module, "pytestmark", []))
        for name, fn in vars(module).items():
            marks = [*getattr(fn, "pytestmark", []), *module_marks]
            if not name.startswith("test_") or not any(m.name == "gpu" for m in marks):
                continue
            for kwargs in _parametrizations(marks):
                label = "-".join(_label(v) for v in kwargs.values())
                test_id = f"{module.__name__}::{name}" + (f"[{label}]" if label else "")
                broken = [
                    why
                    for (mod, test, param, value), why in KNOWN_BROKEN_GPU_TESTS.items()
                    if (mod, test) == (module.__name__, name) and kwargs.get(param) == value
                ]
                xfail = pytest.mark.xfail(strict=True, reason=broken[0]) if broken else ()
                cases.append(pytest.param(fn, kwargs, id=test_id, marks=xfail))
    return cases


def test_every_gpu_test_is_collected():
    names = {p.values[0].__name__ for p in gpu_tests()}
    assert len(names) >= 14 and "test_resnet20_training_step_matches_the_cpu" in names


@pytest.mark.parametrize("test, kwargs", gpu_tests())
def test_the_gpu_tests_pass_on_the_standin(gpu, test, kwargs):
    """The GPU tests never run without a GPU: run here, their own code is tested too."""
    if "checks" in inspect.signature(test).parameters:
        kwargs = {
            **kwargs,
            "checks": BackendChecks(cuda_backend, Device(cuda_backend.to_gpu, cuda_backend.to_cpu)),
        }
    test(**kwargs)
