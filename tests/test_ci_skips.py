"""The CI guard in conftest.py: with CI set, a missing package of the `test`
extra fails its tests instead of skipping them (so no comparison with PyTorch
is skipped unseen), and without CI the same tests skip as before.

Each case runs pytest in a subprocess on a tiny test directory that uses this
conftest.py, with torch and nbformat made unimportable there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

INNER_TESTS = {
    "test_fn.py": """
import sys
import pytest

sys.modules["torch"] = None  # `import torch` now fails, as if not installed


def test_needs_torch():
    pytest.importorskip("torch")


def test_needs_an_optional_package():
    pytest.importorskip("surely_no_such_package_here")


def test_plain():
    pass
""",
    "test_module_level.py": """
import sys
import pytest

sys.modules["nbformat"] = None
nbformat = pytest.importorskip("nbformat")


def test_never_reached():
    pass
""",
}


def _run(tmp_path: Path, ci: str | None) -> tuple[dict[str, int], str]:
    (tmp_path / "conftest.py").write_text(Path(conftest.__file__).read_text())
    for name, text in INNER_TESTS.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rfEs",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    summary = out.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    return counts, out


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_outside_ci_missing_packages_skip(tmp_path, ci):
    counts, out = _run(tmp_path, ci)
    assert counts == {"passed": 1, "skipped": 3}, out
    assert "could not import 'torch'" in out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_required_package_fails(tmp_path, ci):
    counts, out = _run(tmp_path, ci)
    # torch (in a test) and nbformat (at collection) fail; a package the test
    # extra does not promise still skips.
    assert counts == {"failed": 1, "passed": 1, "skipped": 1, "error": 1}, out
    assert re.search(r"FAILED .*test_needs_torch.*could not import 'torch'", out), out
    assert re.search(r"ERROR .*test_module_level.py.*could not import 'nbformat'", out), out
    assert "CI is set, so the `test` extra is installed" in out
    assert "SKIPPED" in out and "surely_no_such_package_here" in out


def test_required_packages_are_in_the_test_extra():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    core = {re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower() for req in project["dependencies"]}

    def names(extra: str) -> set[str]:
        found = set()
        for req in extras[extra]:
            if not req.startswith("minires["):
                found.add(re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower())
        for req in extras[extra]:
            inner = re.match(r"minires\[(\w+)\]", req)
            if inner:
                found |= names(inner.group(1))
        return found

    required = {conftest.DISTRIBUTION_NAMES.get(n, n).lower() for n in conftest.REQUIRED_IN_CI}
    assert required <= names("test") | core, required - (names("test") | core)
    assert "torch==2.13.0" in extras["test"]  # exactly: a range would fetch a CUDA build


def test_every_optional_import_in_the_tests_is_guarded():
    # Every importorskip in the test files names a package CI requires, so
    # none of them can skip in CI.
    here = Path(__file__).parent
    found = set()
    for path in here.glob("test_*.py"):
        if path.name == Path(__file__).name:
            continue
        names = re.findall(r"importorskip\(\"([\w.]+)\"", path.read_text())
        found |= {name.split(".")[0] for name in names}  # safetensors.torch: safetensors
    assert "torch" in found
    assert found <= set(conftest.REQUIRED_IN_CI), found - set(conftest.REQUIRED_IN_CI)
