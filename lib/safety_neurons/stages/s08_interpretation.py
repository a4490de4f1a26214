"""Stage 08 (interpretation): what the safety neurons write, where safety is readable, which components
carry M2's refusal, ablation against patching, the training-free rankings patched, and targeted tuning.

Every generation run is an arm of the run's arm store (study/arms.py): the M1, M2,
patched and ablated arms that stage 03 generated from the same prompts, adapter and neurons are read,
not regenerated. Rows may stop at the first refusal phrase (only the phrase judge reads these answers).

Artifacts under runs/<name>/artifacts/08_interpretation/: the value-vector table (parquet), residuals per
model (`.npz`, by key), the traces (JSON, by key), the tuning curves (JSON per experiment and arm, by
key). A killed run resumes at the first artifact it lacks.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.registry import load_split
from ..io import cached_array, cached_json, content_key, write_parquet_atomic
from ..study.arms import JUDGE
from ..study.checkpoints import m1_key
from ..study.paths import INTERPRETATION
from ..study.prompts import round_robin

STAGE = INTERPRETATION
# direction -> (receiving prompts, source prompts) of the component trace
DIRECTIONS = {"benign_into_harmful": ("harmful", "benign"), "harmful_into_benign": ("benign", "harmful")}
INTERVENTIONS = ("zero_ablation", "mean_ablation", "patching")
TUNE_EXPERIMENTS = {"remove": "M2 trained on compliance data", "add": "M1 trained on refusal data"}
TUNE_ARMS = ("safety", "random")


# ----------------------------------------------------------------------------------------------
# value vectors
# ----------------------------------------------------------------------------------------------


def value_vectors(cfg: RunConfig, model, ranking):
    """The value-vector table of the top `value_neurons` neurons (rank, score, the tokens each way, which
    way M2's change of the neuron pushes, and `refusal_rank`: the best rank of a refusal opening's first
    token ("I", "Sorry", "Unfortunately", ...) in that direction, 1 = pushed up most), saved as parquet."""
    from ..method.interpretation import value_table
    from ..judges.refusal import refusal_start_token_ids

    k = cfg.value_neurons
    if k > ranking.n_neurons:
        raise ValueError(f"value_neurons = {k} but the model has {ranking.n_neurons} neurons: choose at most {ranking.n_neurons}")
    top = [tuple(p) for p in ranking.top(k).tolist()]
    change = None
    if "mean_m1" in ranking.extras and "mean_m2" in ranking.extras:
        diff = (ranking.extras["mean_m2"] - ranking.extras["mean_m1"]).double()
        change = [float(diff[layer, index]) for layer, index in top]
    table = value_table(model, top, n_tokens=cfg.value_tokens, change=change, rank_of=refusal_start_token_ids(model.tokenizer))
    table = table.rename(columns={"rank_of": "refusal_rank"})
    table.insert(0, "rank", range(1, k + 1))
    table.insert(3, "score", [float(ranking.scores[layer, index]) for layer, index in top])
    write_parquet_atomic(cfg.artifact_dir(STAGE) / "value_vectors.parquet", table)
    return table


def refusal_token_share(table, n_tokens: int) -> float:
    """Share of the table's neurons that push a refusal opening's first token into their top `n_tokens`."""
    return float((table["refusal_rank"] <= n_tokens).mean()) if len(table) else math.nan


# ----------------------------------------------------------------------------------------------
# probes
# ----------------------------------------------------------------------------------------------


def probe_prompts(cfg: RunConfig) -> tuple[list[str], np.ndarray]:
    """Held-out harmful prompts (taken in turn from every harmful set) then as many benign ones, with
    labels 1 (harmful) and 0 (benign)."""
    harmful = round_robin([load_split(cfg, s, "evaluation") for s in cfg.harmful_sets], cfg.probe_prompts)
    benign = round_robin([load_split(cfg, s, "evaluation") for s in cfg.benign_sets], cfg.probe_prompts)
    if not harmful or not benign:
        raise ValueError(f"probes need held-out harmful and benign prompts; got {len(harmful)} harmful and {len(benign)} "
                         "benign (check harmful_sets, benign_sets and max_prompts_per_split)")
    return harmful + benign, np.array([1] * len(harmful) + [0] * len(benign), dtype=np.int64)


def model_residuals(cfg: RunConfig, model, name: str, adapter: Path | None, prompt_ids: list[list[int]], *,
                    progress: bool = True) -> np.ndarray:
    """Last-prompt-token residuals of every layer, cached as .npy by model and prompts."""
    from ..method.interpretation import last_token_residuals
    from ..lm.models import adapter_digest

    key = content_key(m1_key(cfg), adapter_digest(adapter), prompt_ids)
    return cached_array(cfg.artifact_dir(STAGE) / "residuals" / f"{name}.npz", key,
                        lambda: last_token_residuals(model, prompt_ids, batch_size=cfg.batch_size, progress=progress,
                                                     desc=f"{name} residuals"))


def probe_table(cfg: RunConfig, residuals: dict[str, np.ndarray], labels: np.ndarray):
    """Per model and layer: cross-validated probe accuracy with the true labels and with the labels
    shuffled (the chance level a probe reaches on this many prompts and dimensions)."""
    import pandas as pd

    from ..method.interpretation import probe_accuracy

    shuffled = np.random.default_rng(cfg.seed).permutation(labels)
    tables = []
    for name, features in residuals.items():
        for kind, y in (("true", labels), ("shuffled", shuffled)):
            table = probe_accuracy(features, y, folds=cfg.probe_folds, seed=cfg.seed)
            tables.append(table.assign(model=name, labels=kind))
    return pd.concat(tables, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# component tracing
# ----------------------------------------------------------------------------------------------


def trace_prompts(cfg: RunConfig) -> dict[str, list[str]]:
    """Pairs for tracing: held-out harmful prompts of the patching set and held-out benign prompts."""
    from ..study.prompts import patch_prompts

    harmful = patch_prompts(cfg)[: cfg.trace_pairs]
    benign = round_robin([load_split(cfg, s, "evaluation") for s in cfg.benign_sets], len(harmful))
    n = min(len(harmful), len(benign))
    if n == 0:
        raise ValueError(f"tracing needs harmful and benign held-out prompts; got {len(harmful)} and {len(benign)}")
    return {"harmful": harmful[:n], "benign": benign[:n]}


def run_traces(cfg: RunConfig, model, adapter: Path | None, prompt_ids: dict[str, list[list[int]]], *,
               progress: bool = True) -> dict:
    """{direction: Trace} of the model (M2), cached as JSON by model, prompts and direction."""
    from ..method.interpretation import Trace, component_trace
    from ..lm.models import adapter_digest

    out = {}
    for direction, (receiver, source) in DIRECTIONS.items():
        key = content_key(m1_key(cfg), adapter_digest(adapter), prompt_ids[receiver], prompt_ids[source])
        value = cached_json(cfg.artifact_dir(STAGE) / "traces" / f"{direction}.json", key, meta={"judge": JUDGE}, compute=lambda: component_trace(
            model, prompt_ids[receiver], prompt_ids[source], batch_size=cfg.batch_size, progress=progress,
            desc=direction.replace("_", " ")).to_json())
        out[direction] = Trace.from_json(value)
    return out


def trace_effects(traces: dict):
    """One row per (direction, component, layer): mean change of the refusal log-odds and its share of the gap."""
    import pandas as pd

    return pd.concat([t.effects().assign(direction=d) for d, t in traces.items()], ignore_index=True)


# ----------------------------------------------------------------------------------------------
# ablation vs patching, and the training-free rankings
# ----------------------------------------------------------------------------------------------


def _ablation_arm(cfg: RunConfig, m2, digest: str | None, prompt_ids, neurons, mode: str, ranking, pct: float, seed):
    """M2 with `neurons` zero- or mean-ablated (means: M2's over the finding completions), in the arm store
    under stage 03's key for the same neurons."""
    from ..method.patching import ablated_generate
    from ..study.arms import ablation_key, generation_options, refused_already, run_arm

    means = ranking.extras.get("mean_m2") if mode == "mean" else None
    key = ablation_key(cfg, prompt_ids, mode, digest, neurons, ranking)
    opts = generation_options(cfg) | {"stop_when": refused_already}
    return run_arm(cfg, f"{mode}_ablation", pct, seed, key,
                   lambda ids: ablated_generate(m2, ids, neurons, mode=mode, means=means, **opts), prompt_ids, early=True)


def ablation_arms(cfg: RunConfig, runner, m2, ranking, prompts: list[str], *, progress: bool = True):
    """Safety (refusal-phrase, per prompt averaged) of M2 with the top-k (and layer-matched random)
    neurons zero- and mean-ablated, and of M1 with the same neurons patched from M2, at every
    `ablation_k_pcts`. Rows: k_pct, neurons (safety | random), seed, intervention, safety."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..lm.chat import encode_prompts
    from ..method.neurons import k_from_percent, random_neurons

    ids = encode_prompts(runner.m1.tokenizer, prompts, cfg.chat_template)
    modes = ["zero"] + (["mean"] if "mean_m2" in ranking.extras else [])
    rows = []
    plan = [(pct, kind, seed) for pct in cfg.ablation_k_pcts
            for kind, seed in [("safety", None)] + [("random", s) for s in cfg.ablation_random_seeds]]
    for pct, kind, seed in tqdm(plan, desc="ablation vs patching", unit="neuron set", disable=not progress):
        top = [tuple(p) for p in ranking.top(k_from_percent(pct, ranking.n_neurons)).tolist()]
        neurons = top if kind == "safety" else random_neurons(top, ranking.d_mlp, seed)
        for mode in modes:
            arm = _ablation_arm(cfg, m2, runner.digest, ids, neurons, mode, ranking, pct, seed)
            rows.append({"k_pct": pct, "neurons": kind, "seed": seed, "intervention": f"{mode}_ablation", "safety": arm.score.mean()})
        arm = runner.run(kind, cfg.harmful_sets[0], prompts, neurons, seed=seed)
        rows.append({"k_pct": pct, "neurons": kind, "seed": seed, "intervention": "patching", "safety": arm.score.mean()})
    return pd.DataFrame(rows)


def ablation_summary(table, f_m1: float, f_m2: float):
    """Per (k_pct, neurons, intervention), random seeds averaged: safety, and the change it stands for:
    for an ablation the drop from M2 (F(M2) - F), for patching the gain over M1 (F - F(M1))."""
    summary = table.groupby(["k_pct", "neurons", "intervention"], as_index=False)["safety"].mean()
    patching = summary["intervention"] == "patching"
    summary["change"] = np.where(patching, summary["safety"] - f_m1, f_m2 - summary["safety"])
    return summary


def baseline_effects(cfg: RunConfig, runner, ranking, prompts: list[str], m1_arm, m2_arm):
    """For the change-score ranking, each training-free ranking of stage 02 (`baseline_methods`) and
    layer-matched random neurons: overlap of its top 5% with the change-score top 5%, and safety and the
    causal effect C (bootstrap 95% interval) of patching its top headline_pct% into M1."""
    import pandas as pd

    from ..study.rankings import load_ranking, overlap, top_count
    from ..method.neurons import k_from_percent, random_neurons
    from ..study.arms import effect_defined
    from ..method.stats import bootstrap_causal_effect

    k = k_from_percent(cfg.headline_pct, ranking.n_neurons)
    head = [tuple(p) for p in ranking.top(k).tolist()]
    arms = {"change_score": (1.0, [runner.run("safety", cfg.harmful_sets[0], prompts, head)])}
    for method in cfg.baseline_methods:
        other = load_ranking(cfg, method=method)
        top = [tuple(p) for p in other.top(k).tolist()]
        arms[method] = (overlap(ranking, other, top_count(ranking)), [runner.run(method, cfg.harmful_sets[0], prompts, top)])
    arms["random"] = (math.nan, [runner.run("random", cfg.harmful_sets[0], prompts, random_neurons(head, ranking.d_mlp, s), seed=s)
                                 for s in cfg.ablation_random_seeds])
    defined = effect_defined(m1_arm, m2_arm)
    rows = []
    for name, (share, arm_list) in arms.items():
        scores = np.mean([a.score for a in arm_list], axis=0)
        c = tuple(bootstrap_causal_effect(scores, m1_arm.score, m2_arm.score, n_boot=cfg.bootstrap_samples, seed=cfg.seed)) \
            if defined else (math.nan,) * 3
        rows.append({"ranking": name, "overlap_top5pct": share, "safety": float(scores.mean()), "C": c[0], "C_lo": c[1], "C_hi": c[2]})
    return pd.DataFrame(rows)


def measure_effects(cfg: RunConfig, runner, ranking, prompts: list[str]):
    """The patching arms of this section under the teacher-forced measures (logodds, likelihood; study/effects.py):
    at each `ablation_k_pcts` k (and the headline k) the change-score top k (arm `change_score`) and, at the
    headline k, each training-free ranking's top k (`baseline_methods`), each against the layer-matched random
    draws of the change-score top k (`ablation_random_seeds`). C with bootstrap intervals, the random draws' C
    and each arm's paired test against them; values stage 03 stored (same prompts, neurons, seeds) are read
    back. Rows as effects.neuron_set_effects'."""
    import pandas as pd

    from ..lm.chat import encode_prompts
    from ..method.neurons import k_from_percent, random_neurons
    from ..study.effects import neuron_set_effects
    from ..study.rankings import load_ranking

    ids = encode_prompts(runner.m1.tokenizer, prompts, cfg.chat_template)
    n = ranking.n_neurons
    every = ranking.top(n).tolist()
    others = {method: load_ranking(cfg, method=method) for method in cfg.baseline_methods}
    frames = []
    for pct in sorted(set(cfg.ablation_k_pcts) | {cfg.headline_pct}):
        k = k_from_percent(pct, n)
        top = ranking.top(k).tolist()
        arms = {"change_score": top}
        if pct == cfg.headline_pct:
            arms |= {method: other.top(k).tolist() for method, other in others.items()}
        random = [random_neurons(top, ranking.d_mlp, s) for s in cfg.ablation_random_seeds]
        frames.append(neuron_set_effects(cfg, runner.m1, runner.m2, runner.digest, ids, arms, every, random, pct=pct))
    return pd.concat(frames, ignore_index=True)


def ranking_effect_table(cfg: RunConfig, baselines, measured):
    """One row per ranking at the headline k (the change score, each training-free ranking, random neurons):
    C [bootstrap 95% interval] under the phrase judge (baseline_effects) and under each teacher-forced
    measure (measure_effects), and each measure's paired test of the ranking against random neurons."""
    import pandas as pd

    def show(c, lo, hi) -> str:
        return "n/a" if c != c else f"{c:.2f} [{lo:.2f}, {hi:.2f}]"

    cells: dict = {r.ranking: {"C phrase": show(r.C, r.C_lo, r.C_hi)} for r in baselines.itertuples()}
    at = measured[np.isclose(measured["k_pct"], cfg.headline_pct)]
    for r in at.itertuples():
        cells.setdefault(r.arm, {})[f"C {r.measure}"] = show(r.C, r.lo, r.hi)
        cells[r.arm][f"p {r.measure} vs random"] = "n/a" if r.pvalue != r.pvalue else f"{r.pvalue:.3g}"
        cells.setdefault("random", {})[f"C {r.measure}"] = show(r.C_random, r.C_random_lo, r.C_random_hi)
    return pd.DataFrame.from_dict(cells, orient="index").rename_axis("ranking").fillna("")


# ----------------------------------------------------------------------------------------------
# targeted tuning
# ----------------------------------------------------------------------------------------------


def tune_examples(cfg: RunConfig, m1, experiment: str) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) from stage 01's harmless preference set (alignment split): for `remove`
    the harmful prompts with M1's own compliant answers (the rejected side), for `add` every prompt with
    the preferred answer (refusals of harmful prompts, M1's answers to benign ones), as DPO saw them."""
    from ..study.training import preference_pairs
    from ..lm.chat import encode_prompts

    if experiment not in TUNE_EXPERIMENTS:
        raise ValueError(f"unknown tuning experiment {experiment!r}; use one of {', '.join(TUNE_EXPERIMENTS)}")
    pairs = preference_pairs(cfg, "harmless", m1, progress=False)
    if experiment == "remove":
        chosen = [(p.prompt, p.rejected) for p in pairs if p.source != "benign"]
    else:
        chosen = [(p.prompt, p.chosen) for p in pairs]
    chosen = [(p, a) for p, a in chosen if a.strip()]
    if not chosen:
        raise ValueError(f"the harmless preference set has no examples for the {experiment!r} experiment")
    tok = m1.tokenizer
    prompt_ids = encode_prompts(tok, [p for p, _ in chosen], cfg.chat_template)
    return [(ids, tok(a, add_special_tokens=False)["input_ids"]) for ids, (_, a) in zip(prompt_ids, chosen)]


def tune_neurons(cfg: RunConfig, ranking) -> dict[str, list[tuple[int, int]]]:
    """{arm: neurons} of the tuning: the top tune_k_pct% and as many layer-matched random neurons
    (the first ablation random seed)."""
    from ..method.neurons import k_from_percent, random_neurons

    top = [tuple(p) for p in ranking.top(k_from_percent(cfg.tune_k_pct, ranking.n_neurons)).tolist()]
    if not top:
        raise ValueError(f"tune_k_pct = {cfg.tune_k_pct}% of {ranking.n_neurons} neurons is no neuron: raise tune_k_pct")
    return {"safety": top, "random": random_neurons(top, ranking.d_mlp, cfg.ablation_random_seeds[0])}


def tune_safety(cfg: RunConfig, model, prompt_ids: list[list[int]]) -> float:
    """Refusal-phrase safety of the model as it stands (hooks active) on held-out harmful prompts."""
    from ..lm.generation import greedy_generate
    from ..judges.refusal import refusal_judge
    from ..study.arms import generation_options, refused_already

    answers = greedy_generate(model, prompt_ids, **generation_options(cfg), stop_when=refused_already)
    return float(np.mean(refusal_judge([g.text for g in answers])))


def run_tuning(cfg: RunConfig, m1, adapter: Path, ranking, *, progress: bool = True):
    """Both experiments x both arms: safety vs step. `remove` starts from M2's scales and learns M1's
    compliant answers; `add` starts from M1 (scales 1) and learns the preferred answers. Each curve is
    cached as JSON by everything it is made from. Rows: experiment, arm, step, safety, loss."""
    import pandas as pd

    from ..lm.chat import encode_prompts
    from ..method.interpretation import NeuronScales, tune_scales
    from ..lm.models import adapter_digest
    from ..method.patching import ia3_neuron_scales
    from ..study.prompts import patch_prompts

    eval_ids = encode_prompts(m1.tokenizer, patch_prompts(cfg)[: cfg.tune_eval_prompts], cfg.chat_template)
    neurons = tune_neurons(cfg, ranking)
    m2_scales = ia3_neuron_scales(adapter, ranking.n_layers, ranking.d_mlp, base=m1)
    device = next(m1.original_model.parameters()).device
    frames = []
    for experiment in TUNE_EXPERIMENTS:
        examples = tune_examples(cfg, m1, experiment)
        base, digest = (m2_scales, adapter_digest(adapter)) if experiment == "remove" else (None, None)
        for arm, chosen in neurons.items():
            key = content_key(m1_key(cfg), digest, experiment, chosen, examples, eval_ids, cfg.tune_steps, cfg.tune_learning_rate,
                              cfg.tune_batch_size, cfg.tune_eval_every, cfg.eval_tokens, cfg.seed)

            def train():
                scales = NeuronScales(chosen, ranking.n_layers, ranking.d_mlp, base, device=device)
                return tune_scales(m1, scales, examples, steps=cfg.tune_steps, learning_rate=cfg.tune_learning_rate,
                                   batch_size=cfg.tune_batch_size, eval_every=cfg.tune_eval_every, seed=cfg.seed,
                                   evaluate=lambda: tune_safety(cfg, m1, eval_ids), progress=progress,
                                   desc=f"{experiment} / {arm}")

            curve = cached_json(cfg.artifact_dir(STAGE) / "tuning" / f"{experiment}-{arm}.json", key, train, meta={"judge": JUDGE})
            frames.append(pd.DataFrame(curve, columns=["step", "safety", "loss"]).assign(experiment=experiment, arm=arm))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def interpretation_metrics(cfg: RunConfig, *, values, probes, effects, traces: dict, ablation, f_m1: float, f_m2: float,
                           baselines, tuning, seconds: float, measured=None) -> dict:
    """Metrics of stage 08 (judge refusal-phrase; trace in refusal log-odds). `probe.acc.<model>.layer<l>`,
    `probe.best_layer.<model>`, `trace.max_effect.{attn,mlp}` (largest share of the harmful-benign log-odds
    gap one layer's component moves toward the other prompt, over layers and both directions; `min_effect`:
    the most negative, a patch that moves the receiver away from the other prompt), `ablation.drop.{safety,random}.k<pct>`
    (zero ablation; `ablation.mean_drop.*` mean ablation; `ablation.patch_gain.*` patching into M1),
    `baseline.<name>.overlap_top5pct`, `baseline.<name>.C.at_5pct`, `tune.remove.steps_to_half.{safety,random}`,
    `tune.add.safety_after.{safety,random}`. With `measured` (measure_effects' table), for the measures logodds
    and likelihood: `C.<measure>.<ranking>.k<pct>` (+ `.lo`/`.hi`; ranking change_score at every ablation k,
    the training-free ones at the headline k), `C.<measure>.random.k<pct>` and `pvalue.<measure>.<ranking>.k<pct>`
    (the ranking against the random draws)."""
    from ..method.interpretation import steps_to_fraction
    from ..study.arms import pct_label

    metrics: dict = {"probe": {"acc": {}, "best_layer": {}, "best_acc": {}, "shuffled_mean": {}}}
    for name, table in probes.groupby("model"):
        true = table[table["labels"] == "true"]
        metrics["probe"]["acc"][name] = {f"layer{int(r.layer)}": r.accuracy for r in true.itertuples()}
        best = true.loc[true["accuracy"].idxmax()]
        metrics["probe"]["best_layer"][name] = int(best["layer"])
        metrics["probe"]["best_acc"][name] = float(best["accuracy"])
        metrics["probe"]["shuffled_mean"][name] = float(table[table["labels"] == "shuffled"]["accuracy"].mean())
    trace: dict = {"logodds": {"harmful": float(np.mean(traces["benign_into_harmful"].receiver)),
                               "benign": float(np.mean(traces["harmful_into_benign"].receiver))}}
    for component, rows in effects.groupby("component"):
        defined = rows["share"].notna().any()
        for name, pick in (("max", "idxmax"), ("min", "idxmin")):
            row = rows.loc[getattr(rows["share"], pick)()] if defined else None
            trace[f"{name}_effect.{component}"] = math.nan if row is None else float(row["share"])
            trace[f"{name}_effect_layer.{component}"] = math.nan if row is None else int(row["layer"])
        for direction, by_dir in rows.groupby("direction"):
            trace[f"{direction}.max_effect.{component}"] = float(by_dir["share"].max())
    metrics["trace"] = trace
    ablation_keys = {"zero_ablation": "drop", "mean_ablation": "mean_drop", "patching": "patch_gain"}
    metrics["ablation"] = {"safety": {"m1": f_m1, "m2": f_m2}}
    for row in ablation.itertuples():
        group = metrics["ablation"].setdefault(ablation_keys[row.intervention], {}).setdefault(row.neurons, {})
        group[f"k{pct_label(row.k_pct)}"] = row.change
    metrics["baseline"] = {}
    for row in baselines.itertuples():
        entry = {"C": {"at_5pct": row.C, "at_5pct.lo": row.C_lo, "at_5pct.hi": row.C_hi}, "safety": row.safety}
        if row.ranking in cfg.baseline_methods:
            metrics["baseline"][row.ranking] = entry | {"overlap_top5pct": row.overlap_top5pct}
        else:
            metrics.setdefault("patched", {})[row.ranking] = entry
    tune: dict = {"remove": {"steps_to_half": {}, "safety_after": {}}, "add": {"safety_after": {}}}
    for (experiment, arm), curve in tuning.groupby(["experiment", "arm"]):
        points = curve.sort_values("step").to_dict("records")
        tune[experiment]["safety_after"][arm] = float(points[-1]["safety"])
        tune[experiment].setdefault("safety_start", {})[arm] = float(points[0]["safety"])
        if experiment == "remove":
            tune[experiment]["steps_to_half"][arm] = steps_to_fraction(points, 0.5)
    metrics["tune"] = tune
    if measured is not None:
        from ..study.effects import labelled_metrics

        metrics |= labelled_metrics(measured, "k_pct", pvalue_by_arm=True)
    metrics["value"] = {"refusal_token_share": refusal_token_share(values, cfg.value_tokens),
                        "refusal_rank_median": float(values["refusal_rank"].median())}
    metrics["seconds"] = seconds
    return metrics
