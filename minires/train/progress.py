"""Progress of an epoch: a tqdm bar on a terminal, else a text line every few seconds.

tqdm is imported only here, and only when a bar is asked for.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """One epoch's progress: a tqdm bar on a terminal, else a text line every few seconds.

    mode: "auto" (a bar when tqdm is installed and stderr is a terminal, else
    text), "bar", "text", or "none".
    """

    def __init__(self, mode: str = "auto", every_s: float = 10.0) -> None:
        self.tqdm = None
        if mode in ("auto", "bar"):
            try:
                from tqdm import tqdm

                if mode == "bar" or sys.stderr.isatty():
                    self.tqdm = tqdm
            except ImportError:
                pass  # plain text progress instead
        self.mode = "none" if mode == "none" else ("bar" if self.tqdm else "text")
        self.every_s = every_s
        self._bar: Any = None

    def start(self, desc: str, total: int, done: int) -> None:
        self.desc, self.total, self.done = desc, total, done
        self._t0 = self._last = time.perf_counter()
        self._start_done = done
        if self.mode == "bar":
            self._bar = self.tqdm(
                total=total, initial=done, desc=desc, unit="batch", leave=False, file=sys.stderr
            )

    def update(self, loss: float, acc: float, images_per_s: float) -> None:
        self.done += 1
        if self.mode == "bar":
            self._bar.set_postfix(
                loss=f"{loss:.4f}", acc=f"{100 * acc:.1f}%", img_s=f"{images_per_s:.0f}",
                refresh=False,
            )  # fmt: skip
            self._bar.update(1)
        elif self.mode == "text":
            now = time.perf_counter()
            # Short epochs print nothing here: the epoch's summary line follows.
            if now - self._last >= self.every_s:
                self._last = now
                rate = (self.done - self._start_done) / max(now - self._t0, 1e-9)
                eta = (self.total - self.done) / max(rate, 1e-9)
                print(
                    f"  {self.desc}: {self.done}/{self.total} batches  loss {loss:.4f}  "
                    f"acc {100 * acc:.1f}%  {images_per_s:.0f} img/s  ETA {_fmt_time(eta)}",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
