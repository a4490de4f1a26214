"""The names a run config may use, defined once and importable without torch: the judges and the
training-free baselines. The modules that implement them import these names; `config` validates
against them at load time."""
from __future__ import annotations

# Judges: every metric names the judge that produced it.
PHRASE_JUDGE = "refusal-phrase"
COST_JUDGE = "beaver-cost"  # model judges: model_judges.py loads them
LLAMAGUARD_JUDGE = "llamaguard"
JUDGE_NAMES = (PHRASE_JUDGE, COST_JUDGE, LLAMAGUARD_JUDGE)
LOGODDS_JUDGE = "refusal-logodds"  # the continuous signal beside the phrase judge (judges/refusal.py)


def parse_judge(spec: str) -> tuple[str, str | None]:
    """"beaver-cost=/models/beaver" -> ("beaver-cost", "/models/beaver"); a bare name uses the judge's default checkpoint."""
    name, _, checkpoint = str(spec).partition("=")
    return name, checkpoint or None


# The training-free rankings of stage 02 (method/change_scores.py implements them).
BASELINES = ("mean_difference", "activation_variance")
# Other rankings of one M2's neurons, saved beside its change scores (method/update.py builds them): the
# change score over M1's activation RMS (the relative change), and |l - 1| of the (IA)^3 scales itself.
ALTERNATIVE_RANKINGS = ("change_score_over_rms", "ia3_delta")

# The optimiser regimes of the recipe study (notebook 09; stages/s09_recipe_study.py defines each from the
# profile's own DPO settings). "profile" is the profile's recipe, the baseline the others are compared with.
RECIPES = ("profile", "adam_eps", "small_lr", "sgd_momentum", "pure_dpo")
