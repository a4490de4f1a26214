"""Neuron sets: a neuron is one coordinate (layer, index) of `blocks.{layer}.mlp.hook_post`, the input
of the MLP's down projection. Lists of neurons, top-k and layer-matched random sets, and the hook names
that reach them; shared by patching, the safeguard and interpretation."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

Neuron = tuple[int, int]


NeuronsLike = Union[Sequence[Sequence[int]], np.ndarray, torch.Tensor]


def as_neuron_list(neurons: NeuronsLike, n_layers: int, d_mlp: int) -> list[Neuron]:
    """`neurons` as a list of (layer, index) int pairs, checked against the model's shape.

    Accepts a list of pairs or a numpy/torch array of shape (k, 2); an empty list means k = 0.
    Duplicates are dropped (first occurrence kept): patching a neuron twice is patching it once.
    """
    if isinstance(neurons, torch.Tensor):
        neurons = neurons.detach().cpu().numpy()
    arr = np.asarray(neurons if len(neurons) else np.zeros((0, 2), dtype=np.int64))
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"neurons must be (layer, index) pairs, an array of shape (k, 2); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"neurons must be integer (layer, index) pairs; got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    bad = (arr[:, 0] < 0) | (arr[:, 0] >= n_layers) | (arr[:, 1] < 0) | (arr[:, 1] >= d_mlp)
    if bad.any():
        layer, index = (int(v) for v in arr[int(np.argmax(bad))])
        raise ValueError(
            f"neuron (layer {layer}, index {index}) is out of range: the model has {n_layers} layers x {d_mlp} neurons "
            f"(layers 0-{n_layers - 1}, indices 0-{d_mlp - 1})"
        )
    seen: set[Neuron] = set()
    out: list[Neuron] = []
    for layer, index in arr.tolist():
        pair = (int(layer), int(index))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def group_by_layer(neurons: Sequence[Neuron]) -> dict[int, list[int]]:
    """{layer: sorted neuron indices} of a checked neuron list."""
    groups: dict[int, list[int]] = {}
    for layer, index in neurons:
        groups.setdefault(layer, []).append(index)
    return {layer: sorted(idx) for layer, idx in sorted(groups.items())}


def top_k(ranking: NeuronsLike, k: int) -> list[Neuron]:
    """The first k (layer, index) pairs of a global ranking, best first: a sequence or (N, 2) array of
    pairs, or a ranking object with `top(k)` and `n_neurons` (change_scores.NeuronRanking)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise ValueError(f"k must be an integer, got {k!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ranked_object = hasattr(ranking, "top") and hasattr(ranking, "n_neurons")
    size = int(ranking.n_neurons) if ranked_object else len(ranking)
    if k > size:
        raise ValueError(f"k = {k} is larger than the ranking, which has {size} neurons")
    if ranked_object:
        return _pairs(ranking.top(int(k)))
    return _pairs(ranking)[: int(k)]


def k_from_percent(pct: float, n_neurons: int) -> int:
    """k for `pct` percent of `n_neurons` neurons, rounded to the nearest integer (halves up)."""
    if n_neurons < 0:
        raise ValueError(f"n_neurons must be >= 0, got {n_neurons}")
    if not math.isfinite(pct) or pct < 0:
        raise ValueError(f"the percentage of neurons must be a finite number >= 0, got {pct}")
    k = int(math.floor(pct / 100.0 * n_neurons + 0.5))
    if k > n_neurons:
        raise ValueError(f"{pct}% of {n_neurons} neurons is k = {k}, more than the model's {n_neurons} neurons")
    return k


def random_neurons(neurons: NeuronsLike, d_mlp: int, seed: int) -> list[Neuron]:
    """The per-layer matched random baseline: for each layer, as many neurons as `neurons` has there,
    drawn uniformly without replacement within the layer. Deterministic in `seed`; each layer draws
    from its own stream (seed, layer), so a layer's draw does not depend on the other layers."""
    n_layers = 1 + max((int(layer) for layer, _ in _pairs(neurons)), default=-1)
    pairs = as_neuron_list(neurons, max(n_layers, 1), d_mlp)
    out: list[Neuron] = []
    for layer, idx in group_by_layer(pairs).items():
        rng = np.random.default_rng([int(seed), layer])
        drawn = np.sort(rng.choice(d_mlp, size=len(idx), replace=False))
        out.extend((layer, int(i)) for i in drawn)
    return out


def _pairs(neurons: NeuronsLike) -> list[tuple[int, int]]:
    if isinstance(neurons, torch.Tensor):
        neurons = neurons.detach().cpu().numpy()
    if len(neurons) == 0:
        return []
    arr = np.asarray(neurons)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"neurons must be (layer, index) pairs, an array of shape (k, 2); got shape {arr.shape}")
    return [(int(a), int(b)) for a, b in arr.tolist()]


def post_hook_names(bridge, layers: Sequence[int]) -> dict[int, str]:
    """{layer: canonical name of `blocks.{layer}.mlp.hook_post`} (an alias of the down projection's
    hook_in). Canonical names keep compatibility mode from calling a hook once per alias."""
    hook_dict = bridge.hook_dict
    names = {}
    for layer in layers:
        alias = f"blocks.{layer}.mlp.hook_post"
        point = hook_dict.get(alias)
        if point is None:
            raise ValueError(f"the model has no hook point {alias!r}: is it a gated-MLP TransformerBridge?")
        names[layer] = point.name or alias
    return names


def check_model_pair(m1, m2):
    """(hf1, hf2, device, shape) of two bridges whose neurons correspond one to one: the same architecture,
    device and dtype (M2 is M1 with other weights or scales), as every patching path needs."""
    from ..lm.generation import hf_and_device
    from ..lm.models import model_shape

    shape1, shape2 = model_shape(m1), model_shape(m2)
    if shape1 != shape2:
        raise ValueError(f"M1 and M2 have different shapes ({shape1} vs {shape2}): M2 must be M1's architecture")
    hf1, device = hf_and_device(m1)
    hf2, device2 = hf_and_device(m2)
    if device2 != device:
        raise ValueError(f"M1 is on {device} but M2 on {device2}: load both models on the same device")
    dtype1, dtype2 = next(hf1.parameters()).dtype, next(hf2.parameters()).dtype
    if dtype1 != dtype2:
        raise ValueError(f"M1 is {dtype1} but M2 is {dtype2}: load both models with the same dtype")
    return hf1, hf2, device, shape1
