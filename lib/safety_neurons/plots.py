"""Plotly figures shared by the notebooks (each returns a figure; `figures.save_figure` writes it)."""
from __future__ import annotations

import numpy as np

from .change_scores import NeuronRanking


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
