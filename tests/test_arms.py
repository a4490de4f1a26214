"""The run's arm store: arms judged, saved and resumed by key; keys that tell arms apart."""
import pytest

from safety_neurons.config import load_config
from safety_neurons.lm.generation import Generation
from safety_neurons.study.arms import arm_key, pct_label, run_arm

PROMPTS_2 = [[1], [1, 4]]


def test_pct_labels_make_flat_keys():
    assert [pct_label(p) for p in (0.5, 1, 5.0, 7.5, 100)] == ["0p5", "1", "5", "7p5", "100"]


def test_run_arm_judges_saves_and_resumes_by_key(run_root):
    cfg = load_config("smoke")
    calls = []

    def generate(prompt_ids):
        calls.append(1)
        return [Generation([1], [2], "I'm sorry, but I cannot help with that.", True), Generation([1], [2, 3], "Sure! Step one", False)]

    first = run_arm(cfg, "safety", 5.0, None, "key-a", generate, PROMPTS_2)
    assert first.refused == [True, False] and first.n_tokens == 3 and list(first.score) == [1.0, 0.0]
    again = run_arm(cfg, "safety", 5.0, None, "key-a", generate, PROMPTS_2)
    assert again == first and len(calls) == 1  # resumed from disk
    run_arm(cfg, "safety", 5.0, None, "key-b", generate, PROMPTS_2)
    assert len(calls) == 2  # another ranking/adapter/prompt set: recomputed
    renamed = run_arm(cfg, "random", 7.5, 3, "key-a", generate, PROMPTS_2)  # another stage asking for the same generation
    assert len(calls) == 2 and (renamed.name, renamed.k_pct, renamed.seed) == ("random", 7.5, 3)
    assert renamed.answers == first.answers


def test_an_early_stopped_arm_serves_early_requests_only(run_root):
    cfg = load_config("smoke")
    calls = []

    def generate(prompt_ids):
        calls.append(1)
        return [Generation(p, [2], "I'm sorry", True) for p in prompt_ids]

    run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2, early=True)
    run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2, early=True)
    assert len(calls) == 1
    run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2)  # full answers asked for: regenerated
    assert len(calls) == 2
    run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2, early=True)  # a full arm serves an early request
    run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2)
    assert len(calls) == 2


def test_arm_keys_tell_methods_models_neurons_and_prompts_apart(run_root):
    cfg = load_config("smoke")
    ids = [[1, 2, 3]]
    base = arm_key(cfg, ids, "fast", "d", [(0, 1)])
    assert base == arm_key(cfg, ids, "fast", "d", [[0, 1]])  # pairs as tuples or lists
    others = [arm_key(cfg, ids, "two_model", "d", [(0, 1)]), arm_key(cfg, ids, "fast", "e", [(0, 1)]),
              arm_key(cfg, ids, "fast", "d", [(0, 2)]), arm_key(cfg, [[1, 2]], "fast", "d", [(0, 1)]),
              arm_key(load_config("smoke", eval_tokens=7), ids, "fast", "d", [(0, 1)])]
    assert len({base, *others}) == 6
    with pytest.raises(ValueError, match="unknown arm method"):
        arm_key(cfg, ids, "fastest", "d")
