"""Stage-01 metric keys (its steps are tested in test_training.py)."""
import pytest

from safety_neurons.config import load_config
from safety_neurons.judges.evaluation import RefusalEval
from safety_neurons.method.alignment import TrainResult
from safety_neurons.stages import s01_alignment as stage
from safety_neurons.study.training import training_runs

pytestmark = pytest.mark.usefixtures("garak_prepared")


def fake_eval(rate: float) -> RefusalEval:
    return RefusalEval(["p", "q"], [], [rate >= 0.5, rate >= 1.0], [0.0, 1.0])


def test_alignment_metrics_keys():
    cfg = load_config("smoke", train_seeds=[0, 1], objectives=["harmless", "helpful"])
    results = {k: TrainResult(None, 10.0, 3, 2.0) for k in training_runs(cfg)}
    names = ["m1", "harmless/seed0", "harmless/seed1", "helpful/seed0"]
    evals = {(n, s): fake_eval(1.0 if n == "harmless/seed0" else 0.0) for n in names for s in ("harmbench", "benign")}
    ppl = {n: 10.0 for n in names}
    metrics = stage.alignment_metrics(cfg, results, evals, ppl, judge_auroc=0.9, n_pairs=5, seconds=1.0)
    from safety_neurons.io import flatten_metrics

    flat = flatten_metrics(metrics)
    assert flat["refusal.m1.harmbench"] == 0.0 and flat["refusal.m2.harmbench"] == 1.0
    assert flat["ppl.m1"] == flat["ppl.m2"] == 10.0
    assert flat["train.seconds"] == 10.0 and flat["train.step_seconds"] == 2.0
    assert "seed1.refusal.m2.harmbench" in flat and "objective.helpful.train.seconds" in flat


