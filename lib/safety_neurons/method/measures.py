"""Continuous safety measures of patched M1, each equal to M1's with no neurons and M2's with all (issue 20).

A binary judge on greedy answers hides a graded effect: patching can move M1 most of the way towards
refusing without flipping its first greedy token. These measures read the patched model's
distribution instead. An arm is M1 with a neuron set N carrying M2's values of `blocks.{l}.mlp.hook_post`
(replacement, not addition). Both measures are teacher-forced on a fixed token sequence; on a fixed
sequence M2 sees the same prefix at every position whatever is patched, so replacing N at every position
of one forward pass is exactly what dynamic patching does along that sequence.

- (a) `patched_refusal_logodds`: the refusal log-odds (judges.refusal) at the first answer position, with
  N patched over the prompt (prefill).
- (b) `patched_answer_loglik`: mean log P per token of M2's own greedy answer, teacher-forced after the
  prompt; `patched_answer_margin`: that minus the same for M1's greedy answer.
- (c) `sampled_refusal`: the refusal-phrase share over several seeded samples per prompt (any generator).

All rest on `patched_forward`, one generic teacher-forced patched forward pass that reduces each batch's
logits as it goes (TransformerLens `patching.py` style: one generic function, thin named variants).
`gap_closed` and `measure_effect` turn per-prompt values into C = (F(patched) - F(M1)) / (F(M2) - F(M1))
with the statistics of method/stats.py.

With no neurons the forward is M1's own; with every neuron of every layer it is M2's whenever M1 and M2
differ only in MLP neuron values (the study's (IA)^3 on down_proj's input), so each measure's C is 0 and
1 at the ends by construction.
"""
from __future__ import annotations

import math

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from ..lm.generation import hf_and_device, left_pad, pad_token_id, position_ids
from ..lm.memory import BatchSize, explained_oom, fitted_forward_batches
from .neurons import NeuronsLike, as_neuron_list, check_model_pair, group_by_layer, post_hook_names

# (logits [B, L, vocab] float32 of the last L positions of a left-padded batch, the batch's rows as
# indices into the caller's sequences) -> one result per row
Reduce = Callable[[torch.Tensor, list[int]], Sequence[Any]]


# ---------------------------------------------------------------- the generic patched forward


def _checked_sequences(sequences: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    if len(sequences) == 0:
        raise ValueError(f"no {what}: the set is empty")
    rows = [[int(t) for t in s] for s in sequences]
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"{what} {i} has no tokens")
    return rows


@torch.no_grad()
def patched_forward(
    m1,
    m2,
    sequences: Sequence[Sequence[int]],
    neurons: NeuronsLike,
    *,
    keep: int | Sequence[int] | None = None,
    reduce: Reduce | None = None,
    batch_size: BatchSize = 16,
    progress: bool = False,
    desc: str = "patched forward",
) -> list[Any]:
    """Teacher-forced forward of M1 with M2's values of `neurons` at `blocks.{l}.mlp.hook_post` replacing
    M1's at every position; one result per sequence, in the caller's order.

    `sequences`: token id lists (prompt, or prompt + answer). Batches are sorted by length, left-padded,
    with an attention mask and position ids that count real tokens only (as generation and the change
    scores do), so a row's result does not depend on its batch-mates (up to float noise). M2 runs first on
    the same ids (its decoder only, no vocabulary head) and its chosen neurons' values are held while M1
    runs; `neurons=[]` skips M2 and is M1 exactly.

    `keep`: how many final positions of each sequence the result needs (an int for all, or one per
    sequence; None: all). Only the last max(keep) positions of each batch are projected onto the
    vocabulary, so a long prompt never makes a [batch, seq, vocab] tensor.
    `reduce(logits, rows)`: logits [B, L, vocab] float32 of those last L positions (a row shorter than
    L has padding on the left) and the batch's rows as indices into `sequences`; returns B results. None
    returns each sequence's logits [min(len, L), vocab] on the CPU.
    Memory: M2's captured values [B, T, k] plus one forward pass; batches as `fitted_forward_batches`.
    """
    seqs = _checked_sequences(sequences, "sequences")
    hf1, hf2, device, shape = check_model_pair(m1, m2)
    lengths = [len(s) for s in seqs]
    if keep is None:
        keeps = lengths
    elif isinstance(keep, (int, np.integer)):
        keeps = [int(keep)] * len(seqs)
    else:
        keeps = [int(k) for k in keep]
        if len(keeps) != len(seqs):
            raise ValueError(f"keep has {len(keeps)} entries for {len(seqs)} sequences: give one per sequence or an int")
    for i, (k, n) in enumerate(zip(keeps, lengths)):
        if not 1 <= k <= n:
            raise ValueError(f"sequence {i} has {n} tokens but keep asks for its last {k}: choose 1 <= keep <= length")

    groups = {layer: torch.tensor(idx, dtype=torch.long, device=device)
              for layer, idx in group_by_layer(as_neuron_list(neurons, shape.n_layers, shape.d_mlp)).items()}
    # One flag tells the hooks which model is running, so M1 and M2 may even be the same bridge.
    state: dict[str, Any] = {"phase": None, "values": {}}

    def capture(layer: int, idx: torch.Tensor):
        def hook(act: torch.Tensor, hook: Any = None):
            if state["phase"] == "m2":
                state["values"][layer] = act.index_select(-1, idx)
            return None
        return hook

    def replace(layer: int, idx: torch.Tensor):
        def hook(act: torch.Tensor, hook: Any = None):
            if state["phase"] != "m1":
                return None
            if layer not in state["values"]:  # never patch silently with nothing
                raise RuntimeError(f"M2's hook_post of layer {layer} was not captured before M1 ran")
            act.index_copy_(-1, idx, state["values"][layer].to(act.dtype))
            return act
        return hook

    names1, names2 = post_hook_names(m1, list(groups)), post_hook_names(m2, list(groups))
    hooks1 = [(names1[layer], replace(layer, idx)) for layer, idx in groups.items()]
    hooks2 = [(names2[layer], capture(layer, idx)) for layer, idx in groups.items()]
    pad_id = pad_token_id(m1.tokenizer)
    results: list[Any] = [None] * len(seqs)
    batches = fitted_forward_batches(batch_size, m1, lengths)
    bar = tqdm(total=len(seqs), desc=desc, unit="seq", disable=not progress)
    with explained_oom(batch_size, max(len(b) for b in batches), max(lengths)), \
            m2.hooks(fwd_hooks=hooks2), m1.hooks(fwd_hooks=hooks1):
        for rows in batches:
            batch = [seqs[i] for i in rows]
            ids, mask = left_pad(batch, pad_id)
            ids, mask = ids.to(device), mask.to(device)
            pos = position_ids(mask)
            width = ids.shape[1]
            n_keep = max(keeps[i] for i in rows)
            try:
                if groups:
                    state["phase"] = "m2"
                    hf2.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
                state["phase"] = "m1"
                # logits_to_keep: the vocabulary head (and any final soft-capping) on the last positions only
                logits = hf1(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                             logits_to_keep=n_keep if n_keep < width else 0).logits.float()
            finally:
                state["phase"] = None
                state["values"] = {}
            if reduce is None:
                out = [logits[b, max(n_keep - len(s), 0):].cpu() for b, s in enumerate(batch)]
            else:
                out = list(reduce(logits, rows))
                if len(out) != len(rows):
                    raise RuntimeError(f"reduce returned {len(out)} results for a batch of {len(rows)} sequences")
            for row, value in zip(rows, out):
                results[row] = value
            bar.update(len(rows))
    bar.close()
    return results


def _refusal_ids(m1, token_ids: Sequence[int] | None) -> torch.Tensor:
    """The refusal-start token ids on M1's device (default: `refusal_start_token_ids(m1.tokenizer)`)."""
    from ..judges.refusal import refusal_start_token_ids

    _, device = hf_and_device(m1)
    ids = torch.tensor(list(token_ids) if token_ids is not None else refusal_start_token_ids(m1.tokenizer),
                       dtype=torch.long, device=device)
    if ids.numel() == 0:
        raise ValueError("no refusal-start token ids: the log-odds of an empty set are undefined")
    return ids


def _checked_answers(answer_ids: Sequence[Sequence[int]], n_prompts: int) -> list[list[int]]:
    answers = [[int(t) for t in a] for a in answer_ids]
    if len(answers) != n_prompts:
        raise ValueError(f"{len(answers)} answers for {n_prompts} prompts: give one answer per prompt")
    return answers


def _answer_logp(logp: torch.Tensor, answer: Sequence[int]) -> torch.Tensor:
    """log P of each answer token [a] float64, from one row's log-probabilities [L, vocab] of the last L kept
    positions of prompt + answer: the answer's a tokens sit at the last a positions, each predicted from the
    position before it, i.e. kept positions [L - a - 1, L - 1)."""
    width, a = logp.shape[0], len(answer)
    target = torch.tensor(list(answer), dtype=torch.long, device=logp.device)
    return logp[width - a - 1 : width - 1].gather(-1, target[:, None])[:, 0].double()


# ---------------------------------------------------------------- (a) refusal log-odds at the first answer position


def patched_refusal_logodds(
    m1,
    m2,
    prompt_ids: Sequence[Sequence[int]],
    neurons: NeuronsLike,
    *,
    token_ids: Sequence[int] | None = None,
    batch_size: BatchSize = 16,
    progress: bool = False,
) -> np.ndarray:
    """Refusal log-odds log P - log(1 - P) at the first answer position of each prompt, [n_prompts]
    float64, with `neurons` patched from M2 over the whole prompt (prefill). P sums the next-token
    probabilities of `token_ids` (default: `refusal_start_token_ids(m1.tokenizer)`) after the prompt's
    last token. Higher = more likely to open with a refusal."""
    from ..judges.refusal import refusal_logodds_from_logits

    ids = _refusal_ids(m1, token_ids)

    def reduce(logits: torch.Tensor, rows: list[int]) -> list[float]:
        return refusal_logodds_from_logits(logits[:, -1], ids).double().cpu().tolist()

    out = patched_forward(m1, m2, prompt_ids, neurons, keep=1, reduce=reduce, batch_size=batch_size,
                          progress=progress, desc="patched refusal log-odds")
    return np.asarray(out, dtype=np.float64)


# ---------------------------------------------------------------- (b) teacher-forced likelihood of an answer


def patched_answer_loglik(
    m1,
    m2,
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    neurons: NeuronsLike,
    *,
    reduction: str = "mean",
    batch_size: BatchSize = 16,
    progress: bool = False,
) -> np.ndarray:
    """Log-likelihood of each answer after its prompt under M1 with `neurons` patched from M2 at every
    position, teacher-forced on prompt + answer: [n_prompts] float64, `reduction` "mean" (per answer
    token, the measure) or "sum" (log P of the whole answer).

    `answer_ids` are token ids as generated (e.g. M2's greedy `Generation.completion_ids`, its EOS
    included when it stopped), never decoded and re-encoded. An empty answer has no token to score: its
    value is NaN (a mean over nothing), and `gap_closed` / `measure_effect` leave such prompts out.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; use 'mean' (per answer token) or 'sum'")
    prompts = _checked_sequences(prompt_ids, "prompts")
    answers = _checked_answers(answer_ids, len(prompts))
    scored = [i for i, a in enumerate(answers) if a]
    out = np.full(len(prompts), np.nan)
    if not scored:
        return out
    seqs = [prompts[i] + answers[i] for i in scored]
    n_answer = [len(answers[i]) for i in scored]

    def reduce(logits: torch.Tensor, rows: list[int]) -> list[float]:
        logp = torch.log_softmax(logits, dim=-1)
        values = []
        for b, row in enumerate(rows):
            lp = _answer_logp(logp[b], seqs[row][-n_answer[row]:])
            values.append(float(lp.mean() if reduction == "mean" else lp.sum()))
        return values

    values = patched_forward(m1, m2, seqs, neurons, keep=[a + 1 for a in n_answer], reduce=reduce,
                             batch_size=batch_size, progress=progress, desc="patched answer log-likelihood")
    out[scored] = values
    return out


def patched_logodds_and_loglik(
    m1,
    m2,
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    neurons: NeuronsLike,
    *,
    token_ids: Sequence[int] | None = None,
    batch_size: BatchSize = 16,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`patched_refusal_logodds` and `patched_answer_loglik` (mean) from one teacher-forced pass over prompt +
    answer: ([n_prompts], [n_prompts]) float64. The model is causal, so the logits after the prompt's last
    token are the same whether the answer follows or not: the refusal log-odds read there equal the prompt-only
    pass's, and the pass the likelihood needs anyway gives both (an empty answer: its log-odds, NaN likelihood)."""
    from ..judges.refusal import refusal_logodds_from_logits

    prompts = _checked_sequences(prompt_ids, "prompts")
    answers = _checked_answers(answer_ids, len(prompts))
    ids = _refusal_ids(m1, token_ids)
    seqs = [p + a for p, a in zip(prompts, answers)]

    def reduce(logits: torch.Tensor, rows: list[int]) -> list[tuple[float, float]]:
        width = logits.shape[1]
        logp = torch.log_softmax(logits, dim=-1)
        after_prompt = torch.stack([logits[b, width - len(answers[row]) - 1] for b, row in enumerate(rows)])
        odds = refusal_logodds_from_logits(after_prompt, ids).double().cpu().tolist()
        values = []
        for b, row in enumerate(rows):
            a = len(answers[row])
            if a == 0:
                values.append((odds[b], math.nan))
                continue
            values.append((odds[b], float(_answer_logp(logp[b], answers[row]).mean())))
        return values

    out = patched_forward(m1, m2, seqs, neurons, keep=[len(a) + 1 for a in answers], reduce=reduce,
                          batch_size=batch_size, progress=progress, desc="patched log-odds and log-likelihood")
    return np.asarray([o for o, _ in out], dtype=np.float64), np.asarray([v for _, v in out], dtype=np.float64)


def patched_answer_margin(
    m1,
    m2,
    prompt_ids: Sequence[Sequence[int]],
    m2_answer_ids: Sequence[Sequence[int]],
    m1_answer_ids: Sequence[Sequence[int]],
    neurons: NeuronsLike,
    *,
    reduction: str = "mean",
    batch_size: BatchSize = 16,
    progress: bool = False,
) -> np.ndarray:
    """`patched_answer_loglik` of M2's answer minus that of M1's answer, per prompt ([n_prompts] float64):
    how much the patched M1 prefers M2's (safe) answer to its own. NaN where either answer is empty."""
    kw = dict(reduction=reduction, batch_size=batch_size, progress=progress)
    return (patched_answer_loglik(m1, m2, prompt_ids, m2_answer_ids, neurons, **kw)
            - patched_answer_loglik(m1, m2, prompt_ids, m1_answer_ids, neurons, **kw))


# ---------------------------------------------------------------- (c) sampled refusal


def sampled_refusal(generate: Callable[[list[list[int]], int], Sequence[Any]], prompt_ids: Sequence[Sequence[int]],
                    seeds: Sequence[int]) -> np.ndarray:
    """Per-prompt refusal share over seeded samples, [n_prompts] float64 in [0, 1].

    `generate(prompt_ids, seed)` returns one answer per prompt (a `Generation` or its text), e.g.
    `lambda ids, s: fast_patched_generate(m1, scales, ids, neurons, do_sample=True, seed=s, ...)`: the
    patched generators draw each prompt's random numbers from (seed, prompt index), so every arm sees
    the same numbers for the same prompt and seed. Each answer is judged by `refusal_judge` (phrases)."""
    from ..judges.refusal import refusal_judge

    prompts = [list(p) for p in prompt_ids]
    if not prompts:
        raise ValueError("no prompts to sample from: the prompt set is empty")
    if len(seeds) == 0:
        raise ValueError("no seeds: a refusal share needs at least one sample per prompt")
    refused = np.zeros(len(prompts))
    for seed in seeds:
        answers = list(generate(prompts, int(seed)))
        if len(answers) != len(prompts):
            raise RuntimeError(f"generate returned {len(answers)} answers for {len(prompts)} prompts (seed {seed})")
        refused += np.asarray(refusal_judge([a if isinstance(a, str) else a.text for a in answers]), dtype=np.float64)
    return refused / len(seeds)


# ---------------------------------------------------------------- the causal effect of a measure


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce([np.isfinite(a) for a in arrays])


def _as_prompts(values: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} values but M1 has {n}: every arm needs one value per prompt")
    return arr


def gap_closed(patched: ArrayLike, m1: ArrayLike, m2: ArrayLike) -> float:
    """C = (mean(patched) - mean(M1)) / (mean(M2) - mean(M1)) over per-prompt values ([n_prompts] each),
    using only the prompts finite in all three (an empty answer's NaN likelihood drops its prompt).
    0 at M1, 1 at M2; an error when mean(M2) == mean(M1) (stats.causal_effect)."""
    from .stats import causal_effect

    s1 = _as_prompts(m1, "m1")
    p, s2 = _as_prompts(patched, "patched", s1.size), _as_prompts(m2, "m2", s1.size)
    ok = _finite_rows(p, s1, s2)
    if not ok.any():
        raise ValueError("no prompt has a finite value in every arm: nothing to compare")
    return causal_effect(p[ok].mean(), s1[ok].mean(), s2[ok].mean())


def measure_effect(
    patched: ArrayLike,
    m1: ArrayLike,
    m2: ArrayLike,
    random: Sequence[ArrayLike] = (),
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """C of one measure for a neuron set, its bootstrap interval over prompts and the paired test against
    random neurons; [n_prompts] per-prompt values in every arm.

    `random` holds the random-neuron arms (one array per draw; layer-matched, several seeds): per
    prompt they are averaged over draws, as stage 03 does, before the effect and the test. Prompts not
    finite in every arm are left out (`n_prompts` counts those kept). Returns plain floats:
    {"C", "lo", "hi", "n_prompts", "n_dropped"} and, with random arms, "random": {"C", "lo", "hi"} and
    "pvalue" (two-sided paired sign-flip test of patched vs random, stats.paired_test).
    """
    from .stats import bootstrap_causal_effect, paired_test

    s1 = _as_prompts(m1, "m1")
    p, s2 = _as_prompts(patched, "patched", s1.size), _as_prompts(m2, "m2", s1.size)
    draws = [_as_prompts(r, f"random[{i}]", s1.size) for i, r in enumerate(random)]
    rand = np.mean(draws, axis=0) if draws else None
    ok = _finite_rows(p, s1, s2, *([rand] if rand is not None else []))
    if not ok.any():
        raise ValueError("no prompt has a finite value in every arm: nothing to compare")
    c, lo, hi = bootstrap_causal_effect(p[ok], s1[ok], s2[ok], n_boot=n_boot, seed=seed, alpha=alpha)
    out: dict[str, Any] = {"C": c, "lo": lo, "hi": hi, "n_prompts": int(ok.sum()), "n_dropped": int((~ok).sum())}
    if rand is not None:
        rc, rlo, rhi = bootstrap_causal_effect(rand[ok], s1[ok], s2[ok], n_boot=n_boot, seed=seed, alpha=alpha)
        out["random"] = {"C": rc, "lo": rlo, "hi": rhi}
        out["pvalue"] = paired_test(p[ok], rand[ok], seed=seed)
    return out
