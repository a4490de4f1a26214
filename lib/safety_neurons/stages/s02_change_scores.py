"""Stage 02 (change_scores): from the trained M2s to neuron rankings every later stage reads.

Artifacts under runs/<name>/artifacts/02_change_scores/:
- `m1_generations.json`: M1's greedy answers on the neuron-finding prompts (ids kept), shared by every pair
  (study.rankings.m1_generations: the recipe study reads them too);
- `<objective>/seed<s>/change_score.safetensors` and `top_neurons.parquet`: one per (M1, M2) pair;
- `baselines/<method>.safetensors`: the training-free rankings (no M2 needed to find them).
Later stages call `study.rankings.load_ranking(cfg, ...)`.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..io import content_key, write_parquet_atomic
from ..lm.generation import Generation
from ..lm.models import adapter_digest
from ..method.change_scores import NeuronRanking, activation_variance, mean_difference
from ..names import BASELINES
from ..study.checkpoints import m1_key, m1_name, m2_adapter
from ..study.paths import CHANGE_SCORES
from ..study.rankings import TOP_FRACTION, cached_change_scores, cached_ranking, overlap, ranking_path, top_count

STAGE = CHANGE_SCORES


def pair_scores(cfg: RunConfig, m1, m2, adapter: Path, generations: list[Generation], objective: str, seed: int, *,
                progress: bool = True) -> tuple[NeuronRanking, float]:
    """Change scores of one (M1, M2) pair, cached (study.rankings.cached_change_scores), with their top 5% as a
    table beside them; returns the ranking and the seconds computing it took (as recorded when cached)."""
    path = ranking_path(cfg, objective, seed)

    def finish(ranking: NeuronRanking) -> None:
        ranking.meta |= {"m1": m1_name(cfg), "objective": objective, "seed": seed}
        write_parquet_atomic(path.with_name("top_neurons.parquet"), ranking.table(top_count(ranking)))

    ranking = cached_change_scores(cfg, m1, m2, adapter, generations, path, finish=finish, progress=progress)
    return ranking, ranking.meta["seconds"]


def baseline_ranking(cfg: RunConfig, method: str, model, adapter: Path | None, harmful_ids: list[list[int]],
                     benign_ids: list[list[int]], *, progress: bool = True) -> NeuronRanking:
    """A training-free ranking of `model` (M1, or M1 with `adapter` folded in), read at every prompt
    token; cached under a key of the model and the prompts."""
    path = ranking_path(cfg, method=method)
    key = content_key(m1_key(cfg), adapter_digest(adapter), harmful_ids, benign_ids)
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; use one of {', '.join(BASELINES)}")

    def compute() -> NeuronRanking:
        if method == "mean_difference":
            ranking = mean_difference(model, harmful_ids, benign_ids, batch_size=cfg.batch_size, progress=progress)
        else:
            ranking = activation_variance(model, harmful_ids + benign_ids, batch_size=cfg.batch_size, progress=progress)
        ranking.meta |= {"model": m1_name(cfg), "adapter": str(adapter) if adapter else None}
        return ranking

    return cached_ranking(path, key, compute)


def concentration_metrics(ranking: NeuronRanking) -> dict:
    """`top5pct.share_of_sq_change` and `top5pct.layer_share.<l>` of one ranking."""
    k = top_count(ranking)
    counts = ranking.layer_counts(k)
    return {"top5pct": {"share_of_sq_change": ranking.share_of_sq(TOP_FRACTION),
                        "layer_share": {str(layer): int(c) / k for layer, c in enumerate(counts.tolist())}}}


# ---------------------------------------------------------------- the update read directly (issue 20)


def update_deltas(cfg: RunConfig, m1, objective: str = "harmless", seed: int | None = None):
    """|l - 1| per neuron [n_layers, d_mlp] of one M2's (IA)^3 scales (its adapter folded onto M1)."""
    from ..lm.models import model_shape
    from ..method.patching import ia3_neuron_scales
    from ..method.update import ia3_deltas

    shape = model_shape(m1)
    scales = ia3_neuron_scales(m2_adapter(cfg, objective, seed), shape.n_layers, shape.d_mlp, base=m1)
    return ia3_deltas(scales, shape.n_layers, shape.d_mlp)


def alternative_rankings(cfg: RunConfig, ranking: NeuronRanking, deltas, objective: str = "harmless",
                         seed: int | None = None) -> dict[str, NeuronRanking]:
    """The same M2's neurons ranked two other ways, saved beside its change scores: the change score over
    M1's activation RMS (the relative change), and |l - 1| itself (the update read directly)."""
    from ..method.update import normalised_ranking, update_ranking

    out = {"change_score_over_rms": normalised_ranking(ranking), "ia3_delta": update_ranking(deltas)}
    for method, alt in out.items():
        alt.save(ranking_path(cfg, objective, seed, method))
    return out


def update_metrics(ranking: NeuronRanking, deltas) -> dict:
    """`update.*` (|l - 1| over all neurons and per layer, its concentration in the top 1/5/20%) and
    `ranking.*` (Spearman of the change score with M1's activation RMS and with |l - 1|; the share of the
    total |l - 1| held by the change score's top 5%)."""
    from ..method.update import activation_rms, ranking_correlations, top_share_of_delta, update_statistics

    rms = activation_rms(ranking.extras["mean_m1"], ranking.extras["std_m1"])
    return {"update": update_statistics(deltas),
            "ranking": ranking_correlations(ranking.scores, rms, deltas)
            | {"top5pct_share_of_delta": top_share_of_delta(ranking.scores, deltas, TOP_FRACTION)}}


def finding_metrics(cfg: RunConfig, rankings: dict[tuple[str, int], NeuronRanking], baselines: dict[str, NeuronRanking],
                    seconds: dict[tuple[str, int], float], total_seconds: float, *, update: dict | None = None,
                    alternatives: dict[str, NeuronRanking] | None = None) -> dict:
    """Metrics of stage 02. Unprefixed: the first harmless M2; `seed<s>.`/`objective.<name>.` the others;
    `baseline.<method>.overlap_top5pct`: share of the change-score top 5% a baseline also ranks top 5%;
    with `update` (update_metrics of the first M2) its `update.*` and `ranking.*`; with `alternatives`
    `alternative.<method>.overlap_top5pct`."""
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
    metrics |= update or {}
    if alternatives:
        metrics["alternative"] = {m: {"overlap_top5pct": overlap(main, r, top_count(main))} for m, r in alternatives.items()}
    return metrics
