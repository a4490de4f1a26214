"""Stage 05 (stability): the harmless DPO at every training seed. Overlap and Spearman correlation of
the seeds' rankings, and the causal effect C at the headline k per seed. Its arms come from the run's
arm store (study/arms.py): stage 03's HarmBench arms of the first seed are read, not regenerated.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..config import RunConfig
from ..study.arms import pct_label
from ..study.paths import STABILITY

STAGE = STABILITY


def seed_effects(cfg: RunConfig, m1_arm, m2_arms: dict[int, object], patched: dict[int, object]) -> dict[int, tuple[float, float, float]]:
    """C with a bootstrap 95% interval per training seed (NaN where that M2 is no safer than M1)."""
    from ..method.stats import bootstrap_causal_effect

    out = {}
    for seed, m2 in m2_arms.items():
        s1, s2 = m1_arm.score, m2.score
        if s2.mean() == s1.mean():
            out[seed] = (math.nan, math.nan, math.nan)
        else:
            out[seed] = tuple(bootstrap_causal_effect(patched[seed].score, s1, s2, n_boot=cfg.bootstrap_samples, seed=cfg.seed))
    return out


def stability_metrics(rankings: dict, overlaps: dict[float, object], spearman, effects: dict[int, tuple], seconds: float) -> dict:
    """`overlap.k<pct>.{mean,min}`, `spearman.{mean,min}`, `C.per_seed.<seed>` (+ `.lo`/`.hi`)."""
    pairs = list(itertools.combinations(list(rankings), 2))

    def off_diagonal(table) -> list[float]:
        return [float(table.loc[a, b]) for a, b in pairs]

    metrics: dict = {"overlap": {}, "C": {"per_seed": {}}, "seconds": seconds}
    for pct, table in overlaps.items():
        values = off_diagonal(table) or [math.nan]
        metrics["overlap"][f"k{pct_label(pct)}"] = {"mean": float(np.mean(values)), "min": float(np.min(values))}
    rho = off_diagonal(spearman) or [math.nan]
    metrics["spearman"] = {"mean": float(np.mean(rho)), "min": float(np.min(rho))}
    for seed, (c, lo, hi) in effects.items():
        metrics["C"]["per_seed"] |= {str(seed): c, f"{seed}.lo": lo, f"{seed}.hi": hi}
    return metrics
