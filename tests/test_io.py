import json
import math

import numpy as np
import pytest

from safety_neurons.io import (atomic_path, cached_array, cached_json, flatten_metrics, read_metrics, stored_json,
                               write_json_atomic, write_metrics)


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "a" / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_existing_file(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_flatten_metrics_dots_nested_keys():
    flat = flatten_metrics({"model": {"n_layers": 30, "d_mlp": 1536}, "seconds": 1.5})
    assert flat == {"model.n_layers": 30, "model.d_mlp": 1536, "seconds": 1.5}


@pytest.mark.parametrize("bad", [{"a": "text"}, {"a": True}, {"a": [1, 2]}, {"": 1}])
def test_flatten_metrics_rejects_non_numbers(bad):
    with pytest.raises((TypeError, ValueError)):
        flatten_metrics(bad)


def test_flatten_metrics_rejects_a_key_given_twice():
    with pytest.raises(ValueError, match="given twice"):
        flatten_metrics({"a.b": 1, "a": {"b": 2}})


def test_write_metrics_stores_nan_as_null_and_reads_back(tmp_path):
    path = tmp_path / "m.json"
    write_metrics(path, {"ok": 1, "nan": math.nan})
    assert read_metrics(path) == {"ok": 1, "nan": None}


def test_read_metrics_rejects_nested_objects(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"a": {"b": 1}}))
    with pytest.raises(ValueError, match="not a number"):
        read_metrics(path)


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "p.json", {})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_claim_dir_keeps_its_own_artifacts_and_removes_stale_ones(tmp_path):
    from safety_neurons.io import claim_dir, content_key

    folder = tmp_path / "run"
    key = content_key("dpo", {"lr": 0.1}, [1, 2])
    assert key == content_key("dpo", {"lr": 0.1}, [1, 2]) != content_key("dpo", {"lr": 0.2}, [1, 2])
    assert claim_dir(folder, key) is False
    (folder / "adapter").mkdir()
    assert claim_dir(folder, key) is False and (folder / "adapter").exists()  # same key: resume
    assert claim_dir(folder, content_key("other")) is True
    assert not (folder / "adapter").exists() and folder.is_dir()
    legacy = tmp_path / "legacy"  # artifacts from before keys existed cannot be trusted either
    (legacy / "adapter").mkdir(parents=True)
    assert claim_dir(legacy, key) is True and not (legacy / "adapter").exists()


def test_cached_array_computes_once_and_then_reads_the_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    path = tmp_path / "sub" / "acts.npz"
    first = cached_array(path, "key-a", compute)
    again = cached_array(path, "key-a", compute)
    assert len(calls) == 1 and again.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert [p.name for p in path.parent.iterdir()] == ["acts.npz"]  # no temporary file left behind
    cached_array(path, "key-b", compute)  # another key: what it is made from changed
    assert len(calls) == 2


def test_cached_json_recomputes_only_when_the_key_differs(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return [1, 2, len(calls)]

    path = tmp_path / "result.json"
    assert cached_json(path, "k1", compute, field="answers", meta={"judge": "refusal-phrase"}) == [1, 2, 1]
    assert cached_json(path, "k1", compute, field="answers") == [1, 2, 1] and len(calls) == 1
    assert json.loads(path.read_text()) == {"key": "k1", "judge": "refusal-phrase", "answers": [1, 2, 1]}
    assert cached_json(path, "k2", compute, field="answers") == [1, 2, 2] and len(calls) == 2
    assert stored_json(path, "k2")["answers"] == [1, 2, 2] and stored_json(path, "k1") is None


def test_cached_json_without_a_field_keeps_the_entries_beside_the_key(tmp_path):
    path = tmp_path / "eval.json"
    value = {"ppl": 3.5, "evals": {"harmbench": [1]}}
    assert cached_json(path, "k", lambda: value, field=None, meta={"judge": "j"}) == value
    assert json.loads(path.read_text()) == {"key": "k", "judge": "j", **value}
    assert cached_json(path, "k", lambda: pytest.fail("recomputed"), field=None, meta={"judge": "j"}) == value


@pytest.mark.parametrize("damage", ["{\"key\": \"k\", \"val", "", "[1, 2]"])
def test_a_damaged_cache_file_is_recomputed_with_a_warning_naming_it(tmp_path, damage):
    path = tmp_path / "result.json"
    path.write_text(damage)
    with pytest.warns(UserWarning, match="result.json"):
        assert cached_json(path, "k", lambda: 7) == 7
    assert cached_json(path, "k", lambda: pytest.fail("recomputed")) == 7
