"""Weights in the formats people hold them: safetensors and PyTorch .pth / .pt files.

    model = mr.models.resnet18()
    model.load_state_dict(mr.load("resnet18-f37072fd.pth"))     # torchvision's file
    model.load_state_dict(mr.load("model.safetensors"))
    mr.save_safetensors(model, "mine.safetensors")               # atomic

    ckpt = mr.load("checkpoint.pth")          # {"state_dict": {...}, "epoch": 90, ...}
    model.load_state_dict(mr.state_dict_from(ckpt, strip_prefix="module."))

``mr.load`` reads what ``torch.load`` reads (and safetensors files, and
minires's own ``.npz`` checkpoints), tells the format from the file's first
bytes, and returns the same structure with NumPy arrays for tensors. It needs
neither PyTorch nor trust in the file: a ``.pth`` file's pickle is read by a
restricted unpickler (``restricted_pickle.py``) that refuses, by name, every
object a dict of tensors does not need, so a hostile file runs nothing.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint
from .common import UnsafePickleError, WeightsError
from .pth import load_pth
from .restricted_pickle import ALLOW_LIST
from .safetensors_io import load_safetensors, save_safetensors

__all__ = [
    "ALLOW_LIST",
    "UnsafePickleError",
    "WeightsError",
    "load",
    "load_pth",
    "load_safetensors",
    "save_safetensors",
    "state_dict_from",
]


def load(path: str | Path) -> Any:
    """Read a weights file of any format minires knows, told apart by its first bytes.

    - a safetensors file: ``load_safetensors`` (a dict of arrays);
    - a file from ``torch.save`` (zip or legacy): ``load_pth`` (what torch.load
      returns, tensors as arrays);
    - a minires checkpoint (``.npz``): ``mr.checkpoint.load_checkpoint``.
    """
    path = Path(path)
    with open(path, "rb") as f:  # FileNotFoundError names the file
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte header length, then JSON
        return load_safetensors(path)
    if head[:4] == b"PK\x03\x04" and _is_npz_checkpoint(path):
        return load_checkpoint(path)
    return load_pth(path)


def _is_npz_checkpoint(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return "__meta__.npy" in z.namelist()
    except zipfile.BadZipFile:
        return False  # load_pth says what is wrong with it


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def state_dict_from(
    obj: Any, key: str | None = None, strip_prefix: str | None = None
) -> dict[str, np.ndarray]:
    """The flat ``{name: array}`` dict inside what ``load`` returned.

    ``obj`` itself when it is one; else ``obj[key]``; else the one value of
    ``obj`` that is such a dict (as ``{"state_dict": ..., "epoch": 3}`` or
    ``{"model": ..., "optimizer": ...}`` hold). Several candidates, or none,
    raise a ValueError that lists them. ``strip_prefix``: removed from every
    name that starts with it ("module." for a model saved in DataParallel).
    """
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"state_dict_from: no entry {key!r} (has: {keys})")
        obj = obj[key]
    if not _is_state_dict(obj):
        found = [k for k, v in obj.items() if _is_state_dict(v)] if isinstance(obj, Mapping) else []
        if len(found) != 1:
            where = list(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
            problem = f"several ({found}): choose one with key=" if found else "none"
            raise ValueError(f"state_dict_from: looked for a dict of arrays in {where}: {problem}")
        obj = obj[found[0]]
    if not strip_prefix:
        return dict(obj)
    n = len(strip_prefix)
    state = {(k[n:] if k.startswith(strip_prefix) else k): v for k, v in obj.items()}
    if len(state) != len(obj):
        raise ValueError(f"state_dict_from: removing {strip_prefix!r} makes two names one")
    return state
