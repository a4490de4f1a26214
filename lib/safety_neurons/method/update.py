"""M2's (IA)^3 update and what the change score ranks, measured (issue 20).

M2 is M1 with one (IA)^3 scale l per MLP neuron: M2's `hook_post` is `l * a`. How far alignment moved a
neuron's own weights is therefore |l - 1|, read straight from the adapter. The change score
S = sqrt(mean_t (a1_t - a2_t)^2) mixes that with the neuron's activation size: for a neuron whose
inputs did not change, a2 = l * a1 and S = |l - 1| * RMS(a1) exactly. When the update is dense and
nearly uniform (|l - 1| about the same everywhere), S ranks neurons by activation size, not by how much
alignment moved them. This module measures that:

- `ia3_deltas`, `update_statistics`: how large, how widespread and how concentrated the update is;
- `activation_rms`, `ranking_correlations`, `top_share_of_delta`: what the change score follows;
- `normalised_ranking`, `update_ranking`: two alternative rankings (change score / RMS, and |l - 1|
  itself) as `NeuronRanking`s, so patching can use them like any other ranking.

Every function takes plain tensors or rankings and returns plain floats or tensors.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from .change_scores import NeuronRanking
from .neurons import k_from_percent

# Thresholds for "moved": a scale l counts as moved when |l - 1| exceeds it. Names are metric-key safe.
MOVED_THRESHOLDS = {"moved_0p05": 0.05, "moved_0p1": 0.1}
# Fractions of neurons for `concentration`, ranked by |l - 1| itself.
CONCENTRATION_FRACTIONS = {"top1pct": 0.01, "top5pct": 0.05, "top20pct": 0.20}
UPDATE_METHOD = "ia3_delta"
NORMALISED_METHOD = "change_score_over_rms"


# ---------------------------------------------------------------- the update


def ia3_deltas(scales: Mapping[int, torch.Tensor], n_layers: int, d_mlp: int) -> torch.Tensor:
    """|l - 1| per neuron, [n_layers, d_mlp] float64, from per-layer (IA)^3 scale vectors.

    `scales` is {layer: tensor[d_mlp]} as `method.patching.ia3_neuron_scales` returns it (layer keys may
    be ints or digit strings). A layer without a scale vector is unscaled: |l - 1| = 0 there.
    """
    deltas = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    for key, vec in scales.items():
        layer = int(key)
        if not 0 <= layer < n_layers:
            raise ValueError(f"scales given for layer {layer} but the model has {n_layers} layers (0-{n_layers - 1})")
        vec = torch.as_tensor(vec).detach().to("cpu", torch.float64).flatten()
        if vec.numel() != d_mlp:
            raise ValueError(f"scales of layer {layer} have {vec.numel()} entries but the model has {d_mlp} neurons per layer")
        if not torch.isfinite(vec).all():
            raise ValueError(f"scales of layer {layer} hold non-finite values: the adapter is broken")
        deltas[layer] = (vec - 1.0).abs()
    return deltas


def _summary(values: np.ndarray) -> dict[str, float]:
    """mean / median / p90 / p99 and the moved shares of a flat array of |l - 1|."""
    p50, p90, p99 = np.quantile(values, [0.5, 0.9, 0.99])
    out = {"mean": float(values.mean()), "median": float(p50), "p90": float(p90), "p99": float(p99)}
    out |= {name: float(np.mean(values > t)) for name, t in MOVED_THRESHOLDS.items()}
    return out


def _top_share(weights: np.ndarray, order: np.ndarray, fraction: float) -> float:
    """Share of sum(weights) carried by the first k entries of `order`, k = `fraction` of the neurons
    rounded as the study's top-k is (`k_from_percent`); NaN when the weights sum to 0."""
    total = float(weights.sum())
    if total <= 0:
        return math.nan
    k = k_from_percent(100.0 * fraction, weights.size)
    return float(weights[order[:k]].sum() / total)


def update_statistics(deltas: torch.Tensor) -> dict:
    """How large, widespread and concentrated an update |l - 1| ([n_layers, d_mlp]) is.

    Returns nested dicts of plain floats, ready for flat metric keys:
    - `all`: over every neuron, `mean`, `median`, `p90`, `p99` of |l - 1| and `moved_0p05` / `moved_0p1`,
      the share of neurons with |l - 1| > 0.05 / > 0.1;
    - `layer`: {"0": {same keys}, ...} per layer;
    - `concentration`: `top1pct` / `top5pct` / `top20pct`, the share of the total |l - 1| held by the top
      1% / 5% / 20% of neurons ranked by |l - 1| itself (k rounded as `k_from_percent`). A uniform update
      gives k / n (about 0.01 / 0.05 / 0.20); a sparse one, moved in fewer than k neurons, gives 1.
      NaN when nothing moved.
    """
    if deltas.ndim != 2:
        raise ValueError(f"deltas must be [n_layers, d_mlp], got shape {tuple(deltas.shape)}")
    d = deltas.detach().to("cpu", torch.float64).numpy()
    if d.size == 0:
        raise ValueError("deltas are empty: the model has no neurons")
    if not np.all(np.isfinite(d)) or (d < 0).any():
        raise ValueError("deltas must be finite and >= 0 (|l - 1| from ia3_deltas)")
    flat = d.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    return {
        "all": _summary(flat),
        "layer": {str(layer): _summary(d[layer]) for layer in range(d.shape[0])},
        "concentration": {name: _top_share(flat, order, f) for name, f in CONCENTRATION_FRACTIONS.items()},
    }


# ---------------------------------------------------------------- what the change score follows


def activation_rms(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-neuron RMS of M1's activation, sqrt(mean^2 + std^2), same shape as `mean` ([n_layers, d_mlp]).

    `mean`, `std` are a change-score ranking's extras `mean_m1` / `std_m1`. `RunningMoments.std` is the
    *population* std (var = E[a^2] - mean^2, divided by N, clamped at 0), so mean^2 + std^2 = E[a^2] and
    this is exactly sqrt(mean_t a_t^2) over the same tokens the change score used, up to float rounding
    (the extras are stored as float32) and the clamp (a variance that rounds below 0 reads as 0).
    """
    if mean.shape != std.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same shape")
    m, s = mean.detach().double(), std.detach().double()
    return (m * m + s * s).sqrt()


def _flat_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; NaN when either side is constant (it is undefined, not 0)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _checked_pair(scores, other, other_name: str) -> tuple[np.ndarray, np.ndarray]:
    if tuple(scores.shape) != tuple(other.shape):
        raise ValueError(f"scores {tuple(scores.shape)} and {other_name} {tuple(other.shape)} must have the same shape "
                         "([n_layers, d_mlp])")
    a, b = _flat_numpy(scores), _flat_numpy(other)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"scores and {other_name} must be finite")
    return a, b


def ranking_correlations(scores: torch.Tensor, rms: torch.Tensor, deltas: torch.Tensor) -> dict[str, float]:
    """Spearman correlations, over all neurons flattened ([n_layers, d_mlp] each), of the change score
    with M1's activation RMS (`spearman_rms`) and with |l - 1| (`spearman_delta`). On `default` the change
    score followed activation size (0.94), not the update (0.10). NaN where a side is constant."""
    s, r = _checked_pair(scores, rms, "rms")
    _, d = _checked_pair(scores, deltas, "deltas")
    return {"spearman_rms": _spearman(s, r), "spearman_delta": _spearman(s, d)}


def top_share_of_delta(scores: torch.Tensor, deltas: torch.Tensor, fraction: float = 0.05) -> float:
    """Share of the total |l - 1| carried by the top `fraction` of neurons by `scores` ([n_layers, d_mlp]
    each; k and tie order as the study's top-k: `k_from_percent`, ties to the lower flat id). A ranking
    unrelated to the update gives about `fraction`; one that finds a sparse update gives up to 1.
    NaN when nothing moved."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    s, d = _checked_pair(scores, deltas, "deltas")
    order = NeuronRanking("scores", torch.as_tensor(s).view(tuple(scores.shape))).order().numpy()
    return _top_share(d, order, fraction)


def gradient_sums(tensors: Mapping[str, torch.Tensor], n_layers: int, d_mlp: int) -> torch.Tensor:
    """The summed training gradient of each neuron's (IA)^3 scale, [n_layers, d_mlp] float64 (signed), from
    the tensors training recorded (method/alignment.py's GRADIENT_SUM: {PEFT parameter name: [d_mlp]}).
    A layer without a tensor had no gradient: 0 there."""
    from ..lm.models import IA3_KEY

    out = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    for name, vec in tensors.items():
        match = IA3_KEY.search(name)
        if match is None or match[2] != "mlp":
            raise ValueError(f"gradient tensor {name!r} is not the gradient of an MLP (IA)^3 scale")
        layer, vec = int(match[1]), torch.as_tensor(vec).detach().to("cpu", torch.float64).flatten()
        if not 0 <= layer < n_layers or vec.numel() != d_mlp:
            raise ValueError(f"gradient tensor {name!r} ({vec.numel()} entries) does not fit a model of "
                             f"{n_layers} layers x {d_mlp} neurons")
        out[layer] = vec
    return out


def update_follows_gradient(deltas: torch.Tensor, grads: torch.Tensor) -> float:
    """Spearman correlation over all neurons of |l - 1| with |summed gradient| ([n_layers, d_mlp] each):
    1 when the neurons the training signal pushed hardest moved most (plain SGD at a constant rate gives
    |l - 1| = lr * |sum of gradients| exactly); near 0 when every scale moved about the same whatever its
    gradient (Adam with a tiny epsilon takes steps of about the learning rate). NaN if a side is constant."""
    d, g = _checked_pair(deltas, grads, "grads")
    return _spearman(d, np.abs(g))


# ---------------------------------------------------------------- alternative rankings


def normalised_ranking(ranking: NeuronRanking) -> NeuronRanking:
    """The change score divided by M1's activation RMS per neuron (`activation_rms` of the extras
    `mean_m1` / `std_m1`): for a neuron whose inputs did not change this is |l - 1| exactly, so the
    ranking no longer favours large activations. A neuron with zero RMS (never active on the finding
    tokens) scores 0. Extras: the ranking's own, plus `change_score` and `rms_m1`."""
    missing = [k for k in ("mean_m1", "std_m1") if k not in ranking.extras]
    if missing:
        raise ValueError(f"ranking {ranking.method!r} has no {' or '.join(missing)} extras: normalising needs M1's "
                         "activation moments (a change_scores ranking has them)")
    rms = activation_rms(ranking.extras["mean_m1"], ranking.extras["std_m1"])
    scores = ranking.scores.detach().double()
    # a neuron that is never active has no activation size to divide by: it scores 0, not inf or NaN
    safe = torch.where(rms > 0, rms, torch.ones_like(rms))
    normalised = torch.where(rms > 0, scores / safe, torch.zeros_like(scores))
    extras = dict(ranking.extras) | {"change_score": ranking.scores.detach().float(), "rms_m1": rms.float()}
    meta = dict(ranking.meta) | {"normalised_from": ranking.method}
    return NeuronRanking(NORMALISED_METHOD, normalised.float(), extras, meta)


def update_ranking(deltas: torch.Tensor, meta: dict | None = None) -> NeuronRanking:
    """|l - 1| itself ([n_layers, d_mlp], from `ia3_deltas`) as a ranking (method "ia3_delta"): the
    neurons alignment scaled most first, whatever their activations."""
    if deltas.ndim != 2:
        raise ValueError(f"deltas must be [n_layers, d_mlp], got shape {tuple(deltas.shape)}")
    return NeuronRanking(UPDATE_METHOD, deltas.detach().to("cpu").float(), {}, dict(meta or {}))
