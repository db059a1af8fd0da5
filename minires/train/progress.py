"""Progress of an epoch: a tqdm bar on a terminal, else a text line every few seconds.

tqdm is imported only here, and only when a bar is asked for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """One epoch's progress: a tqdm bar on a terminal, else a text line every few seconds.

    mode: "auto" (a bar when tqdm is installed and stderr is a terminal, else
    text), "bar", "text", or "none". The loss and accuracy are asked for only
    when shown (``step``): on a GPU, showing them is a host sync.
    """

    def __init__(
        self, mode: str = "auto", every_s: float = 10.0, numbers_every_s: float = 0.0
    ) -> None:
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
        self.numbers_every_s = numbers_every_s  # the bar's figures: 0 = at every batch
        self._bar: Any = None

    def start(self, desc: str, total: int, done: int) -> None:
        self.desc, self.total, self.done = desc, total, done
        self._t0 = self._last = time.perf_counter()
        self._shown = -float("inf")
        self._start_done = done
        if self.mode == "bar":
            self._bar = self.tqdm(
                total=total, initial=done, desc=desc, unit="batch", leave=False, file=sys.stderr
            )

    def update(self, loss: float, acc: float, images_per_s: float) -> None:
        """One more batch, with the epoch's numbers so far."""
        self.step(lambda: (loss, acc, images_per_s))

    def step(self, numbers: Callable[[], tuple[float, float, float]]) -> None:
        """One more batch. ``numbers()`` gives (loss, accuracy, images/s) so far; it is
        called only when they are shown (on a GPU, reading them waits for the GPU):
        a text line every ``every_s``, the bar's figures every ``numbers_every_s``."""
        self.done += 1
        now = time.perf_counter()
        if self.mode == "bar":
            if now - self._shown >= self.numbers_every_s:
                self._shown = now
                loss, acc, images_per_s = numbers()
                self._bar.set_postfix(
                    loss=f"{loss:.4f}", acc=f"{100 * acc:.1f}%", img_s=f"{images_per_s:.0f}",
                    refresh=False,
                )  # fmt: skip
            self._bar.update(1)
        elif self.mode == "text":
            # Short epochs print nothing here: the epoch's summary line follows.
            if now - self._last >= self.every_s:
                self._last = now
                loss, acc, images_per_s = numbers()
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
