"""The run folder: the files a run writes, and how each is written.

    runs/digits-resnet20/
      checkpoint.npz   everything needed to resume (see minires/checkpoint.py)
      metrics.jsonl    one JSON object per epoch, appended and flushed at once
      config.json      the settings, with the minires version
      curves.png       loss and accuracy curves (drawn by the command line)

Everything but the metrics' append is written atomically (a temporary file
renamed over the old one), so a run killed at any moment leaves complete
files behind, with the permissions the umask gives new files. A run killed
*while* writing one (kill -9) also leaves the temporary file; the next run or
resume in the folder removes it. Every write that fails raises an
``OutputError`` naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from .. import checkpoint as ckpt
from .errors import OutputError, UserError
from .saved_state import Damaged, check_config, check_data, check_run_epoch, describe

CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PLOT_FILE = "curves.png"
_PROBE = ".write-test"
RUN_FILES = (CHECKPOINT_FILE, METRICS_FILE, CONFIG_FILE, PLOT_FILE, _PROBE)


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint, turning every way it can fail into a UserError.

    Checks what both ``minires eval`` and ``--resume`` read: the sections
    config (valid settings), model (a dict) and data, and run.epoch if present.
    """
    try:
        state = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as e:
        raise UserError(str(e)) from None
    if not isinstance(state, dict):
        raise UserError(f"{str(path)!r} is not a training checkpoint (it holds {describe(state)})")
    missing = [k for k in ("config", "model", "data") if k not in state]
    if missing:
        raise UserError(f"{str(path)!r} is not a training checkpoint (no {', '.join(missing)})")
    check_config(state["config"], path)
    check_data(state["data"], path)
    if not isinstance(state["model"], dict):
        raise Damaged(path, "model", f"expected a dict of arrays, found {describe(state['model'])}")
    if "run" in state:
        check_run_epoch(state["run"], path)
    return state


def _identity(path: Path) -> tuple[int, ...] | None:
    """Which file is at `path` now (None: none): a rename or rewrite changes the answer."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class RunFolder:
    """The folder of one run and its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT_FILE
        self.metrics = self.path / METRICS_FILE
        self.config = self.path / CONFIG_FILE
        # The checkpoint this process last saved or loaded: (its _identity, where).
        self._known: tuple[tuple[int, ...] | None, str] | None = None

    def prepare(self) -> list[Path]:
        """Create the folder, remove stale temporary files, prove that files can be written.

        Returns the temporary files removed (left by a run killed while writing).
        """
        probe = self.path / _PROBE
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            removed = ckpt.remove_stale_temp_files(self.path, RUN_FILES)
            ckpt.atomic_write(probe, lambda f: f.write(b"ok"))
            probe.unlink()
        except OSError as e:
            raise OutputError(
                f"cannot write to the output folder {str(self.path)!r}: {e.strerror or e}"
            ) from None
        return removed

    def load_checkpoint(self) -> dict[str, Any]:
        return load_run_checkpoint(self.checkpoint)

    def note_checkpoint(self, state: dict[str, Any]) -> None:
        """Remember that the checkpoint on disk now is `state` (just saved or loaded)."""
        epoch, batch = state["run"]["epoch"], state["loader"]["batch"]
        where = f"epoch {epoch + 1}, batch {batch}" if batch else f"the end of epoch {epoch}"
        self._known = (_identity(self.checkpoint), where)

    def describe_checkpoint(self) -> str | None:
        """The checkpoint on disk, e.g. "runs/a/checkpoint.npz (taken at the end of epoch 3)".

        None if there is none. Told from the file itself (its inode and
        mtime), so it stays true even if the run was stopped mid-save.
        """
        found = _identity(self.checkpoint)
        if found is None:
            return None
        if self._known is not None and self._known[0] == found:
            return f"{self.checkpoint} (taken at {self._known[1]})"
        return str(self.checkpoint)

    def _write(self, path: Path, write: Callable[[], None]) -> None:
        """Run `write`; an OSError becomes an OutputError naming `path`."""
        try:
            write()
        except OSError as e:
            raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self._write(self.checkpoint, lambda: ckpt.save_checkpoint(self.checkpoint, state))
        self.note_checkpoint(state)

    def write_config(self, config: dict[str, Any]) -> None:
        data = json.dumps({"minires_version": __version__, **config}, indent=2).encode() + b"\n"
        self._write(self.config, lambda: ckpt.atomic_write(self.config, lambda f: f.write(data)))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl = the history (on resume: drops lines written after the checkpoint)."""
        data = "".join(json.dumps(m) + "\n" for m in history).encode()
        self._write(self.metrics, lambda: ckpt.atomic_write(self.metrics, lambda f: f.write(data)))

    def append_metrics(self, record: dict[str, Any]) -> None:
        self._write(self.metrics, lambda: self._append(json.dumps(record) + "\n"))

    def _append(self, line: str) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
