"""study/effects.py: C on the continuous and sampled measures, cached in the run-wide measure store."""
import numpy as np
import pandas as pd
import pytest
import torch

from safety_neurons.config import load_config
from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.study import effects

PROMPTS = [[1, 40, 41, 42], [1, 50, 51], [1, 60, 61, 62, 63]]


def random_ranking(m1) -> NeuronRanking:
    return NeuronRanking("change_score", torch.rand(m1.cfg.n_layers, m1.cfg.d_mlp, generator=torch.Generator().manual_seed(0)))


def test_continuous_effects_are_1_with_every_neuron_and_cached(run_root, m1, m2, adapter):
    cfg = load_config("smoke", patch_k_pcts=[100], headline_pct=100, patch_random_seeds=[0], bootstrap_samples=50)
    ranking = random_ranking(m1)
    table = effects.continuous_effects(cfg, m1, m2, adapter, ranking, PROMPTS, {"same": ranking}, progress=False)
    assert set(table["measure"]) == {"logodds", "likelihood"}
    top = table[table["arm"] == "safety"]
    assert np.allclose(top["C"], 1.0) and np.allclose(top["C_random"], 1.0)  # k = 100%: every neuron, M2 itself
    assert np.allclose(table[table["arm"] == "same"]["C"], 1.0)
    stored = sorted(p.name for p in effects.measure_store(cfg).iterdir())
    assert any(n.startswith("answers-") for n in stored)
    again = effects.continuous_effects(cfg, m1, m2, adapter, ranking, PROMPTS, {"same": ranking}, progress=False)
    assert np.allclose(again["C"], table["C"])
    assert sorted(p.name for p in effects.measure_store(cfg).iterdir()) == stored  # read back, nothing new


def test_continuous_effects_take_their_own_k_grid(run_root, m1, m2, adapter):
    cfg = load_config("smoke", bootstrap_samples=50)
    table = effects.continuous_effects(cfg, m1, m2, adapter, random_ranking(m1), PROMPTS, k_pcts=[1, 100],
                                       random_seeds=[0], progress=False)
    assert sorted(set(table["k_pct"])) == [1, 100]
    assert np.allclose(table[table["k_pct"] == 100]["C"], 1.0)


def test_measure_values_at_the_ends_are_m1_and_m2(run_root, m1, m2, adapter):
    from safety_neurons.judges.refusal import refusal_logodds

    cfg = load_config("smoke")
    np.testing.assert_allclose(effects.measure_values(cfg, m1, m2, "d", "logodds", [], PROMPTS),
                               refusal_logodds(m1, PROMPTS), atol=1e-4)
    np.testing.assert_allclose(effects.measure_values(cfg, m1, m2, "d", "logodds", random_ranking(m1).top(m1.cfg.n_layers * m1.cfg.d_mlp).tolist(),
                                                      PROMPTS), refusal_logodds(m2, PROMPTS), atol=1e-4)
    with pytest.raises(ValueError, match="answer_ids"):
        effects.measure_values(cfg, m1, m2, "d", "likelihood", [], PROMPTS)
    with pytest.raises(ValueError, match="unknown measure"):
        effects.measure_values(cfg, m1, m2, "d", "vibes", [], PROMPTS)


def test_sampled_values_are_m1s_and_m2s_samples_at_the_ends(run_root, m1, m2, adapter, monkeypatch):
    """With no neurons the sampled arm is M1 sampling, with every neuron M2 sampling, on the same seeds; the
    judge is mocked to a per-answer verdict so the share is not trivially 0 on a random model."""
    import safety_neurons.judges.refusal as refusal
    from safety_neurons.lm.models import model_shape
    from safety_neurons.method.patching import fast_patched_generate, ia3_neuron_scales
    from safety_neurons.study.arms import refused_already

    verdict = lambda answers: [len(a) % 2 == 0 for a in answers]  # noqa: E731
    monkeypatch.setattr(refusal, "refusal_judge", verdict)
    cfg = load_config("smoke")
    shape = model_shape(m1)
    scales = ia3_neuron_scales(adapter, shape.n_layers, shape.d_mlp, base=m1)
    every = random_ranking(m1).top(shape.n_layers * shape.d_mlp).tolist()
    got = effects.sampled_values(cfg, m1, scales, "d", every, PROMPTS, [0, 1])
    opts = dict(max_new_tokens=cfg.eval_tokens, batch_size=4, do_sample=True, temperature=1.0, progress=False,
                stop_when=refused_already)
    expected = np.mean([verdict([g.text for g in fast_patched_generate(m1, scales, PROMPTS, every, seed=s, **opts)])
                        for s in (0, 1)], axis=0)
    np.testing.assert_allclose(got, expected)
    table = effects.sampled_effects(cfg, m1, adapter, random_ranking(m1), PROMPTS, seeds=[0, 1], k_pcts=[100],
                                    random_seeds=[0])
    assert table["measure"].tolist() == ["sampled"]


def test_continuous_metrics_names():
    row = dict(C=0.5, lo=0.1, hi=0.9, C_random=0.1, C_random_lo=-0.1, C_random_hi=0.3, pvalue=0.02)
    table = pd.DataFrame([{"measure": "sampled", "arm": "safety", "k_pct": 5.0, **row},
                          {"measure": "logodds", "arm": "ia3_delta", "k_pct": 5.0, "C": 0.7, "lo": 0.2, "hi": 0.95}])
    metrics = effects.continuous_metrics(table)
    assert metrics["C"]["sampled"]["random"]["k5.hi"] == 0.3 and metrics["pvalue"]["sampled"]["k5"] == 0.02
    assert metrics["C"]["logodds"] == {"ia3_delta": {"k5": 0.7, "k5.lo": 0.2, "k5.hi": 0.95}}  # no random arm, no p


def test_one_pass_stores_both_measures(run_root, m1, m2, adapter, monkeypatch):
    """Asking for one measure with M2's answers at hand stores the other too: the second is read, not computed."""
    import safety_neurons.method.measures as measures

    cfg = load_config("smoke")
    answers = effects.m2_answer_ids(cfg, m2, "d", PROMPTS)
    first = effects.measure_values(cfg, m1, m2, "d", "likelihood", [(0, 1), (1, 2)], PROMPTS, answers)
    monkeypatch.setattr(measures, "patched_logodds_and_loglik", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(measures, "patched_refusal_logodds", lambda *a, **k: pytest.fail("recomputed"))
    logodds = effects.measure_values(cfg, m1, m2, "d", "logodds", [(0, 1), (1, 2)], PROMPTS, answers)
    assert np.isfinite(first).all() and logodds.shape == (len(PROMPTS),)
    assert np.allclose(effects.measure_values(cfg, m1, m2, "d", "logodds", [(0, 1), (1, 2)], PROMPTS), logodds)
