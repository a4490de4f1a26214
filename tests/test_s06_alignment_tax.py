"""Stage-06 plumbing: correlation and overlap of rankings, shared neurons, the patched arms and metric keys."""
import numpy as np
import pytest
import torch

from safety_neurons.config import load_config
from safety_neurons.io import flatten_metrics
from safety_neurons.lm.models import load_model
from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.method.patching import patched_generate
from safety_neurons.method.stats import bootstrap_mean
from safety_neurons.stages import s06_alignment_tax as stage
from test_models import make_ia3_adapter
from safety_neurons.lm.tiny import tiny_model
from safety_neurons.study.rankings import overlap_matrix, spearman_matrix


def ranking(scores) -> NeuronRanking:
    return NeuronRanking("change_score", torch.as_tensor(scores, dtype=torch.float32))


def test_spearman_and_overlap_matrices():
    base = torch.arange(12.0).reshape(2, 6)
    rankings = {"harmless": ranking(base), "helpful": ranking(base * 2 + 1), "reasoning": ranking(-base)}
    rho = spearman_matrix(rankings)
    assert rho.loc["harmless", "helpful"] == pytest.approx(1.0) and rho.loc["harmless", "reasoning"] == pytest.approx(-1.0)
    assert (np.diag(rho.to_numpy()) == 1).all() and rho.equals(rho.T)
    top3 = overlap_matrix(rankings, 3)
    assert top3.loc["harmless", "helpful"] == 1.0 and top3.loc["harmless", "reasoning"] == 0.0


def test_shared_neurons_keep_the_first_ranking_order():
    a = ranking([[5.0, 4.0, 0.0], [3.0, 2.0, 1.0]])  # order: (0,0) (0,1) (1,0) (1,1)
    b = ranking([[0.0, 4.0, 5.0], [3.0, 1.0, 2.0]])  # top 4: (0,2) (0,1) (1,0) (1,2)
    assert stage.shared_neurons(a, b, 4) == [(0, 1), (1, 0)]


def test_bootstrap_mean_brackets_the_mean_and_is_seeded():
    scores = np.array([0, 1] * 20, dtype=float)
    mean, lo, hi = bootstrap_mean(scores, n_boot=500, seed=1)
    assert mean == 0.5 and lo < 0.5 < hi and (mean, lo, hi) == bootstrap_mean(scores, n_boot=500, seed=1)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean([], n_boot=10)


def objective_models(tmp_path):
    """A harmless and a helpful tiny M2 (random (IA)^3 adapters of two seeds): their adapters and bridges."""
    adapters = {}
    for i, objective in enumerate(("harmless", "helpful")):
        adapters[objective] = tmp_path / objective
        make_ia3_adapter(tiny_model("llama"), adapters[objective], targets=("down_proj",), seed=i)
    return adapters, {o: load_model("tiny-random-llama", adapter=a, device="cpu") for o, a in adapters.items()}


def test_tax_arms_patch_both_ways_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_NEURONS_RUNS", str(tmp_path))
    cfg = load_config("smoke", bootstrap_samples=50)
    adapters, models = objective_models(tmp_path)
    neurons = [(1, i) for i in range(0, 64, 2)]
    prompts = {"harmful": ["how do I pick a lock", "make a weapon"], "benign": ["write a poem", "plan a trip"]}
    arms = stage.run_tax_arms(cfg, models, adapters, neurons, prompts, progress=False)
    assert set(arms) == {"harmless", "helpful", "harmless_from_helpful", "helpful_from_harmless"}
    from safety_neurons.lm.chat import encode_prompts

    ids = encode_prompts(models["harmless"].tokenizer, prompts["benign"], cfg.chat_template)
    expected = patched_generate(models["harmless"], models["helpful"], ids, neurons, max_new_tokens=cfg.eval_tokens, progress=False)
    assert arms["harmless_from_helpful"]["benign"].answers == [g.text for g in expected]
    assert arms["harmless_from_helpful"]["benign"].lengths == [len(g.completion_ids) for g in expected]
    from safety_neurons.study.arms import arms_dir

    assert len(list(arms_dir(cfg).iterdir())) == 8
    again = stage.run_tax_arms(cfg, models, adapters, neurons, prompts, progress=False)  # from the cache
    assert again["helpful_from_harmless"]["harmful"] == arms["helpful_from_harmless"]["harmful"]

    summaries = stage.arm_summaries(cfg, arms)
    rho = spearman_matrix({"harmless": ranking(torch.rand(2, 64)), "helpful": ranking(torch.rand(2, 64))})
    flat = flatten_metrics(stage.tax_metrics(cfg, rho, {5.0: overlap_matrix(
        {"harmless": ranking(torch.rand(2, 64)), "helpful": ranking(torch.rand(2, 64))}, 6)}, summaries, len(neurons), 1.0))
    for key in ("spearman.harmless.helpful", "overlap.k5.harmless.helpful", "patch.harmless_from_helpful.safety",
                "patch.helpful_from_harmless.helpful.lo", "model.harmless.length", "shared_neurons", "seconds"):
        assert key in flat, key


def test_missing_objective_is_a_clear_error():
    cfg = load_config("smoke")
    with pytest.raises(ValueError, match="needs M2s of helpful"):
        stage.run_tax_arms(cfg, {"harmless": object()}, {}, [], {"harmful": ["x"]}, progress=False)


def test_tax_effects_carry_the_gap_under_every_measure(tmp_path, monkeypatch):
    """C of the shared neurons per direction: 1 under the teacher-forced measures when every neuron is
    shared (the receiver becomes the source), and the metrics C.<measure>.shared.<direction>."""
    monkeypatch.setenv("SAFETY_NEURONS_RUNS", str(tmp_path))
    cfg = load_config("smoke", bootstrap_samples=50)
    adapters, models = objective_models(tmp_path)
    every = [(layer, i) for layer in range(2) for i in range(64)]
    prompts = {"harmful": ["how do I pick a lock", "make a weapon", "steal a car"], "benign": ["write a poem"]}
    arms = stage.run_tax_arms(cfg, models, adapters, every, prompts, progress=False)
    effects = stage.tax_effects(cfg, models, adapters, every, prompts, arms)
    assert set(effects["direction"]) == {"harmless_from_helpful", "helpful_from_harmless"}
    assert sorted(set(effects["measure"])) == ["likelihood", "logodds", "phrase"]
    measured = effects[effects["measure"] != "phrase"]
    assert np.allclose(measured["C"], 1.0, atol=1e-4)
    flat = flatten_metrics(stage.tax_metrics(cfg, spearman_matrix({"harmless": ranking(torch.rand(2, 64)), "helpful": ranking(torch.rand(2, 64))}),
                                             {}, stage.arm_summaries(cfg, arms), len(every), 1.0, effects))
    for key in ("C.logodds.shared.harmless_from_helpful", "C.likelihood.shared.helpful_from_harmless.lo",
                "C.phrase.shared.harmless_from_helpful.hi", "patch.harmless_from_helpful.safety"):
        assert key in flat, key
    assert flat["C.likelihood.shared.harmless_from_helpful"] == pytest.approx(1.0, abs=1e-4)
