"""Stages 04 (transfer_capability) and 05 (stability): how far the safety neurons reach.

04: at the headline k, safety of M1, M2, M1 patched with the top-k safety neurons and M1 patched with
layer-matched random neurons on every red-team set (held-out split); the general capability cost of the
patch (perplexity with the neurons statically patched from M2: the paper's delta-Gen) and over-refusal
on the benign held-out prompts.
05: the harmless DPO at every training seed: overlap and Spearman correlation of the rankings, and the
causal effect C at the headline k per seed.

Every generation run is an Arm in the run's arm store (patching_stage.run_arm), keyed by the prompts,
the adapter and the neurons: stage 03's HarmBench arms serve 04 and 05 as they are.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from .config import RunConfig
from .judge import PHRASE_JUDGE, parse_judge

TRANSFER_STAGE = "04_transfer_capability"
STABILITY_STAGE = "05_stability"
JUDGE = PHRASE_JUDGE
TRANSFER_ARMS = ("m1", "m2", "safety", "random")


class ArmRunner:
    """Runs and stores the four kinds of arm over any prompt list: M1 and M2 by plain generate, M1
    patched with given neurons by the configured path (fast for an (IA)^3 M2). Arms live in the run's
    arm store (patching_stage.run_arm), so one that stage 03 (or another stage) already generated from the
    same prompts, adapter and neurons is read, not regenerated; M1's arm serves every M2.

    `early`: rows may stop once the refusal-phrase verdict is final (only valid when that judge alone
    reads the answers)."""

    def __init__(self, cfg: RunConfig, m1, m2, adapter: Path, *, early: bool = False):
        from .models import adapter_digest
        from .patching import SharedM2Prefill, ia3_neuron_scales, model_shape
        from .patching_stage import generation_options, refused_already

        self.cfg, self.m1, self.m2, self.early = cfg, m1, m2, early
        self.digest = adapter_digest(adapter)
        self.shape = model_shape(m1)
        self.scales = ia3_neuron_scales(adapter, self.shape.n_layers, self.shape.d_mlp, base=m1) if cfg.patch_path == "fast" else None
        self.shared = SharedM2Prefill()
        self.opts = generation_options(cfg) | ({"stop_when": refused_already} if early else {})

    def run(self, arm: str, set_name: str, prompts: list[str], neurons=None, *, seed: int | None = None):
        """One arm ("m1", "m2" or a patched arm's name, e.g. "safety", "random") on `prompts`."""
        from .chat import encode_prompts
        from .generation import greedy_generate
        from .patching import as_neuron_list, fast_patched_generate, patched_generate
        from .patching_stage import arm_key, run_arm

        ids = encode_prompts(self.m1.tokenizer, prompts, self.cfg.chat_template)
        if arm in ("m1", "m2"):
            if neurons is not None:
                raise ValueError(f"arm {arm!r} is a plain model: it takes no neurons")
            model, digest, pct = (self.m1, None, 0.0) if arm == "m1" else (self.m2, self.digest, 100.0)
            key = arm_key(self.cfg, ids, "generate", digest)
            generate = lambda p: greedy_generate(model, p, **self.opts)  # noqa: E731
        else:
            if neurons is None:
                raise ValueError(f"arm {arm!r} patches neurons: pass the neurons (an empty list patches none)")
            pairs, pct = as_neuron_list(neurons, self.shape.n_layers, self.shape.d_mlp), self.cfg.headline_pct
            key = arm_key(self.cfg, ids, self.cfg.patch_path, self.digest, pairs)
            if self.scales is not None:
                generate = lambda p: fast_patched_generate(self.m1, self.scales, p, pairs, shared_prefill=self.shared, **self.opts)  # noqa: E731
            else:
                generate = lambda p: patched_generate(self.m1, self.m2, p, pairs, **self.opts)  # noqa: E731
        return run_arm(self.cfg, arm, pct, seed, key, generate, ids, early=self.early)


def stops_early(cfg: RunConfig) -> bool:
    """Whether the transfer answers may stop at the first refusal phrase: only when no model judge reads them."""
    return all(parse_judge(spec)[0] == JUDGE for spec in cfg.judges)


def capability_references(cfg: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Perplexity and over-refusal (benign held-out prompts refused) of M1 and of M2 as stage 01 measured
    them: its cached evaluations of the same prompts, corpus and answer length (computed if absent)."""
    from .alignment_stage import evaluate_model, evaluation_prompts, m2_adapter, model_name, text_corpus

    sets, corpus = evaluation_prompts(cfg), text_corpus(cfg)
    ppl, over = {}, {}
    for role, name, adapter in (("m1", "m1", None), ("m2", model_name("harmless", cfg.train_seeds[0]), m2_adapter(cfg))):
        evals, ppl[role] = evaluate_model(cfg, name, adapter, sets, corpus, progress=False)
        over[role] = evals["benign"].rate
    return ppl, over


def judge_scores(cfg: RunConfig, arms: dict[str, dict[str, object]], prompts: dict[str, list[str]], *,
                 progress: bool = True) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """{judge: {(set, arm): per-answer safety, 1 safe / 0 unsafe}} for every judge of `cfg.judges`, cached
    under the stage's judges/ folder by judge, prompts and answers: a model judge is loaded only if some
    answers have no cached scores, and once."""
    from tqdm.auto import tqdm

    from .io import content_key, read_json, write_json_atomic
    from .model_judges import load_judge
    from .models import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    out: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    todo = [(spec, s, a) for spec in cfg.judges for s, by_arm in arms.items() for a in by_arm]
    loaded: dict[str, object] = {}
    for spec, set_name, arm in tqdm(todo, desc="judging", unit="arm", disable=not progress):
        name, checkpoint = parse_judge(spec)
        answers = arms[set_name][arm].answers
        path = cfg.artifact_dir(TRANSFER_STAGE) / "judges" / f"{name}-{content_key(spec, prompts[set_name], answers)}.json"
        if path.exists():
            scores = read_json(path)
        else:
            if spec not in loaded:
                loaded.clear()  # one model judge in memory at a time
                loaded[spec] = load_judge(name, model=checkpoint, device=str(device), dtype=resolve_dtype(cfg.dtype, device))
            scores = [float(x) for x in loaded[spec].safety_scores(prompts[set_name], answers)]
            write_json_atomic(path, scores)
        out.setdefault(name, {})[(set_name, arm)] = np.asarray(scores, dtype=np.float64)
    return out


def judge_tables(scores: dict[str, dict[tuple[str, str], np.ndarray]]):
    """(safety of every (set, arm) under each judge, Cohen's kappa of every pair of judges on all answers pooled)."""
    import pandas as pd

    from .model_judges import agreement_table

    safety = pd.DataFrame({j: {sa: float(v.mean()) for sa, v in by.items()} for j, by in scores.items()})
    safety.index = safety.index.set_names(["set", "arm"])
    verdicts = {j: np.concatenate([by[sa] for sa in safety.index]) >= 0.5 for j, by in scores.items()}
    return safety, agreement_table(verdicts)


def headline_neurons(cfg: RunConfig, ranking):
    """The top headline-k% neurons and the first seed's layer-matched random draw."""
    from .patching import k_from_percent, random_neurons

    top = ranking.top(k_from_percent(cfg.headline_pct, ranking.n_neurons))
    return top, random_neurons(top, ranking.d_mlp, cfg.patch_random_seeds[0])


def transfer_table(arms: dict[str, dict[str, object]]):
    """Per red-team set: safety of each arm and the gains of safety-neuron patching over M1 and over random."""
    import pandas as pd

    rows = []
    for set_name, by_arm in arms.items():
        row = {"set": set_name, **{a: float(np.mean(by_arm[a].refused)) for a in TRANSFER_ARMS}}
        row |= {"gain_over_m1": row["safety"] - row["m1"], "gain_over_random": row["safety"] - row["random"]}
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


def transfer_metrics(table, ppl: dict[str, float], overrefusal: dict[str, float], seconds: float,
                     judge_safety=None, kappa=None) -> dict:
    """`transfer.<set>.{m1,m2,safety,random}`, `dgen.ppl.{m1,patched,m2}`, `overrefusal.{m1,patched,m2}`;
    with more than one judge `judge.kappa.<a>.<b>` (each pair once) and `judge.safety.<judge>.<set>.<arm>`."""
    metrics: dict = {"transfer": {s: {a: float(table.loc[s, a]) for a in (*TRANSFER_ARMS, "gain_over_m1", "gain_over_random")}
                                  for s in table.index},
                     "dgen": {"ppl": ppl}, "overrefusal": overrefusal, "seconds": seconds}
    if kappa is not None and len(kappa) > 1:
        names = list(kappa.index)
        metrics["judge"] = {"kappa": {a: {b: float(kappa.loc[a, b]) for b in names[i + 1:]} for i, a in enumerate(names[:-1])},
                            "safety": {j: {s: {a: float(judge_safety.loc[(s, a), j]) for a in judge_safety.loc[s].index}
                                           for s in judge_safety.index.get_level_values("set").unique()}
                                       for j in judge_safety.columns}}
    return metrics


def seed_effects(cfg: RunConfig, m1_arm, m2_arms: dict[int, object], patched: dict[int, object]) -> dict[int, tuple[float, float, float]]:
    """C with a bootstrap 95% interval per training seed (NaN where that M2 is no safer than M1)."""
    from .stats import bootstrap_causal_effect

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
    from .patching_stage import pct_label

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
