"""C on the continuous measures (issue 20), for every stage that reports C and for the recipe study.

Per-prompt values of each measure are cached in the run-wide measure store (artifacts/measures/),
one file per content key (the models, prompts, neurons, answers and measure), like the arm store of
study/arms.py: a value one stage computed is read, not recomputed, by any other that asks for it.

- `logodds`: refusal log-odds at the first answer position, the neurons patched over the prompt;
- `likelihood`: mean teacher-forced log-likelihood of M2's own greedy answer;
- `sampled`: the refusal-phrase share over `seeds` sampled answers per prompt (the patching loop samples
  reproducibly: each prompt's random numbers depend only on the seed and its index).

Each is 0 at M1 (no neurons) and 1 at M2 (every neuron) by construction; `measure_effect` gives C with its
bootstrap interval and the paired test against random neurons.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..config import RunConfig
from ..io import cached_json
from .arms import arm_key, generation_options, pct_label
from .paths import MEASURE_STORE

MEASURES = ("logodds", "likelihood")  # teacher-forced: cheap enough for every k and every arm
SAMPLED = "sampled"  # generation: run at the headline arms only
SAMPLE_TEMPERATURE = 1.0  # the model's own distribution, as the paper's sampled evaluations


def measure_store(cfg: RunConfig) -> Path:
    return cfg.artifact_dir(MEASURE_STORE)


def m2_answer_ids(cfg: RunConfig, m2, digest: str | None, prompt_ids: list[list[int]]) -> list[list[int]]:
    """Token ids of M2's own greedy answers to `prompt_ids` (arms keep text only, and text is never
    re-encoded: its tokens may differ), generated once per M2 and prompt set."""
    from ..lm.generation import greedy_generate

    key = arm_key(cfg, prompt_ids, "generate", digest)
    return cached_json(measure_store(cfg) / f"answers-{key}.json", key,
                       lambda: [g.completion_ids for g in greedy_generate(m2, prompt_ids, **generation_options(cfg))],
                       field="answer_ids")


def _stored_values(cfg: RunConfig, key: str, compute: Callable[[], list]) -> np.ndarray:
    # NaN (an empty answer) is stored as null by JSON and read back as NaN
    values = cached_json(measure_store(cfg) / f"{key}.json", key, compute, field="values")
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def measure_values(cfg: RunConfig, m1, m2, digest: str | None, measure: str, neurons, prompt_ids: list[list[int]],
                   answer_ids: list[list[int]] | None = None) -> np.ndarray:
    """Per-prompt values [n_prompts] of a teacher-forced measure for M1 with `neurons` patched from M2 ([] is
    M1 itself, every neuron is M2). `answer_ids` (M2's answers) are needed by `likelihood`; given them, a value
    not yet stored is computed together with the other measure's in one pass, and both are stored."""
    from ..io import store_json, stored_json
    from ..method.measures import patched_logodds_and_loglik, patched_refusal_logodds

    pairs = [[int(layer), int(i)] for layer, i in neurons]
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; use one of {', '.join(MEASURES)} (or sampled_values)")
    if measure == "likelihood" and answer_ids is None:
        raise ValueError("the likelihood measure scores M2's answers: pass answer_ids (m2_answer_ids)")
    keys = {m: arm_key(cfg, prompt_ids, "two_model", digest, pairs, m, answer_ids if m == "likelihood" else None)
            for m in MEASURES}
    batch = cfg.patch_batch_size or cfg.batch_size
    if answer_ids is None:
        return _stored_values(cfg, keys[measure], lambda: patched_refusal_logodds(m1, m2, prompt_ids, pairs, batch_size=batch).tolist())

    def both() -> list:
        logodds, loglik = patched_logodds_and_loglik(m1, m2, prompt_ids, answer_ids, pairs, batch_size=batch)
        values = {"logodds": logodds, "likelihood": loglik}
        other = "likelihood" if measure == "logodds" else "logodds"
        if stored_json(measure_store(cfg) / f"{keys[other]}.json", keys[other]) is None:
            store_json(measure_store(cfg) / f"{keys[other]}.json", keys[other], {"values": _jsonable(values[other])})
        return _jsonable(values[measure])

    return _stored_values(cfg, keys[measure], both)


def _jsonable(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]


def sampled_values(cfg: RunConfig, m1, scales: Mapping, digest: str | None, neurons, prompt_ids: list[list[int]],
                   seeds: Sequence[int]) -> np.ndarray:
    """Per-prompt refusal share [n_prompts] over one sampled answer per seed (temperature 1) of M1 with
    `neurons` patched from M2 = M1 with (IA)^3 `scales` (the fast path; [] is M1, every neuron is M2)."""
    from ..method.measures import sampled_refusal
    from ..method.patching import fast_patched_generate
    from .arms import refused_already

    pairs = [[int(layer), int(i)] for layer, i in neurons]
    key = arm_key(cfg, prompt_ids, "fast", digest, pairs, SAMPLED, [int(s) for s in seeds], SAMPLE_TEMPERATURE)
    opts = generation_options(cfg)

    def generate(ids: list[list[int]], seed: int):
        # a row stops once its opening holds a refusal phrase: the judge's verdict cannot change after that
        return fast_patched_generate(m1, scales, ids, pairs, do_sample=True, temperature=SAMPLE_TEMPERATURE, seed=seed,
                                     stop_when=refused_already, **opts)

    return _stored_values(cfg, key, lambda: sampled_refusal(generate, prompt_ids, seeds).tolist())


def effect_row(measure: str, arm: str, pct: float, value: np.ndarray, ends: tuple[np.ndarray, np.ndarray],
               random: Sequence[np.ndarray] = (), *, n_boot: int, seed: int) -> dict:
    """One row of an effect table: C of `value` between `ends` (M1's, M2's values) with its interval, and
    with `random` arms the random C, its interval and the paired test; NaN where C is undefined."""
    from ..method.measures import measure_effect

    m1, m2 = (np.asarray(e, dtype=np.float64) for e in ends)
    arms = [np.asarray(value, dtype=np.float64), m1, m2, *[np.asarray(r, dtype=np.float64) for r in random]]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arms])
    if not ok.any() or m1[ok].mean() == m2[ok].mean():
        # M2 no safer than M1 on the prompts finite in every arm (a binary judge where neither or both refuse
        # every prompt): C is undefined, reported as NaN
        nan = float("nan")
        row = {"measure": measure, "arm": arm, "k_pct": pct, "C": nan, "lo": nan, "hi": nan,
               "f_m1": float(np.nanmean(m1)), "f_m2": float(np.nanmean(m2)), "n_prompts": int(ok.sum())}
        return row | ({"C_random": nan, "C_random_lo": nan, "C_random_hi": nan, "pvalue": nan} if random else {})
    effect = measure_effect(value, *ends, list(random), n_boot=n_boot, seed=seed)
    row = {"measure": measure, "arm": arm, "k_pct": pct, "C": effect["C"], "lo": effect["lo"], "hi": effect["hi"],
           "f_m1": float(np.nanmean(ends[0])), "f_m2": float(np.nanmean(ends[1])), "n_prompts": effect["n_prompts"]}
    if random:
        row |= {"C_random": effect["random"]["C"], "C_random_lo": effect["random"]["lo"],
                "C_random_hi": effect["random"]["hi"], "pvalue": effect["pvalue"]}
    return row


def continuous_effects(cfg: RunConfig, m1, m2, adapter: Path, ranking, prompt_ids: list[list[int]],
                       alternatives: dict | None = None, *, k_pcts: Sequence[float] | None = None,
                       random_seeds: Sequence[int] | None = None, progress: bool = True):
    """C of every teacher-forced measure for the top-k neurons of `ranking` at each k of `k_pcts` (default
    the sweep's, cfg.patch_k_pcts) against layer-matched random neurons (`random_seeds`, default the sweep's),
    and for other rankings' top headline-k (`alternatives`: {name: ranking}). One row per (measure, arm, k):
    C with its bootstrap interval, and for the top-k rows the random arm's C and the paired test."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..lm.models import adapter_digest
    from ..method.neurons import k_from_percent, random_neurons

    digest = adapter_digest(adapter)
    answers = m2_answer_ids(cfg, m2, digest, prompt_ids)
    k_pcts = tuple(cfg.patch_k_pcts if k_pcts is None else k_pcts)
    seeds = tuple(cfg.patch_random_seeds if random_seeds is None else random_seeds)
    n_neurons, d_mlp = ranking.n_neurons, ranking.d_mlp
    stats = dict(n_boot=cfg.bootstrap_samples, seed=cfg.seed)
    rows = []
    bar = tqdm(total=len(MEASURES) * len(k_pcts), desc="continuous measures", unit="k", disable=not progress)
    for measure in MEASURES:
        def value(neurons, measure=measure) -> np.ndarray:
            return measure_values(cfg, m1, m2, digest, measure, neurons, prompt_ids, answers)

        ends = value([]), value(ranking.top(n_neurons).tolist())  # M1 (no neurons) and M2 (all of them)
        for pct in k_pcts:
            bar.update()
            top = ranking.top(k_from_percent(pct, n_neurons)).tolist()
            random = [value(random_neurons(top, d_mlp, s)) for s in seeds]
            rows.append(effect_row(measure, "safety", pct, value(top), ends, random, **stats))
            if pct == cfg.headline_pct:
                for name, other in (alternatives or {}).items():
                    rows.append(effect_row(measure, name, pct, value(other.top(k_from_percent(pct, n_neurons)).tolist()),
                                           ends, **stats))
    bar.close()
    return pd.DataFrame(rows)


def sampled_effects(cfg: RunConfig, m1, adapter: Path, ranking, prompt_ids: list[list[int]], *,
                    seeds: Sequence[int], k_pcts: Sequence[float] | None = None,
                    random_seeds: Sequence[int] | None = None):
    """C of the sampled refusal share for the top-k neurons at each k of `k_pcts` (default: the headline k
    alone) against layer-matched random neurons; rows as continuous_effects'."""
    import pandas as pd

    from ..lm.models import adapter_digest, model_shape
    from ..method.neurons import k_from_percent, random_neurons
    from ..method.patching import ia3_neuron_scales

    digest = adapter_digest(adapter)
    shape = model_shape(m1)
    scales = ia3_neuron_scales(adapter, shape.n_layers, shape.d_mlp, base=m1)
    k_pcts = tuple((cfg.headline_pct,) if k_pcts is None else k_pcts)
    draws = tuple(cfg.patch_random_seeds if random_seeds is None else random_seeds)
    n_neurons, d_mlp = ranking.n_neurons, ranking.d_mlp

    def value(neurons) -> np.ndarray:
        return sampled_values(cfg, m1, scales, digest, neurons, prompt_ids, seeds)

    ends = value([]), value(ranking.top(n_neurons).tolist())
    rows = []
    for pct in k_pcts:
        top = ranking.top(k_from_percent(pct, n_neurons)).tolist()
        random = [value(random_neurons(top, d_mlp, s)) for s in draws]
        rows.append(effect_row(SAMPLED, "safety", pct, value(top), ends, random, n_boot=cfg.bootstrap_samples, seed=cfg.seed))
    return pd.DataFrame(rows)


def continuous_metrics(table) -> dict:
    """`C.<measure>.<arm>.k<pct>` (+ `.lo`/`.hi`), `C.<measure>.random.k<pct>`, `pvalue.<measure>.k<pct>`
    from an effect table (continuous_effects', sampled_effects', or both concatenated)."""
    metrics: dict = {"C": {}, "pvalue": {}}
    for _, row in table.iterrows():
        label = f"k{pct_label(row['k_pct'])}"
        by_arm = metrics["C"].setdefault(row["measure"], {})
        by_arm.setdefault(row["arm"], {}).update({label: row["C"], f"{label}.lo": row["lo"], f"{label}.hi": row["hi"]})
        if "C_random" in row and not _missing(row["C_random"]):
            by_arm.setdefault("random", {}).update({label: row["C_random"], f"{label}.lo": row["C_random_lo"],
                                                    f"{label}.hi": row["C_random_hi"]})
            metrics["pvalue"].setdefault(row["measure"], {})[label] = row["pvalue"]
    return metrics


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# ----------------------------------------------------------------------------------------------
# C of given neuron sets (stages 04, 05, 06, 08): no k grid, the headline arms of each stage
# ----------------------------------------------------------------------------------------------


def effect_row_or_nan(measure: str, arm: str, pct: float, value: np.ndarray, ends: tuple[np.ndarray, np.ndarray],
                      random: Sequence[np.ndarray] = (), *, n_boot: int, seed: int) -> dict:
    """`effect_row` (NaN where C is undefined) plus `random_arms`: how many random arms it was tested against."""
    return effect_row(measure, arm, pct, value, ends, random, n_boot=n_boot, seed=seed) | {"random_arms": len(random)}


def neuron_set_effects(cfg: RunConfig, m1, m2, digest, prompt_ids: list[list[int]], arms: Mapping[str, object],
                       every, random: Sequence = (), *, pct: float, answers: list[list[int]] | None = None,
                       measures: Sequence[str] = MEASURES, columns: Mapping | None = None):
    """C of each teacher-forced measure for M1 with each of `arms`' neuron sets ({name: neurons}) patched
    from M2, between M1 (no neurons) and M2 (`every`: every neuron; pass a ranking's `top(n_neurons)`, the
    order stage 03 uses, so that values it stored are read back), each against the `random` neuron sets
    (their C and the paired test, on every arm's row). `digest` names M2 (or the pair) in the store keys;
    `answers`: the likelihood's answer ids (default M2's greedy answers, m2_answer_ids). One row per
    (measure, arm) as effect_row's (NaN where C is undefined), with `columns` added to each row."""
    import pandas as pd

    if answers is None and "likelihood" in measures:
        answers = m2_answer_ids(cfg, m2, digest, prompt_ids)
    stats = dict(n_boot=cfg.bootstrap_samples, seed=cfg.seed)
    rows = []
    for measure in measures:
        def value(neurons, measure=measure) -> np.ndarray:
            return measure_values(cfg, m1, m2, digest, measure, neurons, prompt_ids, answers)

        ends = value([]), value(every)
        rand = [value(r) for r in random]
        for name, neurons in arms.items():
            rows.append(effect_row_or_nan(measure, name, pct, value(neurons), ends, rand, **stats) | dict(columns or {}))
    return pd.DataFrame(rows)


def score_effects(arms: Mapping[str, np.ndarray], m1: np.ndarray, m2: np.ndarray, random: Sequence[np.ndarray] = (), *,
                  measure: str, pct: float, n_boot: int, seed: int, columns: Mapping | None = None):
    """Rows as neuron_set_effects' from per-prompt scores already in hand (a binary judge's verdicts of
    generated arms, `measure` e.g. "phrase"): C of each of `arms` ({name: scores}) between `m1` and `m2`
    against the `random` arms."""
    import pandas as pd

    return pd.DataFrame([effect_row_or_nan(measure, name, pct, np.asarray(s, dtype=np.float64), (m1, m2), list(random),
                                           n_boot=n_boot, seed=seed) | dict(columns or {}) for name, s in arms.items()])


def labelled_metrics(table, label: str, *, pvalue_by_arm: bool = False) -> dict:
    """`C.<measure>.<arm>.<label>` (+ `.lo`/`.hi`), with random arms `C.<measure>.random.<label>` and
    `pvalue.<measure>.<label>` (`pvalue.<measure>.<arm>.<label>` with `pvalue_by_arm`, for several arms
    tested against the same random ones), the label read from the table's `label` column (a prompt
    set, a training seed, a k as `k<pct>` when `label` is "k_pct")."""
    metrics: dict = {"C": {}, "pvalue": {}}
    for _, row in table.iterrows():
        name = f"k{pct_label(row['k_pct'])}" if label == "k_pct" else str(row[label])
        by_arm = metrics["C"].setdefault(row["measure"], {})
        by_arm.setdefault(row["arm"], {}).update({name: row["C"], f"{name}.lo": row["lo"], f"{name}.hi": row["hi"]})
        if row.get("random_arms", 0) > 0:
            by_arm.setdefault("random", {}).update({name: row["C_random"], f"{name}.lo": row["C_random_lo"],
                                                    f"{name}.hi": row["C_random_hi"]})
            tests = metrics["pvalue"].setdefault(row["measure"], {})
            (tests.setdefault(row["arm"], {}) if pvalue_by_arm else tests)[name] = row["pvalue"]
    return metrics


def effect_pivot(table, index: str | list[str]):
    """A wide view of an effect table for a notebook: one row per `index` value(s), one column per measure
    giving C and its interval as text ("0.42 [0.10, 0.71]"), and where the table has random arms the random
    neurons' C and the paired test's p-value beside it."""
    import pandas as pd

    def show(c, lo, hi) -> str:
        return "n/a" if _missing(c) else f"{c:.2f} [{lo:.2f}, {hi:.2f}]"

    keys = [index] if isinstance(index, str) else list(index)
    cells: dict = {}
    for _, row in table.iterrows():
        at = tuple(row[k] for k in keys)
        cells.setdefault(at, {})[f"C {row['measure']}"] = show(row["C"], row["lo"], row["hi"])
        if row.get("random_arms", 0) > 0:
            cells[at][f"C {row['measure']} random"] = show(row["C_random"], row["C_random_lo"], row["C_random_hi"])
            cells[at][f"p {row['measure']}"] = "n/a" if _missing(row["pvalue"]) else f"{row['pvalue']:.3g}"
    wide = pd.DataFrame.from_dict(cells, orient="index")
    wide.index = pd.MultiIndex.from_tuples(wide.index, names=keys) if len(keys) > 1 else \
        pd.Index([k[0] for k in wide.index], name=keys[0])
    return wide
