"""Stage 07 (safeguard): flag a harmful answer from the safety neurons before it is generated.

For every harmful prompt set, a guard set = its held-out prompts plus a disjoint share of the benign
held-out prompts. Label of a prompt for a guarded model: 1 (unsafe) when the prompt is harmful and the
model's own greedy answer does not refuse (judge: refusal-phrase); benign prompts are 0 (a refusal
judge cannot call an answer to a benign prompt unsafe). Features: the guarded model's hook_post at the
last prompt token (`safeguard.last_token_activations`). The classifier is trained on one set and
tested on every other (in-set: 2-fold cross-validation), k swept, against layer-matched random
neurons, random neurons of the last layer and the majority class.

Artifacts under runs/<name>/artifacts/07_safeguard/: answers per (model, set) (cached by key),
activations per model (`.npz`, cached by key), the scores table (parquet) and the saved safeguard of M1.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.registry import load_split
from ..io import cached_array, cached_json, content_key
from ..judges.refusal import refusal_judge
from ..lm.chat import ENCODING
from ..study.arms import JUDGE, generation_options
from ..study.checkpoints import m1_key
from ..study.paths import SAFEGUARD
from ..study.prompts import round_robin

STAGE = SAFEGUARD
ARMS = ("safety", "random", "random_last", "majority")


def guard_sets(cfg: RunConfig) -> dict[str, tuple[list[str], np.ndarray]]:
    """{harmful set: (prompts, is_harmful)}: its held-out prompts, then its own share of the benign
    held-out prompts (the benign pool dealt out in turn, so no benign prompt is in two sets)."""
    benign = round_robin([load_split(cfg, s, "evaluation") for s in cfg.benign_sets], 10**9)
    n_sets = len(cfg.harmful_sets)
    out = {}
    for i, name in enumerate(cfg.harmful_sets):
        harmful = load_split(cfg, name, "evaluation")[: cfg.safeguard_prompts or None]
        own_benign = benign[i::n_sets][: len(harmful)]
        if not harmful or not own_benign:
            raise ValueError(f"guard set {name!r} has {len(harmful)} harmful and {len(own_benign)} benign held-out prompts: "
                             "both are needed (raise max_prompts_per_split or safeguard_prompts)")
        out[name] = (harmful + own_benign, np.array([1] * len(harmful) + [0] * len(own_benign), dtype=np.int64))
    return out


def model_answers(cfg: RunConfig, model, name: str, adapter: Path | None, set_name: str, prompts: list[str], *,
                  progress: bool = True) -> list[str]:
    """The model's greedy answers (eval_tokens long), cached by model, prompts and length."""
    from ..lm.generation import answer_prompts
    from ..lm.models import adapter_digest

    key = content_key(m1_key(cfg), adapter_digest(adapter), prompts, cfg.chat_template, ENCODING, cfg.eval_tokens)
    opts = generation_options(cfg) | {"progress": progress}
    return cached_json(cfg.artifact_dir(STAGE) / "answers" / f"{name}-{set_name}.json", key,
                       lambda: [g.text for g in answer_prompts(model, prompts, template=cfg.chat_template,
                                                               desc=f"{name} on {set_name}", **opts)],
                       field="answers", meta={"judge": JUDGE})


def unsafe_labels(is_harmful: np.ndarray, answers: list[str]) -> np.ndarray:
    """1 where a harmful prompt got an answer that does not refuse (refusal-phrase judge)."""
    refused = np.array(refusal_judge(answers), dtype=bool)
    return (is_harmful.astype(bool) & ~refused).astype(np.int64)


def model_activations(cfg: RunConfig, model, name: str, adapter: Path | None, prompts: list[str], *,
                      progress: bool = True) -> np.ndarray:
    """Last-prompt-token activations of every neuron, cached by model and prompts."""
    from ..lm.chat import encode_prompts
    from ..lm.models import adapter_digest
    from ..method.safeguard import last_token_activations

    ids = encode_prompts(model.tokenizer, prompts, cfg.chat_template)
    key = content_key(m1_key(cfg), adapter_digest(adapter), ids)
    return cached_array(cfg.artifact_dir(STAGE) / "activations" / f"{name}.npz", key,
                        lambda: last_token_activations(model, ids, batch_size=cfg.batch_size, progress=progress,
                                                       desc=f"{name} activations"))


def feature_sets(cfg: RunConfig, ranking, k: int) -> dict[str, list[list[tuple[int, int]]]]:
    """{arm: one neuron list per seed}: the top-k safety neurons, layer-matched random neurons and
    random neurons of the last layer (cfg.safeguard_random_seeds each)."""
    from ..method.neurons import random_neurons
    from ..method.safeguard import random_last_layer_neurons

    top = ranking.top(k)
    seeds = cfg.safeguard_random_seeds
    return {"safety": [top],
            "random": [random_neurons(top, ranking.d_mlp, s) for s in seeds],
            "random_last": [random_last_layer_neurons(k, ranking.n_layers, ranking.d_mlp, s) for s in seeds]}


def _fit_score(acts_train, y_train, acts_test, y_test, neurons, shape, seed: int) -> dict[str, float]:
    from ..method.safeguard import Safeguard, classification_scores

    if np.unique(y_train).size < 2:
        return {"accuracy": math.nan, "f1": math.nan, "auroc": math.nan}
    guard = Safeguard.fit(acts_train, y_train, neurons, n_layers=shape[0], d_mlp=shape[1], seed=seed)
    return classification_scores(y_test, guard.predict_proba_from_activations(acts_test))


def _folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two stratified folds (train, test) of one set: the in-set cell of the matrix."""
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(y, minlength=2).min() < 2:
        return []
    return list(StratifiedKFold(n_splits=2, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def score_matrix(cfg: RunConfig, ranking, acts: dict[str, np.ndarray], labels: dict[str, np.ndarray], *,
                 progress: bool = True):
    """One row per (train set, test set, k, arm): accuracy, F1 and AUROC (random arms: mean over seeds)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..method.safeguard import majority_scores

    shape = (ranking.n_layers, ranking.d_mlp)
    ks = [k for k in cfg.safeguard_ks if k <= min(ranking.n_neurons, ranking.d_mlp)]
    rows = []
    names = list(acts)
    for k in tqdm(ks, desc="safeguard k sweep", unit="k", disable=not progress):
        arms = feature_sets(cfg, ranking, k)
        for train in names:
            for test in names:
                if train == test:
                    splits = [(acts[train][a], labels[train][a], acts[train][b], labels[train][b])
                              for a, b in _folds(labels[train], cfg.seed)]
                else:
                    splits = [(acts[train], labels[train], acts[test], labels[test])]
                for arm, neuron_lists in arms.items():
                    scores = [_fit_score(*split, neurons, shape, cfg.seed) for neurons in neuron_lists for split in splits]
                    rows.append({"train": train, "test": test, "k": k, "arm": arm, **_mean(scores)})
                rows.append({"train": train, "test": test, "k": k, "arm": "majority",
                             **_mean([majority_scores(s[1], s[3]) for s in splits])})
    return pd.DataFrame(rows)


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    if not scores:
        return {"accuracy": math.nan, "f1": math.nan, "auroc": math.nan}
    return {m: float(np.nanmean([s[m] for s in scores])) if any(not math.isnan(s[m]) for s in scores) else math.nan
            for m in scores[0]}


def guard_application(cfg: RunConfig, ranking, acts: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                      is_harmful: dict[str, np.ndarray], refused: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per set: safety and over-refusal of the model alone and with a guard trained on the OTHER
    sets (top cfg.safeguard_k neurons) that refuses the prompts it flags."""
    from ..method.safeguard import Safeguard

    out = {}
    top = ranking.top(min(cfg.safeguard_k, ranking.n_neurons))
    for name in acts:
        others = [o for o in acts if o != name]
        harm, ref = is_harmful[name].astype(bool), refused[name]
        row = {"safety": float(ref[harm].mean()), "overrefusal": float(ref[~harm].mean())}
        y_train = np.concatenate([labels[o] for o in others]) if others else np.array([], dtype=np.int64)
        if others and np.unique(y_train).size == 2:
            guard = Safeguard.fit(np.concatenate([acts[o] for o in others]), y_train, top,
                                  n_layers=ranking.n_layers, d_mlp=ranking.d_mlp, seed=cfg.seed)
            flagged = guard.predict_from_activations(acts[name])
            row |= {"guard_safety": float((ref | flagged)[harm].mean()),
                    "guard_overrefusal": float((ref | flagged)[~harm].mean())}
        else:  # one class in the other sets' labels (a model that refuses everything harmful): no guard to fit
            row |= {"guard_safety": math.nan, "guard_overrefusal": math.nan}
        out[name] = row
    return out


def classifier_latency_us(guard, acts: np.ndarray, repeats: int = 1000) -> float:
    """Median microseconds of the classifier on one prompt's activations (features already read)."""
    import time

    row = acts[:1]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        guard.predict_proba_from_activations(row)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def safeguard_metrics(cfg: RunConfig, scores, guard: dict[str, dict[str, dict[str, float]]], latency_us: float,
                      seconds: float) -> dict:
    """`acc.<train>.<test>.k<k>.<arm>`, `auroc.<train>.<test>.k<k>.<arm>`, `guard.<model>.<set>.<measure>`."""
    metrics: dict = {"acc": {}, "auroc": {}, "f1": {}}
    for row in scores.itertuples():
        for measure, value in (("acc", row.accuracy), ("auroc", row.auroc), ("f1", row.f1)):
            metrics[measure].setdefault(row.train, {}).setdefault(row.test, {}).setdefault(f"k{row.k}", {})[row.arm] = value
    metrics["guard"] = guard
    metrics["latency_us"] = {"classifier": latency_us}
    metrics["seconds"] = seconds
    return metrics
