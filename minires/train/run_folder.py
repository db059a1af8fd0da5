"""The run folder: the files a run writes, and how each is written.

    runs/digits-resnet20/
      checkpoint.npz   everything needed to resume (see minires/checkpoint.py)
      metrics.jsonl    one JSON object per epoch, appended and flushed at once
      config.json      the settings, with the minires version
      curves.png       loss and accuracy curves (drawn by the command line)

Everything but the metrics' append is written atomically (a temporary file
renamed over the old one), so a run killed at any moment leaves complete
files behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from .. import checkpoint as ckpt
from .errors import UserError

CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PLOT_FILE = "curves.png"


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint, turning every way it can fail into a UserError."""
    try:
        state = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as e:
        raise UserError(str(e)) from None
    missing = [k for k in ("config", "model", "data") if k not in state]
    if missing:
        raise UserError(f"{str(path)!r} is not a training checkpoint (no {', '.join(missing)})")
    return state


class RunFolder:
    """The folder of one run and its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT_FILE
        self.metrics = self.path / METRICS_FILE
        self.config = self.path / CONFIG_FILE

    def prepare(self) -> None:
        """Create the folder and prove that files can be written there."""
        probe = self.path / ".write-test"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write(probe, lambda f: f.write(b"ok"))
            probe.unlink()
        except OSError as e:
            raise UserError(
                f"cannot write to the output folder {str(self.path)!r}: {e.strerror or e}"
            ) from None

    def load_checkpoint(self) -> dict[str, Any]:
        return load_run_checkpoint(self.checkpoint)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        try:
            ckpt.save_checkpoint(self.checkpoint, state)
        except OSError as e:
            raise UserError(f"cannot write the checkpoint {str(self.checkpoint)!r}: {e}") from None

    def write_config(self, config: dict[str, Any]) -> None:
        text = json.dumps({"minires_version": __version__, **config}, indent=2)
        ckpt.atomic_write(self.config, lambda f: f.write(text.encode() + b"\n"))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl = the history (on resume: drops lines written after the checkpoint)."""
        text = "".join(json.dumps(m) + "\n" for m in history)
        ckpt.atomic_write(self.metrics, lambda f: f.write(text.encode()))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
