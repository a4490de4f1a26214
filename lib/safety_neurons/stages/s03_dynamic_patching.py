"""Stage 03 (dynamic_patching): the k sweep, the random baseline, ablations and the causal effect.

Every generation run ("arm": M1, M2, top-k safety neurons at k%, random neurons at k% and seed s,
all neurons, ablations) is judged per prompt and kept in the run's arm store (study/arms.py), so an
interrupted sweep resumes at the next unfinished arm and later stages reuse what this one generated.
Per-prompt rows (prompt, arm, k, seed, answer, verdict) make every
figure recomputable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import RunConfig
from ..lm.generation import Generation
from ..study.arms import (JUDGE, Arm, ablation_key, arm_id, arm_key, effect_defined, generation_options, mean_over_seeds,
                          pct_label, refused_already, run_arm)
from ..study.paths import DYNAMIC_PATCHING

STAGE = DYNAMIC_PATCHING


def results_table(arms: list[Arm], prompts: list[str]):
    """One row per (arm, prompt): the per-prompt results every figure is computed from."""
    import pandas as pd

    rows = [{"arm": a.name, "k_pct": a.k_pct, "seed": a.seed, "prompt_index": i, "prompt": p, "answer": ans,
             "refused": r, "judge": JUDGE}
            for a in arms for i, (p, ans, r) in enumerate(zip(prompts, a.answers, a.refused))]
    return pd.DataFrame(rows)


def effect_table(cfg: RunConfig, m1: Arm, m2: Arm, safety: dict[float, Arm], random: dict[float, list[Arm]]):
    """Per k: safety score and causal effect C with bootstrap 95% intervals, for both arms,
    and the paired test of safety vs random neurons on the same prompts."""
    import pandas as pd

    from ..method.stats import bootstrap_causal_effect, paired_test

    defined = effect_defined(m1, m2)
    if not defined:
        import warnings

        warnings.warn(f"M2 is no safer than M1 on these prompts (both score {m1.score.mean():.3f} under {JUDGE}): "
                      "the causal effect C is undefined and reported as NaN", stacklevel=2)
    nan = (math.nan, math.nan, math.nan)

    def effect(scores):
        return tuple(bootstrap_causal_effect(scores, m1.score, m2.score, n_boot=cfg.bootstrap_samples, seed=cfg.seed)) if defined else nan

    rows = []
    for pct in sorted(safety):
        s_safe, s_rand = safety[pct].score, mean_over_seeds(random[pct])
        c_safe, c_rand = effect(s_safe), effect(s_rand)
        rows.append({"k_pct": pct, "safety": s_safe.mean(), "random": s_rand.mean(),
                     "random_sd_over_seeds": float(np.std([a.score.mean() for a in random[pct]])),
                     "C_safety": c_safe[0], "C_safety_lo": c_safe[1], "C_safety_hi": c_safe[2],
                     "C_random": c_rand[0], "C_random_lo": c_rand[1], "C_random_hi": c_rand[2],
                     "pvalue": paired_test(s_safe, s_rand, seed=cfg.seed)})
    return pd.DataFrame(rows)


def smallest_k(effects, threshold: float = 0.9) -> float:
    """The smallest k% whose C reaches `threshold` (NaN if none does)."""
    hit = effects[effects["C_safety"] >= threshold]
    return float(hit["k_pct"].min()) if len(hit) else math.nan


def at_pct(effects, pct: float):
    rows = effects[np.isclose(effects["k_pct"], pct)]
    if not len(rows):
        raise ValueError(f"the sweep has no k = {pct:g}%: add it to patch_k_pcts")
    return rows.iloc[0]


def patching_metrics(cfg: RunConfig, effects, sweep: "Sweep", seconds: float, continuous=None) -> dict:
    """Metrics of stage 03. `C.<arm>.k<pct>` with `.lo`/`.hi` bounds under the refusal-phrase judge, the same
    as `C.phrase.<arm>.k<pct>`; with `continuous` (continuous_effects' table) `C.<measure>.<arm>.k<pct>` and
    `pvalue.<measure>.k<pct>` for the logodds and likelihood measures. The throughput compares the patched
    runs at the headline k with M1's plain HF generate."""
    from ..method.stats import causal_effect

    m1, m2, all_arm, ablations = sweep.m1, sweep.m2, sweep.all_neurons, sweep.ablations
    two_model = sweep.two_model
    fast = sweep.safety[cfg.headline_pct] if cfg.patch_path == "fast" else two_model

    metrics: dict = {"safety": {"m1": m1.score.mean(), "m2": m2.score.mean()}, "C": {"safety": {}, "random": {}}}
    for _, row in effects.iterrows():
        label = f"k{pct_label(row['k_pct'])}"
        for arm in ("safety", "random"):
            metrics["C"][arm] |= {label: row[f"C_{arm}"], f"{label}.lo": row[f"C_{arm}_lo"], f"{label}.hi": row[f"C_{arm}_hi"]}
    five = at_pct(effects, cfg.headline_pct)
    metrics["C"]["safety"]["at_5pct"] = five["C_safety"]
    metrics["C"]["random"]["at_5pct"] = five["C_random"]
    defined = effect_defined(m1, m2)
    metrics["C"]["all_neurons"] = causal_effect(all_arm.score.mean(), m1.score.mean(), m2.score.mean()) if defined else math.nan
    metrics["pvalue"] = {"at_5pct": five["pvalue"]}
    metrics["k_pct_for_C90"] = smallest_k(effects)
    metrics["ablation"] = {mode.split("_")[0]: {"at_5pct": arm.score.mean()} for mode, arm in ablations.items()}
    # M1's arm is plain HF generate: the throughput reference
    metrics["throughput"] = {"plain_tok_s": m1.tokens_per_second, "patched_tok_s": two_model.tokens_per_second,
                             "fast_tok_s": fast.tokens_per_second,
                             "patched_over_plain": two_model.tokens_per_second / m1.tokens_per_second,
                             "fast_over_plain": fast.tokens_per_second / m1.tokens_per_second}
    metrics["fast_equals_two_model"] = float(np.mean([a == b for a, b in zip(fast.answers, two_model.answers)]))
    metrics["all_neurons_equals_m2"] = float(np.mean([a == b for a, b in zip(all_arm.answers, m2.answers)]))
    metrics["C"]["phrase"] = {"safety": dict(metrics["C"]["safety"]), "random": dict(metrics["C"]["random"])}
    if continuous is not None:
        from ..study.effects import continuous_metrics

        extra = continuous_metrics(continuous)
        for measure, by_arm in extra["C"].items():  # merged: the phrase judge's rows join its own arms
            for arm, values in by_arm.items():
                metrics["C"].setdefault(measure, {}).setdefault(arm, {}).update(values)
        metrics["pvalue"] |= extra["pvalue"]
    metrics["seconds"] = seconds
    return metrics


@dataclass
class Sweep:
    """Every arm of the stage, by role."""

    m1: Arm  # plain HF generate
    m2: Arm
    all_neurons: Arm
    safety: dict[float, Arm]
    random: dict[float, list[Arm]]
    ablations: dict[str, Arm]
    two_model: Arm

    def arms(self) -> list[Arm]:
        return [self.m1, self.m2, self.all_neurons, *self.safety.values(),
                *[a for arms in self.random.values() for a in arms], *self.ablations.values(), self.two_model]


def run_sweep(cfg: RunConfig, m1, m2, adapter: Path, ranking, prompt_ids: list[list[int]], *,
              progress: bool = True) -> Sweep:
    """All arms of the stage. `m1` is the M1 bridge (the fast path's base), `m2` the folded M2 bridge
    (the two-model path, M2's own answers and the ablations), `ranking` a NeuronRanking."""
    from tqdm.auto import tqdm

    from ..lm.generation import greedy_generate
    from ..method.neurons import k_from_percent, random_neurons
    from ..method.patching import (SharedM2Prefill, ablated_generate, fast_patched_generate, ia3_neuron_scales, patched_generate)

    from ..lm.models import adapter_digest

    n_neurons, d_mlp = ranking.n_neurons, ranking.d_mlp
    digest = adapter_digest(adapter)
    opts = generation_options(cfg)
    scales = ia3_neuron_scales(adapter, ranking.n_layers, d_mlp, base=m1) if cfg.patch_path == "fast" else None
    # M2 sees only the prompt at prefill, so every fast arm can share its prefill of each batch.
    shared = SharedM2Prefill()

    # Rows whose opening already holds a refusal phrase stop there: the judge's verdict cannot change
    # any more (it only looks for phrases in the opening), so the rest is not worth generating. The
    # arms that are compared token for token (M1, all neurons, the headline k on both paths) run in full.
    early = dict(opts, stop_when=refused_already)
    Planned = tuple[str, float, "int | None", str, Callable[[list[list[int]]], list[Generation]], bool]

    def patch(name: str, pct: float, seed: int | None, neurons, path: str = cfg.patch_path, full: bool = False) -> Planned:
        kw = opts if full else early
        key = arm_key(cfg, prompt_ids, path, digest, neurons)
        if path == "fast":
            return name, pct, seed, key, lambda ids: fast_patched_generate(m1, scales, ids, neurons, shared_prefill=shared, **kw), not full
        return name, pct, seed, key, lambda ids: patched_generate(m1, m2, ids, neurons, **kw), not full

    # M1's answers come from plain HF generate (also the throughput reference); that the patching
    # loop with no neurons gives the same tokens is a unit test, not worth an arm of the sweep.
    plan: list[Planned] = [
        ("m1", 0.0, None, arm_key(cfg, prompt_ids, "generate", None), lambda ids: greedy_generate(m1, ids, **opts), False),
        ("m2", 100.0, None, arm_key(cfg, prompt_ids, "generate", digest), lambda ids: greedy_generate(m2, ids, **opts), False),
        patch("all", 100.0, None, ranking.top(n_neurons), full=True),
    ]
    for pct in cfg.patch_k_pcts:
        top = ranking.top(k_from_percent(pct, n_neurons))
        plan.append(patch("safety", pct, None, top, full=pct == cfg.headline_pct))
        plan += [patch("random", pct, s, random_neurons(top, d_mlp, s)) for s in cfg.patch_random_seeds]
    head = ranking.top(k_from_percent(cfg.headline_pct, n_neurons))
    means = ranking.extras.get("mean_m2")
    plan += [
        patch("safety_two_model", cfg.headline_pct, None, head, "two_model", full=True),
        ("zero_ablation", cfg.headline_pct, None, ablation_key(cfg, prompt_ids, "zero", digest, head, ranking),
         lambda ids: ablated_generate(m2, ids, head, mode="zero", **early), True),
    ]
    if means is not None:
        plan.append(("mean_ablation", cfg.headline_pct, None, ablation_key(cfg, prompt_ids, "mean", digest, head, ranking),
                     lambda ids: ablated_generate(m2, ids, head, mode="mean", means=means, **early), True))
    # The headline arms first (M1, M2, the headline k, its random seeds, the two-model check, all
    # neurons): an interrupted sweep has the central numbers before the rest of the k grid.
    def priority(item: Planned) -> int:
        name, pct = item[0], item[1]
        return 0 if name in ("m1", "m2") else 1 if pct == cfg.headline_pct else 2 if name == "all" else 3

    plan.sort(key=priority)
    done: dict[tuple[str, float, int | None], Arm] = {}
    bar = tqdm(plan, desc="patching arms", unit="arm", disable=not progress)
    for name, pct, seed, key, generate, stops_early in bar:
        bar.set_postfix_str(arm_id(name, pct, seed))
        done[(name, pct, seed)] = run_arm(cfg, name, pct, seed, key, generate, prompt_ids, early=stops_early)
    return Sweep(
        m1=done[("m1", 0.0, None)], m2=done[("m2", 100.0, None)],
        all_neurons=done[("all", 100.0, None)],
        safety={p: done[("safety", p, None)] for p in cfg.patch_k_pcts},
        random={p: [done[("random", p, s)] for s in cfg.patch_random_seeds] for p in cfg.patch_k_pcts},
        ablations={n: a for (n, _, _), a in done.items() if n.endswith("_ablation")},
        two_model=done[("safety_two_model", cfg.headline_pct, None)],
    )


def alternative_phrase_effects(cfg: RunConfig, m1, m2, adapter: Path, alternatives: dict, prompts: list[str], sweep: Sweep):
    """C under the refusal-phrase judge (greedy answers) of the other rankings' top headline-k neurons
    (`alternatives`: {name: ranking}), between the sweep's M1 and M2 arms; rows as study/effects'."""
    from ..method.neurons import k_from_percent
    from ..study.arms import ArmRunner
    from ..study.effects import score_effects

    runner = ArmRunner(cfg, m1, m2, adapter, early=True)
    scores = {name: runner.run(name, "patch", prompts, other.top(k_from_percent(cfg.headline_pct, other.n_neurons)).tolist()).score
              for name, other in alternatives.items()}
    return score_effects(scores, sweep.m1.score, sweep.m2.score, measure="phrase", pct=cfg.headline_pct,
                         n_boot=cfg.bootstrap_samples, seed=cfg.seed)
