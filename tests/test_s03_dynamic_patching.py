"""Stage-03 plumbing: the effect table, the smallest k, metric keys (the arm store: test_arms.py)."""
import math

import numpy as np
import pytest

from safety_neurons.config import load_config
from safety_neurons.io import flatten_metrics
from safety_neurons.stages import s03_dynamic_patching as stage
from safety_neurons.study.arms import Arm


def arm(name, pct, refused, seed=None, seconds=1.0):
    answers = ["I can't help with that." if r else "Sure, here it is." for r in refused]
    return Arm(name, pct, seed, answers, list(refused), 10 * len(refused), seconds)


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


def test_continuous_measures_join_the_metrics_under_their_names():
    import pandas as pd

    cfg = load_config("smoke", patch_k_pcts=[1, 5], bootstrap_samples=100)
    m1, m2, safety, random = sweep_fixture()
    sweep = stage.Sweep(m1=m1, m2=m2, all_neurons=arm("all", 100, m2.refused), safety=safety, random=random,
                        ablations={}, two_model=arm("safety_two_model", 5, safety[5.0].refused))
    effects = stage.effect_table(cfg, m1, m2, safety, random)
    row = dict(C=0.5, lo=0.1, hi=0.9, C_random=0.1, C_random_lo=-0.1, C_random_hi=0.3, pvalue=0.02)
    continuous = pd.DataFrame([{"measure": "logodds", "arm": "safety", "k_pct": 5.0, **row},
                               {"measure": "likelihood", "arm": "safety", "k_pct": 1.0, **row},
                               {"measure": "logodds", "arm": "ia3_delta", "k_pct": 5.0, "C": 0.7, "lo": 0.2, "hi": 0.95},
                               {"measure": "phrase", "arm": "ia3_delta", "k_pct": 5.0, "C": 0.25, "lo": 0.0, "hi": 0.5}])
    metrics = flatten_metrics(stage.patching_metrics(cfg, effects, sweep, 3.0, continuous))
    assert metrics["C.logodds.safety.k5"] == 0.5 and metrics["C.logodds.random.k5.hi"] == 0.3
    assert metrics["pvalue.logodds.k5"] == 0.02 and metrics["C.likelihood.safety.k1.lo"] == 0.1
    assert metrics["C.logodds.ia3_delta.k5"] == 0.7 and "C.logodds.ia3_delta.k1" not in metrics
    assert metrics["C.phrase.safety.k5"] == metrics["C.safety.k5"]  # the binary judge under its measure name
    assert metrics["C.phrase.ia3_delta.k5"] == 0.25 and "C.phrase.random.k5" in metrics  # merged, not replaced
