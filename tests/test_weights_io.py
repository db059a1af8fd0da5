"""minires.weights: PyTorch .pth files read without PyTorch and without running code,
safetensors both ways, and a whole ResNet-18 that computes what torch computes.

PyTorch writes the files here (torch.save, safetensors.torch); minires reads
them with NumPy alone, and torch.load(weights_only=True) is the reference for
what each tensor holds.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import minires as mr
from minires.weights import UnsafePickleError, WeightsError

torch = pytest.importorskip("torch")


# --------------------------------------------------------------------------- #
# A torchvision-layout ResNet-18 in plain torch (torchvision may be missing)
# --------------------------------------------------------------------------- #


class _Basic(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet18(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if i == 1 else 2
            setattr(
                self, f"layer{i}", nn.Sequential(_Basic(cin, cout, stride), _Basic(cout, cout, 1))
            )
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _torch_resnet18(dtype) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (not 0 and 1), in eval mode."""
    torch.manual_seed(0)
    model = _TorchResNet18().to(dtype).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(1234)
            elif name.endswith("running_var") or (t.dim() == 1 and name.endswith("weight")):
                t.uniform_(0.5, 1.5)  # a BatchNorm variance or scale: positive
            elif name.endswith(("running_mean", "bias")):
                t.normal_(0, 0.1)
    return model


def _odd_layouts(state: dict) -> OrderedDict:
    """The same values, saved as views: transposed, sliced from one shared storage
    at offsets, channels-last, strided; so the reader must honour offset and stride."""
    odd = OrderedDict(state)
    odd["fc.weight"] = state["fc.weight"].t().contiguous().t()  # a transpose
    shared = [k for k in state if k.startswith("layer1") and k.endswith((".bias", "running_mean"))]
    buffer = torch.cat([state[k] for k in shared])
    start = 0
    for k in shared:  # slices of one storage, each at its own offset
        n = state[k].numel()
        odd[k] = buffer[start : start + n]
        start += n
    odd["conv1.weight"] = state["conv1.weight"].contiguous(memory_format=torch.channels_last)
    w = state["layer2.0.conv1.weight"]
    odd["layer2.0.conv1.weight"] = torch.stack([w, -w], dim=-1)[..., 0]  # last stride 2
    assert not odd["fc.weight"].is_contiguous() and odd["layer1.0.bn1.bias"].storage_offset() == 0
    assert odd["layer1.1.bn2.running_mean"].storage_offset() > 0
    assert not odd["conv1.weight"].is_contiguous()
    assert odd["layer2.0.conv1.weight"].stride()[-1] == 2
    return odd


def _forward_minires(model, x: np.ndarray) -> np.ndarray:
    with mr.no_grad():
        return np.asarray(model(mr.tensor(x)).data)


def _compare(got, ref) -> None:
    if isinstance(ref, torch.Tensor):
        want = ref.detach().resolve_conj().resolve_neg()
        want = want.float() if want.dtype == torch.bfloat16 else want
        assert isinstance(got, np.ndarray), type(got)
        assert got.dtype == want.numpy().dtype and got.shape == tuple(want.shape)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, want.numpy())
    elif isinstance(ref, dict):
        assert isinstance(got, dict) and list(got) == list(ref)
        for k in ref:
            _compare(got[k], ref[k])
    elif isinstance(ref, (list, tuple)):
        assert type(got) is type(ref) and len(got) == len(ref)
        for a, b in zip(got, ref):
            _compare(a, b)
    else:
        assert got == ref and type(got) is type(ref)


# --------------------------------------------------------------------------- #
# The whole model: torch.save -> minires (no torch) -> same outputs as torch
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_resnet18_from_torch_save_computes_what_torch_computes(tmp_path, zip_format):
    net = _torch_resnet18(torch.float64)
    odd = _odd_layouts(net.state_dict())
    path = tmp_path / "resnet18.pth"
    torch.save(odd, path, _use_new_zipfile_serialization=zip_format)
    if zip_format:  # the shared buffer is one storage: fewer storages than tensors
        members = zipfile.ZipFile(path).namelist()
        assert len([m for m in members if "/data/" in m]) < len(odd)

    state = mr.load(path)
    _compare(state, odd)
    model = mr.models.resnet18().to(np.float64).eval()
    assert list(model.state_dict()) == list(state)  # torchvision's names, in its order
    result = model.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys

    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64))
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = _forward_minires(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.isfinite(want).all() and np.abs(want).max() > 0.1  # real numbers compared


def test_a_training_checkpoint_in_float32(tmp_path):
    """{"state_dict": ..., "epoch": ..., "optimizer": ...} as a training script saves it,
    with DataParallel's "module." prefix; loaded bit-exact into a float32 model."""
    net = _torch_resnet18(torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net(torch.randn(1, 3, 32, 32)).sum().backward()  # one step: momentum buffers to save
    opt.step()
    state = OrderedDict(("module." + k, v) for k, v in _odd_layouts(net.state_dict()).items())
    ckpt = {
        "state_dict": state,
        "epoch": 3,
        "best_acc1": 71.25,
        "arch": "resnet18",
        "optimizer": opt.state_dict(),
        "notes": [None, True, (1, 2.5)],
    }
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)

    got = mr.load_pth(path)
    _compare(got, ckpt)  # nested plain Python values, tensors as arrays
    assert got["epoch"] == 3 and got["optimizer"]["param_groups"][0]["momentum"] == 0.9

    sd = mr.state_dict_from(got, strip_prefix="module.")
    model = mr.models.resnet18().eval()
    model.load_state_dict(sd)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v.numpy())  # bit-exact
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.isfinite(want).all() and np.abs(want).max() > 0.1
    np.testing.assert_allclose(_forward_minires(model, x), want, rtol=1e-4, atol=1e-4)


def test_state_dict_from_picks_explains_and_strips():
    a = np.zeros(2)
    assert mr.state_dict_from({"w": a})["w"] is a
    assert list(mr.state_dict_from({"model": {"w": a}, "epoch": 1})) == ["w"]
    assert list(mr.state_dict_from({"m": {"w": a}, "ema": {"v": a}}, key="ema")) == ["v"]
    with pytest.raises(ValueError, match=r"several \(\['m', 'ema'\]\): choose one with key="):
        mr.state_dict_from({"m": {"w": a}, "ema": {"v": a}})
    with pytest.raises(ValueError, match="none"):
        mr.state_dict_from({"epoch": 3})
    with pytest.raises(ValueError, match="no entry 'model'"):
        mr.state_dict_from({"epoch": 3}, key="model")
    assert list(mr.state_dict_from({"module.w": a, "v": a}, strip_prefix="module.")) == ["w", "v"]
    with pytest.raises(ValueError, match="makes two names one"):
        mr.state_dict_from({"module.w": a, "w": a}, strip_prefix="module.")


# --------------------------------------------------------------------------- #
# Every layout and dtype torch writes
# --------------------------------------------------------------------------- #


def _tensors() -> dict:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 6, generator=g)
    z = torch.randn(3, generator=g, dtype=torch.complex64)
    return {
        "contiguous": base,
        "transposed": base.t(),
        "offset_slice": base[1:3, 2:],
        "step_slice": base[::2, ::3],
        "expanded": torch.randn(3, 1, generator=g).expand(3, 5),  # stride 0
        "as_strided": base.as_strided((3, 3), (1, 5), 2),  # overlapping windows
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "neg_view": base._neg_view(),
        "conj_view": z.conj(),
        "float16": base.half(),
        "bfloat16": base.bfloat16(),  # widened to float32, exactly
        "int64": torch.arange(-3, 3),
        "int32": torch.arange(6, dtype=torch.int32).reshape(2, 3).t(),
        "int16": torch.arange(4, dtype=torch.int16),
        "int8": torch.arange(-2, 2, dtype=torch.int8),
        "uint8": torch.arange(4, dtype=torch.uint8),
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.uint16),  # _rebuild_tensor_v3
        "uint32": torch.tensor([0, 1, 2**32 - 1], dtype=torch.uint32),
        "bool": torch.tensor([True, False, True]),
        "complex128": torch.randn(2, generator=g, dtype=torch.complex128),
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
        "plain": {"epoch": 7, "lr": 0.1, "name": "résumé", "none": None, "seq": [1, (2, 3.5)]},
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_every_layout_and_dtype_matches_torch_load(tmp_path, zip_format):
    tensors = _tensors()
    if not zip_format:  # the legacy format predates these dtypes
        for k in ("uint16", "uint32"):
            del tensors[k]
    path = tmp_path / "t.pt"
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
    got = mr.load_pth(path)
    _compare(got, torch.load(path, weights_only=True))
    assert got["bfloat16"].dtype == np.float32
    np.testing.assert_array_equal(got["bfloat16"], tensors["bfloat16"].float().numpy())


def test_a_bare_tensor_and_big_endian_files(tmp_path):
    path = tmp_path / "one.pt"
    t = torch.arange(6.0).reshape(2, 3).t()
    torch.save(t, path)
    np.testing.assert_array_equal(mr.load_pth(path), t.numpy())

    # The same file as a big-endian machine writes it: byteorder "big", storages swapped.
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(info, data)
    got = mr.load_pth(big)
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, t.numpy())


def test_float8_is_refused_by_name(tmp_path):
    path = tmp_path / "f8.pt"
    torch.save({"w": torch.zeros(2, dtype=torch.float8_e4m3fn)}, path)
    with pytest.raises(UnsafePickleError, match=r"f8.pt.*float8_e4m3fn.*no NumPy equivalent"):
        mr.load_pth(path)


# --------------------------------------------------------------------------- #
# Hostile files run nothing
# --------------------------------------------------------------------------- #


class _Evil:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil(_Evil):
    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _as_torch_zip(path: Path, pickled: bytes, name: str = "archive") -> None:
    """A zip laid out as torch.save lays it out, with `pickled` as its data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/data.pkl", pickled)
        z.writestr(f"{name}/byteorder", b"little")
        z.writestr(f"{name}/version", b"3\n")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("evil", [_Evil, _EvalEvil])
def test_a_hostile_pth_runs_nothing(tmp_path, protocol, evil):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": {"w": evil(marker)}}, protocol=protocol)
    # The payload works: plain pickle would run it.
    probe = tmp_path / "probe"
    pickle.loads(payload.replace(str(marker).encode(), str(probe).encode()))
    assert probe.exists()

    for path in (tmp_path / "zip.pth", tmp_path / "legacy.pth"):
        if path.name == "zip.pth":
            _as_torch_zip(path, payload)
        else:
            # the legacy format starts with a PROTO opcode, which protocols 0-1 lack
            path.write_bytes(payload if protocol >= 2 else b"\x80\x02" + payload)
        with pytest.raises(
            UnsafePickleError,
            match=r"refused to load (posix|os|builtins|__builtin__)\.(system|eval)",
        ):
            mr.load(path)
        assert not marker.exists()


def _torch_like_pickle(pieces: list) -> bytes:
    """A data.pkl from raw opcodes, for what torch itself never writes."""
    return b"\x80\x02" + b"".join(pieces) + b"."


@pytest.mark.parametrize(
    "body, why",
    [
        # NEWOBJ on an allowed class: refused as an opcode, whatever the class.
        (b"ccollections\nOrderedDict\n)\x81", "NEWOBJ"),
        # BUILD on the OrderedDict class itself (not an instance): could set attributes.
        (b"ccollections\nOrderedDict\n}(X\x01\x00\x00\x00xK\x01ub", "sets the state of a type"),
        # BUILD on an allowed stand-in function.
        (b"ctorch._utils\n_rebuild_parameter\n}b", "sets the state of a method"),
        # INST names a class through find_class: refused there or as an opcode.
        (b"(iposix\nsystem\n", "refused"),
        # the extension registry is another way to name a global
        (b"\x82\x01", "EXT1"),
    ],
    ids=["newobj", "build-class", "build-function", "inst", "ext1"],
)
def test_opcodes_beyond_a_state_dict_are_refused(tmp_path, body, why):
    path = tmp_path / "x.pth"
    _as_torch_zip(path, _torch_like_pickle([body]))
    with pytest.raises(UnsafePickleError, match=why):
        mr.load_pth(path)


class _FakeStorage:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _FakeTensor:
    """Pickles as torch pickles a tensor, with whatever offset, size and stride."""

    def __init__(self, storage, offset, size, stride) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


def _crafted(path: Path, tensor: _FakeTensor, storage_bytes: bytes) -> None:
    buf = io.BytesIO()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
            return None

    P(buf, protocol=2).dump({"w": tensor})
    _as_torch_zip(path, buf.getvalue())
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("archive/data/0", storage_bytes)


@pytest.mark.parametrize(
    "offset, size, stride, numel, match",
    [
        (0, (2, 3), (3, 1), 6, None),  # the honest one
        (1, (2, 3), (3, 1), 6, "reaches element 6 of a storage of 6"),
        (0, (1000,), (1,), 6, "reaches element 999"),
        (0, (2, 3), (3, 10**6), 6, "reaches element"),
        (0, (2, 3), (3, -1), 6, "malformed tensor"),
        (-1, (2,), (1,), 6, "malformed tensor"),
        (0, (2, 3), (3,), 6, "malformed tensor"),
        (0, (2, 3), (3, 1), 7, "holds 24 bytes, not 7 elements"),
    ],
)
def test_a_tensor_outside_its_storage_is_refused(tmp_path, offset, size, stride, numel, match):
    path = tmp_path / "t.pth"
    _crafted(
        path,
        _FakeTensor(_FakeStorage(numel), offset, size, stride),
        np.arange(6, dtype="<f4").tobytes(),
    )
    if match is None:
        np.testing.assert_array_equal(mr.load_pth(path)["w"], np.arange(6.0).reshape(2, 3))
    else:
        with pytest.raises(WeightsError, match=match):
            mr.load_pth(path)


# --------------------------------------------------------------------------- #
# Damaged and foreign files
# --------------------------------------------------------------------------- #


def _small_pth(tmp_path) -> Path:
    path = tmp_path / "small.pth"
    torch.save({"w": torch.arange(64.0).reshape(8, 8), "b": torch.ones(8)}, path)
    return path


def test_every_truncation_is_reported_naming_the_file(tmp_path):
    data = _small_pth(tmp_path).read_bytes()
    cut = tmp_path / "cut.pth"
    for n in range(0, len(data), 37):
        cut.write_bytes(data[:n])
        with pytest.raises(WeightsError, match="cut.pth"):
            mr.load_pth(cut)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(64.0)}, legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    for n in range(1, len(data), 13):
        cut.write_bytes(data[:n])
        with pytest.raises(WeightsError, match="cut.pth"):
            mr.load_pth(cut)


def test_a_corrupt_storage_is_caught_by_its_crc(tmp_path):
    path = _small_pth(tmp_path)
    data = bytearray(path.read_bytes())
    data[data.index(np.arange(64, dtype="<f4").tobytes()) + 5] ^= 0xFF  # inside storage "0"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"small.pth.*(CRC|corrupt)"):
        mr.load_pth(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script and save
def test_foreign_files_are_named_and_explained(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(WeightsError, match="notes.pth: not a file written by torch.save"):
        mr.load(text)
    other_zip = tmp_path / "other.pth"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(WeightsError, match="other.pth: a zip file, but not one written by torch"):
        mr.load(other_zip)
    script = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)
    with pytest.raises(WeightsError, match="TorchScript"):
        mr.load(script)
    old = tmp_path / "old.pth"
    with tarfile.open(old, "w") as tar:
        tar.add(text, arcname="pickle")
    with pytest.raises(WeightsError, match="old.pth: the tar format of early PyTorch"):
        mr.load(old)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        mr.load(tmp_path / "missing.pth")


def test_load_reads_minires_checkpoints_too(tmp_path):
    from minires.checkpoint import save_checkpoint

    model = mr.models.resnet20()
    save_checkpoint(tmp_path / "c.npz", {"model": model.state_dict(), "epoch": 2})
    sd = mr.state_dict_from(mr.load(tmp_path / "c.npz"))
    mr.models.resnet20().load_state_dict(sd)


# --------------------------------------------------------------------------- #
# safetensors
# --------------------------------------------------------------------------- #


def test_safetensors_round_trip_from_minires(tmp_path):
    pytest.importorskip("safetensors")
    model = mr.models.resnet18()
    model.state_dict()["bn1.running_mean"][:] = np.linspace(-1, 1, 64)
    path = tmp_path / "r18.safetensors"
    mr.save_safetensors(model, path, metadata={"arch": "resnet18"})
    got = mr.load(path)
    want = model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
    fresh = mr.models.resnet18()
    fresh.load_state_dict(mr.load_safetensors(path))
    assert np.array_equal(
        fresh.state_dict()["bn1.running_mean"], np.linspace(-1, 1, 64, dtype=np.float32)
    )

    # A dict of arrays, Tensors and non-contiguous views goes the same way.
    a = np.arange(12.0).reshape(3, 4)
    mr.save_safetensors({"t": a.T, "x": mr.tensor(a[:, ::2])}, path)
    got = mr.load_safetensors(path)
    np.testing.assert_array_equal(got["t"], a.T)
    np.testing.assert_array_equal(got["x"], a[:, ::2])


def test_safetensors_written_by_torch(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    net = _torch_resnet18(torch.float32)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "torch.safetensors"
    st.save_file(sd, path)
    model = mr.models.resnet18().eval()
    model.load_state_dict(mr.load(path))
    for k, v in sd.items():
        np.testing.assert_array_equal(model.state_dict()[k], v.numpy())

    tensors = {
        "bf16": torch.randn(5, 3).bfloat16(),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "f16": torch.randn(2).half(),
        "b": torch.tensor([True, False]),
    }
    st.save_file(tensors, path)
    got = mr.load_safetensors(path)
    assert got["bf16"].dtype == np.float32
    np.testing.assert_array_equal(got["bf16"], tensors["bf16"].float().numpy())
    for k in ("u16", "f16", "b"):
        np.testing.assert_array_equal(got[k], tensors[k].numpy())
    st.save_file({"f8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, path)
    with pytest.raises(WeightsError, match="F8_E4M3, which NumPy lacks"):
        mr.load_safetensors(path)


def test_safetensors_damage_and_refusals(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    mr.save_safetensors({"w": np.ones((3, 3), np.float32)}, path)
    good = path.read_bytes()
    for n in (0, 5, 9, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:n])
        with pytest.raises(WeightsError, match="w.safetensors"):
            mr.load_safetensors(path)

    # A failed write leaves the old file whole, and no temporary file behind.
    path.write_bytes(good)
    with pytest.raises(TypeError, match="'bad' is a str, not an array"):
        mr.save_safetensors({"w": np.zeros(2), "bad": "text"}, path)
    with pytest.raises(TypeError, match="dtype object"):
        mr.save_safetensors({"w": np.array([None])}, path)
    with pytest.raises(TypeError, match="metadata must map strings"):
        mr.save_safetensors({"w": np.zeros(2)}, path, metadata={"epoch": 3})
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["w.safetensors"]


def test_safetensors_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the old file whole and no temporary file."""
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    mr.save_safetensors({"w": np.ones(3)}, path)
    good = path.read_bytes()

    def disk_full(fd):  # the bytes are in the temporary file; making them durable fails
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        mr.save_safetensors({"w": np.zeros(3)}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["w.safetensors"]


def test_gpu_arrays_are_copied_to_the_host(tmp_path):
    """save_safetensors asks minires.backends.device for host copies (no CuPy needed here:
    a stand-in with CuPy's module name and its explicit `.get()`)."""
    pytest.importorskip("safetensors")
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    FakeCupy = type("ndarray", (), {"__module__": "cupy._core.core", "get": lambda self: host})
    path = tmp_path / "gpu.safetensors"
    mr.save_safetensors({"w": FakeCupy()}, path)
    np.testing.assert_array_equal(mr.load_safetensors(path)["w"], host)


def test_import_minires_loads_neither_torch_nor_safetensors():
    code = "import sys, minires; print([m for m in ('torch', 'safetensors') if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(Path(mr.__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
