"""What the stand-in counts, and where in minires each count comes from.

Every call that would make a real GPU do something is recorded as one
*event* of a kind, with what it was (a kernel's name, a ufunc's, a function's)
and the *site*: the first Python frame outside the stand-in that asked for it
(``minires/optim.py:SGD.step``), so that a census can say who is responsible.

The kinds, and the CuPy behaviour each one models:

    kernel       one launch of a kernel of ours (kernels/*.cu, RawModule/RawKernel)
    elementwise  one launch of a CuPy elementwise kernel: a ufunc, an operator,
                 astype, a fancy-index gather or scatter, cupyx.scatter_add
    reduction    one launch of a CuPy reduction kernel (sum, mean, max, argmax...)
    copy         one device-to-device copy kernel (copy(), a copying asarray or
                 ascontiguousarray, an implicit copy in reshape or matmul)
    fill         filling memory: zeros (a memset), ones, full, fill()
    cublas       one cuBLAS call (matmul, dot, the @ operator)
    h2d, d2h     host-to-device / device-to-host copies (their bytes are summed)
    sync         the host waits for the GPU: .get(), asnumpy, item(), float(),
                 int(), bool(), printing a device array, a boolean-mask index,
                 Device().synchronize()
    layout_copy  a copy made only to change the memory layout (ascontiguousarray
                 that copies, reshape that cannot be a view, a matmul operand
                 that is neither C- nor F-contiguous); each is also a ``copy``
    nccl         one NCCL call (cupy.cuda.nccl, nccl.py): a collective, which
                 NCCL runs as a kernel on the stream, or making a communicator;
                 the bytes of the collectives (one rank's buffer) are summed

``launches`` is the sum of the kinds a GPU runs as kernels (LAUNCH_KINDS):
every CuPy call pays a launch's overhead (~5-10 us of host time), which is
what a launch count is for. A memset is counted among them: it is a stream
operation with the same cost. The model is deliberately simple: where CuPy
may use two kernels for one call (a large reduction, var), it counts one.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAUNCH_KINDS = ("kernel", "elementwise", "reduction", "copy", "fill", "cublas")
KINDS = (*LAUNCH_KINDS, "h2d", "d2h", "sync", "layout_copy", "nccl")

_PACKAGE = str(Path(__file__).resolve().parent)
_REPO = Path(__file__).resolve().parents[2]


@functools.cache
def _short(filename: str) -> str:
    path = Path(filename)
    try:
        return path.resolve().relative_to(_REPO).as_posix()
    except ValueError:
        return path.name


def _outside(frame: Any) -> Any:
    """The first frame from ``frame`` outwards that is neither the stand-in's nor NumPy's."""
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or "/numpy/" in frame.f_code.co_filename
    ):
        frame = frame.f_back
    return frame


def _name(frame: Any) -> str:
    code = frame.f_code
    return f"{_short(code.co_filename)}:{getattr(code, 'co_qualname', code.co_name)}"


def site() -> str:
    """Who asked: ``file:function < calling file:function``, outside the stand-in.

    Two frames, because the first is often a helper (``_launch``,
    ``to_channel_major``) and its caller says which op it worked for.
    """
    frame = _outside(sys._getframe(1))
    if frame is None:
        return "?"
    caller = _outside(frame.f_back)
    return _name(frame) + ("" if caller is None else f" < {_name(caller)}")


@dataclass
class Counts:
    """Events by (kind, what, site), and the bytes copied between host and device."""

    events: Counter = field(default_factory=Counter)
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    nccl_bytes: int = 0

    def add(self, kind: str, what: str, nbytes: int = 0) -> None:
        assert kind in KINDS, kind
        self.events[(kind, what, site())] += 1
        if kind == "h2d":
            self.h2d_bytes += int(nbytes)
        elif kind == "d2h":
            self.d2h_bytes += int(nbytes)
        elif kind == "nccl":
            self.nccl_bytes += int(nbytes)

    def reset(self) -> None:
        self.events.clear()
        self.h2d_bytes = self.d2h_bytes = self.nccl_bytes = 0

    def total(self, *kinds: str) -> int:
        return sum(n for (k, _, _), n in self.events.items() if k in kinds)

    def by(self, *kinds: str, key: str = "what") -> Counter:
        """Counts of the given kinds grouped by "what", "site" or "both"."""
        grouped: Counter = Counter()
        for (k, what, where), n in self.events.items():
            if k in kinds:
                grouped[{"what": what, "site": where, "both": f"{what} @ {where}"}[key]] += n
        return grouped

    @property
    def launches(self) -> int:
        return self.total(*LAUNCH_KINDS)

    @property
    def host_syncs(self) -> int:
        return self.total("sync")

    @property
    def layout_copies(self) -> int:
        return self.total("layout_copy")

    @property
    def bytes_moved(self) -> int:
        return self.h2d_bytes + self.d2h_bytes

    def summary(self) -> dict[str, Any]:
        """The headline numbers, one per kind, as a flat dict (JSON-ready)."""
        out: dict[str, Any] = {
            "launches": self.launches,
            "host_syncs": self.host_syncs,
            "layout_copies": self.layout_copies,
            "bytes_moved": self.bytes_moved,
        }
        for kind in KINDS:
            out.setdefault(f"{kind}_events", self.total(kind))
        out["h2d_bytes"], out["d2h_bytes"] = self.h2d_bytes, self.d2h_bytes
        out["nccl_bytes"] = self.nccl_bytes
        return out

    def snapshot(self) -> Counts:
        return Counts(Counter(self.events), self.h2d_bytes, self.d2h_bytes, self.nccl_bytes)


# The counts of the stand-in now installed (install() replaces it).
CURRENT = Counts()


def record(kind: str, what: str, nbytes: int = 0) -> None:
    """Add one event to the counts of the stand-in now installed."""
    CURRENT.add(kind, what, nbytes)
