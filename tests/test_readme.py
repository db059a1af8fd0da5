"""The README's Python examples run as written, so they cannot drift from the code."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:  # later blocks use names from earlier ones
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["x"].grad.shape == (2, 4, 6, 6)
    assert namespace["loss"].dtype == "float32"


def test_readme_names_the_ci_commands() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install ".[test]"' in text and 'pip install --quiet ".[test]"' in ci
    assert "python -m pytest" in text and "python -m pytest" in ci
