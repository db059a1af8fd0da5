"""Run the tutorials and commit what they print and draw.

    python tutorials/execute.py            # every notebook, full mode (about 25 min on 2 cores)
    python tutorials/execute.py 04 08      # only these
    python tutorials/execute.py --quick    # quick mode, for a look (not for committing)

Each notebook's jupytext source ``NN_name.py`` runs top to bottom in a fresh
``python3`` kernel, and ``NN_name.ipynb`` is rewritten (atomically) with its
outputs, so that a reader on the web sees every number and figure without
running anything. The notebook's metadata records the run:
``{"minires": {"mode": "full", "seconds": ..., "minires_version": ...}}``.

Cells tagged ``figure-NAME`` (``# %% tags=["figure-NAME"]`` in the source)
have the image they draw saved as ``docs/figures/NAME.png``; tutorials/README.md
shows those. tests/test_tutorials.py uses :func:`run_notebook` to execute the
notebooks in quick mode, and checks that the committed outputs come from the
committed code and that the figures are the ones the notebooks drew.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parent
FIGURES = TUTORIALS.parent / "docs" / "figures"
FIGURE_TAG = "figure-"


@contextlib.contextmanager
def _environment(changes: dict[str, str | None]) -> Iterator[None]:
    """os.environ with ``changes`` (None removes a name); the kernel inherits it."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_notebook(source: Path, quick: bool, solved: bool = False, timeout: int = 1800):
    """Execute tutorials/NN_name.py in a fresh kernel; (the notebook with outputs, seconds).

    ``quick`` sets MINIRES_QUICK=1; ``solved`` sets MINIRES_SOLUTIONS=1 (the
    exercises' solutions in place of their stubs). Raises nbclient's
    CellExecutionError, naming the cell, if any cell fails.
    """
    import jupytext
    import nbclient

    env = {
        "MINIRES_QUICK": "1" if quick else None,
        "MINIRES_SOLUTIONS": "1" if solved else None,
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    nb = jupytext.read(source)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(TUTORIALS)}}
    )
    with _environment(env):
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    return nb, seconds


def figure_cells(nb) -> dict[str, object]:
    """The cells tagged figure-NAME, by NAME."""
    return {
        tag[len(FIGURE_TAG) :]: cell
        for cell in nb.cells
        for tag in cell.get("metadata", {}).get("tags", [])
        if tag.startswith(FIGURE_TAG)
    }


def cell_png(cell) -> bytes:
    """The last PNG image a code cell drew (its final figure)."""
    images = [
        o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    if not images:
        raise ValueError(f"the cell tagged as a figure drew no PNG image:\n{cell.source[:200]}")
    return base64.b64decode(images[-1])


def _atomic_write(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def store(source: Path, nb, seconds: float, quick: bool) -> list[Path]:
    """Write NN_name.ipynb with the outputs, and the tagged figures; the paths written."""
    import nbformat

    import minires

    nb.metadata["minires"] = {
        "mode": "quick" if quick else "full",
        "seconds": round(seconds, 1),
        "minires_version": minires.__version__,
    }
    ipynb = source.with_suffix(".ipynb")
    _atomic_write(ipynb, (nbformat.writes(nb) + "\n").encode())
    written = [ipynb]
    FIGURES.mkdir(parents=True, exist_ok=True)
    for name, cell in figure_cells(nb).items():
        png = FIGURES / f"{name}.png"
        _atomic_write(png, cell_png(cell))
        written.append(png)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    parser.add_argument("--quick", action="store_true", help="MINIRES_QUICK=1 (small sizes)")
    args = parser.parse_args(argv)
    sources = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    if args.notebooks:
        chosen = [s for s in sources if any(s.stem.startswith(n) for n in args.notebooks)]
        if len(chosen) < len(args.notebooks):
            names = [s.stem for s in sources]
            parser.error(f"no notebook matches some of {args.notebooks}; there are {names}")
        sources = chosen
    for source in sources:
        print(f"{source.stem}: running ({'quick' if args.quick else 'full'} mode)...", flush=True)
        nb, seconds = run_notebook(source, quick=args.quick)
        written = store(source, nb, seconds, args.quick)
        paths = ", ".join(str(p.relative_to(TUTORIALS.parent)) for p in written)
        print(f"{source.stem}: {seconds:.1f} s; wrote {paths}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
