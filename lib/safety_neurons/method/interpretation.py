"""Interpretation tools for safety neurons: what they write, where safety is readable, which
components carry the refusal decision, and how much safety a few neurons' scales can hold.

- **Value vectors** (`value_logits`, `value_table`): a neuron writes `a * W_out[:, i]` into the
  residual stream; through the final norm's gain and the unembedding that direction promotes and
  suppresses tokens, `W_U (g * W_out[:, i])` (the norm's division by the RMS is a positive scale per
  position and changes no ranking). M2's (IA)^3 scaling is folded into up_proj, so M1 and M2 share
  every value vector.
- **Probes** (`last_token_residuals`, `probe_accuracy`): cross-validated logistic regression on
  `blocks.{l}.hook_resid_post` at the last prompt token, one probe per layer.
- **Component tracing** (`component_trace`, `patched_logodds`): the outputs of chosen attention and
  MLP blocks (`hook_attn_out`, `hook_mlp_out`) at the positions of the chat template's closing tokens,
  which every prompt shares, are copied from a source prompt's run into a receiver prompt's run; the
  refusal log-odds at the first answer position is read each time. Positions before the closing tokens
  cannot see a later patch (causal attention), so the receiver's prefix is run once and only the closing
  tokens are re-run per patch, from its KV cache.
- **Targeted tuning** (`NeuronScales`, `tune_scales`): per-neuron scales on hook_post, as the (IA)^3
  adapter has, with only the chosen neurons' scales free; trained by next-token loss on answer tokens.

A neuron is one coordinate of `blocks.{l}.mlp.hook_post` (the down projection's input), named
(layer, index) as everywhere in the package.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..judges.refusal import refusal_logodds_from_logits, refusal_start_token_ids
from ..lm.generation import checked_prompt_ids, hf_and_device, left_pad, pad_token_id, position_ids, right_pad
from ..lm.memory import BatchSize, check_batch_size, fitted_forward_batches, fitted_rows
from ..lm.models import mlp_modules, model_shape
from .neurons import NeuronsLike, as_neuron_list, group_by_layer, post_hook_names

COMPONENTS = ("attn", "mlp")
_COMPONENT_HOOKS = {"attn": "blocks.{layer}.hook_attn_out", "mlp": "blocks.{layer}.hook_mlp_out"}


def hook_names(bridge, aliases: Sequence[str]) -> list[str]:
    """Canonical names of hook aliases (compatibility mode would call a hook once per alias)."""
    names = []
    for alias in aliases:
        point = bridge.hook_dict.get(alias)
        if point is None:
            raise ValueError(f"the model has no hook point {alias!r}: is it a TransformerBridge of a decoder-only model?")
        names.append(point.name or alias)
    return names


# ----------------------------------------------------------------------------------------------
# value vectors
# ----------------------------------------------------------------------------------------------


def final_norm_gain(hf) -> torch.Tensor:
    """The final norm's per-dimension gain [d_model], read off the module itself: the norm applied to a
    large constant vector (RMS = the constant, eps negligible) is its gain, whether the family stores
    it as `weight` (Llama) or `1 + weight` (Gemma)."""
    norm = hf.model.norm
    weight = next(norm.parameters())
    d_model = hf.get_input_embeddings().weight.shape[1]
    probe = torch.full((1, 1, d_model), 1e3, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        return norm(probe).reshape(-1).float()


@torch.no_grad()
def value_logits(bridge, neurons: NeuronsLike) -> torch.Tensor:
    """[k, vocab] float32: W_U (g * W_out[:, i]) for each (layer, index) neuron, in the given order."""
    shape = model_shape(bridge)
    pairs = as_neuron_list(neurons, shape.n_layers, shape.d_mlp)
    if not pairs:
        raise ValueError("no neurons given: pass at least one (layer, index) pair")
    hf, _ = hf_and_device(bridge)
    mlps = mlp_modules(hf)
    columns = torch.stack([mlps[layer].down_proj.weight[:, index].float() for layer, index in pairs])  # [k, d_model]
    gain = final_norm_gain(hf)
    unembed = hf.get_output_embeddings().weight.float()  # [vocab, d_model]
    return (columns * gain) @ unembed.T


def token_label(tokenizer, token_id: int) -> str:
    """A token as readable text, quoted so that leading spaces and newlines show."""
    return repr(tokenizer.decode([int(token_id)]))


def value_table(bridge, neurons: NeuronsLike, *, n_tokens: int = 10, change: Sequence[float] | None = None,
                rank_of: Sequence[int] | None = None):
    """One row per neuron: the `n_tokens` tokens its value vector promotes most (`top`) and suppresses
    most (`bottom`). With `change` (M2's mean activation minus M1's, one per neuron) the row also says
    which of the two lists M2's change pushes up (`promoted_by_m2`). With `rank_of` (token ids), `rank_of`
    is the best rank (1 = pushed up most) any of those tokens has in that direction (the top list's when
    `change` is not given)."""
    import pandas as pd

    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    shape = model_shape(bridge)
    pairs = as_neuron_list(neurons, shape.n_layers, shape.d_mlp)
    if change is not None and len(change) != len(pairs):
        raise ValueError(f"{len(change)} activation changes for {len(pairs)} neurons: give one per neuron")
    logits = value_logits(bridge, pairs)
    n = min(n_tokens, logits.shape[1])
    top, bottom = logits.topk(n, dim=1).indices, (-logits).topk(n, dim=1).indices
    sign = torch.ones(len(pairs)) if change is None else torch.where(torch.tensor(list(change)) >= 0, 1.0, -1.0)
    tok = bridge.tokenizer
    rows = []
    for j, (layer, index) in enumerate(pairs):
        row = {"layer": layer, "index": index, "top": [token_label(tok, t) for t in top[j].tolist()],
               "bottom": [token_label(tok, t) for t in bottom[j].tolist()],
               "top_ids": top[j].tolist(), "bottom_ids": bottom[j].tolist()}
        if change is not None:
            row["m2_minus_m1"] = float(change[j])
            row["promoted_by_m2"] = "top" if change[j] >= 0 else "bottom"
        if rank_of is not None:
            pushed = sign[j] * logits[j]
            row["rank_of"] = 1 + int((pushed > pushed[list(rank_of)].max()).sum())
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# last-token residuals and probes
# ----------------------------------------------------------------------------------------------


@torch.inference_mode()
def last_token_residuals(bridge, prompt_ids: Sequence[Sequence[int]], *, batch_size: BatchSize = 16, progress: bool = True,
                         desc: str = "residuals") -> np.ndarray:
    """[n_prompts, n_layers, d_model] float32: `blocks.{l}.hook_resid_post` at each prompt's last token.
    Batched by length with left padding and explicit positions, so padding changes nothing."""
    check_batch_size(batch_size)
    prompts = checked_prompt_ids(prompt_ids)
    shape = model_shape(bridge)
    hf, device = hf_and_device(bridge)
    names = hook_names(bridge, [f"blocks.{layer}.hook_resid_post" for layer in range(shape.n_layers)])
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int):
        def hook(act: torch.Tensor, hook=None):
            captured[layer] = act[:, -1].float().cpu()
            return None

        return hook

    out = np.zeros((len(prompts), shape.n_layers, shape.d_model), dtype=np.float32)
    pad_id = pad_token_id(bridge.tokenizer)
    with bridge.hooks(fwd_hooks=[(name, capture(layer)) for layer, name in enumerate(names)]):
        for rows in tqdm(fitted_forward_batches(batch_size, hf, [len(p) for p in prompts]), desc=desc, unit="batch", disable=not progress):
            ids, mask = left_pad([prompts[i] for i in rows], pad_id)
            captured.clear()
            hf.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids(mask).to(device),
                     use_cache=False)
            out[rows] = torch.stack([captured[layer] for layer in range(shape.n_layers)], dim=1).numpy()
    return out


def probe_accuracy(features: np.ndarray, labels, *, folds: int = 5, seed: int = 0, C: float = 1.0):
    """Cross-validated accuracy of a logistic-regression probe (standardised features) at every layer.

    `features` is [n, n_layers, width] (`last_token_residuals`), `labels` 0/1 per row. Folds are
    stratified and shuffled with `seed`; returns a DataFrame (layer, accuracy, std over folds)."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 3:
        raise ValueError(f"features must be [n_prompts, n_layers, width], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.size} labels for {x.shape[0]} prompts: give one 0/1 label per prompt")
    if x.shape[0] == 0:
        raise ValueError("no prompts to probe: the feature matrix is empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(y)[:5].tolist()}")
    counts = np.bincount(y.astype(np.int64), minlength=2)
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if counts.min() < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} prompts of each class; got "
                         f"{counts[1]} harmful (1) and {counts[0]} benign (0): add prompts or lower the folds")
    from threadpoolctl import threadpool_limits

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    rows = []
    # One BLAS thread: these matrices are small, and threads waiting on a busy CPU made the fits 12x slower.
    with threadpool_limits(limits=1):
        for layer in range(x.shape[1]):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
            scores = cross_val_score(probe, x[:, layer].astype(np.float64), y, cv=splitter)
            rows.append({"layer": layer, "accuracy": float(scores.mean()), "std": float(scores.std())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# component tracing
# ----------------------------------------------------------------------------------------------


def shared_suffix_length(prompt_ids: Sequence[Sequence[int]]) -> int:
    """How many final tokens every prompt shares (the chat template's closing tokens), at most the
    shortest prompt's length minus one (a prefix must be left to run first)."""
    rows = checked_prompt_ids(prompt_ids)
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and len({r[-1 - n] for r in rows}) == 1:
        n += 1
    return n


Patch = tuple[int, str]  # (layer, component)


def _check_patches(patches: Sequence[Patch], n_layers: int) -> list[Patch]:
    out = []
    for layer, component in patches:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; use one of {', '.join(COMPONENTS)}")
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0-{n_layers - 1}")
        out.append((int(layer), component))
    return out


class _PairBatch:
    """One batch of (receiver, source) prompt pairs: the receiver's prefix KV cache, and the source's
    component outputs at the last `positions` positions (every layer, both components)."""

    def __init__(self, bridge, receivers: list[list[int]], sources: list[list[int]], positions: int,
                 names: dict[Patch, str], token_ids: torch.Tensor):
        hf, device = hf_and_device(bridge)
        self.bridge, self.hf, self.names, self.token_ids = bridge, hf, names, token_ids
        pad_id = pad_token_id(bridge.tokenizer)
        captured: dict[Patch, torch.Tensor] = {}

        def capture(patch: Patch):
            def hook(act: torch.Tensor, hook=None):
                captured[patch] = act[:, -positions:].clone()
                return None

            return hook

        ids, mask = left_pad(sources, pad_id)
        with bridge.hooks(fwd_hooks=[(name, capture(p)) for p, name in names.items()]):
            logits = hf(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids(mask).to(device),
                        use_cache=False, logits_to_keep=1).logits[:, -1]
        self.source_values = captured
        self.source_logodds = refusal_logodds_from_logits(logits, token_ids).cpu()

        from transformers import DynamicCache

        ids, mask = left_pad(receivers, pad_id)
        pos = position_ids(mask)
        cache = DynamicCache(config=hf.config)
        hf.model(input_ids=ids[:, :-positions].to(device), attention_mask=mask[:, :-positions].to(device),
                 position_ids=pos[:, :-positions].to(device), past_key_values=cache, use_cache=True)
        self.prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.suffix = (ids[:, -positions:].to(device), mask.to(device), pos[:, -positions:].to(device))

    def logodds(self, patches: Sequence[Patch]) -> torch.Tensor:
        """The receivers' refusal log-odds with `patches` taken from the sources (none: the receivers' own)."""
        from transformers import DynamicCache

        def replace(patch: Patch):
            def hook(act: torch.Tensor, hook=None):
                return self.source_values[patch].to(act.dtype)

            return hook

        cache = DynamicCache(ddp_cache_data=self.prefix_kv, config=self.hf.config)
        ids, mask, pos = self.suffix
        with self.bridge.hooks(fwd_hooks=[(self.names[p], replace(p)) for p in patches]):
            logits = self.hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                             logits_to_keep=1).logits[:, -1]
        return refusal_logodds_from_logits(logits, self.token_ids).cpu()


def _pair_batches(bridge, receiver_ids, source_ids, positions: int | None, batch_size: BatchSize):
    receivers, sources = checked_prompt_ids(receiver_ids, "receiver prompts"), checked_prompt_ids(source_ids, "source prompts")
    if len(receivers) != len(sources):
        raise ValueError(f"{len(receivers)} receiver prompts but {len(sources)} source prompts: pair them one to one")
    check_batch_size(batch_size)
    shared = shared_suffix_length(receivers + sources)
    if positions is not None and int(positions) < 1:
        raise ValueError(f"positions must be at least 1 (the last prompt position), got {positions}")
    positions = shared if positions is None else int(positions)
    if positions < 1:
        raise ValueError("the prompts share no closing tokens: component tracing patches the positions every prompt "
                         "shares, the chat template's end; format the prompts with a chat template (chat.encode_prompts)")
    if positions > shared:
        raise ValueError(f"positions = {positions} but the prompts share only their last {shared} tokens (and a prefix "
                         "must remain): patched positions must hold the same tokens in both runs")

    shape = model_shape(bridge)
    aliases = {(layer, c): _COMPONENT_HOOKS[c].format(layer=layer) for layer in range(shape.n_layers) for c in COMPONENTS}
    names = dict(zip(aliases, hook_names(bridge, list(aliases.values()))))
    hf, device = hf_and_device(bridge)
    token_ids = torch.tensor(refusal_start_token_ids(bridge.tokenizer), device=device)
    # a pair holds the receiver's and the source's run at once
    batch_size = fitted_rows(batch_size, hf, [len(p) for p in receivers + sources], rows_per_prompt=2)
    for start in range(0, len(receivers), batch_size):
        end = start + batch_size
        yield start, _PairBatch(bridge, receivers[start:end], sources[start:end], positions, names, token_ids)


@torch.inference_mode()
def patched_logodds(bridge, receiver_ids, source_ids, patches: Sequence[Patch], *, positions: int | None = None,
                    batch_size: BatchSize = 16) -> np.ndarray:
    """Refusal log-odds of each receiver prompt with the (layer, component) outputs of `patches` copied
    from its paired source prompt's run at the last `positions` positions (None: every position the
    prompts share at their end)."""
    checked = _check_patches(patches, model_shape(bridge).n_layers)
    return np.concatenate([batch.logodds(checked).numpy() for _, batch in
                           _pair_batches(bridge, receiver_ids, source_ids, positions, batch_size)])


@dataclass
class Trace:
    """Refusal log-odds of every pair: the receivers' own (`receiver`), the sources' own (`source`), and
    the receivers' with one layer's component patched (`patched[component]`, [n_layers, n_pairs])."""

    receiver: np.ndarray
    source: np.ndarray
    patched: dict[str, np.ndarray]
    positions: int

    def effects(self):
        """Per (component, layer): the mean change of the receivers' log-odds, and that change as a
        share of the mean gap between source and receiver (1: this one patch moves the receivers all
        the way to the sources)."""
        import pandas as pd

        gap = float(np.mean(self.source - self.receiver))
        rows = []
        for component, values in self.patched.items():
            for layer, row in enumerate(values):
                change = float(np.mean(row - self.receiver))
                rows.append({"component": component, "layer": layer, "change": change,
                             "share": change / gap if gap != 0 else math.nan})
        return pd.DataFrame(rows)

    def to_json(self) -> dict:
        return {"receiver": self.receiver.tolist(), "source": self.source.tolist(), "positions": self.positions,
                "patched": {c: v.tolist() for c, v in self.patched.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "Trace":
        return cls(np.asarray(data["receiver"]), np.asarray(data["source"]),
                   {c: np.asarray(v) for c, v in data["patched"].items()}, int(data["positions"]))


@torch.inference_mode()
def component_trace(bridge, receiver_ids, source_ids, *, positions: int | None = None, batch_size: BatchSize = 16,
                    progress: bool = True, desc: str = "tracing") -> Trace:
    """Patch each layer's attention output and MLP output, one at a time, from each source prompt's run
    into its paired receiver prompt's run (at the shared closing positions) and read the refusal log-odds."""
    n_layers = model_shape(bridge).n_layers
    n = len(receiver_ids)
    receiver, source = np.zeros(n), np.zeros(n)
    patched = {c: np.zeros((n_layers, n)) for c in COMPONENTS}
    used = 0
    bar = tqdm(total=n, desc=desc, unit="pair", disable=not progress)
    for start, batch in _pair_batches(bridge, receiver_ids, source_ids, positions, batch_size):
        rows = slice(start, start + len(batch.source_logodds))
        receiver[rows], source[rows] = batch.logodds([]).numpy(), batch.source_logodds.numpy()
        for layer in range(n_layers):
            for component in COMPONENTS:
                patched[component][layer, rows] = batch.logodds([(layer, component)]).numpy()
        used = batch.suffix[0].shape[1]
        bar.update(len(batch.source_logodds))
    bar.close()
    return Trace(receiver, source, patched, used)


# ----------------------------------------------------------------------------------------------
# targeted tuning of neuron scales
# ----------------------------------------------------------------------------------------------


class NeuronScales(torch.nn.Module):
    """Per-neuron scales of hook_post (what an MLP-neuron (IA)^3 adapter learns), starting from `base`
    ({layer: d_mlp scales}; absent layers 1), where only the chosen neurons' scales are parameters:
    every other scale is a constant, so training cannot move it."""

    def __init__(self, neurons: NeuronsLike, n_layers: int, d_mlp: int, base: Mapping[int, torch.Tensor] | None = None,
                 *, device: torch.device | str = "cpu"):
        super().__init__()
        pairs = as_neuron_list(neurons, n_layers, d_mlp)
        if not pairs:
            raise ValueError("no neurons to tune: pass at least one (layer, index) pair")
        base = dict(base or {})
        for layer, vec in base.items():
            if not 0 <= int(layer) < n_layers or torch.as_tensor(vec).numel() != d_mlp:
                raise ValueError(f"base scales of layer {layer} do not fit a model of {n_layers} layers x {d_mlp} neurons")
        self.n_layers, self.d_mlp = n_layers, d_mlp
        groups = group_by_layer(pairs)
        self.layers = sorted(set(groups) | {int(layer) for layer in base})
        self.fixed = {layer: torch.as_tensor(base.get(layer, torch.ones(d_mlp))).detach().float().flatten().to(device).clone()
                      for layer in self.layers}
        self.index = {layer: torch.tensor(idx, dtype=torch.long, device=device) for layer, idx in groups.items()}
        self.free = torch.nn.ParameterDict({str(layer): torch.nn.Parameter(self.fixed[layer][idx].clone())
                                            for layer, idx in self.index.items()})

    def vector(self, layer: int) -> torch.Tensor:
        """The d_mlp scales of one layer: the constants, with the free ones put in place (differentiably)."""
        fixed = self.fixed[layer]
        if layer not in self.index:
            return fixed
        return fixed.index_put((self.index[layer],), self.free[str(layer)])

    def scales(self) -> dict[int, torch.Tensor]:
        """{layer: d_mlp scales} as they stand (detached, on the CPU)."""
        return {layer: self.vector(layer).detach().cpu() for layer in self.layers}

    def hooks(self, bridge) -> list[tuple[str, Callable]]:
        names = post_hook_names(bridge, self.layers)

        def scale(layer: int):
            def hook(act: torch.Tensor, hook=None):
                return act * self.vector(layer).to(act.dtype)

            return hook

        return [(names[layer], scale(layer)) for layer in self.layers]


@contextmanager
def _frozen(module: torch.nn.Module):
    """No gradient for the model's own weights while the scales train (restored afterwards)."""
    before = {name: p.requires_grad for name, p in module.named_parameters()}
    try:
        for p in module.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for name, p in module.named_parameters():
            p.requires_grad_(before[name])


def answer_batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int):
    """(input_ids, attention_mask, labels) of prompt + answer sequences, right-padded; labels are the
    answer tokens (-100 on prompt and padding), aligned with the inputs (shift when computing the loss)."""
    rows = [list(p) + list(a) for p, a in examples]
    ids, mask = right_pad(rows, pad_id)
    labels = torch.full_like(ids, -100)
    for i, (prompt, answer) in enumerate(examples):
        labels[i, len(prompt) : len(prompt) + len(answer)] = torch.tensor(list(answer), dtype=torch.long)
    return ids, mask, labels


def answer_loss(hf, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens."""
    logits = hf(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def tune_scales(bridge, scales: NeuronScales, examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, steps: int,
                learning_rate: float, batch_size: int, eval_every: int, evaluate: Callable[[], float], seed: int = 0,
                progress: bool = True, desc: str = "tuning") -> list[dict]:
    """Train the free scales of `scales` on (prompt ids, answer ids) examples with Adam, the model's own
    weights frozen; `evaluate()` (called with the scales in place) is recorded at step 0, every
    `eval_every` steps and at the last step. Returns [{step, safety, loss}] (loss: the step's batch)."""
    if not examples:
        raise ValueError("no training examples: the prompt/answer set is empty")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if any(not a for _, a in examples) or any(not p for p, _ in examples):
        raise ValueError("every example needs prompt tokens and answer tokens")
    hf, device = hf_and_device(bridge)
    pad_id = pad_token_id(bridge.tokenizer)
    optimiser = torch.optim.Adam(scales.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    with _frozen(hf), bridge.hooks(fwd_hooks=scales.hooks(bridge)):
        curve = [{"step": 0, "safety": float(evaluate()), "loss": math.nan}]
        for step in tqdm(range(1, steps + 1), desc=desc, unit="step", disable=not progress):
            if len(order) < batch_size:
                order += rng.permutation(len(examples)).tolist()
            picked, order = order[:batch_size], order[batch_size:]
            ids, mask, labels = answer_batch([examples[i] for i in picked], pad_id)
            loss = answer_loss(hf, ids.to(device), mask.to(device), labels.to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % eval_every == 0 or step == steps:
                curve.append({"step": step, "safety": float(evaluate()), "loss": float(loss.item())})
    return curve


def steps_to_fraction(curve: Sequence[Mapping[str, float]], fraction: float = 0.5) -> float:
    """The first evaluated step at which safety is at most `fraction` of its step-0 value (NaN when it
    never gets there, or when it started at 0: nothing to remove)."""
    if not curve:
        raise ValueError("empty training curve")
    start = curve[0]["safety"]
    if not start > 0:
        return math.nan
    for point in curve:
        if point["safety"] <= fraction * start:
            return float(point["step"])
    return math.nan
