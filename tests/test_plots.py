"""Every figure of study/plots.py, built from small fake tables, converts to a static copy without a
note, with a scale and a label in words on every panel (no internal column or arm names)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.study import plots
from safety_neurons.study.figures import to_matplotlib

RNG = np.random.default_rng(0)


def ranking(seed: int = 0) -> NeuronRanking:
    gen = torch.Generator().manual_seed(seed)
    extras = {name: torch.rand(4, 16, generator=gen) for name in ("mean_m1", "mean_m2", "std_m1", "std_m2")}
    return NeuronRanking("change_score", torch.rand(4, 16, generator=gen), extras)


def effects() -> pd.DataFrame:
    """Stage 03's table: safety and C (with bootstrap bounds) per k for both arms."""
    return pd.DataFrame({"k_pct": [1.0, 5.0, 20.0], "safety": [0.1, 0.3, 0.7], "random": [0.0, 0.05, 0.1],
                         "C_safety": [0.1, 0.3, 0.8], "C_safety_lo": [0.0, 0.2, 0.6], "C_safety_hi": [0.2, 0.4, 0.9],
                         "C_random": [0.0, 0.05, 0.1], "C_random_lo": [0.0, 0.0, 0.0], "C_random_hi": [0.1, 0.1, 0.2]})


def safeguard_scores() -> pd.DataFrame:
    rows = [{"train": a, "test": b, "k": k, "arm": arm, "accuracy": RNG.random(), "f1": 0.5, "auroc": 0.5}
            for a in ("harmbench", "dna") for b in ("harmbench", "dna") for k in (1, 10, 100)
            for arm in ("safety", "random", "random_last", "majority")]
    return pd.DataFrame(rows)


def probes() -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "labels": lab, "layer": layer, "accuracy": RNG.random(), "std": 0.05}
                         for m in ("m1", "m2") for lab in ("true", "shuffled") for layer in range(4)])


def traces() -> pd.DataFrame:
    return pd.DataFrame([{"direction": d, "component": c, "layer": layer, "change": RNG.normal(), "share": 0.1}
                         for d in ("benign_into_harmful", "harmful_into_benign") for c in ("attn", "mlp")
                         for layer in range(4)])


def ablation() -> pd.DataFrame:
    return pd.DataFrame([{"k_pct": k, "neurons": n, "intervention": i, "safety": RNG.random(), "change": RNG.random()}
                         for k in (1.0, 5.0) for n in ("safety", "random")
                         for i in ("zero_ablation", "mean_ablation", "patching")])


def baselines() -> pd.DataFrame:
    return pd.DataFrame({"ranking": ["change_score", "mean_difference", "activation_variance", "random"],
                         "overlap_top5pct": [1.0, 0.3, 0.2, float("nan")], "safety": [0.5, 0.3, 0.2, 0.1],
                         "C": [0.5, 0.3, 0.2, 0.0], "C_lo": [0.4, 0.2, 0.1, -0.1], "C_hi": [0.6, 0.4, 0.3, 0.1]})


def tuning() -> pd.DataFrame:
    return pd.DataFrame([{"experiment": e, "arm": a, "step": s, "safety": RNG.random(), "loss": 1.0}
                         for e in ("remove", "add") for a in ("safety", "random") for s in (0, 5, 10)])


def training_log() -> pd.DataFrame:
    """Stage 01's curves: two runs; the reward margin is missing at one step (trl logs it at some steps only)."""
    return pd.DataFrame({"step": [1, 2, 3] * 2, "run": ["harmless seed 0"] * 3 + ["harmless seed 1"] * 3,
                         "loss": [0.7, 0.6, 0.5, 0.69, 0.62, 0.4], "reward_margin": [0.0, 0.1, 0.3, 0.0, 0.2, None]})


def tax_table() -> pd.DataFrame:
    measures = {m: [0.9, 0.5, 0.2, 0.6] for m in ("safety", "helpful", "length")}
    columns = {f"{m}{suffix}": np.asarray(v) + shift for m, v in measures.items()
               for suffix, shift in (("", 0.0), ("_lo", -0.1), ("_hi", 0.05))}
    return pd.DataFrame(columns, index=pd.Index(["harmless", "harmless_from_helpful", "helpful", "helpful_from_harmless"],
                                                name="arm"))


FIGURES = {
    "layer_share_bar": lambda: plots.layer_share_bar({"change score": ranking(0), "mean_difference": ranking(1)}, 8),
    "sorted_scores": lambda: plots.sorted_scores({"harmless seed 0": ranking(0), "harmless seed 1": ranking(1)}, points=20),
    "mean_scatter": lambda: plots.mean_scatter(ranking(0), 10),
    "k_sweep": lambda: plots.k_sweep(effects(), 0.1, 0.9, judge="refusal-phrase"),
    "causal_effect_curve": lambda: plots.causal_effect_curve(effects()),
    "safeguard_accuracy": lambda: plots.safeguard_accuracy(safeguard_scores()),
    "generalisation_matrix": lambda: plots.generalisation_matrix(safeguard_scores(), 10),
    "probe_accuracy_by_layer": lambda: plots.probe_accuracy_by_layer(probes()),
    "trace_heatmap": lambda: plots.trace_heatmap(traces()),
    "ablation_vs_patching": lambda: plots.ablation_vs_patching(ablation(), judge="refusal-phrase"),
    "baseline_effects_bar": lambda: plots.baseline_effects_bar(baselines(), pct=5.0),
    "tuning_curves": lambda: plots.tuning_curves(tuning(), judge="refusal-phrase"),
    "training_curves": lambda: plots.training_curves(training_log()),
    "transfer_bar": lambda: plots.transfer_bar(
        pd.DataFrame({"m1": [0.1, 0.2], "m2": [0.9, 0.8], "safety": [0.3, 0.4], "random": [0.1, 0.1]},
                     index=pd.Index(["harmbench", "dna"], name="set")), pct=5.0, judge="refusal-phrase"),
    "matrix_heatmap": lambda: plots.matrix_heatmap(
        pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["seed0", "seed1"], columns=["seed0", "seed1"]),
        title="Overlap of the top 5% between seeds", value="share in common", axis="training seed"),
    "effect_per_seed": lambda: plots.effect_per_seed(
        pd.DataFrame({"C": [0.3, 0.5], "lo": [0.1, 0.2], "hi": [0.5, 0.7]}, index=pd.Index([0, 1], name="seed")), pct=5.0),
    "safety_and_helpfulness": lambda: plots.safety_and_helpfulness(tax_table()),
}
INTERNAL = re.compile(r"mean_m[12]|random_last|change_score|mean_difference|_ablation|_into_|_from_|reward_margin"
                      r"|\w=\w")  # the last: px's "column=value" facet titles


def texts(drawing) -> list[str]:
    """Every piece of text of a drawn matplotlib figure: title, panel titles, axis labels, ticks, legend."""
    found = [drawing.get_suptitle()]
    for ax in drawing.axes:
        found += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        found += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    for legend in drawing.legends:
        found += [t.get_text() for t in legend.get_texts()] + [legend.get_title().get_text()]
    return [t for t in found if t]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_plot_converts_with_scales_and_labels_in_words(name):
    drawing, notes = to_matplotlib(FIGURES[name](), name)
    assert notes == []
    drawing.canvas.draw()  # tick labels exist once drawn
    assert drawing.get_suptitle()
    panels = [ax for ax in drawing.axes if ax.get_label() != "<colorbar>"]
    for ax in panels:
        assert any(t.get_text() for t in ax.get_yticklabels()), f"{name}: a panel without a y scale"
        assert any(t.get_text() for t in ax.get_xticklabels()), f"{name}: a panel without an x scale"
    assert any(ax.get_xlabel() for ax in panels) and any(ax.get_ylabel() for ax in panels)
    leaked = [t for t in texts(drawing) if INTERNAL.search(t)]
    assert not leaked, f"{name}: internal names in the labels: {leaked}"


def test_training_curves_give_each_quantity_its_own_labelled_y_scale():
    """Issue 22: the reward-margin panel shared nothing with the loss but had lost its tick labels."""
    fig = plots.training_curves(training_log())
    drawing, _ = to_matplotlib(fig, "01_alignment_training")
    drawing.canvas.draw()
    loss, margin = drawing.axes[:2]
    assert loss.get_ylabel() == "training loss" and margin.get_ylabel().startswith("reward margin")
    assert loss.get_title() == "training loss"
    assert margin.get_ylim()[1] < 0.5 < loss.get_ylim()[1]  # independent ranges
    assert fig.layout.yaxis2.showticklabels is not False and fig.layout.yaxis2.matches is None


def test_words_names_internal_names_and_leaves_others_readable():
    assert plots.words("random_last") == "random neurons, last layer"
    assert plots.words("mean_m1") == "M1 mean activation"
    assert plots.words("harmbench") == "harmbench"
    assert plots.words("some_new_arm") == "some new arm"


def test_confidence_bands_draw_no_markers():
    """A band is a filled outline; with no mode plotly put a marker on each of its corners."""
    fig = plots.causal_effect_curve(effects())
    assert all(t.mode == "lines" for t in fig.data if t.fill == "toself")
