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


def test_the_first_install_command_installs_what_minires_train_uses() -> None:
    """`pip install .` gives the progress bar and the curves.png of the sample output."""
    text = README.read_text()
    first_command = re.search(r"```bash\n(.*?)\n", text).group(1)
    assert first_command.split("#")[0].strip() == "pip install ."
    pyproject = (README.parent / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.M | re.S).group(1)
    for package in ("numpy", "tqdm", "matplotlib", "threadpoolctl"):
        assert f'"{package}>=' in dependencies
    assert "curves.png       loss and accuracy curves" in text
