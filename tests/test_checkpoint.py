"""minires.checkpoint: exact round trips, atomic writes, damaged files, no pickle."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from minires.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
)


def _tree() -> dict:
    rng = np.random.default_rng(3)
    return {
        "model": {
            "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "bn1.num_batches_tracked": np.array(7, dtype=np.int64),
            "fc.bias": rng.standard_normal(5),  # float64
        },
        "optimizer": {
            "state": {0: {"momentum_buffer": np.full(3, 0.1, dtype=np.float32)}},
            "param_groups": [{"lr": 0.1 * 3, "momentum": 0.9, "nesterov": False, "params": [0]}],
        },
        "labels": np.arange(5, dtype=np.uint8),
        "mask": np.array([True, False]),
        "scalar32": np.float32(0.1),
        "big": 2**127 + 12345,
        "floats": [float("nan"), float("inf"), -0.0, 1e-310, 1 / 3],
        "text": "ünïcode ✓",
        "nothing": None,
        "nested": [[1, 2], {"a": (3, 4)}],
    }


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "c.npz"
    tree = _tree()
    save_checkpoint(path, tree)
    got = load_checkpoint(path)

    for key, arr in tree["model"].items():
        assert got["model"][key].dtype == arr.dtype
        assert got["model"][key].shape == arr.shape
        assert np.array_equal(got["model"][key], arr)
    # Dict keys come back as strings (JSON), and the optimizer accepts that.
    buf = got["optimizer"]["state"]["0"]["momentum_buffer"]
    assert buf.dtype == np.float32 and np.array_equal(buf, np.full(3, 0.1, np.float32))
    assert got["optimizer"]["param_groups"][0]["lr"] == 0.1 * 3  # bit-exact float
    assert got["optimizer"]["param_groups"][0]["nesterov"] is False
    assert np.array_equal(got["labels"], tree["labels"]) and got["labels"].dtype == np.uint8
    assert got["mask"].dtype == bool and got["mask"].tolist() == [True, False]
    # A NumPy scalar keeps its dtype (an np.float32 is not widened to a Python float).
    assert type(got["scalar32"]) is np.float32 and got["scalar32"] == np.float32(0.1)
    assert got["big"] == 2**127 + 12345
    nan, inf, negzero, tiny, third = got["floats"]
    assert np.isnan(nan) and inf == float("inf") and tiny == 1e-310 and third == 1 / 3
    assert np.copysign(1.0, negzero) == -1.0
    assert got["text"] == "ünïcode ✓" and got["nothing"] is None
    assert got["nested"] == [[1, 2], {"a": [3, 4]}]  # tuples come back as lists


def test_generator_state_resumes_the_same_stream(tmp_path):
    rng = np.random.default_rng(42)
    rng.random(10)
    save_checkpoint(tmp_path / "c.npz", {"rng": rng.bit_generator.state})
    expected = rng.random(5)

    restored = np.random.default_rng(0)
    restored.bit_generator.state = load_checkpoint(tmp_path / "c.npz")["rng"]
    assert np.array_equal(restored.random(5), expected)


def test_numpy_global_state_round_trip(tmp_path):
    np.random.seed(5)
    np.random.random(3)
    save_checkpoint(tmp_path / "c.npz", {"np": np.random.get_state(legacy=False)})
    expected = np.random.random(4)
    np.random.seed(0)
    np.random.set_state(load_checkpoint(tmp_path / "c.npz")["np"])
    assert np.array_equal(np.random.random(4), expected)


def test_files_are_plain_npy_members(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _tree())
    names = zipfile.ZipFile(path).namelist()
    assert "model/conv1.weight.npy" in names
    assert "optimizer/state/0/momentum_buffer.npy" in names
    assert "__meta__.npy" in names
    # Readable by plain NumPy, without pickle.
    with np.load(path, allow_pickle=False) as npz:
        assert npz["model/conv1.weight"].shape == (4, 3, 3, 3)


def test_save_refuses_what_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match="object array"):
        save_checkpoint(tmp_path / "c.npz", {"x": np.array([{}, 1], dtype=object)})
    with pytest.raises(TypeError, match="unsupported type"):
        save_checkpoint(tmp_path / "c.npz", {"x": {1, 2}})
    with pytest.raises(ValueError, match="'/'"):
        save_checkpoint(tmp_path / "c.npz", {"a/b": 1})
    assert not (tmp_path / "c.npz").exists()


# --------------------------------------------------------------------------- #
# Atomic writes
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, exc):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"epoch": 1, "w": np.ones(3)})
    before = path.read_bytes()

    def write(f):
        f.write(b"half a checkpoint")
        raise exc("killed while writing")

    with pytest.raises(exc):
        atomic_write(path, write)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    assert load_checkpoint(path)["epoch"] == 1


def test_overwrite_replaces_the_whole_file(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"epoch": 1, "w": np.zeros(1000)})
    save_checkpoint(path, {"epoch": 2})
    got = load_checkpoint(path)
    assert got == {"epoch": 2}
    assert os.listdir(tmp_path) == ["c.npz"]


# --------------------------------------------------------------------------- #
# Damaged and foreign files
# --------------------------------------------------------------------------- #


def _small_checkpoint(tmp_path) -> tuple[bytes, dict]:
    tree = {"model": {"w": np.arange(6, dtype=np.float32)}, "epoch": 3, "lr": 0.1}
    save_checkpoint(tmp_path / "good.npz", tree)
    return (tmp_path / "good.npz").read_bytes(), tree


def test_every_truncation_is_reported(tmp_path):
    raw, _ = _small_checkpoint(tmp_path)
    path = tmp_path / "t.npz"
    for n in range(0, len(raw), 3):
        path.write_bytes(raw[:n])
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_checkpoint(path)


def test_a_flipped_byte_is_reported_or_harmless(tmp_path):
    """Each byte flipped in turn: either a CheckpointError, or (bytes that carry
    no data, such as zip timestamps) exactly the saved values. Never a wrong
    value, never another exception."""
    raw, tree = _small_checkpoint(tmp_path)
    path = tmp_path / "f.npz"
    errors = 0
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x55
        path.write_bytes(bytes(damaged))
        try:
            got = load_checkpoint(path)
        except CheckpointError:
            errors += 1
            continue
        assert got["epoch"] == 3 and got["lr"] == 0.1
        assert got["model"]["w"].dtype == np.float32
        assert np.array_equal(got["model"]["w"], tree["model"]["w"])
    assert errors > len(raw) // 2  # the data bytes are covered by CRC-32


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.npz")


def test_foreign_npz_and_wrong_version(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a minires checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")

    meta = b'{"format": "minires-checkpoint", "version": 99, "tree": {}}'
    np.savez(tmp_path / "v99.npz", __meta__=np.frombuffer(meta, dtype=np.uint8))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "v99.npz")


class _Payload:
    """Unpickling this would create a file: the classic pickle exploit, harmless here."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickled_member_is_refused_and_never_run(tmp_path):
    target = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(target))
    meta = b'{"format": "minires-checkpoint", "version": 1, "tree": {"x": {"__array__": "x"}}}'
    buf = io.BytesIO()
    np.savez(buf, x=evil, __meta__=np.frombuffer(meta, dtype=np.uint8))  # pickles `evil`
    assert not target.exists()  # pickling did not run it
    (tmp_path / "evil.npz").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.npz")
    assert not target.exists()
    # (The same file *would* run the payload with pickle: proof the test means something.)
    with np.load(tmp_path / "evil.npz", allow_pickle=True) as npz:
        npz["x"]
    assert target.exists()
