"""Stage 01 (alignment): from a config to M1, the preference sets, the trained M2 adapters and their
evaluation. The steps live in study/ (training.py: preference sets, training, cached evaluation;
checkpoints.py: which checkpoint is M1 or an M2), since the `train` command and later stages call them
too; this module turns their results into the stage's metrics.
"""
from __future__ import annotations

from ..config import RunConfig
from ..method.alignment import TrainResult
from ..study.checkpoints import model_name
from ..study.paths import ALIGNMENT

STAGE = ALIGNMENT


def alignment_metrics(cfg: RunConfig, results: dict, evals: dict, ppl: dict, *, judge_auroc: float,
                      n_pairs: int, seconds: float, sft: tuple[TrainResult, dict] | None = None) -> dict:
    """Metrics of stage 01. Unprefixed keys: M1 and M2 (the harmless model at the first seed);
    `seed<s>.` the other harmless seeds; `objective.<name>.` the other objectives; with `sft` (the SFT's
    training result and study.training.evaluate_sft's dict), `sft.` the base model against M1."""
    sets = sorted({s for _, s in evals})

    def of(name: str, role: str) -> dict:
        return {"refusal": {role: {s: evals[(name, s)].rate for s in sets}},
                "logodds": {role: {s: evals[(name, s)].mean_logodds for s in sets}},
                "ppl": {role: ppl[name]}}

    def train(r: TrainResult) -> dict:
        return {"train": {"seconds": r.seconds, "step_seconds": r.step_seconds, "steps": r.steps}}

    first = cfg.train_seeds[0]
    m2 = model_name("harmless", first)
    metrics = _merge(of("m1", "m1"), of(m2, "m2"), train(results[("harmless", first)]))
    metrics |= {"judge": {"logodds_auroc": judge_auroc}, "n_pairs": n_pairs, "seconds": seconds}
    if sft is not None:
        result, evaluation = sft
        drop = {"examples"}
        metrics["sft"] = _merge(train(result), {
            "base": {k: v for k, v in evaluation["base"].items() if k not in drop},
            "m1": {k: v for k, v in evaluation["m1"].items() if k not in drop}})
    for (objective, seed), r in results.items():
        if (objective, seed) == ("harmless", first):
            continue
        entry = _merge(of(model_name(objective, seed), "m2"), train(r))
        if objective == "harmless":
            metrics[f"seed{seed}"] = entry
        else:
            metrics.setdefault("objective", {})[objective] = entry
    return metrics


def _merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


