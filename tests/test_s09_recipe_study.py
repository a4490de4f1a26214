"""Stage-09 plumbing: the regimes' settings, the SGD rate rule, the criteria and the choice (never by C)."""
import math

import pandas as pd
import pytest

from safety_neurons.method.alignment import TrainSettings
from safety_neurons.stages import s09_recipe_study as stage

BASE = TrainSettings(learning_rate=3e-2, epochs=1.0, sft_weight=1.0, retain_weight=5.0)
M1 = {"refusal": 0.0, "overrefusal": 0.05, "ppl": 20.0}


def test_sgd_rate_moves_a_typical_scale_as_far_as_adam():
    lr = stage.sgd_learning_rate(3e-2, 0.9, first_grad_norm=2.0, n_scales=10_000)
    rms_grad = 2.0 / math.sqrt(10_000)
    assert lr * rms_grad / (1 - 0.9) == pytest.approx(3e-2)
    with pytest.raises(ValueError, match="positive gradient norm"):
        stage.sgd_learning_rate(3e-2, 0.9, first_grad_norm=0.0, n_scales=10)


def test_each_regime_changes_one_thing_from_the_profile():
    assert stage.regime_settings(BASE, "profile") == BASE
    assert stage.regime_settings(BASE, "adam_eps") == TrainSettings(**{**BASE.__dict__, "adam_epsilon": stage.ADAM_EPS})
    small = stage.regime_settings(BASE, "small_lr")
    assert small.learning_rate == pytest.approx(1e-2) and small.epochs == 2.0 and small.sft_weight == 1.0
    assert stage.regime_settings(BASE, "pure_dpo").sft_weight == 0.0
    sgd = stage.regime_settings(BASE, "sgd_momentum", profile_grad_norm=1.5, n_scales=46080)
    assert (sgd.optimizer, sgd.momentum, sgd.retain_weight) == ("sgd", 0.9, 5.0)
    with pytest.raises(ValueError, match="train 'profile' first"):
        stage.regime_settings(BASE, "sgd_momentum")
    with pytest.raises(ValueError, match="unknown recipe"):
        stage.regime_settings(BASE, "lion")


def row(regime, refusal=0.9, overrefusal=0.1, ppl=20.5, gradient_spearman=0.8, **extra):
    return {"regime": regime, "refusal": refusal, "overrefusal": overrefusal, "ppl": ppl,
            "gradient_spearman": gradient_spearman, "C_phrase_k5": extra.get("c", 0.0)}


def test_the_choice_follows_the_criteria_and_never_c():
    table = pd.DataFrame([row("profile", gradient_spearman=0.1, c=0.99),  # the highest C, but fails a criterion
                          row("sgd_momentum", gradient_spearman=0.9, c=0.05),
                          row("adam_eps", gradient_spearman=0.7, c=0.5),
                          row("small_lr", refusal=0.5, gradient_spearman=0.95),
                          row("pure_dpo", ppl=30.0, gradient_spearman=0.99)])
    chosen, failures = stage.choose_recipe(table, M1)
    assert chosen == "sgd_momentum"
    assert failures["profile"] == ["update vs gradient Spearman 0.10 < 0.5"]
    assert failures["small_lr"][0].startswith("refusal 0.50") and failures["pure_dpo"][0].startswith("perplexity")
    assert stage.choose_recipe(table[table["regime"] == "profile"], M1)[0] is None
    over = pd.DataFrame([row("profile", overrefusal=0.2)])
    assert stage.choose_recipe(over, M1)[1]["profile"][0].startswith("over-refusal 0.20 > M1's 0.05")


def test_metrics_and_markdown():
    table = pd.DataFrame([row("profile", gradient_spearman=0.1), row("sgd_momentum")]).assign(description="x")
    chosen, failures = stage.choose_recipe(table, M1)
    metrics = stage.recipe_metrics(table, M1, chosen, failures, 1.0)
    assert metrics["recipe"]["sgd_momentum"]["passes"] == 1.0 and metrics["recipe"]["profile"]["passes"] == 0.0
    assert metrics["recipe"]["chosen"] == {"profile": 0.0, "sgd_momentum": 1.0}
    text = stage.markdown_table(table.set_index("regime")[["refusal", "description"]])
    assert text.splitlines()[0] == "| regime | refusal | description |" and "| sgd_momentum | 0.9 | x |" in text
    assert "n/a" in stage.markdown_table(pd.DataFrame({"C": [float("nan")]}, index=pd.Index(["a"], name="regime")))
