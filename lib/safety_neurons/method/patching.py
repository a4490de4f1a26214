"""Dynamic activation patching: generate from M1 with chosen neurons carrying M2's values.

A neuron is one coordinate of `blocks.{l}.mlp.hook_post` (the input of the down projection; for M2 it
includes the folded (IA)^3 scaling). At every generation step M2 runs first on the patched M1's own
prefix (the same token ids, its own KV cache) and its values of the chosen neurons *replace* M1's at
the same positions: every prompt position at prefill, the single new position afterwards.

Three entry points share one decoding loop (left padding, explicit position ids, per-row EOS, stop
strings, greedy or per-prompt-seeded sampling, finished rows dropped from the batch):

- `patched_generate(m1, m2, ...)`: the general two-model path (M2 any model of M1's shape).
- `fast_patched_generate(base, scales, ...)`: M2 = base with per-neuron (IA)^3 scales on the MLP.
  One forward per step over 2B rows (M1 half, M2 half) and one KV cache; a hook multiplies the M2 half
  by the scales and copies the chosen neurons into the M1 half. Same tokens as the two-model path.
- `ablated_generate(m2, ...)`: M2 with the chosen neurons set to zero or to given means (the
  ablation baselines the paper contrasts with patching).

Sampling draws, for each prompt, its own uniform numbers from (seed, the prompt's index in the
caller's list) and samples by inverse CDF, so a k=0 run and a patched run use the same random numbers
for the same prompt, and results do not depend on how prompts are batched.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..lm.generation import Generation, checked_prompt_ids, eos_token_ids, hf_and_device, left_pad, position_ids, truncate_at_eos
from ..lm.memory import BatchSize, check_batch_size, explained_oom, fitted_rows
from ..lm.models import ModelLoadError, check_adapter_base, IA3_KEY, as_name_list, model_shape, read_ia3_adapter
from ..lm.sharding import length_batches
from .neurons import Neuron, NeuronsLike, _pairs, as_neuron_list, check_model_pair, group_by_layer, post_hook_names


# Drop finished rows from the batch (and its KV caches) once at least this share of the rows is done.
_COMPACT_SHARE = 0.25


# ----------------------------------------------------------------------------------------------
# (IA)^3 scales for the fast path
# ----------------------------------------------------------------------------------------------


def ia3_neuron_scales(adapter_dir: str | Path, n_layers: int, d_mlp: int, *, base=None) -> dict[int, torch.Tensor]:
    """{layer: d_mlp scales} of an (IA)^3 adapter that scales only MLP neurons (down_proj's input).

    Anything else (attention vectors, gate/up vectors, output scaling) cannot be expressed as a
    per-neuron scale of hook_post: that is an error telling to use `patched_generate` with the folded
    M2. Pass `base` (a bridge or HF model) to check the adapter's recorded base fingerprint.
    """
    config, state = read_ia3_adapter(adapter_dir)
    if base is not None:
        hf = getattr(base, "original_model", base)
        check_adapter_base(hf, Path(adapter_dir), config)
    feedforward = set(as_name_list(config.get("feedforward_modules")))
    scales: dict[int, torch.Tensor] = {}
    for key, vec in state.items():
        match = IA3_KEY.search(key)
        if match is None:
            raise ModelLoadError(f"adapter tensor {key!r} is not an (IA)^3 vector of a decoder layer")
        layer, block, proj = int(match[1]), match[2], match[3]
        if block != "mlp" or proj != "down_proj" or proj not in feedforward:
            raise ModelLoadError(
                f"adapter {adapter_dir} scales layers.{layer}.{block}.{proj}"
                f"{' (feed-forward)' if proj in feedforward else ' (output)'}: the fast path needs MLP-neuron-only "
                "(IA)^3 (feed-forward vectors on down_proj only). Use patched_generate with M2 = load_model(base, adapter=...)."
            )
        if layer >= n_layers:
            raise ModelLoadError(f"adapter has a vector for layer {layer} but the model has {n_layers} layers: trained on another base?")
        scale = vec.detach().float().flatten()
        if scale.numel() != d_mlp:
            raise ModelLoadError(
                f"adapter vector {key} has {scale.numel()} entries but the model has {d_mlp} neurons per layer: "
                "the adapter was trained on another base model"
            )
        scales[layer] = scale
    if not scales:
        raise ModelLoadError(f"adapter {adapter_dir} holds no (IA)^3 vectors")
    return scales


# ----------------------------------------------------------------------------------------------
# hooks
# ----------------------------------------------------------------------------------------------


@dataclass
class _PatchState:
    phase: str | None = None  # "capture" while M2 runs, "replace" while M1 runs
    values: dict[int, torch.Tensor] = field(default_factory=dict)


def _capture_hook(state: _PatchState, layer: int, idx: torch.Tensor):
    def hook(act: torch.Tensor, hook: Any = None):
        if state.phase == "capture":
            state.values[layer] = act.index_select(-1, idx)
        return None

    return hook


def _replace_hook(state: _PatchState, layer: int, idx: torch.Tensor):
    def hook(act: torch.Tensor, hook: Any = None):
        if state.phase != "replace":
            return None
        act.index_copy_(-1, idx, state.values[layer])
        return act

    return hook


@dataclass
class _FastState:
    half: int | None = None  # rows [0, half) are M1, [half, 2*half) M2; None: M1 only
    # Prefill from a shared M2 prefill: "m2" runs M2 rows alone and records every hooked layer's
    # hook_post, "m1" runs M1 rows alone and takes the chosen neurons from the record.
    mode: str | None = None
    record: dict[int, torch.Tensor] = field(default_factory=dict)


def _fast_hook(state: _FastState, layer: int, scale: torch.Tensor | None, idx: torch.Tensor | None):
    def hook(act: torch.Tensor, hook: Any = None):
        if state.mode == "m2":
            if scale is not None:
                act.mul_(scale)
            state.record[layer] = act.clone()
            return act
        if state.mode == "m1":
            if idx is not None:
                act.index_copy_(-1, idx, state.record[layer].index_select(-1, idx))
            return act
        half = state.half
        if half is None:
            return None
        m2 = act[half:]
        if scale is not None:
            m2.mul_(scale)
        if idx is not None:
            act[:half].index_copy_(-1, idx, m2.index_select(-1, idx))
        return act

    return hook


def _ablate_hook(idx: torch.Tensor, values: torch.Tensor | None):
    def hook(act: torch.Tensor, hook: Any = None):
        if values is None:
            act.index_fill_(-1, idx, 0.0)
        else:
            act.index_copy_(-1, idx, values.expand(*act.shape[:-1], values.shape[-1]))
        return act

    return hook


# ----------------------------------------------------------------------------------------------
# runners: one forward step of a generation, owning the KV caches
# ----------------------------------------------------------------------------------------------


def _new_cache(hf):
    from transformers import DynamicCache

    return DynamicCache(config=hf.config)


def _lm_logits(hf, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits from the decoder's last hidden state (only the rows and position needed)."""
    logits = hf.lm_head(hidden)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def _decoder(hf, ids, mask, pos, cache) -> torch.Tensor:
    return hf.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).last_hidden_state


class _TwoModelRunner:
    def __init__(self, hf1, hf2, state: _PatchState, patch: bool):
        self.hf1, self.hf2, self.state, self.patch = hf1, hf2, state, patch
        self.rows_per_prompt = 2 if patch else 1  # M2's rows run beside M1's, each with a cache

    def start(self, n_rows: int) -> None:
        self.c1 = _new_cache(self.hf1)
        self.c2 = _new_cache(self.hf2) if self.patch else None

    def step(self, ids, mask, pos) -> torch.Tensor:
        state = self.state
        try:
            if self.patch:
                state.phase = "capture"
                _decoder(self.hf2, ids, mask, pos, self.c2)
            state.phase = "replace"
            hidden = _decoder(self.hf1, ids, mask, pos, self.c1)[:, -1]
        finally:
            state.phase = None
            state.values.clear()
        return _lm_logits(self.hf1, hidden)

    def select(self, keep: torch.Tensor) -> None:
        self.c1.batch_select_indices(keep)
        if self.c2 is not None:
            self.c2.batch_select_indices(keep)


class _FastRunner:
    def __init__(self, hf, state: _FastState, with_m2: bool, shared: "SharedM2Prefill | None" = None):
        self.hf, self.state, self.with_m2, self.shared = hf, state, with_m2, shared
        self.rows_per_prompt = 2 if with_m2 else 1  # M1's and M2's rows in one batch

    def start(self, n_rows: int) -> None:
        self.cache = _new_cache(self.hf)
        self.n = n_rows
        self.prefilled = False

    def _shared_prefill(self, ids, mask, pos) -> torch.Tensor:
        """Prefill M1's rows with M2's prompt values taken from (or first put in) the shared store,
        and start the 2B-row cache from M1's new KV and M2's stored KV."""
        state, hf = self.state, self.hf
        entry = self.shared.get(ids, mask)
        try:
            if entry is None:
                state.mode, state.record = "m2", {}
                m2_cache = _new_cache(hf)
                _decoder(hf, ids, mask, pos, m2_cache)
                entry = self.shared.put(ids, mask, state.record, m2_cache)
            state.mode, state.record = "m1", entry.post
            hidden = _decoder(hf, ids, mask, pos, self.cache)
        finally:
            state.mode, state.record = None, {}
        self.cache = _join_caches(hf, self.cache, entry.kv)
        return _lm_logits(hf, hidden[:, -1])

    def step(self, ids, mask, pos) -> torch.Tensor:
        n = self.n
        if not self.with_m2:
            return _lm_logits(self.hf, _decoder(self.hf, ids, mask, pos, self.cache)[:, -1])
        if not self.prefilled:
            self.prefilled = True
            if self.shared is not None:
                return self._shared_prefill(ids, mask, pos)
        self.state.half = n
        try:
            hidden = _decoder(self.hf, torch.cat([ids, ids]), torch.cat([mask, mask]), torch.cat([pos, pos]), self.cache)
        finally:
            self.state.half = None
        return _lm_logits(self.hf, hidden[:n, -1])

    def select(self, keep: torch.Tensor) -> None:
        if self.with_m2:
            self.cache.batch_select_indices(torch.cat([keep, keep + self.n]))
        else:
            self.cache.batch_select_indices(keep)
        self.n = int(keep.numel())


def _join_caches(hf, first, second: list[tuple[torch.Tensor, torch.Tensor]]):
    """One cache whose rows are `first`'s, then `second`'s ((keys, values) per layer)."""
    from transformers import DynamicCache

    layers = [(torch.cat([a.keys, k]), torch.cat([a.values, v])) for a, (k, v) in zip(first.layers, second)]
    return DynamicCache(ddp_cache_data=layers, config=hf.config)


@dataclass
class _Prefill:
    post: dict[int, torch.Tensor]  # layer -> M2's hook_post at the prompt positions [B, T, d_mlp]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # M2's KV cache, per layer
    nbytes: int


class SharedM2Prefill:
    """M2's prefill of each batch of prompts, computed once and shared by every fast-path run over them.

    At prefill M2 sees the prompt alone, whatever neurons are patched into M1, so its KV cache and
    hook_post values at the prompt positions are the same for every arm of a sweep: keeping them
    saves M2's half of every later arm's prefill. Keyed by the batch's exact ids and mask; entries
    stop being added past `max_bytes` (later batches are then prefilled in full, same results). One
    store belongs to one base model and one set of scales: a different pair raises.
    """

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._entries: dict[tuple, _Prefill] = {}
        self._owner: tuple | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def bind(self, hf, scales: Mapping[int, torch.Tensor]) -> None:
        owner = (id(hf), tuple(sorted((int(l), hash(v.detach().cpu().numpy().tobytes())) for l, v in scales.items())))
        if self._owner is None:
            self._owner = owner
        elif owner != self._owner:
            raise ValueError("this SharedM2Prefill was filled for another model or other (IA)^3 scales: "
                             "make one store per (base, scales) pair")

    @staticmethod
    def _key(ids: torch.Tensor, mask: torch.Tensor) -> tuple:
        return tuple(ids.shape), ids.cpu().numpy().tobytes(), mask.cpu().numpy().tobytes()

    def get(self, ids: torch.Tensor, mask: torch.Tensor) -> _Prefill | None:
        return self._entries.get(self._key(ids, mask))

    def put(self, ids, mask, post: dict[int, torch.Tensor], cache) -> _Prefill:
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        nbytes = sum(t.numel() * t.element_size() for t in post.values()) + sum(
            k.numel() * k.element_size() * 2 for k, _ in kv)
        entry = _Prefill(post, kv, nbytes)
        if self.nbytes + nbytes <= self.max_bytes:
            self._entries[self._key(ids, mask)] = entry
            self.nbytes += nbytes
        return entry


class _SingleRunner:
    rows_per_prompt = 1

    def __init__(self, hf):
        self.hf = hf

    def start(self, n_rows: int) -> None:
        self.cache = _new_cache(self.hf)

    def step(self, ids, mask, pos) -> torch.Tensor:
        return _lm_logits(self.hf, _decoder(self.hf, ids, mask, pos, self.cache)[:, -1])

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)


# ----------------------------------------------------------------------------------------------
# the decoding loop
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    max_new_tokens: int
    batch_size: BatchSize
    do_sample: bool
    temperature: float
    top_p: float
    seed: int
    stop_strings: tuple[str, ...]
    stop_when: Callable[[str], bool] | None
    progress: bool
    desc: str


def _options(max_new_tokens, batch_size, do_sample, temperature, top_p, seed, stop_strings, progress, desc,
             stop_when=None) -> _Options:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    check_batch_size(batch_size)
    if do_sample and not temperature > 0:
        raise ValueError(f"sampling needs a temperature > 0, got {temperature} (use do_sample=False for greedy)")
    if do_sample and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    stops = tuple(stop_strings)
    if any(not isinstance(s, str) or s == "" for s in stops):
        raise ValueError(f"stop strings must be non-empty strings, got {stops!r}")
    if stop_when is not None and not callable(stop_when):
        raise ValueError(f"stop_when must be a function of the answer text so far, got {stop_when!r}")
    return _Options(int(max_new_tokens), batch_size, bool(do_sample), float(temperature), float(top_p), int(seed), stops, stop_when,
                    bool(progress), desc)


def _uniforms(seed: int, index: int, n: int) -> np.ndarray:
    """The per-prompt random stream: independent of batch composition and of the patch."""
    return np.random.default_rng([seed, index]).random(n)


def _choose(logits: torch.Tensor, u: torch.Tensor | None, opts: _Options) -> torch.Tensor:
    if not opts.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / opts.temperature, dim=-1)
    cdf_dtype = u.dtype
    if opts.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before > opts.top_p, 0.0)
        cdf = sorted_probs.to(cdf_dtype).cumsum(-1)
        j = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp_max(cdf.shape[-1] - 1)
        return order.gather(-1, j).squeeze(-1)
    cdf = probs.to(cdf_dtype).cumsum(-1)
    j = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp_max(cdf.shape[-1] - 1)
    return j.squeeze(-1)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((p for p in (text.find(s) for s in stops) if p >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.inference_mode()
def _run(runner, hf, tokenizer, prompts: list[list[int]], opts: _Options) -> list[Generation]:
    device = next(hf.parameters()).device
    eos_ids = eos_token_ids(hf, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    eos_t = torch.tensor(eos_ids, dtype=torch.long, device=device)
    u_dtype = torch.float32 if device.type == "mps" else torch.float64
    stops = opts.stop_strings
    results: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=opts.desc, unit="prompt", disable=not opts.progress)
    lengths = [len(p) for p in prompts]
    rows_per_batch = fitted_rows(opts.batch_size, hf, lengths, extra_tokens=opts.max_new_tokens,
                                 rows_per_prompt=runner.rows_per_prompt, generation=True)
    with explained_oom(opts.batch_size, rows_per_batch, max(lengths) + opts.max_new_tokens):
        for rows in length_batches(lengths, rows_per_batch):
            n = len(rows)
            ids, mask = left_pad([prompts[i] for i in rows], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            pos = position_ids(mask)
            next_pos = pos[:, -1:] + 1
            u = None
            if opts.do_sample:
                u = torch.from_numpy(np.stack([_uniforms(opts.seed, i, opts.max_new_tokens) for i in rows])).to(device=device, dtype=u_dtype)
            out = torch.full((n, opts.max_new_tokens), pad_id, dtype=torch.long, device=device)
            active = torch.arange(n, device=device)  # batch row -> row of `out`
            done = torch.zeros(n, dtype=torch.bool, device=device)
            end_step = [opts.max_new_tokens - 1] * n  # host: last kept step per row (stop strings)
            texts_ids: list[list[int]] = [[] for _ in range(n)]
            host_done = [False] * n
            runner.start(n)
            logits = runner.step(ids, mask, pos)
            n_steps = 0
            for step in range(opts.max_new_tokens):
                tok = _choose(logits, None if u is None else u[:, step], opts)
                tok = tok.masked_fill(done, pad_id)
                out[active, step] = tok
                done = done | (tok[:, None] == eos_t).any(-1)
                n_steps = step + 1
                if stops or opts.stop_when is not None:
                    done = _check_stops(tok, active, done, texts_ids, host_done, end_step, step, eos_ids, tokenizer, stops,
                                        opts.stop_when)
                if step == opts.max_new_tokens - 1:
                    break
                n_done = int(done.sum())
                if n_done == done.numel():
                    break
                if n_done >= max(1, math.ceil(_COMPACT_SHARE * done.numel())):
                    keep = (~done).nonzero().squeeze(-1)
                    runner.select(keep)
                    active, done, tok, mask, next_pos = active[keep], done[keep], tok[keep], mask[keep], next_pos[keep]
                    if u is not None:
                        u = u[keep]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
                logits = runner.step(tok[:, None], mask, next_pos)
                next_pos = next_pos + 1
            completions = out[:, :n_steps].tolist()
            for b, row in enumerate(rows):
                kept, stopped = truncate_at_eos(completions[b][: end_step[b] + 1], eos_ids)
                text, cut = _cut_at_stop(tokenizer.decode(kept, skip_special_tokens=True), stops)
                ended_early = end_step[b] < opts.max_new_tokens - 1  # a stop string or stop_when ended it
                results[row] = Generation(list(prompts[row]), kept, text, stopped or cut or ended_early)
            bar.update(n)
    bar.close()
    return results  # type: ignore[return-value]


def _check_stops(tok, active, done, texts_ids, host_done, end_step, step, eos_ids, tokenizer, stops, stop_when=None):
    """Mark rows whose decoded text now contains a stop string (one host transfer per step)."""
    toks = tok.tolist()
    rows = active.tolist()
    newly = []
    for b, (row, t) in enumerate(zip(rows, toks)):
        if host_done[row]:
            continue
        if t in eos_ids:
            host_done[row] = True
            continue
        texts_ids[row].append(t)
        text = tokenizer.decode(texts_ids[row], skip_special_tokens=True)
        if any(s in text for s in stops) or (stop_when is not None and stop_when(text)):
            host_done[row] = True
            end_step[row] = step
            newly.append(b)
    if newly:
        done = done.clone()
        done[torch.tensor(newly, device=done.device)] = True
    return done


# ----------------------------------------------------------------------------------------------
# public generation functions
# ----------------------------------------------------------------------------------------------


def _group_tensors(neurons: list[Neuron], device) -> dict[int, torch.Tensor]:
    return {layer: torch.tensor(idx, dtype=torch.long, device=device) for layer, idx in group_by_layer(neurons).items()}


def patched_generate(
    m1,
    m2,
    prompt_ids: list[list[int]],
    neurons: NeuronsLike,
    *,
    max_new_tokens: int,
    batch_size: BatchSize = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_strings: Sequence[str] = (),
    stop_when: Callable[[str], bool] | None = None,
    progress: bool = True,
    desc: str = "patched generate",
) -> list[Generation]:
    """Generate from M1 with the chosen neurons' hook_post values replaced by M2's at every step.

    M2 runs first on the patched M1's own prefix with its own KV cache; its values of `neurons`
    ((layer, index) pairs) replace M1's at all prompt positions at prefill and at the new position
    afterwards. An empty neuron list gives plain M1 through the same loop. Results in the caller's
    order; `stopped` is True when an EOS or a stop string ended the answer (the text is cut before
    the stop string; completion_ids keep the tokens generated up to it). `stop_when(text)` ends a row
    as soon as it returns True for the answer so far (text kept): e.g. once a judge's verdict can no
    longer change, the rest of the answer is not worth generating.
    """
    opts = _options(max_new_tokens, batch_size, do_sample, temperature, top_p, seed, stop_strings, progress, desc, stop_when)
    prompts = checked_prompt_ids(prompt_ids, "prompts to generate from")
    hf1, hf2, device, shape1 = check_model_pair(m1, m2)
    pairs = as_neuron_list(neurons, shape1.n_layers, shape1.d_mlp)
    groups = _group_tensors(pairs, device)
    state = _PatchState()
    names1, names2 = post_hook_names(m1, list(groups)), post_hook_names(m2, list(groups))
    hooks1 = [(names1[layer], _replace_hook(state, layer, idx)) for layer, idx in groups.items()]
    hooks2 = [(names2[layer], _capture_hook(state, layer, idx)) for layer, idx in groups.items()]
    runner = _TwoModelRunner(hf1, hf2, state, patch=bool(groups))
    with m2.hooks(fwd_hooks=hooks2), m1.hooks(fwd_hooks=hooks1):
        return _run(runner, hf1, m1.tokenizer, prompts, opts)


def fast_patched_generate(
    base,
    scales: Mapping[int, torch.Tensor],
    prompt_ids: list[list[int]],
    neurons: NeuronsLike,
    *,
    max_new_tokens: int,
    batch_size: BatchSize = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_strings: Sequence[str] = (),
    stop_when: Callable[[str], bool] | None = None,
    shared_prefill: SharedM2Prefill | None = None,
    progress: bool = True,
    desc: str = "patched generate (fast)",
) -> list[Generation]:
    """`patched_generate` for M2 = `base` with per-neuron (IA)^3 scales on hook_post, in one model.

    `base` is the unadapted M1 bridge, `scales` {layer: d_mlp scales} (see `ia3_neuron_scales`;
    layers absent are unscaled). Each step runs one forward over 2B rows sharing one KV cache: rows
    [0, B) are M1, [B, 2B) are M2, both fed the patched M1's tokens; a hook on every layer's hook_post
    scales the M2 half and copies the chosen neurons from the M2 half into the M1 half.
    `shared_prefill` (a `SharedM2Prefill` kept across calls on the same prompts, base and scales)
    computes M2's prefill of each batch once: a sweep's later arms prefill only M1's rows.
    """
    opts = _options(max_new_tokens, batch_size, do_sample, temperature, top_p, seed, stop_strings, progress, desc, stop_when)
    prompts = checked_prompt_ids(prompt_ids, "prompts to generate from")
    shape = model_shape(base)
    pairs = as_neuron_list(neurons, shape.n_layers, shape.d_mlp)
    hf, device = hf_and_device(base)
    dtype = next(hf.parameters()).dtype
    scale_t: dict[int, torch.Tensor] = {}
    for layer, vec in scales.items():
        layer = int(layer)
        if not 0 <= layer < shape.n_layers:
            raise ValueError(f"scales given for layer {layer} but the model has {shape.n_layers} layers")
        vec = torch.as_tensor(vec).detach().flatten()
        if vec.numel() != shape.d_mlp:
            raise ValueError(f"scales of layer {layer} have {vec.numel()} entries but the model has {shape.d_mlp} neurons per layer")
        scale_t[layer] = vec.to(device=device, dtype=dtype)
    groups = _group_tensors(pairs, device)
    state = _FastState()
    shared = shared_prefill if groups else None
    if shared is not None:
        shared.bind(hf, scale_t)
        hooked = list(range(shape.n_layers))  # the store records every layer: later arms patch others
    else:
        hooked = sorted(set(groups) | set(scale_t)) if groups else []
    names = post_hook_names(base, hooked)
    hooks = [(names[layer], _fast_hook(state, layer, scale_t.get(layer), groups.get(layer))) for layer in hooked]
    runner = _FastRunner(hf, state, with_m2=bool(groups), shared=shared)
    with base.hooks(fwd_hooks=hooks):
        return _run(runner, hf, base.tokenizer, prompts, opts)


def ablated_generate(
    m2,
    prompt_ids: list[list[int]],
    neurons: NeuronsLike,
    *,
    mode: str = "zero",
    means: Mapping[int, torch.Tensor] | NeuronsLike | None = None,
    max_new_tokens: int,
    batch_size: BatchSize = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_strings: Sequence[str] = (),
    stop_when: Callable[[str], bool] | None = None,
    progress: bool = True,
    desc: str = "ablated generate",
) -> list[Generation]:
    """M2's generation with the chosen neurons' hook_post set to 0 (`mode="zero"`) or to given means
    (`mode="mean"`; `means` is {layer: d_mlp means}, an [n_layers, d_mlp] array such as
    `RunningMoments.mean`, or a 1-D array aligned with `neurons`)."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"unknown ablation mode {mode!r}; use 'zero' or 'mean'")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs `means`: {layer: d_mlp mean activations} or an array aligned with the neurons")
    opts = _options(max_new_tokens, batch_size, do_sample, temperature, top_p, seed, stop_strings, progress, desc, stop_when)
    prompts = checked_prompt_ids(prompt_ids, "prompts to generate from")
    shape = model_shape(m2)
    hf, device = hf_and_device(m2)
    dtype = next(hf.parameters()).dtype
    raw_pairs = _pairs(neurons)
    pairs = as_neuron_list(neurons, shape.n_layers, shape.d_mlp)
    groups = _group_tensors(pairs, device)
    values: dict[int, torch.Tensor | None] = {layer: None for layer in groups}
    if mode == "mean":
        values = _mean_values(means, raw_pairs, groups, shape.d_mlp, device, dtype)
    names = post_hook_names(m2, list(groups))
    hooks = [(names[layer], _ablate_hook(idx, values[layer])) for layer, idx in groups.items()]
    with m2.hooks(fwd_hooks=hooks):
        return _run(_SingleRunner(hf), hf, m2.tokenizer, prompts, opts)


def _mean_values(means, raw_pairs, groups, d_mlp, device, dtype) -> dict[int, torch.Tensor]:
    """Per-layer mean values aligned with the layer's sorted neuron indices."""
    out: dict[int, torch.Tensor] = {}
    if isinstance(means, Mapping):
        for layer, idx in groups.items():
            if layer not in means and str(layer) not in means:
                raise ValueError(f"means has no entry for layer {layer}, which has ablated neurons")
            vec = torch.as_tensor(means[layer] if layer in means else means[str(layer)]).detach().flatten()
            if vec.numel() != d_mlp:
                raise ValueError(f"means of layer {layer} have {vec.numel()} entries; give all {d_mlp} neurons' means")
            out[layer] = vec.to(device=device, dtype=dtype)[idx]
        return out
    vals = np.asarray(means.detach().cpu().numpy() if isinstance(means, torch.Tensor) else means, dtype=np.float64)
    if vals.ndim == 2:
        if vals.shape[1] != d_mlp or any(layer >= vals.shape[0] for layer in groups):
            raise ValueError(f"means of shape {vals.shape} do not cover the ablated neurons: give [n_layers, {d_mlp}]")
        return {layer: torch.tensor(vals[layer][idx.cpu().numpy()], device=device, dtype=dtype) for layer, idx in groups.items()}
    vals = vals.reshape(-1)
    if vals.shape[0] != len(raw_pairs):
        raise ValueError(f"means has {vals.shape[0]} values but there are {len(raw_pairs)} neurons: align one mean per neuron")
    by_pair: dict[Neuron, float] = {}
    for pair, value in zip(raw_pairs, vals.tolist()):
        if pair in by_pair and by_pair[pair] != value:
            raise ValueError(f"neuron {pair} is listed twice with different means ({by_pair[pair]} and {value})")
        by_pair[pair] = value
    for layer, idx in groups.items():
        out[layer] = torch.tensor([by_pair[(layer, i)] for i in idx.tolist()], device=device, dtype=dtype)
    return out


def patched_perplexity(m1, m2, texts: list[str], neurons: NeuronsLike, *, batch_size: BatchSize = 8, max_tokens: int = 256,
                       progress: bool = True) -> float:
    """Perplexity of M1 on `texts` with the chosen neurons statically patched from M2: both models read
    the same text (teacher forcing) and M2's values replace M1's at every position (the paper's
    delta-Gen: what the patch costs general language modelling)."""
    from ..judges.evaluation import perplexity

    shape = model_shape(m1)
    if model_shape(m2) != shape:
        raise ValueError(f"M1 and M2 have different shapes ({shape} vs {model_shape(m2)}): M2 must be M1's architecture")
    hf1, device = hf_and_device(m1)
    hf2, _ = hf_and_device(m2)
    groups = _group_tensors(as_neuron_list(neurons, shape.n_layers, shape.d_mlp), device)
    state = _PatchState()
    names1, names2 = post_hook_names(m1, list(groups)), post_hook_names(m2, list(groups))
    hooks1 = [(names1[layer], _replace_hook(state, layer, idx)) for layer, idx in groups.items()]
    hooks2 = [(names2[layer], _capture_hook(state, layer, idx)) for layer, idx in groups.items()]

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        try:
            state.phase = "capture"
            hf2(input_ids=ids, attention_mask=mask)
            state.phase = "replace"
            return hf1(input_ids=ids, attention_mask=mask).logits
        finally:
            state.phase = None
            state.values.clear()

    with torch.inference_mode(), m2.hooks(fwd_hooks=hooks2), m1.hooks(fwd_hooks=hooks1):
        return perplexity(m1, texts, batch_size=batch_size, max_tokens=max_tokens, progress=progress, forward=forward)
