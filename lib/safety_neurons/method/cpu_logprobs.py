"""A dense per-token log-probability head for trl's trainers on the CPU.

trl 1.16 computes the training log-probabilities through a "fused LM head" that never materialises the
(tokens x vocabulary) logits: memory-lean on a GPU, where a Triton kernel folds each tile and only the
positions with a label are scored. Without Triton (the CPU) it folds each tile with half a dozen torch
passes and scores *every* position, prompt and padding included. On SmolLM2 (49,152-token vocabulary,
2-core CPU) that head was about 40% of a DPO step (`benchmarks/dpo_step.py`).

`dense_cpu_logprobs()` swaps in, for the duration of a training run, a head with the same contract that
scores only the labelled positions and lets autograd do the backward on the materialised logits: the same
numbers (float32 log-softmax), a fraction of the work. The logits of a CPU batch are small (1,300 scored
tokens x 49,152 x 4 bytes = 256 MB); on a GPU trl's own kernel is kept.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

# What trl's fused head reads from its kernel module; a trl without them is not the one this was written for.
_TRL_NAMES = ("_ChunkedLogProbFunction", "_use_triton")


def dense_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    outputs: tuple[str, ...] = ("log_probs",),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1) of `hidden @ weight.T` at `targets`,
    as trl's ChunkedLogProbFunction returns them (fields not in `outputs` are None; log_probs and entropy
    carry gradients, the other three do not). `chunk_size` is accepted for the same signature and unused."""
    del chunk_size
    logits = F.linear(hidden, weight, bias).float() * logit_scale
    if final_logit_softcapping is not None:
        logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
    logits = logits / temperature
    log_p = logits.log_softmax(-1)
    log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():
        log_sum_sq_probs = torch.logsumexp(2 * log_p, -1) if "log_sum_sq_probs" in outputs else None
        mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
        # argmax takes the first maximum, as trl's kernel does: a tie with an earlier token is not top-1.
        is_top1 = logits.argmax(-1) == targets if "is_top1" in outputs else None
    return log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1


class _DenseLogProbFunction:
    """Stands in for trl's autograd Function: its fused head calls `.apply(...)`."""

    apply = staticmethod(dense_logprobs)


@contextlib.contextmanager
def dense_cpu_logprobs(device: torch.device) -> Iterator[None]:
    """Within the block, trl's fused LM head scores only labelled positions with `dense_logprobs` when
    training on the CPU; on any other device nothing changes."""
    if device.type != "cpu":
        yield
        return
    import trl.trainer.utils as trl_utils

    missing = [name for name in _TRL_NAMES if not hasattr(trl_utils, name)]
    if missing:
        raise RuntimeError(f"trl.trainer.utils lacks {', '.join(missing)}: this trl is not the pinned trl==1.16.0 "
                           "(see requirements.txt); install the pinned version")
    saved = {name: getattr(trl_utils, name) for name in _TRL_NAMES}
    # `_use_triton` decides only whether the head compacts to labelled positions before calling the kernel.
    trl_utils._ChunkedLogProbFunction = _DenseLogProbFunction
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trl_utils, name, value)
