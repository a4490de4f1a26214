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
