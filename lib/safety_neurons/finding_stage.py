"""Stage 02 (change_scores): from the trained M2s to neuron rankings every later stage reads.

Artifacts under runs/<name>/artifacts/02_change_scores/:
- `m1_generations.json`: M1's greedy answers on the neuron-finding prompts (ids kept), shared by every pair;
- `<objective>/seed<s>/change_score.safetensors` and `top_neurons.parquet`: one per (M1, M2) pair;
- `baselines/<method>.safetensors`: the training-free rankings (no M2 needed to find them).
Later stages call `load_ranking(cfg, ...)`.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .alignment_stage import m1_name, round_robin
from .change_scores import NeuronRanking, activation_variance, change_scores, mean_difference
from .config import RunConfig
from .data import load_split
from .generation import Generation
from .io import atomic_path, content_key, read_json, write_json_atomic
from .models import adapter_digest

STAGE = "02_change_scores"
BASELINES = ("mean_difference", "activation_variance")
TOP_FRACTION = 0.05  # "the top 5%" of the metrics and figures


def stage_dir(cfg: RunConfig) -> Path:
    return cfg.artifact_dir(STAGE)


def finding_prompts(cfg: RunConfig) -> list[str]:
    """Harmful prompts of the neuron-finding splits, taken in turn from every harmful set."""
    return round_robin([load_split(cfg, s, "finding") for s in cfg.harmful_sets], cfg.finding_prompts or 10**9)


def benign_finding_prompts(cfg: RunConfig) -> list[str]:
    """Benign prompts of the neuron-finding splits (the mean-difference baseline's contrast set)."""
    return round_robin([load_split(cfg, s, "finding") for s in cfg.benign_sets], cfg.finding_prompts or 10**9)


def ranking_path(cfg: RunConfig, objective: str = "harmless", seed: int | None = None, method: str = "change_score") -> Path:
    if method in BASELINES:
        return stage_dir(cfg) / "baselines" / f"{method}.safetensors"
    if method != "change_score":
        raise ValueError(f"unknown ranking method {method!r}; use change_score or one of {', '.join(BASELINES)}")
    seed = cfg.train_seeds[0] if seed is None else seed
    return stage_dir(cfg) / objective / f"seed{seed}" / f"{method}.safetensors"


def load_ranking(cfg: RunConfig, objective: str = "harmless", seed: int | None = None, method: str = "change_score") -> NeuronRanking:
    """A ranking stage 02 saved (default: change scores of the first harmless M2)."""
    return NeuronRanking.load(ranking_path(cfg, objective, seed, method))


def m1_generations(cfg: RunConfig, m1, prompt_ids: list[list[int]], *, progress: bool = True) -> list[Generation]:
    """M1's greedy answers on the finding prompts, generated once and cached with their ids (shared out
    between the processes of a distributed launch, see sharding.py)."""
    from .generation import greedy_generate
    from .memory import fitted_rows
    from .sharding import is_main_process, main_decides, sharded_generate

    path = stage_dir(cfg) / "m1_generations.json"
    key = content_key(m1_name(cfg), cfg.max_new_tokens, prompt_ids)

    def stored() -> list[dict] | None:
        saved = read_json(path) if path.exists() else None
        return saved["generations"] if saved is not None and saved["key"] == key else None

    cached = main_decides(stored)
    if cached is not None:
        return [Generation(**g) for g in cached]
    # "auto" is sized once, by the main process, so every process cuts the batches a one-process run would
    rows = main_decides(lambda: fitted_rows(cfg.batch_size, m1, [len(p) for p in prompt_ids], extra_tokens=cfg.max_new_tokens,
                                            generation=True))
    generations = sharded_generate(lambda ids: greedy_generate(m1, ids, max_new_tokens=cfg.max_new_tokens, batch_size=rows,
                                                               progress=progress, desc="M1 generates"),
                                   prompt_ids, rows)
    if is_main_process():
        write_json_atomic(path, {"key": key, "generations": [asdict(g) for g in generations]})
    return generations


def pair_scores(cfg: RunConfig, m1, m2, adapter: Path, generations: list[Generation], objective: str, seed: int, *,
                progress: bool = True) -> tuple[NeuronRanking, float]:
    """Change scores of one (M1, M2) pair, cached under a key of M1's generations, M2's adapter weights
    and the token type; returns the ranking and the seconds computing it took (as recorded when cached)."""
    import time

    path = ranking_path(cfg, objective, seed)
    key = content_key([asdict(g) for g in generations], adapter_digest(adapter), cfg.finding_token_type)
    if path.exists() and (cached := NeuronRanking.load(path)).meta.get("key") == key:
        return cached, cached.meta["seconds"]
    start = time.perf_counter()
    result = change_scores(m1, m2, [g.prompt_ids for g in generations], token_type=cfg.finding_token_type,
                           generations=generations, batch_size=cfg.batch_size, progress=progress)
    seconds = time.perf_counter() - start
    ranking = result.ranking
    ranking.meta |= {"m1": m1_name(cfg), "objective": objective, "seed": seed, "seconds": seconds, "key": key}
    table = ranking.table(top_count(ranking))
    with atomic_path(path.with_name("top_neurons.parquet"), suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    ranking.save(path)
    return ranking, seconds


def baseline_ranking(cfg: RunConfig, method: str, model, adapter: Path | None, harmful_ids: list[list[int]],
                     benign_ids: list[list[int]], *, progress: bool = True) -> NeuronRanking:
    """A training-free ranking of `model` (M1, or M1 with `adapter` folded in), read at every prompt
    token; cached under a key of the model and the prompts."""
    path = ranking_path(cfg, method=method)
    key = content_key(m1_name(cfg), adapter_digest(adapter), harmful_ids, benign_ids)
    if path.exists() and (cached := NeuronRanking.load(path)).meta.get("key") == key:
        return cached
    if method == "mean_difference":
        ranking = mean_difference(model, harmful_ids, benign_ids, batch_size=cfg.batch_size, progress=progress)
    elif method == "activation_variance":
        ranking = activation_variance(model, harmful_ids + benign_ids, batch_size=cfg.batch_size, progress=progress)
    else:
        raise ValueError(f"unknown baseline {method!r}; use one of {', '.join(BASELINES)}")
    ranking.meta |= {"model": m1_name(cfg), "adapter": str(adapter) if adapter else None, "key": key}
    ranking.save(path)
    return ranking


def top_count(ranking: NeuronRanking, fraction: float = TOP_FRACTION) -> int:
    return max(1, int(round(fraction * ranking.n_neurons)))


def overlap(a: NeuronRanking, b: NeuronRanking, k: int) -> float:
    """Share of a's top k that is also in b's top k."""
    top_a = set(map(tuple, a.top(k).tolist()))
    return len(top_a & set(map(tuple, b.top(k).tolist()))) / k


def spearman_matrix(rankings: dict):
    """Spearman correlation of the full score vectors for every pair of rankings (objectives, seeds)."""
    import pandas as pd
    from scipy.stats import spearmanr

    names = list(rankings)
    flat = {n: rankings[n].scores.flatten().double().numpy() for n in names}
    table = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a, b in itertools.combinations(names, 2):
        table.loc[a, b] = table.loc[b, a] = float(spearmanr(flat[a], flat[b]).statistic)
    return table


def overlap_matrix(rankings: dict, k: int):
    """|top-k(a) & top-k(b)| / k for every pair of rankings."""
    import pandas as pd

    names = list(rankings)
    return pd.DataFrame([[overlap(rankings[a], rankings[b], k) for b in names] for a in names], index=names, columns=names)


def concentration_metrics(ranking: NeuronRanking) -> dict:
    """`top5pct.share_of_sq_change` and `top5pct.layer_share.<l>` of one ranking."""
    k = top_count(ranking)
    counts = ranking.layer_counts(k)
    return {"top5pct": {"share_of_sq_change": ranking.share_of_sq(TOP_FRACTION),
                        "layer_share": {str(layer): int(c) / k for layer, c in enumerate(counts.tolist())}}}


def finding_metrics(cfg: RunConfig, rankings: dict[tuple[str, int], NeuronRanking], baselines: dict[str, NeuronRanking],
                    seconds: dict[tuple[str, int], float], total_seconds: float) -> dict:
    """Metrics of stage 02. Unprefixed: the first harmless M2; `seed<s>.`/`objective.<name>.` the others;
    `baseline.<method>.overlap_top5pct`: share of the change-score top 5% a baseline also ranks top 5%."""
    first = ("harmless", cfg.train_seeds[0])
    main = rankings[first]
    metrics: dict = {"n_prompts": main.meta["n_prompts"], "n_tokens": main.meta["n_tokens"], "seconds": seconds[first],
                     "stage_seconds": total_seconds, **concentration_metrics(main)}
    for (objective, seed), ranking in rankings.items():
        if (objective, seed) == first:
            continue
        entry = concentration_metrics(ranking) | {"seconds": seconds[(objective, seed)],
                                                  "overlap_top5pct_with_m2": overlap(ranking, main, top_count(main))}
        if objective == "harmless":
            metrics[f"seed{seed}"] = entry
        else:
            metrics.setdefault("objective", {})[objective] = entry
    metrics["baseline"] = {m: {"overlap_top5pct": overlap(main, r, top_count(main))} for m, r in baselines.items()}
    return metrics
