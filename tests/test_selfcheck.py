"""`minires gradcheck`: every case passes, and a broken backward is reported."""

import numpy as np
import pytest

from minires import cli, selfcheck
from minires.backends import numpy_backend


def test_every_case_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("PASS") == len(selfcheck.cases("cpu", 0))


def test_a_broken_backward_fails_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def relu_backward_unmasked(gy: np.ndarray, y: np.ndarray) -> np.ndarray:
        return gy  # forgets the mask: wrong wherever x < 0

    monkeypatch.setattr(numpy_backend, "relu_backward", relu_backward_unmasked)
    assert cli.main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "relu" in out and "FAIL" in out and "SOME CHECKS FAILED" in out
