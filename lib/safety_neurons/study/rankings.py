"""The neuron rankings stage 02 saves, and how later stages compare them."""
from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..io import cached, content_key, store_json, stored_json
from ..lm.generation import Generation
from ..method.change_scores import NeuronRanking
from ..names import ALTERNATIVE_RANKINGS, BASELINES
from .checkpoints import m1_key
from .paths import CHANGE_SCORES


TOP_FRACTION = 0.05  # "the top 5%" of the metrics and figures


def ranking_path(cfg: RunConfig, objective: str = "harmless", seed: int | None = None, method: str = "change_score") -> Path:
    if method in BASELINES:
        return cfg.artifact_dir(CHANGE_SCORES) / "baselines" / f"{method}.safetensors"
    if method != "change_score" and method not in ALTERNATIVE_RANKINGS:
        raise ValueError(f"unknown ranking method {method!r}; use change_score or one of "
                         f"{', '.join(ALTERNATIVE_RANKINGS + BASELINES)}")
    seed = cfg.train_seeds[0] if seed is None else seed
    return cfg.artifact_dir(CHANGE_SCORES) / objective / f"seed{seed}" / f"{method}.safetensors"


def load_ranking(cfg: RunConfig, objective: str = "harmless", seed: int | None = None, method: str = "change_score") -> NeuronRanking:
    """A ranking stage 02 saved (default: change scores of the first harmless M2)."""
    path = ranking_path(cfg, objective, seed, method)
    if not path.exists():
        raise FileNotFoundError(f"no {method} ranking at {path}: run notebook 02_change_scores first")
    try:
        return NeuronRanking.load(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types; the message must name the file
        raise ValueError(f"{path}: damaged ranking ({type(exc).__name__}: {exc}); re-run stage 02 "
                         "(python -m safety_neurons run --profile ... --from 2 --force)") from None


def cached_ranking(path: Path, key: str, compute) -> NeuronRanking:
    """The ranking saved at `path` under `key` (its metadata carries the key), else `compute()`'s, saved there."""
    def load(p: Path) -> tuple[str | None, NeuronRanking]:
        ranking = NeuronRanking.load(p)
        return ranking.meta.get("key"), ranking

    def save(tmp: Path, k: str, ranking: NeuronRanking) -> None:
        ranking.meta["key"] = k
        ranking.save(tmp)

    return cached(path, key, compute, load=load, save=save)


def m1_generations(cfg: RunConfig, m1, prompt_ids: list[list[int]], *, progress: bool = True) -> list[Generation]:
    """M1's greedy answers on the finding prompts, generated once and cached with their ids (shared out
    between the processes of a distributed launch, see lm/sharding.py)."""
    from ..lm.generation import greedy_generate
    from ..lm.memory import fitted_rows
    from ..lm.sharding import is_main_process, main_decides, sharded_generate

    path = cfg.artifact_dir(CHANGE_SCORES) / "m1_generations.json"
    key = content_key(m1_key(cfg), cfg.max_new_tokens, prompt_ids)

    def stored() -> list[dict] | None:
        saved = stored_json(path, key)
        return None if saved is None else saved["generations"]

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
        store_json(path, key, {"generations": [asdict(g) for g in generations]})
    return generations


def cached_change_scores(cfg: RunConfig, m1, m2, adapter: Path, generations: list[Generation], path: Path, *,
                         finish=None, progress: bool = True) -> NeuronRanking:
    """Change scores of (M1, M2 = M1 with `adapter`) on M1's `generations`, saved at `path` under a key of the
    generations, the adapter's weights and the token type; `finish(ranking)` runs on a freshly computed one
    (metadata, side files) before it is saved. Stage 02's pairs and the recipe study's regimes both use it."""
    import time

    from ..lm.models import adapter_digest
    from ..method.change_scores import change_scores

    key = content_key([asdict(g) for g in generations], adapter_digest(adapter), cfg.finding_token_type)

    def compute() -> NeuronRanking:
        start = time.perf_counter()
        ranking = change_scores(m1, m2, [g.prompt_ids for g in generations], token_type=cfg.finding_token_type,
                                generations=generations, batch_size=cfg.batch_size, progress=progress).ranking
        ranking.meta["seconds"] = time.perf_counter() - start
        if finish is not None:
            finish(ranking)
        return ranking

    return cached_ranking(path, key, compute)


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


def headline_neurons(cfg: RunConfig, ranking):
    """The top headline-k% neurons and the first seed's layer-matched random draw."""
    from ..method.neurons import k_from_percent, random_neurons

    top = ranking.top(k_from_percent(cfg.headline_pct, ranking.n_neurons))
    return top, random_neurons(top, ranking.d_mlp, cfg.patch_random_seeds[0])
