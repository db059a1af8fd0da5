"""The CIFAR-10 reader against hostile, damaged and real-format files.

A batch is a pickle, and plain `pickle.load` runs whatever the file names. The
reader's restricted unpickler must build real-format batches exactly (as
Python 2 wrote them, as Python 3 writes them at every protocol, under both
NumPy module names), refuse every other global before it is imported or run,
and turn every damaged file into one DatasetFormatError naming the file.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import sys

import numpy as np
import pytest

from minires.cli import main
from minires.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_cifar10,
    load_cifar10_classes,
)
from minires.data.cifar import read_batch

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def batch_dict(data, labels):
    """A batch with the official structure: bytes keys, a uint8 array, a list of ints."""
    names = [f"img_{i}.png".encode() for i in range(len(labels))]
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": labels,
        b"data": data,
        b"filenames": names,
    }


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's cPickle wrote its str, which is how the official
    files store keys, file names and the array's raw pixels: BINSTRING opcodes,
    with no global (Python 3 at protocols 0-2 writes `_codecs.encode` instead)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def python2_pickle(obj) -> bytes:
    """`obj` pickled the way the official batches are: protocol 2, Python 2 str,
    NumPy 1's module name numpy.core.multiarray."""
    f = io.BytesIO()
    Python2Pickler(f, protocol=2).dump(obj)
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def python3_pickle(obj, protocol: int, numpy_module: str | None = None) -> bytes:
    """`obj` pickled by Python 3; `numpy_module` renames NumPy's package in the
    text GLOBAL opcodes of protocols 0-3 ("core" as NumPy 1 writes, "_core" as 2)."""
    raw = pickle.dumps(obj, protocol=protocol)
    if numpy_module is not None:
        assert protocol <= 3  # protocols 4+ store names length-prefixed, in frames
        for old in (b"cnumpy._core.", b"cnumpy.core."):
            raw = raw.replace(old, b"cnumpy." + numpy_module.encode() + b".")
    return raw


def globals_named(raw: bytes) -> set[str]:
    """The globals a protocol 0-3 pickle names (GLOBAL opcodes)."""
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}


def write_folder(tmp_path, dump, rows=3):
    """A complete cifar-10-batches-py folder whose six batches are pickled by `dump`."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in BATCHES:
        data = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=rows).tolist()
        (folder / name).write_bytes(dump(batch_dict(data, labels)))
        written[name] = (data, labels)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": rows}
    (folder / "batches.meta").write_bytes(dump(meta))
    return folder, written


def assert_loads_exactly(folder, written):
    x, y = load_cifar10(folder, "train", dtype=np.uint8)
    train = [written[name] for name in BATCHES[:5]]
    assert x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x.reshape(len(x), -1), np.concatenate([d for d, _ in train]))
    np.testing.assert_array_equal(y, sum((labels for _, labels in train), []))
    x, y = load_cifar10(folder, "test", dtype=np.uint8)
    np.testing.assert_array_equal(x.reshape(len(x), -1), written["test_batch"][0])
    np.testing.assert_array_equal(y, written["test_batch"][1])
    assert load_cifar10_classes(folder) == CLASSES


# --------------------------------------------------------------------------- #
# Real-format files load exactly
# --------------------------------------------------------------------------- #


def test_official_python2_format_loads_exactly(tmp_path):
    folder, written = write_folder(tmp_path, python2_pickle)
    raw = (folder / "data_batch_1").read_bytes()
    # What the official batches need, and nothing else: no _codecs, no builtins.
    assert raw.startswith(b"\x80\x02")
    assert globals_named(raw) == {
        "numpy.core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
    }
    assert_loads_exactly(folder, written)


@pytest.mark.parametrize(
    "protocol, numpy_module",
    [(p, m) for p in range(4) for m in ("core", "_core")] + [(4, None), (5, None)],
)
def test_python3_pickles_load_exactly(tmp_path, protocol, numpy_module):
    folder, written = write_folder(
        tmp_path, lambda obj: python3_pickle(obj, protocol, numpy_module)
    )
    assert_loads_exactly(folder, written)


@pytest.mark.parametrize("protocol", [2, 5])
def test_fortran_ordered_data_loads_exactly(tmp_path, protocol):
    data = np.asfortranarray(np.arange(2 * 3072).reshape(2, 3072).astype(np.uint8))
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch_dict(data, [3, 9]), protocol=protocol))
    x, y = read_batch(path)
    np.testing.assert_array_equal(x.reshape(2, -1), data)
    np.testing.assert_array_equal(y, [3, 9])


# --------------------------------------------------------------------------- #
# A hostile file runs nothing
# --------------------------------------------------------------------------- #


class Call:
    """Pickles as the call func(*args): what a doctored batch would contain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    """Ways a pickle can run code, each creating the file `marker` when run."""
    code = f"open({str(marker)!r}, 'w').close()"
    shell = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    return {
        "os.system": (Call(os.system, shell), os.system),
        "subprocess": (
            Call(subprocess.check_call, [sys.executable, "-c", code]),
            subprocess.check_call,
        ),
        "exec": (Call(builtins.exec, code), builtins.exec),
        "eval": (Call(builtins.eval, code), builtins.eval),
    }


def hostile_files(marker):
    """(name, raw bytes, refused global) for every payload inside an otherwise real
    batch at several protocols, plus a protocol-0 INST opcode written by hand."""
    files = []
    for kind, (payload, func) in payloads(marker).items():
        batch = batch_dict(payload, [0])
        for protocol in (0, 2, 4, 5):
            files.append(
                (f"{kind}-p{protocol}", pickle.dumps(batch, protocol=protocol), func.__name__)
            )
    shell = f"touch {shlex.quote(str(marker))}".encode()
    files.append(("INST os.system", b"(S'" + shell + b"'\nios\nsystem\n.", "system"))
    return files


HOSTILE = [name for name, _, _ in hostile_files("marker")]


@pytest.mark.parametrize("index", range(len(HOSTILE)), ids=HOSTILE)
def test_payloads_are_live_under_plain_pickle(tmp_path, index):
    """The control: plain pickle.loads does run each payload, so the test below
    proves something."""
    marker = tmp_path / "ran"
    _, raw, _ = hostile_files(marker)[index]
    pickle.loads(raw, encoding="bytes")
    assert marker.exists()


@pytest.mark.parametrize("index", range(len(HOSTILE)), ids=HOSTILE)
def test_hostile_batch_is_refused_and_runs_nothing(tmp_path, index):
    marker = tmp_path / "ran"
    folder, _ = write_folder(tmp_path, python2_pickle)
    name, raw, refused = hostile_files(marker)[index]
    (folder / "data_batch_1").write_bytes(raw)
    with pytest.raises(DatasetFormatError) as info:
        load_cifar10(folder, "train")
    assert not marker.exists()
    message = str(info.value)
    assert str(folder / "data_batch_1") in message
    assert f".{refused}, which a CIFAR-10 file never contains" in message
    assert "nothing was imported or run" in message


def test_hostile_meta_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    folder, _ = write_folder(tmp_path, python2_pickle)
    payload, _ = payloads(marker)["os.system"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": payload}, protocol=2))
    with pytest.raises(
        DatasetFormatError, match=rf"batches\.meta.*names {os.system.__module__}\.system"
    ):
        load_cifar10_classes(folder)
    assert not marker.exists()


def test_minires_train_on_a_hostile_folder_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder, _ = write_folder(tmp_path, python2_pickle)
    payload, _ = payloads(marker)["os.system"]
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch_dict(payload, [0]), protocol=2))
    argv = ["train", "--data", "cifar10", "--data-dir", str(folder), "--out", str(tmp_path / "run")]
    assert main([*argv, "--epochs", "1", "--progress", "none"]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "minires: error:" in err and "data_batch_1" in err and "system" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "module, name",
    [
        ("numpy", "load"),  # would unpickle another file with allow_pickle
        ("numpy", "fromfile"),
        ("numpy", "frombuffer"),
        ("numpy.testing._private.utils", "runstring"),  # exec in disguise
        ("numpy.core.multiarray", "scalar"),
        ("numpy.lib.npyio", "load"),
        ("builtins", "getattr"),
        ("__builtin__", "eval"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "decode"),
        ("pickle", "loads"),
        ("no_such_module_anywhere", "f"),  # refused by name, not by a failed import
    ],
)
def test_globals_off_the_allow_list_are_refused_by_name(tmp_path, module, name):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(DatasetFormatError, match=f"names {module}.{name}, which") as info:
        read_batch(path)
    assert "No module named" not in str(info.value)


def test_allowed_stand_ins_accept_only_what_a_batch_needs(tmp_path):
    path = tmp_path / "batch"
    # _codecs.encode is allowed for latin1 text only (how Python 3 pickles bytes).
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DatasetFormatError, match=r"refused _codecs\.encode\(str, 'rot13'\)"):
        read_batch(path)
    # bytes stands in for b"" only.
    path.write_bytes(b"\x80\x02c__builtin__\nbytes\nK\x05\x85R.")
    with pytest.raises(DatasetFormatError, match="TypeError"):
        read_batch(path)


# --------------------------------------------------------------------------- #
# A damaged file is one clear error, at load time
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dump", [python2_pickle, lambda obj: pickle.dumps(obj, protocol=2)])
def test_truncated_batch_is_a_format_error(tmp_path, dump):
    raw = dump(batch_dict(np.zeros((2, 3072), np.uint8), [1, 2]))
    ends = {pos for _, _, pos in pickletools.genops(raw)} | {len(raw) // 2, len(raw) - 1}
    path = tmp_path / "data_batch_1"
    for end in sorted(ends):
        path.write_bytes(raw[:end])
        with pytest.raises(DatasetFormatError, match="is not a readable CIFAR-10 pickle") as info:
            read_batch(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"<html><body>404 Not Found</body></html>",
        b"\x1f\x8b\x08\x00 a tar.gz",
        b"\x80\x02}q\x00(K\x01",
    ],
)
def test_garbage_file_is_a_format_error(tmp_path, content):
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(DatasetFormatError, match=r"test_batch' is not a readable CIFAR-10 pickle"):
        read_batch(path)


def bad_batch(tmp_path, obj):
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_pickle(obj))
    return path


ROW = np.zeros((1, 3072), np.uint8)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([ROW, [0]], r"should be a pickled dict with keys b'data' and b'labels', got a list"),
        ({b"data": ROW}, r"b'labels' missing \(keys: b'data'\)"),
        ({b"labels": [0], b"pixels": ROW}, r"b'data' missing \(keys: b'labels', b'pixels'\)"),
        (
            batch_dict(ROW.astype(np.float32), [0]),
            r"b'data' should be uint8 of shape \(N, 3072\), got float32 \(1, 3072\)",
        ),
        (batch_dict(ROW.astype(object), [0]), r"got object \(1, 3072\)"),
        (batch_dict(ROW.reshape(1, 3, 32, 32), [0]), r"got uint8 \(1, 3, 32, 32\)"),
        (batch_dict(ROW.ravel(), [0]), r"got uint8 \(3072,\)"),
        (batch_dict(ROW.tolist(), [0]), r"got list"),
        (
            batch_dict(ROW, [0, 1]),
            r"should be 1 integers \(one per row of b'data'\), got int64 of shape \(2,\)",
        ),
        (batch_dict(np.zeros((2, 3072), np.uint8), [0]), r"should be 2 integers .* shape \(1,\)"),
        (batch_dict(ROW, [0.5]), r"got float64 of shape \(1,\)"),
        (batch_dict(ROW, [b"cat"]), r"got \|S3 of shape \(1,\)"),
        (batch_dict(ROW, [[0], [1, 2]]), r"b'labels' is not a list of integers"),
        (
            batch_dict(np.zeros((3, 3072), np.uint8), [0, 11, 12]),
            r"label 11 at index 1 is outside 0\.\.9 \(2 such labels\)",
        ),
        (batch_dict(ROW, [-1]), r"label -1 at index 0 is outside 0\.\.9"),
    ],
)
def test_wrong_content_is_a_format_error_naming_the_file(tmp_path, obj, message):
    path = bad_batch(tmp_path, obj)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_batch(path)
    assert str(info.value).startswith(f"load_cifar10: {str(path)!r}: ")


def test_out_of_range_label_stops_loading_not_training(tmp_path):
    folder, written = write_folder(tmp_path, python2_pickle)
    data, labels = written["data_batch_4"]
    (folder / "data_batch_4").write_bytes(python2_pickle(batch_dict(data, [*labels[:-1], 10])))
    with pytest.raises(DatasetFormatError, match=r"data_batch_4'.*label 10 at index 2"):
        load_cifar10(folder)


def test_bad_meta_is_a_format_error(tmp_path):
    folder, _ = write_folder(tmp_path, python2_pickle)
    for meta in ({b"names": []}, {b"label_names": [b"cat"] * 9}, [b"cat"] * 10):
        (folder / "batches.meta").write_bytes(python2_pickle(meta))
        with pytest.raises(DatasetFormatError, match=r"batches\.meta' should be a pickled dict"):
            load_cifar10_classes(folder)


def test_missing_files_name_the_path(tmp_path):
    folder, _ = write_folder(tmp_path, python2_pickle)
    with pytest.raises(DatasetNotFoundError, match=r"nowhere' does not exist"):
        read_batch(folder / "nowhere")
    (folder / "batches.meta").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"these are missing: batches\.meta\. "):
        load_cifar10(folder)
    with pytest.raises(FileNotFoundError, match=r"batches\.meta"):
        load_cifar10_classes(folder)


def test_format_error_is_a_value_error_exported_from_minires_data():
    import minires.data

    assert issubclass(DatasetFormatError, ValueError)
    assert minires.data.DatasetFormatError is DatasetFormatError
    assert "DatasetFormatError" in minires.data.__all__
