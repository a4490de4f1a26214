"""Plotly figures shared by the notebooks (each returns a figure; `figures.save_figure` writes it)."""
from __future__ import annotations

import numpy as np

from ..method.change_scores import NeuronRanking


def layer_share_bar(rankings: dict[str, NeuronRanking], k: int, *, title: str | None = None):
    """Share of each layer in the top k of each ranking (grouped bars)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, ranking in rankings.items():
        counts = ranking.layer_counts(k).numpy()
        fig.add_bar(x=np.arange(ranking.n_layers), y=counts / k, name=name)
    fig.update_layout(title=title or f"Where the top {k} neurons are", xaxis_title="layer",
                      yaxis_title=f"share of the top {k}", barmode="group")
    return fig


def sorted_scores(rankings: dict[str, NeuronRanking], *, points: int = 2000, title: str = "Sorted neuron scores"):
    """Each ranking's scores sorted (log-log, sampled at `points` log-spaced ranks): how concentrated they are."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, ranking in rankings.items():
        values = np.sort(ranking.scores.double().flatten().numpy())[::-1]
        ranks = np.unique(np.geomspace(1, len(values), points).astype(int))
        fig.add_scatter(x=ranks, y=values[ranks - 1] / values[0], mode="lines", name=name)
    fig.update_layout(title=title, xaxis_title="rank", yaxis_title="score / top score", xaxis_type="log", yaxis_type="log")
    return fig


def mean_scatter(ranking: NeuronRanking, k: int, *, x: str = "mean_m1", y: str = "mean_m2", title: str | None = None):
    """Mean activation of the top k neurons under two models, coloured by layer, with the y = x line."""
    import plotly.express as px

    table = ranking.table(k)
    fig = px.scatter(table, x=x, y=y, color="layer", hover_data=["rank", "layer", "index", "score"],
                     title=title or f"Mean activation of the top {k} neurons: M1 vs M2")
    lo, hi = float(min(table[x].min(), table[y].min())), float(max(table[x].max(), table[y].max()))
    fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line=dict(dash="dot", color="grey"))
    return fig


def _band(fig, x, lo, hi, name: str, color: str) -> None:
    fig.add_scatter(x=list(x) + list(x)[::-1], y=list(hi) + list(lo)[::-1], fill="toself", fillcolor=color,
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
    fig.update_layout(title=title, xaxis_title="k (% of all neurons patched)", yaxis_title="C")
    return fig


def safeguard_accuracy(scores, *, metric: str = "accuracy", title: str = "Safeguard accuracy vs k"):
    """Accuracy (or F1/AUROC) vs k for each arm, one panel per test set; the training set is each
    row's own: cells average over the other sets' classifiers."""
    import plotly.express as px

    table = scores.groupby(["test", "k", "arm"], as_index=False)[metric].mean()
    fig = px.line(table, x="k", y=metric, color="arm", facet_col="test", markers=True, log_x=True,
                  color_discrete_map={"safety": COLORS["safety"], "random": COLORS["random"], "random_last": "#2ca02c",
                                      "majority": "grey"}, title=title)
    fig.update_yaxes(range=[0, 1.02])
    return fig


def generalisation_matrix(scores, k: int, *, arm: str = "safety", metric: str = "accuracy"):
    """Train set x test set heatmap at one k (diagonal: 2-fold cross-validation within the set)."""
    import plotly.express as px

    cell = scores[(scores["k"] == k) & (scores["arm"] == arm)].pivot(index="train", columns="test", values=metric)
    return px.imshow(cell, text_auto=".2f", zmin=0, zmax=1, color_continuous_scale="Blues",
                     title=f"Safeguard {metric}, train set (rows) -> test set (columns), k = {k}, {arm} neurons")


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
                        subplot_titles=[d.replace("_", " ") for d in directions])
    span = float(np.nanmax(np.abs(effects[value]))) if len(effects) else 1.0
    for i, direction in enumerate(directions, start=1):
        grid = effects[effects["direction"] == direction].pivot(index="component", columns="layer", values=value)
        fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), zmid=0, zmin=-span, zmax=span,
                                 colorscale="RdBu_r", colorbar=dict(title=value), showscale=i == 1,
                                 hovertemplate="layer %{x}, %{y}: %{z:.3f}<extra></extra>"), row=i, col=1)
    fig.update_xaxes(title_text="layer", row=len(directions), col=1)
    fig.update_layout(title=title)
    return fig


def ablation_vs_patching(summary, *, judge: str, title: str = "Ablation in M2 vs patching into M1"):
    """Per intervention (panel) and k: the safety lost by ablating the neurons in M2 (or gained by patching
    them into M1), safety neurons vs layer-matched random ones."""
    import plotly.express as px

    table = summary.assign(k=summary["k_pct"].map(lambda p: f"{p:g}%"))
    fig = px.bar(table, x="k", y="change", color="neurons", facet_col="intervention", barmode="group",
                 color_discrete_map=INTERP_COLORS, hover_data=["safety"], title=title,
                 labels={"change": f"safety lost (ablation) / gained (patching), {judge}", "k": "k (% of all neurons)"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1].replace("_", " ")))
    return fig


def baseline_effects_bar(table, *, pct: float, title: str | None = None):
    """Causal effect C (bootstrap 95% interval) of patching each ranking's top pct% into M1; the hover and
    labels give each ranking's overlap with the change-score top 5%."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [f"{r}<br>overlap {o:.2f}" if o == o else r for r, o in zip(table["ranking"], table["overlap_top5pct"])]
    fig.add_bar(x=labels, y=table["C"], marker_color=[INTERP_COLORS.get(r, "grey") for r in table["ranking"]],
                error_y=dict(type="data", symmetric=False, array=table["C_hi"] - table["C"], arrayminus=table["C"] - table["C_lo"]))
    fig.add_hline(y=1.0, line_dash="dash", line_color="black", annotation_text="C = 1 (all of M2's safety)")
    fig.update_layout(title=title or f"Patching each ranking's top {pct:g}% into M1", yaxis_title="causal effect C",
                      xaxis_title="ranking (overlap of its top 5% with the change-score top 5%)")
    return fig


def tuning_curves(tuning, *, judge: str, title: str = "Targeted tuning of neuron scales: safety vs training step"):
    """Safety vs step for each experiment (panel), the safety neurons' scales vs as many random neurons'."""
    import plotly.express as px

    fig = px.line(tuning, x="step", y="safety", color="arm", facet_col="experiment", markers=True,
                  color_discrete_map=INTERP_COLORS, hover_data=["loss"], title=title,
                  labels={"safety": f"safety ({judge})", "step": "training step"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig
