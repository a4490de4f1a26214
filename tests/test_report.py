"""study/report.py: the verdict rule and the Markdown built from a run's metrics (nothing typed by hand)."""
import math

from safety_neurons.study.report import finding_section, recipe_section, verdict


def test_the_verdict_rule():
    assert verdict(0.95, 0.91, 0.2) == "holds as stated"
    assert verdict(0.95, 0.1, 0.2) == "does not hold"  # high but not clearly above random neurons
    assert verdict(0.4, 0.3, 0.2) == "holds in part"
    assert verdict(0.1, 0.0, 0.0) == "does not hold"
    assert verdict(None, None, None).startswith("undefined") and verdict(math.nan, 0, 0).startswith("undefined")


def patching(c5, lo5, hi5, r5, rhi5):
    return {"C.phrase.safety.k5": c5, "C.phrase.safety.k5.lo": lo5, "C.phrase.safety.k5.hi": hi5,
            "C.phrase.random.k5": r5, "C.phrase.random.k5.lo": 0.0, "C.phrase.random.k5.hi": rhi5,
            "C.phrase.safety.k20": 0.5, "C.phrase.random.k20": None,
            "C.likelihood.safety.k5": 0.3, "C.likelihood.safety.k5.lo": 0.2, "C.likelihood.random.k5.hi": 0.1,
            "C.likelihood.ia3_delta.k5": 0.6}


def test_the_finding_section_reads_every_number_from_the_metrics():
    metrics = {"01_alignment": {"refusal.m1.harmbench": 0.0, "refusal.m2.harmbench": 0.84, "refusal.m1.benign": 0.03,
                                "refusal.m2.benign": 0.06, "ppl.m1": 28.84, "ppl.m2": 28.95},
               "02_change_scores": {"update.all.mean": 0.081, "update.all.moved_0p05": 0.64, "update.concentration.top5pct": 0.13,
                                    "ranking.spearman_rms": 0.944, "ranking.spearman_delta": 0.098},
               "03_dynamic_patching": patching(0.04, 0.0, 0.13, 0.0, 0.0)}
    text = finding_section(metrics, title="T")
    assert "refuse 0.00 / 0.84 of the held-out harmbench" in text and "Spearman 0.94" in text
    assert "| phrase | top-k change score | 0.04 [0.00, 0.13] | 0.50 [n/a, n/a] |" in text
    assert "| phrase | random (layer-matched) | 0.00 [0.00, 0.00] | n/a [n/a, n/a] |" in text
    assert "C = 0.04 against 0.00 for random neurons: **does not hold**" in text
    assert "C = 0.30 against n/a for random neurons: **holds in part**; other rankings' top 5%: ia3_delta 0.60" in text
    assert "nothing to report" in finding_section({}, title="T")


def test_the_recipe_section_lists_every_regime_and_the_choice():
    recipe = {"recipe.m1.refusal": 0.0, "recipe.m1.overrefusal": 0.03, "recipe.m1.ppl": 28.8}
    for name, passes in (("profile", 0.0), ("sgd_momentum", 1.0)):
        recipe |= {f"recipe.{name}.passes": passes, f"recipe.{name}.refusal": 0.8, f"recipe.{name}.ppl": 29.0,
                   f"recipe.{name}.C_phrase_k5": 0.1, f"recipe.{name}.C_random_phrase_k5": 0.0,
                   f"recipe.{name}.C_phrase_k20": 0.4, f"recipe.{name}.C_random_phrase_k20": 0.1,
                   f"recipe.chosen.{name}": passes}
    text = recipe_section({"09_recipe_study": recipe}, title="R")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| regime"))
    assert header.endswith("| phrase k=5% | phrase k=20% |")  # k in numeric order
    assert any(line.startswith("| `sgd_momentum` | 0.80 |") and "| yes |" in line for line in lines)
    assert "Chosen by the criteria: `sgd_momentum`." in text
    assert "No recipe-study metrics" in recipe_section({}, title="R")


def test_the_comparison_reads_each_row_from_its_runs_metrics():
    from safety_neurons.study.report import ROW_NAMES, comparison_section

    def run(c5: float, overlap: float) -> tuple[dict, dict]:
        metrics = {"01_alignment": {"refusal.m1.harmbench": 0.0, "refusal.m2.harmbench": 0.84, "ppl.m1": 28.8, "ppl.m2": 29.0},
                   "02_change_scores": {"top5pct.share_of_sq_change": 0.75, "top5pct.layer_share.29": 0.3,
                                        "top5pct.layer_share.3": 0.5, "ranking.spearman_rms": 0.94},
                   "03_dynamic_patching": patching(c5, 0.0, 0.13, 0.01, 0.05),
                   "04_transfer_capability": {"C.phrase.safety.harmbench": 0.2, "C.phrase.safety.jailbreak": 0.4,
                                              "C.phrase.random.harmbench": 0.0, "C.phrase.random.jailbreak": 0.1,
                                              "C.phrase.safety.past_tense": None, "C.phrase.random.past_tense": None},
                   "05_stability": {"overlap.k5.mean": overlap, "spearman.mean": 0.9},
                   "06_alignment_tax": {"spearman.harmless.helpful": 0.8},
                   "07_safeguard": {"acc.harmbench.jailbreak.k10.safety": 0.7, "acc.jailbreak.harmbench.k10.safety": 0.9,
                                    "acc.harmbench.harmbench.k10.safety": 1.0, "acc.harmbench.jailbreak.k10.random": 0.5,
                                    "acc.jailbreak.harmbench.k10.random": 0.6, "acc.harmbench.jailbreak.k50.safety": 0.1}}
        return metrics, {"harmful_sets": ["harmbench"], "safeguard_k": 10}

    text = comparison_section({"A": run(0.04, 0.5), "B": run(0.63, 0.7)}, title="side")
    lines = text.splitlines()
    assert lines[2] == "| | A | B | the paper (as reported) |" and len(lines) == 4 + len(ROW_NAMES)
    row = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[4:]}
    assert row[ROW_NAMES["refusal"]][:2] == ["0.00 / 0.84", "0.00 / 0.84"]
    assert row[ROW_NAMES["top5pct_layers"]][0] == "3 (0.50), 29 (0.30)"
    assert row[ROW_NAMES["C_phrase_k5"]][:2] == ["0.04 [0.00, 0.13] (random 0.01)", "0.63 [0.00, 0.13] (random 0.01)"]
    assert row[ROW_NAMES["C_phrase_k1"]][0] == "n/a"
    assert row[ROW_NAMES["transfer"]][0] == "0.30 (random 0.05) over the 2 of 3 sets where C is defined"
    assert row[ROW_NAMES["overlap_k5"]][:2] == ["0.50", "0.70"]
    # cross-set pairs at the run's safeguard_k only: (0.7 + 0.9) / 2, random (0.5 + 0.6) / 2
    assert row[ROW_NAMES["safeguard"]][0] == "0.80 (random 0.55)"
    assert "76.2%" in row[ROW_NAMES["safeguard"]][2]
    empty = comparison_section({"C": ({}, {})}, title="none")
    assert empty.count("n/a") >= len(ROW_NAMES) - 1
