"""Stage 05 (stability): the harmless DPO at every training seed. Overlap and Spearman correlation of
the seeds' rankings, and the causal effect C at the headline k per seed, under the refusal-phrase judge
and the continuous measures (study/effects.py). Its arms come from the run's arm store (study/arms.py)
and its measure values from the run's measure store: stage 03's HarmBench arms and values of the first
seed are read, not recomputed.
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


def seed_measure_effects(cfg: RunConfig, m1, m2, adapter, ranking, prompt_ids: list[list[int]], seed: int):
    """C of each teacher-forced measure (logodds, likelihood) for one training seed: M1 with that seed's
    top headline-k neurons patched from that seed's M2, between M1 and that M2. Rows as
    effects.neuron_set_effects' (arm `per_seed`, a `seed` column); no random arm (the stage has none)."""
    from ..lm.models import adapter_digest
    from ..study.effects import neuron_set_effects
    from ..study.rankings import headline_neurons

    top, _ = headline_neurons(cfg, ranking)
    return neuron_set_effects(cfg, m1, m2, adapter_digest(adapter), prompt_ids, {"per_seed": top.tolist()},
                              ranking.top(ranking.n_neurons).tolist(), pct=cfg.headline_pct, columns={"seed": seed})


def seed_effect_table(cfg: RunConfig, effects: dict[int, tuple], measured=None):
    """The phrase judge's per-seed C (`seed_effects`) as rows of an effect table (measure `phrase`), with
    the continuous measures' rows (`seed_measure_effects`, concatenated) after them."""
    import pandas as pd

    phrase = pd.DataFrame([{"measure": "phrase", "arm": "per_seed", "k_pct": cfg.headline_pct, "C": c, "lo": lo, "hi": hi,
                            "seed": seed} for seed, (c, lo, hi) in effects.items()])
    return pd.concat([phrase, measured], ignore_index=True) if measured is not None else phrase


def stability_metrics(rankings: dict, overlaps: dict[float, object], spearman, effects: dict[int, tuple], seconds: float,
                      measured=None) -> dict:
    """`overlap.k<pct>.{mean,min}`, `spearman.{mean,min}`, `C.per_seed.<seed>` (+ `.lo`/`.hi`, the phrase
    judge's); with `measured` (seed_measure_effects' rows) `C.<measure>.per_seed.<seed>` (+ `.lo`/`.hi`)."""
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
    if measured is not None:
        from ..study.effects import labelled_metrics

        metrics["C"] |= labelled_metrics(measured, "seed")["C"]
    return metrics
