"""Stage-03 plumbing: arm caching, the effect table, the smallest k, metric keys."""
import math

import numpy as np
import pytest

from safety_neurons import patching_stage as stage
from safety_neurons.config import load_config
from safety_neurons.generation import Generation
from safety_neurons.io import flatten_metrics


def arm(name, pct, refused, seed=None, seconds=1.0):
    answers = ["I can't help with that." if r else "Sure, here it is." for r in refused]
    return stage.Arm(name, pct, seed, answers, list(refused), 10 * len(refused), seconds)


PROMPTS_2 = [[1], [1, 4]]


def test_pct_labels_make_flat_keys():
    assert [stage.pct_label(p) for p in (0.5, 1, 5.0, 7.5, 100)] == ["0p5", "1", "5", "7p5", "100"]


def test_run_arm_judges_saves_and_resumes_by_key(run_root):
    cfg = load_config("smoke")
    calls = []

    def generate(prompt_ids):
        calls.append(1)
        return [Generation([1], [2], "I'm sorry, but I cannot help with that.", True), Generation([1], [2, 3], "Sure! Step one", False)]

    first = stage.run_arm(cfg, "safety", 5.0, None, "key-a", generate, PROMPTS_2)
    assert first.refused == [True, False] and first.n_tokens == 3 and list(first.score) == [1.0, 0.0]
    again = stage.run_arm(cfg, "safety", 5.0, None, "key-a", generate, PROMPTS_2)
    assert again == first and len(calls) == 1  # resumed from disk
    stage.run_arm(cfg, "safety", 5.0, None, "key-b", generate, PROMPTS_2)
    assert len(calls) == 2  # another ranking/adapter/prompt set: recomputed
    renamed = stage.run_arm(cfg, "random", 7.5, 3, "key-a", generate, PROMPTS_2)  # another stage asking for the same generation
    assert len(calls) == 2 and (renamed.name, renamed.k_pct, renamed.seed) == ("random", 7.5, 3)
    assert renamed.answers == first.answers


def test_an_early_stopped_arm_serves_early_requests_only(run_root):
    cfg = load_config("smoke")
    calls = []

    def generate(prompt_ids):
        calls.append(1)
        return [Generation(p, [2], "I'm sorry", True) for p in prompt_ids]

    stage.run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2, early=True)
    stage.run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2, early=True)
    assert len(calls) == 1
    stage.run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2)  # full answers asked for: regenerated
    assert len(calls) == 2
    stage.run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2, early=True)  # a full arm serves an early request
    stage.run_arm(cfg, "m2", 100.0, None, "k", generate, PROMPTS_2)
    assert len(calls) == 2


def test_arm_keys_tell_methods_models_neurons_and_prompts_apart(run_root):
    cfg = load_config("smoke")
    ids = [[1, 2, 3]]
    base = stage.arm_key(cfg, ids, "fast", "d", [(0, 1)])
    assert base == stage.arm_key(cfg, ids, "fast", "d", [[0, 1]])  # pairs as tuples or lists
    others = [stage.arm_key(cfg, ids, "two_model", "d", [(0, 1)]), stage.arm_key(cfg, ids, "fast", "e", [(0, 1)]),
              stage.arm_key(cfg, ids, "fast", "d", [(0, 2)]), stage.arm_key(cfg, [[1, 2]], "fast", "d", [(0, 1)]),
              stage.arm_key(load_config("smoke", eval_tokens=7), ids, "fast", "d", [(0, 1)])]
    assert len({base, *others}) == 6
    with pytest.raises(ValueError, match="unknown arm method"):
        stage.arm_key(cfg, ids, "fastest", "d")


def sweep_fixture():
    m1 = arm("m1", 0, [0, 0, 0, 0, 1, 0, 0, 0])
    m2 = arm("m2", 100, [1, 1, 1, 1, 1, 1, 1, 1])
    safety = {1.0: arm("safety", 1, [0, 1, 0, 0, 1, 0, 0, 0]), 5.0: arm("safety", 5, [1, 1, 1, 1, 1, 1, 1, 0])}
    random = {p: [arm("random", p, [0, 0, 0, 0, 1, 0, 0, 0], s) for s in (0, 1)] for p in (1.0, 5.0)}
    return m1, m2, safety, random


def test_effect_table_and_smallest_k():
    cfg = load_config("smoke", patch_k_pcts=[1, 5], bootstrap_samples=300)
    m1, m2, safety, random = sweep_fixture()
    effects = stage.effect_table(cfg, m1, m2, safety, random)
    five = stage.at_pct(effects, 5.0)
    # F(M1) = 1/8, F(M2) = 1, F(patched at 5%) = 7/8: C = (7/8 - 1/8) / (7/8) = 6/7
    assert five["C_safety"] == pytest.approx(6 / 7)
    assert five["C_safety_lo"] <= five["C_safety"] <= five["C_safety_hi"]
    assert five["C_random"] == 0 and five["pvalue"] == pytest.approx(2 / 2**6)  # 6 discordant prompts, exact test
    assert stage.smallest_k(effects, 0.8) == 5.0 and math.isnan(stage.smallest_k(effects, 0.9))
    with pytest.raises(ValueError, match="no k = 2%"):
        stage.at_pct(effects, 2.0)


def test_undefined_effect_is_nan_with_a_warning():
    cfg = load_config("smoke", patch_k_pcts=[1, 5], bootstrap_samples=50)
    m1, _, safety, random = sweep_fixture()
    with pytest.warns(UserWarning, match="no safer than M1"):
        effects = stage.effect_table(cfg, m1, m1, safety, random)
    assert effects["C_safety"].isna().all()


def test_patching_metrics_keys():
    cfg = load_config("smoke", patch_k_pcts=[1, 5], bootstrap_samples=100)
    m1, m2, safety, random = sweep_fixture()
    m1 = arm("m1", 0, m1.refused, seconds=0.5)
    sweep = stage.Sweep(m1=m1, m2=m2,
                        all_neurons=arm("all", 100, m2.refused), safety=safety, random=random,
                        ablations={"zero_ablation": arm("zero_ablation", 5, [0] * 8)},
                        two_model=arm("safety_two_model", 5, safety[5.0].refused, seconds=2.0))
    effects = stage.effect_table(cfg, m1, m2, safety, random)
    metrics = flatten_metrics(stage.patching_metrics(cfg, effects, sweep, 3.0))
    for key in ("safety.m1", "safety.m2", "C.safety.k5", "C.safety.k5.lo", "C.random.k1.hi", "C.safety.at_5pct",
                "C.random.at_5pct", "pvalue.at_5pct", "k_pct_for_C90", "C.all_neurons", "ablation.zero.at_5pct",
                "throughput.patched_over_plain", "throughput.fast_over_plain", "seconds"):
        assert key in metrics, key
    assert metrics["C.all_neurons"] == 1.0 and metrics["all_neurons_equals_m2"] == 1.0
    assert metrics["throughput.patched_over_plain"] == pytest.approx(0.25)  # 2 s vs 0.5 s for the same tokens
    assert np.isnan(metrics["k_pct_for_C90"])
