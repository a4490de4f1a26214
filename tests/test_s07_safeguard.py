"""Stage-07 plumbing on synthetic activations: guard sets, labels, the score matrix, the guard in use, metric keys."""
import math

import numpy as np
import pytest
import torch

from safety_neurons.config import load_config
from safety_neurons.io import flatten_metrics
from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.stages import s07_safeguard as stage

N_LAYERS, D_MLP = 2, 16


def ranking_with_top(neuron: tuple[int, int]) -> NeuronRanking:
    scores = torch.rand(N_LAYERS, D_MLP, generator=torch.Generator().manual_seed(0)) * 0.1
    scores[neuron] = 10.0
    return NeuronRanking("change_score", scores, meta={"key": "test"})


def synthetic_set(n: int, seed: int, informative: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Activations where one neuron says whether the answer will be unsafe; the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = np.array([1, 0] * (n // 2))
    acts = rng.normal(size=(n, N_LAYERS * D_MLP)).astype(np.float32)
    acts[:, informative[0] * D_MLP + informative[1]] = 3.0 * labels + rng.normal(scale=0.3, size=n)
    return acts, labels


def test_unsafe_labels_need_a_harmful_prompt_and_an_answer_that_does_not_refuse():
    harmful = np.array([1, 1, 0, 0])
    answers = ["Sure, here is how.", "I'm sorry, but I can't help with that.", "Sure!", "I'm sorry, I can't."]
    assert stage.unsafe_labels(harmful, answers).tolist() == [1, 0, 0, 0]


def test_guard_sets_are_harmful_then_their_own_benign_prompts():
    cfg = load_config("smoke")
    sets = stage.guard_sets(cfg)
    assert list(sets) == list(cfg.harmful_sets)
    benign_seen = []
    for prompts, harmful in sets.values():
        assert len(prompts) == len(harmful) and harmful.sum() > 0 and (harmful == 0).sum() > 0
        assert harmful.tolist() == sorted(harmful.tolist(), reverse=True)  # harmful first
        benign_seen += [p for p, h in zip(prompts, harmful) if not h]
    assert len(benign_seen) == len(set(benign_seen))  # no benign prompt in two sets


def test_safety_neurons_beat_random_and_majority_in_the_score_matrix():
    cfg = load_config("smoke", safeguard_ks=(1, 4), safeguard_random_seeds=(0, 1, 2))
    informative = (1, 5)
    ranking = ranking_with_top(informative)
    acts, labels = {}, {}
    for i, name in enumerate(("a", "b")):
        acts[name], labels[name] = synthetic_set(40, i, informative)
    scores = stage.score_matrix(cfg, ranking, acts, labels, progress=False)
    assert set(scores["arm"]) == set(stage.ARMS) and set(scores["k"]) == {1, 4}
    assert len(scores) == 2 * 2 * 2 * len(stage.ARMS)  # k x train x test x arm
    cross = scores[(scores["train"] == "a") & (scores["test"] == "b") & (scores["k"] == 1)].set_index("arm")
    assert cross.loc["safety", "accuracy"] >= 0.95
    assert cross.loc["majority", "accuracy"] == pytest.approx(0.5)
    assert cross.loc["safety", "accuracy"] > cross.loc["random", "accuracy"] + 0.2
    diagonal = scores[(scores["train"] == "a") & (scores["test"] == "a") & (scores["arm"] == "safety")]
    assert (diagonal["accuracy"] >= 0.9).all()  # 2-fold cross-validation within the set


def test_guard_application_refuses_what_it_flags_and_skips_one_class_training():
    cfg = load_config("smoke", safeguard_k=1)
    informative = (0, 3)
    ranking = ranking_with_top(informative)
    acts, labels, harmful, refused = {}, {}, {}, {}
    for i, name in enumerate(("a", "b", "c")):
        acts[name], labels[name] = synthetic_set(20, i, informative)
        harmful[name] = labels[name].copy()  # every harmful prompt answered unsafely, benign ones safe
        refused[name] = np.zeros(20, dtype=bool)
    out = stage.guard_application(cfg, ranking, acts, labels, harmful, refused)
    for row in out.values():
        assert row["safety"] == 0.0 and row["guard_safety"] >= 0.9 and row["guard_overrefusal"] <= 0.1
    one_class = {name: np.zeros(20, dtype=np.int64) for name in acts}  # a model that refuses everything harmful
    skipped = stage.guard_application(cfg, ranking, acts, one_class, harmful, {n: harmful[n].astype(bool) for n in acts})
    assert all(math.isnan(row["guard_safety"]) and row["safety"] == 1.0 for row in skipped.values())


def test_safeguard_metrics_keys():
    cfg = load_config("smoke", safeguard_ks=(2,), safeguard_random_seeds=(0,))
    ranking = ranking_with_top((1, 1))
    acts, labels = {}, {}
    for i, name in enumerate(("harmbench", "jailbreak")):
        acts[name], labels[name] = synthetic_set(20, i, (1, 1))
    scores = stage.score_matrix(cfg, ranking, acts, labels, progress=False)
    guard = {"m1": {"harmbench": {"safety": 0.0, "overrefusal": 0.0, "guard_safety": 1.0, "guard_overrefusal": 0.1}}}
    flat = flatten_metrics(stage.safeguard_metrics(cfg, scores, guard, 12.5, 3.0))
    for key in ("acc.harmbench.jailbreak.k2.safety", "acc.harmbench.harmbench.k2.random_last",
                "auroc.jailbreak.harmbench.k2.majority", "guard.m1.harmbench.guard_safety", "latency_us.classifier", "seconds"):
        assert key in flat, key
