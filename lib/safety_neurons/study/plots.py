"""Plotly figures of the notebooks (each returns a figure; `figures.save_figure` writes it).

Every label is in words: column and arm names of the tables (`mean_m1`, `random_last`) are mapped to what
they mean by `words` before they reach an axis, a legend or a panel title.
"""
from __future__ import annotations

import numpy as np

from ..method.change_scores import NeuronRanking

# What the tables' internal names mean, for axes, legends and panel titles.
WORDS = {
    "m1": "M1 (unaligned)", "m2": "M2 (aligned)",
    "safety": "safety neurons (top k)", "random": "random neurons (layer-matched)",
    "random_last": "random neurons, last layer", "majority": "majority class (no neurons)",
    "change_score": "change score", "mean_difference": "mean difference (harmful vs benign)",
    "activation_variance": "activation variance",
    "mean_m1": "M1 mean activation", "mean_m2": "M2 mean activation",
    "std_m1": "M1 activation std", "std_m2": "M2 activation std",
    "signed_difference": "mean activation, harmful minus benign",
    "mean_harmful": "mean activation on harmful prompts", "mean_benign": "mean activation on benign prompts",
    "zero_ablation": "zero ablation in M2", "mean_ablation": "mean ablation in M2", "patching": "patching into M1",
    "benign_into_harmful": "benign run's output patched into the harmful run",
    "harmful_into_benign": "harmful run's output patched into the benign run",
    "attn": "attention", "mlp": "MLP",
    "remove": "remove: M2 trained on compliance data", "add": "add: M1 trained on refusal data",
    "accuracy": "accuracy", "f1": "F1", "auroc": "AUROC",
    "loss": "training loss", "reward_margin": "reward margin (chosen minus rejected)",
    "helpful": "helpfulness (benign prompts answered)",
}


def words(name) -> str:
    """An internal name in words (`random_last` -> "random neurons, last layer"); unknown names lose their
    underscores."""
    return WORDS.get(name, str(name).replace("_", " "))


def layer_share_bar(rankings: dict[str, NeuronRanking], k: int, *, title: str | None = None):
    """Share of each layer in the top k of each ranking (grouped bars)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, ranking in rankings.items():
        counts = ranking.layer_counts(k).numpy()
        fig.add_bar(x=np.arange(ranking.n_layers), y=counts / k, name=words(name))
    fig.update_layout(title=title or f"Where the top {k} neurons are", xaxis_title="layer",
                      yaxis_title=f"share of the top {k}", barmode="group", legend_title_text="ranking")
    return fig


def sorted_scores(rankings: dict[str, NeuronRanking], *, points: int = 2000, title: str = "Sorted neuron scores"):
    """Each ranking's scores sorted (log-log, sampled at `points` log-spaced ranks): how concentrated they are."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, ranking in rankings.items():
        values = np.sort(ranking.scores.double().flatten().numpy())[::-1]
        ranks = np.unique(np.geomspace(1, len(values), points).astype(int))
        fig.add_scatter(x=ranks, y=values[ranks - 1] / values[0], mode="lines", name=words(name))
    fig.update_layout(title=title, xaxis_title="rank of the neuron (1 = largest score)", yaxis_title="score / largest score",
                      xaxis_type="log", yaxis_type="log", legend_title_text="ranking")
    return fig


def mean_scatter(ranking: NeuronRanking, k: int, *, x: str = "mean_m1", y: str = "mean_m2", title: str | None = None):
    """Mean activation of the top k neurons under two models, coloured by layer, with the y = x line."""
    import plotly.express as px

    table = ranking.table(k)
    fig = px.scatter(table, x=x, y=y, color="layer", hover_data=["rank", "layer", "index", "score"],
                     labels={x: words(x), y: words(y), "score": "change score"},
                     title=title or f"Mean activation of the top {k} neurons: M1 vs M2")
    lo, hi = float(min(table[x].min(), table[y].min())), float(max(table[x].max(), table[y].max()))
    fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line=dict(dash="dot", color="grey"))
    return fig


def _band(fig, x, lo, hi, name: str, color: str) -> None:
    fig.add_scatter(x=list(x) + list(x)[::-1], y=list(hi) + list(lo)[::-1], mode="lines", fill="toself", fillcolor=color,
                    line=dict(width=0), opacity=0.2, name=f"{name} 95% CI", hoverinfo="skip", showlegend=False)


COLORS = {"safety": "#d62728", "random": "#1f77b4"}


def k_sweep(effects, f_m1: float, f_m2: float, *, judge: str, title: str = "Safety under dynamic patching"):
    """Safety score vs k% for safety-neuron and random patching (bootstrap 95% bands), with M1 and M2 as lines."""
    import plotly.graph_objects as go

    fig = go.Figure()
    span = f_m2 - f_m1
    for arm, label in (("safety", "top-k change-score neurons"), ("random", "random neurons (layer-matched)")):
        x = effects["k_pct"]
        _band(fig, x, f_m1 + effects[f"C_{arm}_lo"] * span, f_m1 + effects[f"C_{arm}_hi"] * span, label, COLORS[arm])
        fig.add_scatter(x=x, y=effects[arm], mode="lines+markers", name=label, line=dict(color=COLORS[arm]))
    fig.add_hline(y=f_m2, line_dash="dash", annotation_text="M2", line_color="black")
    fig.add_hline(y=f_m1, line_dash="dot", annotation_text="M1", line_color="grey")
    fig.update_layout(title=title, xaxis_title="k (% of all neurons patched)", yaxis_title=f"safety score ({judge})")
    return fig


def causal_effect_curve(effects, *, title: str = "Causal effect C of patching k% of the neurons"):
    """C vs k% for both arms with bootstrap 95% bands; C = 1 means the patched neurons carry all of M2's safety."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for arm, label in (("safety", "top-k change-score neurons"), ("random", "random neurons (layer-matched)")):
        x = effects["k_pct"]
        _band(fig, x, effects[f"C_{arm}_lo"], effects[f"C_{arm}_hi"], label, COLORS[arm])
        fig.add_scatter(x=x, y=effects[f"C_{arm}"], mode="lines+markers", name=label, line=dict(color=COLORS[arm]))
    fig.add_hline(y=1.0, line_dash="dash", line_color="black", annotation_text="C = 1")
    fig.add_hline(y=0.9, line_dash="dot", line_color="grey", annotation_text="0.9")
    fig.update_layout(title=title, xaxis_title="k (% of all neurons patched)", yaxis_title="causal effect C")
    return fig


def safeguard_accuracy(scores, *, metric: str = "accuracy", title: str = "Safeguard accuracy vs k"):
    """Accuracy (or F1/AUROC) vs k for each arm, one panel per test set; the training set is each
    row's own: cells average over the other sets' classifiers."""
    import plotly.express as px

    table = scores.groupby(["test", "k", "arm"], as_index=False)[metric].mean()
    table["arm"] = table["arm"].map(words)
    table["test"] = "tested on " + table["test"].astype(str)
    colors = {"safety": COLORS["safety"], "random": COLORS["random"], "random_last": "#2ca02c", "majority": "grey"}
    fig = px.line(table, x="k", y=metric, color="arm", facet_col="test", markers=True, log_x=True,
                  color_discrete_map={words(a): c for a, c in colors.items()}, title=title,
                  category_orders={"arm": [words(a) for a in colors]},
                  labels={"k": "k (neurons the classifier reads)", metric: f"{words(metric)} (mean over training sets)",
                          "arm": "neurons", "test": "test set"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_yaxes(range=[0, 1.02], showticklabels=True)
    return fig


def generalisation_matrix(scores, k: int, *, arm: str = "safety", metric: str = "accuracy"):
    """Train set x test set heatmap at one k (diagonal: 2-fold cross-validation within the set)."""
    import plotly.express as px

    cell = scores[(scores["k"] == k) & (scores["arm"] == arm)].pivot(index="train", columns="test", values=metric)
    return px.imshow(cell, text_auto=".2f", zmin=0, zmax=1, color_continuous_scale="Blues",
                     labels={"x": "test set", "y": "training set", "color": words(metric)},
                     title=f"Safeguard {words(metric)}, training set (rows) -> test set (columns), k = {k}, {words(arm)}")


INTERP_COLORS = {"safety": COLORS["safety"], "random": COLORS["random"], "change_score": COLORS["safety"],
                 "mean_difference": "#9467bd", "activation_variance": "#2ca02c"}


def probe_accuracy_by_layer(probes, *, title: str = "Linear probes: harmful vs benign from the residual stream"):
    """Cross-validated probe accuracy per layer for each model (solid), with the shuffled-label control (dotted)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for (model, labels), rows in probes.groupby(["model", "labels"], sort=False):
        shuffled = labels == "shuffled"
        fig.add_scatter(x=rows["layer"], y=rows["accuracy"], mode="lines" if shuffled else "lines+markers",
                        error_y=None if shuffled else dict(type="data", array=rows["std"], visible=True),
                        name=f"{model.upper()}" + (" (shuffled labels)" if shuffled else ""), line=dict(dash="dot" if shuffled else "solid"))
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
    fig.update_layout(title=title, xaxis_title="layer (residual stream after the block, last prompt token)",
                      yaxis_title="cross-validated accuracy", yaxis_range=[0, 1.02])
    return fig


def trace_heatmap(effects, *, value: str = "change", title: str = "Component tracing in M2: change of the refusal log-odds"):
    """Layer x component heatmaps, one per patching direction (diverging colours centred at 0)."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    directions = list(dict.fromkeys(effects["direction"]))
    fig = make_subplots(rows=len(directions), cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[words(d) for d in directions])
    value_label = {"change": "change of the refusal log-odds", "share": "share of the harmful-benign gap"}.get(value, words(value))
    span = float(np.nanmax(np.abs(effects[value]))) if len(effects) else 1.0
    for i, direction in enumerate(directions, start=1):
        grid = effects[effects["direction"] == direction].pivot(index="component", columns="layer", values=value)
        fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=[words(c) for c in grid.index], zmid=0,
                                 zmin=-span, zmax=span, colorscale="RdBu_r", colorbar=dict(title=value_label), showscale=i == 1,
                                 hovertemplate="layer %{x}, %{y}: %{z:.3f}<extra></extra>"), row=i, col=1)
        fig.update_yaxes(title_text="patched component", row=i, col=1)
    fig.update_xaxes(showticklabels=True)
    fig.update_xaxes(title_text="layer", row=len(directions), col=1)
    fig.update_layout(title=title)
    return fig


def ablation_vs_patching(summary, *, judge: str, title: str = "Ablation in M2 vs patching into M1"):
    """Per intervention (panel) and k: the safety lost by ablating the neurons in M2 (or gained by patching
    them into M1), safety neurons vs layer-matched random ones."""
    import plotly.express as px

    table = summary.assign(k=summary["k_pct"].map(lambda p: f"{p:g}%"), neurons=summary["neurons"].map(words),
                           intervention=summary["intervention"].map(words))
    fig = px.bar(table, x="k", y="change", color="neurons", facet_col="intervention", barmode="group",
                 color_discrete_map={words(n): c for n, c in INTERP_COLORS.items()}, hover_data=["safety"], title=title,
                 category_orders={"neurons": [words("safety"), words("random")],
                                  "intervention": [words(i) for i in ("zero_ablation", "mean_ablation", "patching")]},
                 labels={"change": f"safety lost (ablation) / gained (patching), {judge}", "k": "k (% of all neurons)",
                         "safety": f"safety ({judge})"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_yaxes(showticklabels=True)
    return fig


def baseline_effects_bar(table, *, pct: float, title: str | None = None):
    """Causal effect C (bootstrap 95% interval) of patching each ranking's top pct% into M1; the hover and
    labels give each ranking's overlap with the change-score top 5%."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [f"{words(r)}<br>overlap {o:.2f}" if o == o else words(r) for r, o in zip(table["ranking"], table["overlap_top5pct"])]
    fig.add_bar(x=labels, y=table["C"], marker_color=[INTERP_COLORS.get(r, "grey") for r in table["ranking"]],
                error_y=dict(type="data", symmetric=False, array=table["C_hi"] - table["C"], arrayminus=table["C"] - table["C_lo"]))
    fig.add_hline(y=1.0, line_dash="dash", line_color="black", annotation_text="C = 1 (all of M2's safety)")
    fig.update_layout(title=title or f"Patching each ranking's top {pct:g}% into M1", yaxis_title="causal effect C",
                      xaxis_title="ranking (overlap of its top 5% with the change-score top 5%)")
    return fig


def tuning_curves(tuning, *, judge: str, title: str = "Targeted tuning of neuron scales: safety vs training step"):
    """Safety vs step for each experiment (panel), the safety neurons' scales vs as many random neurons'."""
    import plotly.express as px

    table = tuning.assign(arm=tuning["arm"].map(words), experiment=tuning["experiment"].map(words))
    fig = px.line(table, x="step", y="safety", color="arm", facet_col="experiment", markers=True,
                  color_discrete_map={words(n): c for n, c in INTERP_COLORS.items()}, hover_data=["loss"], title=title,
                  category_orders={"arm": [words("safety"), words("random")]},
                  labels={"safety": f"safety ({judge})", "step": "training step", "arm": "neurons tuned",
                          "loss": "training loss"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_yaxes(range=[-0.02, 1.02], showticklabels=True)
    return fig


# ----------------------------------------------------------------------------------------------
# the notebooks' own tables (stages 01, 04, 05, 06)
# ----------------------------------------------------------------------------------------------


def training_curves(curves, *, title: str = "DPO training: loss and reward margin per step"):
    """Loss and reward margin vs step (one panel each, each with its own y scale), one line per training run.
    `curves`: rows of step, run, loss, reward_margin (`method.alignment.training_curve`, plus a run column)."""
    import plotly.express as px

    quantities = [q for q in ("loss", "reward_margin") if q in curves]
    long = curves.melt(id_vars=["step", "run"], value_vars=quantities, var_name="quantity").dropna(subset=["value"])
    long["quantity"] = long["quantity"].map(words)
    fig = px.line(long, x="step", y="value", color="run", facet_col="quantity", title=title,
                  category_orders={"quantity": [words(q) for q in quantities]},
                  labels={"step": "training step", "run": "run (objective, seed)"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    # the two quantities have nothing in common: each panel its own y range, and its scale shown
    fig.update_yaxes(matches=None, showticklabels=True)
    for col, quantity in enumerate(quantities, start=1):
        fig.update_yaxes(title_text=words(quantity), col=col)
    return fig


def transfer_bar(table, *, pct: float, judge: str, arms=("m1", "m2", "safety", "random"), title: str | None = None):
    """Safety of each arm on each red-team set (grouped bars). `table`: one row per set (the index), one
    column per arm (`s04_transfer_capability.transfer_table`)."""
    import plotly.express as px

    names = {"m1": "M1 (unaligned)", "m2": "M2 (aligned)", "safety": f"M1 + top {pct:g}% safety neurons from M2",
             "random": f"M1 + {pct:g}% random neurons from M2 (layer-matched)"}
    long = table[list(arms)].rename_axis("set").reset_index().melt(id_vars="set", var_name="arm", value_name="score")
    long["arm"] = long["arm"].map(lambda a: names.get(a, words(a)))
    colors = {names["m1"]: "grey", names["m2"]: "black", names["safety"]: COLORS["safety"], names["random"]: COLORS["random"]}
    return px.bar(long, x="set", y="score", color="arm", barmode="group", color_discrete_map=colors,
                  labels={"set": "red-team prompt set (held out)", "score": f"safety score ({judge})", "arm": "model"},
                  title=title or f"Safety on held-out red-team prompts, top {pct:g}% vs random neurons ({judge})")


def matrix_heatmap(matrix, *, title: str, value: str, axis: str, zmin: float = 0.0, zmax: float = 1.0,
                   colorscale: str = "Viridis"):
    """A square table (seeds x seeds, objectives x objectives, judges x judges) as a heatmap with each cell's
    value printed; `value` names the colour scale, `axis` what the rows and columns are."""
    import plotly.express as px

    shown = matrix.rename(index=words, columns=words)
    return px.imshow(shown, text_auto=".2f", zmin=zmin, zmax=zmax, color_continuous_scale=colorscale, title=title,
                     labels={"x": axis, "y": axis, "color": value})


def effect_per_seed(per_seed, *, pct: float, title: str | None = None):
    """Causal effect C (bootstrap 95% interval) of each training seed's own top pct%.
    `per_seed`: index seed, columns C, lo, hi."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=[f"seed {s}" for s in per_seed.index], y=per_seed["C"], marker_color=COLORS["safety"],
                error_y=dict(type="data", symmetric=False, array=per_seed["hi"] - per_seed["C"],
                             arrayminus=per_seed["C"] - per_seed["lo"]))
    fig.add_hline(y=1.0, line_dash="dash", line_color="black", annotation_text="C = 1 (all of M2's safety)")
    fig.update_layout(title=title or f"Causal effect C at {pct:g}% per training seed (bootstrap 95% interval)",
                      xaxis_title="training seed of M2 (and of its ranking)", yaxis_title="causal effect C")
    return fig


def safety_and_helpfulness(table, *, judge: str = "refusal-phrase", title: str | None = None):
    """Safety and helpfulness (bootstrap 95% intervals where the table has `<measure>_lo`/`_hi`) of each
    model and each patched model (`s06_alignment_tax.results_table`: one row per arm)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    arms = [_tax_arm(a) for a in table.index]
    for measure, color in (("safety", COLORS["safety"]), ("helpful", "#2ca02c")):
        values = table[measure]
        bars = dict(x=arms, y=values, name=words(measure) if measure != "safety" else "safety (harmful prompts refused)",
                    marker_color=color)
        if f"{measure}_lo" in table and f"{measure}_hi" in table:
            bars["error_y"] = dict(type="data", symmetric=False, array=table[f"{measure}_hi"] - values,
                                   arrayminus=values - table[f"{measure}_lo"])
        fig.add_bar(**bars)
    fig.update_layout(title=title or f"Safety and helpfulness of each model and each patched model ({judge} judge)",
                      xaxis_title="model", yaxis_title="share of prompts", yaxis_range=[0, 1.05], barmode="group",
                      legend_title_text="measure")
    return fig


def _tax_arm(arm: str) -> str:
    """`harmless_from_helpful` -> "harmless M2, shared neurons from helpful M2"; `harmless` -> "harmless M2"."""
    patched, _, source = str(arm).partition("_from_")
    return f"{patched} M2, shared neurons from {source} M2" if source else f"{patched} M2"


MEASURE_NAMES = {"phrase": "refusal phrase (greedy answers)", "logodds": "refusal log-odds at the first answer position",
                 "likelihood": "log-likelihood of M2's answer", "sampled": "refusal share of sampled answers"}


def measures_vs_k(continuous, effects=None, *, title: str = "Causal effect C by measure: top-k vs random neurons"):
    """One panel per measure: C vs k% for the top-k neurons and layer-matched random ones (bootstrap 95%
    bands), from continuous_effects' table; `effects` (effect_table) adds the binary phrase judge's panel."""
    from plotly.subplots import make_subplots

    panels = []
    if effects is not None:
        panels.append(("phrase", effects["k_pct"], effects[["C_safety", "C_safety_lo", "C_safety_hi"]].to_numpy(),
                       effects[["C_random", "C_random_lo", "C_random_hi"]].to_numpy()))
    for measure, rows in continuous[continuous["arm"] == "safety"].groupby("measure", sort=False):
        panels.append((measure, rows["k_pct"], rows[["C", "lo", "hi"]].to_numpy(),
                       rows[["C_random", "C_random_lo", "C_random_hi"]].to_numpy()))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[MEASURE_NAMES.get(m, m) for m, *_ in panels])
    for col, (measure, x, top, rand) in enumerate(panels, start=1):
        for arm, values, label in (("safety", top, "top-k change-score neurons"), ("random", rand, "random neurons (layer-matched)")):
            fig.add_scatter(x=list(x) + list(x)[::-1], y=list(values[:, 2]) + list(values[:, 1])[::-1], mode="lines",
                            fill="toself", fillcolor=COLORS[arm], line=dict(width=0), opacity=0.2, hoverinfo="skip",
                            showlegend=False, row=1, col=col)
            fig.add_scatter(x=list(x), y=list(values[:, 0]), mode="lines+markers", name=label, line=dict(color=COLORS[arm]),
                            showlegend=col == 1, row=1, col=col)
        fig.add_hline(y=1.0, line_dash="dash", line_color="black", row=1, col=col)
        fig.update_xaxes(title_text="k (% of all neurons patched)", row=1, col=col)
        fig.update_yaxes(title_text="causal effect C", row=1, col=col)
    fig.update_layout(title=title)
    return fig


def update_by_layer(stats, *, title: str = "How much M2's (IA)^3 update moved each layer's neurons"):
    """|l - 1| per layer (mean, 90th and 99th percentile) from update_statistics: a sparse update shows a few
    layers or a high 99th percentile over a low mean; a dense uniform one, flat lines close together."""
    import plotly.graph_objects as go

    layers = sorted(stats["layer"], key=int)
    fig = go.Figure()
    for key, label, dash in (("mean", "mean", "solid"), ("p90", "90th percentile", "dash"), ("p99", "99th percentile", "dot")):
        fig.add_scatter(x=[int(layer) for layer in layers], y=[stats["layer"][layer][key] for layer in layers],
                        mode="lines+markers", name=label, line=dict(dash=dash))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="|l - 1| of the neuron's (IA)^3 scale")
    return fig
