"""Stage 05 plumbing: seed effects and stability metric keys."""
import math

import pytest
import torch

from safety_neurons.config import load_config
from safety_neurons.io import flatten_metrics
from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.stages import s05_stability as stage
from safety_neurons.study.arms import Arm
from safety_neurons.study.rankings import overlap_matrix, spearman_matrix


def arm(refused):
    return Arm("a", 5.0, None, ["."] * len(refused), list(refused), len(refused), 1.0)



def test_stability_metrics_from_rankings_and_seed_effects():
    cfg = load_config("smoke", bootstrap_samples=50)
    base = torch.arange(12.0).reshape(2, 6)
    rankings = {"seed0": NeuronRanking("change_score", base), "seed1": NeuronRanking("change_score", base + 0.5),
                "seed2": NeuronRanking("change_score", -base)}
    overlaps = {5.0: overlap_matrix(rankings, 3)}
    m1 = arm([0, 0, 0, 0])
    effects = stage.seed_effects(cfg, m1, {0: arm([1, 1, 1, 1]), 1: arm([0, 0, 0, 0])},
                                 {0: arm([1, 1, 0, 0]), 1: arm([0, 0, 0, 0])})
    assert effects[0][0] == 0.5 and math.isnan(effects[1][0])  # seed 1's M2 is no safer than M1: C undefined
    flat = flatten_metrics(stage.stability_metrics(rankings, overlaps, spearman_matrix(rankings), effects, 2.0))
    assert flat["overlap.k5.min"] == 0.0 and flat["overlap.k5.mean"] == pytest.approx(1 / 3)
    assert flat["spearman.min"] == pytest.approx(-1.0) and flat["C.per_seed.0"] == 0.5
    assert "C.per_seed.0.lo" in flat and "seconds" in flat


def test_seed_measure_effects_are_1_with_every_neuron_and_join_the_metrics(run_root, m1, m2, adapter):
    """The continuous measures per seed: C = 1 when the 'top k' is every neuron (M2 itself), under the names
    C.<measure>.per_seed.<seed>, beside the phrase judge's C.per_seed.<seed> (unchanged)."""
    from safety_neurons.study.effects import effect_pivot

    cfg = load_config("smoke", patch_k_pcts=[100], headline_pct=100, bootstrap_samples=50)
    ranking = NeuronRanking("change_score", torch.rand(2, 64, generator=torch.Generator().manual_seed(0)))
    prompt_ids = [[1, 40, 41, 42], [1, 50, 51], [1, 60, 61, 62, 63]]
    measured = stage.seed_measure_effects(cfg, m1, m2, adapter, ranking, prompt_ids, 0)
    assert sorted(measured["measure"]) == ["likelihood", "logodds"] and set(measured["arm"]) == {"per_seed"}
    assert measured["C"].to_numpy() == pytest.approx([1.0, 1.0], abs=1e-4)
    effects = {0: (0.5, 0.2, 0.8)}
    rankings = {"seed0": ranking}
    flat = flatten_metrics(stage.stability_metrics(rankings, {100.0: overlap_matrix(rankings, 3)}, spearman_matrix(rankings),
                                                   effects, 1.0, measured))
    assert flat["C.per_seed.0"] == 0.5 and flat["C.logodds.per_seed.0"] == pytest.approx(1.0, abs=1e-4)
    for key in ("C.likelihood.per_seed.0", "C.likelihood.per_seed.0.lo", "C.logodds.per_seed.0.hi"):
        assert key in flat, key
    assert not any(k.startswith("pvalue") or ".random." in k for k in flat)  # no random arm in this stage
    wide = effect_pivot(stage.seed_effect_table(cfg, effects, measured), "seed")
    assert list(wide.columns) == ["C phrase", "C logodds", "C likelihood"] and wide.loc[0, "C phrase"] == "0.50 [0.20, 0.80]"
