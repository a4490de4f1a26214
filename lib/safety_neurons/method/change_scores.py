"""Finding candidate safety neurons: generation-time activation contrasting, and training-free baselines.

Change score of neuron (l, i) (DESIGN.md): S = sqrt(sum_t (a1_t - a2_t)^2 / N), t over the selected
positions of M1's own greedy generations, both models teacher-forced on the same token ids (never
decoded and re-encoded). Positions (`token_type`):
- `completion`: the positions of the completion tokens (every generated token, the EOS included);
- `prompt`: every prompt token;
- `prompt_last`: the last prompt token (where the model decides how to answer).
Everything is accumulated in float64 running sums, so memory is O(layers x d_mlp) whatever the number
of prompts: one batch's selected activations of M1 are held while M2 runs the same batch, nothing more.

Every method returns a `NeuronRanking`: one global ranking over all layers, saved as safetensors,
usable by patching whatever method produced it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..lm.generation import Generation, greedy_generate, hf_and_device, left_pad, pad_token_id, position_ids
from ..lm.memory import BatchSize, fitted_forward_batches

TOKEN_TYPES = ("completion", "prompt", "prompt_last")


def neuron_hook_names(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.mlp.hook_post" for layer in range(n_layers)]


def _shape_of(bridge) -> tuple[int, int]:
    return int(bridge.cfg.n_layers), int(bridge.cfg.d_mlp)


# ---------------------------------------------------------------- rankings


@dataclass
class NeuronRanking:
    """A ranking of all neurons of all layers by `scores` (larger = ranked first).

    `extras` holds other per-neuron arrays of the same shape (means, stds, signed differences);
    `meta` what produced it (method, token type, counts)."""

    method: str
    scores: torch.Tensor  # [n_layers, d_mlp]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scores.ndim != 2:
            raise ValueError(f"scores must be [n_layers, d_mlp], got shape {tuple(self.scores.shape)}")
        for name, value in self.extras.items():
            if value.shape != self.scores.shape:
                raise ValueError(f"extra {name!r} has shape {tuple(value.shape)}, scores {tuple(self.scores.shape)}")

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.scores.shape[1]

    @property
    def n_neurons(self) -> int:
        return self.scores.numel()

    def order(self) -> torch.Tensor:
        """Flat neuron ids (layer * d_mlp + index), best first; ties keep the lower id first."""
        return torch.sort(self.scores.flatten().double(), descending=True, stable=True).indices

    def top(self, k: int) -> torch.Tensor:
        """The first k neurons of the global ranking as a [k, 2] tensor of (layer, index)."""
        if not 0 <= k <= self.n_neurons:
            raise ValueError(f"k = {k} but the model has {self.n_neurons} neurons ({self.n_layers} layers x {self.d_mlp}): "
                             f"choose 0 <= k <= {self.n_neurons}")
        flat = self.order()[:k]
        return torch.stack([flat // self.d_mlp, flat % self.d_mlp], dim=1)

    def layer_counts(self, k: int) -> torch.Tensor:
        """How many of the top k sit in each layer."""
        return torch.bincount(self.top(k)[:, 0], minlength=self.n_layers)

    def share_of_sq(self, fraction: float) -> float:
        """Fraction of the total squared score carried by the top `fraction` of neurons."""
        sq = self.scores.double().flatten() ** 2
        k = int(round(fraction * self.n_neurons))
        total = sq.sum().item()
        return float(torch.sort(sq, descending=True).values[:k].sum().item() / total) if total > 0 else float("nan")

    def table(self, k: int):
        """The top k as a DataFrame: rank, layer, index, score and every extra."""
        import pandas as pd

        top = self.top(k)
        layer, index = top[:, 0], top[:, 1]
        data = {"rank": range(1, k + 1), "layer": layer.numpy(), "index": index.numpy(),
                "score": self.scores[layer, index].double().numpy()}
        for name, value in self.extras.items():
            data[name] = value[layer, index].double().numpy()
        return pd.DataFrame(data)

    def save(self, path: str | Path) -> Path:
        """Write scores and extras as safetensors (the metadata carries method and meta), atomically."""
        from safetensors.torch import save_file

        from ..io import atomic_path

        path = Path(path)
        tensors = {"scores": self.scores.contiguous()} | {f"extra.{k}": v.contiguous() for k, v in self.extras.items()}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"method": self.method, "meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NeuronRanking":
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no neuron ranking at {path}: run notebook 02_change_scores first")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        extras = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        return cls(metadata.get("method", "unknown"), tensors["scores"], extras, json.loads(metadata.get("meta", "{}")))


# ---------------------------------------------------------------- streaming statistics


class RunningMoments:
    """Per-neuron count, sum and sum of squares over tokens, in float64: O(layers x d_mlp) memory."""

    def __init__(self, n_layers: int, d_mlp: int):
        self.n = torch.zeros(n_layers, dtype=torch.float64)
        self.sum = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
        self.sumsq = torch.zeros(n_layers, d_mlp, dtype=torch.float64)

    def add(self, layer: int, x: torch.Tensor) -> None:
        """Add activations x [n_tokens, d_mlp] of one layer."""
        x = x.detach().to("cpu", torch.float64)
        self.n[layer] += x.shape[0]
        self.sum[layer] += x.sum(0)
        self.sumsq[layer] += (x * x).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n.clamp(min=1)[:, None]

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation (over all selected tokens)."""
        var = self.sumsq / self.n.clamp(min=1)[:, None] - self.mean**2
        return var.clamp(min=0).sqrt()


def position_mask(prompt_lens: list[int], total_lens: list[int], width: int, token_type: str) -> torch.Tensor:
    """[batch, width] bool: the positions of left-padded sequences that `token_type` selects."""
    if token_type not in TOKEN_TYPES:
        raise ValueError(f"unknown token_type {token_type!r}; use one of {', '.join(TOKEN_TYPES)}")
    mask = torch.zeros(len(prompt_lens), width, dtype=torch.bool)
    for row, (p, t) in enumerate(zip(prompt_lens, total_lens)):
        start = width - t  # left padding: the sequence occupies [start, width)
        if token_type == "completion":
            mask[row, start + p:] = True
        elif token_type == "prompt":
            mask[row, start:start + p] = True
        else:
            mask[row, start + p - 1] = True
    return mask


@torch.no_grad()
def teacher_forced(bridge, ids: torch.Tensor, mask: torch.Tensor, select: torch.Tensor,
                   on_layer: Callable[[int, torch.Tensor], None]) -> None:
    """Run `bridge` on left-padded `ids` and call on_layer(layer, activations[selected positions])
    for every layer's hook_post. Positions come from the mask, as in generation."""
    hf, device = hf_and_device(bridge)
    n_layers, _ = _shape_of(bridge)
    select_dev = select.to(device)

    def hook_for(layer: int):
        def hook(value: torch.Tensor, hook) -> torch.Tensor:
            on_layer(layer, value[select_dev])
            return value
        return hook

    hooks = [(name, hook_for(layer)) for layer, name in enumerate(neuron_hook_names(n_layers))]
    with bridge.hooks(fwd_hooks=hooks):
        hf(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids(mask).to(device), use_cache=False)


def _sequences(generations: list[Generation], token_type: str) -> tuple[list[list[int]], list[int]]:
    seqs = [g.prompt_ids + (g.completion_ids if token_type == "completion" else []) for g in generations]
    return seqs, [len(g.prompt_ids) for g in generations]


@dataclass
class ChangeScores:
    ranking: NeuronRanking
    generations: list[Generation]
    n_prompts: int
    n_tokens: int


@torch.no_grad()
def change_scores(
    m1,
    m2,
    prompt_ids: list[list[int]],
    *,
    token_type: str = "completion",
    max_new_tokens: int = 48,
    batch_size: BatchSize = 16,
    generations: list[Generation] | None = None,
    progress: bool = True,
) -> ChangeScores:
    """Change scores of every neuron between M1 and M2 (see the module docstring).

    M1 generates greedily from `prompt_ids` (unless `generations` of M1 are given); both models are
    then teacher-forced on the same ids. Extras: mean and std of each neuron under each model."""
    if token_type not in TOKEN_TYPES:
        raise ValueError(f"unknown token_type {token_type!r}; use one of {', '.join(TOKEN_TYPES)}")
    shape = _shape_of(m1)
    if _shape_of(m2) != shape:
        raise ValueError(f"M1 has {shape} (layers, d_mlp) but M2 has {_shape_of(m2)}: they must be the same architecture")
    if generations is None:
        if token_type == "completion":
            generations = greedy_generate(m1, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                          progress=progress, desc="M1 generates")
        else:
            if len(prompt_ids) == 0:
                raise ValueError("no prompts to compute change scores on: the prompt set is empty")
            generations = [Generation(list(p), [], "", False) for p in prompt_ids]
    seqs, prompt_lens = _sequences(generations, token_type)
    pad_id = pad_token_id(m1.tokenizer)
    moments1, moments2 = RunningMoments(*shape), RunningMoments(*shape)
    sq_diff = torch.zeros(shape, dtype=torch.float64)
    n_tokens = 0
    bar = tqdm(total=len(seqs), desc="change scores", unit="prompt", disable=not progress)
    for rows in fitted_forward_batches(batch_size, m1, [len(s) for s in seqs]):
        batch = [seqs[i] for i in rows]
        ids, mask = left_pad(batch, pad_id)
        select = position_mask([prompt_lens[i] for i in rows], [len(s) for s in batch], ids.shape[1], token_type)
        n_sel = int(select.sum())
        if n_sel == 0:  # e.g. completions that are empty: nothing to compare in this batch
            bar.update(len(rows))
            continue
        held: dict[int, torch.Tensor] = {}

        def keep_m1(layer: int, acts: torch.Tensor) -> None:
            held[layer] = acts.float()
            moments1.add(layer, acts)

        def compare_m2(layer: int, acts: torch.Tensor) -> None:
            moments2.add(layer, acts)
            diff = acts.float() - held.pop(layer)
            sq_diff[layer] += (diff.double() ** 2).sum(0).cpu()

        teacher_forced(m1, ids, mask, select, keep_m1)
        teacher_forced(m2, ids, mask, select, compare_m2)
        n_tokens += n_sel
        bar.update(len(rows))
    bar.close()
    if n_tokens == 0:
        raise ValueError(f"no {token_type} tokens to score: M1's answers are all empty (raise max_new_tokens?)")
    scores = (sq_diff / n_tokens).sqrt().float()
    extras = {"mean_m1": moments1.mean.float(), "std_m1": moments1.std.float(),
              "mean_m2": moments2.mean.float(), "std_m2": moments2.std.float()}
    meta = {"token_type": token_type, "n_prompts": len(generations), "n_tokens": n_tokens}
    return ChangeScores(NeuronRanking("change_score", scores, extras, meta), generations, len(generations), n_tokens)


# ---------------------------------------------------------------- training-free baselines


@torch.no_grad()
def activation_moments(bridge, prompt_ids: list[list[int]], *, token_type: str = "prompt", batch_size: BatchSize = 16,
                       progress: bool = True, desc: str = "activations") -> RunningMoments:
    """Per-neuron mean and std of `bridge` over the selected prompt positions (no generation)."""
    if token_type not in ("prompt", "prompt_last"):
        raise ValueError(f"baselines read prompt positions: token_type must be prompt or prompt_last, not {token_type!r}")
    if len(prompt_ids) == 0:
        raise ValueError("no prompts to read activations from: the prompt set is empty")
    moments = RunningMoments(*_shape_of(bridge))
    pad_id = pad_token_id(bridge.tokenizer)
    for rows in tqdm(fitted_forward_batches(batch_size, bridge, [len(p) for p in prompt_ids]), desc=desc, disable=not progress):
        batch = [prompt_ids[i] for i in rows]
        ids, mask = left_pad(batch, pad_id)
        select = position_mask([len(b) for b in batch], [len(b) for b in batch], ids.shape[1], token_type)
        teacher_forced(bridge, ids, mask, select, moments.add)
    return moments


def mean_difference(bridge, harmful_ids: list[list[int]], benign_ids: list[list[int]], *, token_type: str = "prompt",
                    batch_size: BatchSize = 16, progress: bool = True) -> NeuronRanking:
    """Training-free baseline: signed mean activation on harmful minus benign prompts, one model;
    ranked by its absolute value (the tutorial's "activation difference" method, over all layers)."""
    harm = activation_moments(bridge, harmful_ids, token_type=token_type, batch_size=batch_size, progress=progress, desc="harmful")
    ben = activation_moments(bridge, benign_ids, token_type=token_type, batch_size=batch_size, progress=progress, desc="benign")
    signed = (harm.mean - ben.mean).float()
    meta = {"token_type": token_type, "n_harmful": len(harmful_ids), "n_benign": len(benign_ids)}
    return NeuronRanking("mean_difference", signed.abs(), {"signed_difference": signed, "mean_harmful": harm.mean.float(),
                                                            "mean_benign": ben.mean.float()}, meta)


def activation_variance(bridge, prompt_ids: list[list[int]], *, token_type: str = "prompt", batch_size: BatchSize = 16,
                        progress: bool = True) -> NeuronRanking:
    """Training-free baseline: the variance of each neuron's activation over the prompts' tokens."""
    moments = activation_moments(bridge, prompt_ids, token_type=token_type, batch_size=batch_size, progress=progress)
    return NeuronRanking("activation_variance", (moments.std**2).float(), {"mean": moments.mean.float()},
                         {"token_type": token_type, "n_prompts": len(prompt_ids)})
