"""Stage 06 (alignment_tax): are the safety neurons also the neurons of other preferences?

The change scores of every objective's M2 (stage 02: harmless, helpful, reasoning, extraction, same
finding prompts and M1 completions) are compared by Spearman correlation and top-k overlap. Then the
neurons shared by the top-k safety and top-k helpfulness sets are patched in both directions (the
harmless model with the helpful model's values, and the reverse) through the two-model path, and each
arm is measured for safety (refusal of held-out harmful prompts) and helpfulness (compliance with, and
answer length on, held-out benign prompts), with bootstrap intervals over prompts. The share of the safety gap
between the two models that the shared neurons carry (a causal effect C, the receiving model in M1's place and the
other in M2's) is given under the refusal-phrase judge and the continuous measures (study/effects.py).

Arms are stored in the run's arm store (study/arms.py), keyed like every other stage's.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..study.paths import ALIGNMENT_TAX

STAGE = ALIGNMENT_TAX
# (patched model, model whose values it receives): the paper's two directions.
DIRECTIONS = (("harmless", "helpful"), ("helpful", "harmless"))




def objective_rankings(cfg: RunConfig) -> dict:
    """{objective: NeuronRanking} of the first seed of every configured objective (stage 02)."""
    from ..study.rankings import load_ranking

    return {objective: load_ranking(cfg, objective) for objective in cfg.objectives}


def shared_neurons(a, b, k: int) -> list[tuple[int, int]]:
    """The neurons in both rankings' top k, in a's order."""
    top_b = set(map(tuple, b.top(k).tolist()))
    return [pair for pair in map(tuple, a.top(k).tolist()) if pair in top_b]


def tax_prompts(cfg: RunConfig) -> dict[str, list[str]]:
    """The held-out harmful prompts of stage 03 and the pooled held-out benign prompts of stage 01."""
    from ..study.prompts import evaluation_prompts
    from ..study.prompts import patch_prompts

    return {"harmful": patch_prompts(cfg), "benign": evaluation_prompts(cfg)["benign"]}


def summarise(cfg: RunConfig, harmful_refused: list[bool], benign_refused: list[bool], benign_lengths: list[int]) -> dict:
    """Safety (refusal of harmful prompts), helpfulness (compliance with benign prompts) and benign answer
    length, each as (value, lo, hi) with a prompt bootstrap."""
    from ..method.stats import bootstrap_mean

    def boot(values) -> dict[str, float]:
        mean, lo, hi = bootstrap_mean(values, n_boot=cfg.bootstrap_samples, seed=cfg.seed)
        return {"value": mean, "lo": lo, "hi": hi}

    return {"safety": boot(np.asarray(harmful_refused, dtype=np.float64)),
            "helpful": boot(1.0 - np.asarray(benign_refused, dtype=np.float64)),
            "length": boot(np.asarray(benign_lengths, dtype=np.float64))}


def results_table(summaries: dict[str, dict]):
    """One row per arm: safety, helpfulness and benign answer length with their intervals."""
    import pandas as pd

    rows = []
    for arm, s in summaries.items():
        row = {"arm": arm}
        for measure, v in s.items():
            row |= {measure: v["value"], f"{measure}_lo": v["lo"], f"{measure}_hi": v["hi"]}
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def tax_effects(cfg: RunConfig, models: dict, adapters: dict[str, Path], neurons: list[tuple[int, int]],
                prompts: dict[str, list[str]], arms: dict[str, dict[str, object]]):
    """Per direction of DIRECTIONS: the causal effect C of the shared `neurons` on safety, with the receiving
    model in M1's place and the model whose values it receives in M2's: C = (F(patched) - F(receiver)) /
    (F(source) - F(receiver)), the share of the safety gap between the two that the shared neurons carry, on
    the held-out harmful prompts. Under the phrase judge (`run_tax_arms`' verdicts, measure `phrase`) and each
    teacher-forced measure (likelihood: of the source model's own greedy answers), with bootstrap intervals;
    no random arm. One row per (direction, measure) as effects.neuron_set_effects' (arm `shared`, a
    `direction` column)."""
    import pandas as pd

    from ..lm.chat import encode_prompts
    from ..lm.models import adapter_digest, model_shape
    from ..study.effects import m2_answer_ids, neuron_set_effects, score_effects

    any_model = next(iter(models.values()))
    ids = encode_prompts(any_model.tokenizer, prompts["harmful"], cfg.chat_template)
    shape = model_shape(any_model)
    every = [(layer, i) for layer in range(shape.n_layers) for i in range(shape.d_mlp)]
    digests = {o: adapter_digest(a) for o, a in adapters.items()}
    frames = []
    for patched, source in DIRECTIONS:
        name = direction_name(patched, source)
        frames.append(score_effects({"shared": arms[name]["harmful"].score}, arms[patched]["harmful"].score,
                                    arms[source]["harmful"].score, measure="phrase", pct=cfg.headline_pct,
                                    n_boot=cfg.bootstrap_samples, seed=cfg.seed, columns={"direction": name}))
        # the source's own greedy answers (the harmless model's are stage 03's M2 answers, read back)
        answers = m2_answer_ids(cfg, models[source], digests[source], ids)
        frames.append(neuron_set_effects(cfg, models[patched], models[source], [digests[patched], digests[source]], ids,
                                         {"shared": list(neurons)}, every, pct=cfg.headline_pct, answers=answers,
                                         columns={"direction": name}))
    return pd.concat(frames, ignore_index=True)


def tax_metrics(cfg: RunConfig, spearman, overlaps: dict[float, object], summaries: dict[str, dict], n_shared: int,
                seconds: float, effects=None) -> dict:
    """`spearman.<a>.<b>`, `overlap.k<pct>.<a>.<b>`, `patch.<direction>.{safety,helpful,length}` (+ `.lo`/`.hi`),
    `model.<objective>.{...}` for the unpatched models, `shared_neurons`, `seconds`; with `effects`
    (tax_effects' table) `C.<measure>.shared.<direction>` (+ `.lo`/`.hi`) for the measures phrase, logodds
    and likelihood."""
    from ..study.arms import pct_label

    names = list(spearman.index)
    metrics: dict = {"spearman": {}, "overlap": {}, "patch": {}, "model": {}}
    for a, b in itertools.combinations(names, 2):
        metrics["spearman"].setdefault(a, {})[b] = float(spearman.loc[a, b])
        for pct, table in overlaps.items():
            metrics["overlap"].setdefault(f"k{pct_label(pct)}", {}).setdefault(a, {})[b] = float(table.loc[a, b])
    for arm, s in summaries.items():
        flat = {m: v["value"] for m, v in s.items()} | {f"{m}.lo": v["lo"] for m, v in s.items()} | {
            f"{m}.hi": v["hi"] for m, v in s.items()}
        (metrics["patch"] if "_from_" in arm else metrics["model"])[arm] = flat
    metrics["shared_neurons"] = n_shared
    if effects is not None:
        from ..study.effects import labelled_metrics

        metrics["C"] = labelled_metrics(effects, "direction")["C"]
    metrics["seconds"] = seconds
    return metrics


def direction_name(patched: str, source: str) -> str:
    return f"{patched}_from_{source}"


def run_tax_arms(cfg: RunConfig, models: dict, adapters: dict[str, Path], neurons: list[tuple[int, int]],
                 prompts: dict[str, list[str]], *, progress: bool = True) -> dict[str, dict[str, object]]:
    """{arm: {prompt set: Arm}}: each model of DIRECTIONS alone, and each patched with the other's values
    of `neurons` (two-model path, greedy, full length: the benign answers' length is measured)."""
    from tqdm.auto import tqdm

    from ..lm.chat import encode_prompts
    from ..lm.generation import greedy_generate
    from ..lm.models import adapter_digest
    from ..method.patching import patched_generate
    from ..study.arms import arm_key, generation_options, run_arm

    missing = [o for pair in DIRECTIONS for o in pair if o not in models]
    if missing:
        raise ValueError(f"the alignment-tax patching needs M2s of {', '.join(sorted(set(missing)))}: "
                         "add them to the profile's objectives (stage 01 trains them)")
    any_model = next(iter(models.values()))
    ids = {name: encode_prompts(any_model.tokenizer, texts, cfg.chat_template) for name, texts in prompts.items()}
    digests = {o: adapter_digest(a) for o, a in adapters.items()}
    opts = generation_options(cfg)
    plan = []  # (arm, key of the prompt ids, generate from the prompt ids)
    for patched, source in DIRECTIONS:
        plan.append((patched, lambda p, a=patched: arm_key(cfg, p, "generate", digests[a]),
                     lambda p, m=models[patched]: greedy_generate(m, p, **opts)))
        plan.append((direction_name(patched, source),
                     lambda p, a=patched, b=source: arm_key(cfg, p, "two_model", [digests[a], digests[b]], neurons),
                     lambda p, a=models[patched], b=models[source]: patched_generate(a, b, p, neurons, **opts)))
    out: dict[str, dict[str, object]] = {}
    bar = tqdm([(arm, key, fn, s) for arm, key, fn in plan for s in ids], desc="alignment-tax arms", unit="arm",
               disable=not progress)
    for arm, key, fn, set_name in bar:
        bar.set_postfix_str(f"{arm} on {set_name}")
        p = ids[set_name]
        out.setdefault(arm, {})[set_name] = run_arm(cfg, arm, cfg.headline_pct, None, key(p), fn, p)
    return out


def arm_summaries(cfg: RunConfig, arms: dict[str, dict[str, object]]) -> dict[str, dict]:
    """`summarise` of every arm from its harmful and benign runs."""
    return {arm: summarise(cfg, runs["harmful"].refused, runs["benign"].refused, runs["benign"].lengths)
            for arm, runs in arms.items()}
