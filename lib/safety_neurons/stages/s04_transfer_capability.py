"""Stage 04 (transfer_capability): how far the safety neurons reach.

At the headline k: safety of M1, M2, M1 patched with the top-k safety neurons and M1 patched with
layer-matched random neurons on every red-team set (held-out split), and the causal effect C per set under
the refusal-phrase judge and the continuous measures (study/effects.py); the general capability cost of the
patch (perplexity with the neurons statically patched from M2: the paper's delta-Gen) and over-refusal
on the benign held-out prompts. Every generation run is an arm of the run's arm store (study/arms.py):
stage 03's HarmBench arms serve this stage as they are.
"""
from __future__ import annotations

import numpy as np

from ..config import RunConfig
from ..names import parse_judge
from ..study.arms import JUDGE
from ..study.paths import TRANSFER_CAPABILITY

STAGE = TRANSFER_CAPABILITY
TRANSFER_ARMS = ("m1", "m2", "safety", "random")


def stops_early(cfg: RunConfig) -> bool:
    """Whether the transfer answers may stop at the first refusal phrase: only when no model judge reads them."""
    return all(parse_judge(spec)[0] == JUDGE for spec in cfg.judges)


def capability_references(cfg: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Perplexity and over-refusal (benign held-out prompts refused) of M1 and of M2 as stage 01 measured
    them: its cached evaluations of the same prompts, corpus and answer length (computed if absent)."""
    from ..study.checkpoints import m2_adapter, model_name
    from ..study.prompts import evaluation_prompts, text_corpus
    from ..study.training import evaluate_model

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

    from ..io import cached_json, content_key
    from ..judges.model_judges import load_judge
    from ..lm.models import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    out: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    todo = [(spec, s, a) for spec in cfg.judges for s, by_arm in arms.items() for a in by_arm]
    loaded: dict[str, object] = {}
    for spec, set_name, arm in tqdm(todo, desc="judging", unit="arm", disable=not progress):
        name, checkpoint = parse_judge(spec)
        answers = arms[set_name][arm].answers
        path = cfg.artifact_dir(STAGE) / "judges" / f"{name}-{set_name}-{arm}.json"

        def score(spec=spec, name=name, checkpoint=checkpoint, set_name=set_name, answers=answers) -> list[float]:
            if spec not in loaded:
                loaded.clear()  # one model judge in memory at a time
                loaded[spec] = load_judge(name, model=checkpoint, device=str(device), dtype=resolve_dtype(cfg.dtype, device))
            return [float(x) for x in loaded[spec].safety_scores(prompts[set_name], answers)]

        scores = cached_json(path, content_key(spec, prompts[set_name], answers), score, field="scores")
        out.setdefault(name, {})[(set_name, arm)] = np.asarray(scores, dtype=np.float64)
    return out


def judge_tables(scores: dict[str, dict[tuple[str, str], np.ndarray]]):
    """(safety of every (set, arm) under each judge, Cohen's kappa of every pair of judges on all answers pooled)."""
    import pandas as pd

    from ..judges.model_judges import agreement_table

    safety = pd.DataFrame({j: {sa: float(v.mean()) for sa, v in by.items()} for j, by in scores.items()})
    safety.index = safety.index.set_names(["set", "arm"])
    verdicts = {j: np.concatenate([by[sa] for sa in safety.index]) >= 0.5 for j, by in scores.items()}
    return safety, agreement_table(verdicts)


def transfer_table(arms: dict[str, dict[str, object]]):
    """Per red-team set: safety of each arm and the gains of safety-neuron patching over M1 and over random."""
    import pandas as pd

    rows = []
    for set_name, by_arm in arms.items():
        row = {"set": set_name, **{a: float(np.mean(by_arm[a].refused)) for a in TRANSFER_ARMS}}
        row |= {"gain_over_m1": row["safety"] - row["m1"], "gain_over_random": row["safety"] - row["random"]}
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


def transfer_effects(cfg: RunConfig, m1, m2, adapter, ranking, prompts: dict[str, list[str]], arms: dict[str, dict[str, object]]):
    """Per red-team set: C of the top headline-k safety neurons and of the layer-matched random draw (the
    arms' neurons, `headline_neurons`) with bootstrap intervals and the paired test, under the phrase judge
    (from the arms' verdicts: measure `phrase`) and each teacher-forced measure (logodds, likelihood; read
    from the run's measure store where stage 03 stored them: its HarmBench prompts are these). One row per
    (set, measure) as effects.neuron_set_effects', with a `set` column."""
    import pandas as pd

    from ..lm.chat import encode_prompts
    from ..lm.models import adapter_digest
    from ..study.effects import neuron_set_effects, score_effects
    from ..study.rankings import headline_neurons

    top, rand = headline_neurons(cfg, ranking)
    every = ranking.top(ranking.n_neurons).tolist()
    digest = adapter_digest(adapter)
    frames = []
    for set_name, by_arm in arms.items():
        frames.append(score_effects({"safety": by_arm["safety"].score}, by_arm["m1"].score, by_arm["m2"].score,
                                    [by_arm["random"].score], measure="phrase", pct=cfg.headline_pct,
                                    n_boot=cfg.bootstrap_samples, seed=cfg.seed, columns={"set": set_name}))
        ids = encode_prompts(m1.tokenizer, prompts[set_name], cfg.chat_template)
        frames.append(neuron_set_effects(cfg, m1, m2, digest, ids, {"safety": top.tolist()}, every, [rand],
                                         pct=cfg.headline_pct, columns={"set": set_name}))
    return pd.concat(frames, ignore_index=True)


def transfer_metrics(table, ppl: dict[str, float], overrefusal: dict[str, float], seconds: float,
                     judge_safety=None, kappa=None, effects=None) -> dict:
    """`transfer.<set>.{m1,m2,safety,random}`, `dgen.ppl.{m1,patched,m2}`, `overrefusal.{m1,patched,m2}`;
    with more than one judge `judge.kappa.<a>.<b>` (each pair once) and `judge.safety.<judge>.<set>.<arm>`;
    with `effects` (transfer_effects' table) `C.<measure>.{safety,random}.<set>` (+ `.lo`/`.hi`) and
    `pvalue.<measure>.<set>` for the measures phrase, logodds and likelihood."""
    metrics: dict = {"transfer": {s: {a: float(table.loc[s, a]) for a in (*TRANSFER_ARMS, "gain_over_m1", "gain_over_random")}
                                  for s in table.index},
                     "dgen": {"ppl": ppl}, "overrefusal": overrefusal, "seconds": seconds}
    if kappa is not None and len(kappa) > 1:
        names = list(kappa.index)
        metrics["judge"] = {"kappa": {a: {b: float(kappa.loc[a, b]) for b in names[i + 1:]} for i, a in enumerate(names[:-1])},
                            "safety": {j: {s: {a: float(judge_safety.loc[(s, a), j]) for a in judge_safety.loc[s].index}
                                           for s in judge_safety.index.get_level_values("set").unique()}
                                       for j in judge_safety.columns}}
    if effects is not None:
        from ..study.effects import labelled_metrics

        metrics |= labelled_metrics(effects, "set")
    return metrics


