"""Batch sizes chosen from free accelerator memory (`batch_size="auto"`).

An integer batch size is used as given, on every device. `"auto"` means:
- on CUDA, as many rows as fit in the free memory of the model's GPU at the moment of the call
  (`torch.cuda.mem_get_info`, `AUTO_MEMORY_FRACTION` of it), by an upper-bound estimate of what one row
  of the longest prompt costs (`row_bytes`), capped at `AUTO_MAX_ROWS` and at the rows there are;
- elsewhere (CPU, MPS), `CPU_ROWS`: a CPU decode step is bound by reading the weights, so its best
  batch does not depend on free memory (see the `default` profile's note in config.py).

The estimate reads the architecture from the Hugging Face config, so a 7B model on an 80 GB GPU and the
embedded 135M model on a laptop both get a batch that fits, without a per-model table. It is
deliberately pessimistic (every layer's KV cache, fp32 logits at every position a pass scores, eager
attention scores and one fp32 MLP capture per layer held at once), because an out-of-memory error in the middle of a sweep
costs more than a batch a little smaller than it could be. When CUDA does run out of memory anyway,
`explained_oom` turns the error into one that names the batch and the fix.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Literal, Union

import torch

from .sharding import forward_batches

BatchSize = Union[int, Literal["auto"]]

CPU_ROWS = 32
AUTO_MEMORY_FRACTION = 0.8  # of the memory CUDA reports free: the allocator fragments, kernels need workspace
AUTO_MAX_ROWS = 512  # past this a GPU is compute-bound on these models; wider batches only pad more

_FIELDS = {  # what the estimate needs, and the names Hugging Face configs give it
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads"),
    "d_mlp": ("intermediate_size", "n_inner", "ffn_dim"),
    "d_vocab": ("vocab_size",),
}


def check_batch_size(batch_size: BatchSize, name: str = "batch_size") -> BatchSize:
    """`batch_size` if it is a positive integer or "auto"; otherwise an error naming both forms."""
    if batch_size == "auto" or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        return batch_size
    raise ValueError(f"{name} must be a positive integer or 'auto' (chosen from free GPU memory), got {batch_size!r}")


def architecture(hf_config) -> dict[str, int]:
    """The sizes `row_bytes` needs, read from a Hugging Face config (text config of a multimodal one)."""
    cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    sizes: dict[str, int] = {}
    for key, names in _FIELDS.items():
        value = next((getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None), None)
        if value is None and key == "d_mlp" and "d_model" in sizes:
            value = 4 * sizes["d_model"]  # GPT-2 style configs leave n_inner unset: 4 x d_model
        if value is None:
            raise ValueError(f"batch_size='auto' cannot size batches for {type(cfg).__name__}: its config has none of "
                             f"{', '.join(names)}; set batch_size to an integer")
        sizes[key] = int(value)
    head_dim = getattr(cfg, "head_dim", None) or sizes["d_model"] // sizes["n_heads"]
    sizes["d_head"] = int(head_dim)
    sizes["n_kv_heads"] = int(getattr(cfg, "num_key_value_heads", None) or sizes["n_heads"])
    return sizes


def row_bytes(sizes: dict[str, int], tokens: int, element_bytes: int, *, generation: bool = False) -> int:
    """An upper bound on the memory one row of `tokens` tokens (prompt and answer) takes beyond the weights,
    in a teacher-forced pass with per-layer MLP captures (logits at every position) or in `generation`
    (logits at the last position only: HF generate's logits_to_keep=1, the patched generators' own head)."""
    per_token = (
        2 * sizes["n_layers"] * sizes["n_kv_heads"] * sizes["d_head"] * element_bytes  # KV cache, every layer
        + sizes["n_layers"] * sizes["d_mlp"] * 4  # one fp32 MLP activation per layer kept by a hook
        + (6 * sizes["d_model"] + 3 * sizes["d_mlp"]) * element_bytes  # one layer's activations in flight
    )
    logits = (1 if generation else tokens) * 3 * sizes["d_vocab"] * 4  # fp32 logits, log-softmax, a temporary
    attention = 2 * sizes["n_heads"] * tokens * tokens * 4  # eager scores and their softmax, fp32, one layer
    return tokens * per_token + logits + attention


def fitted_rows(batch_size: BatchSize, model, lengths: Sequence[int], *, extra_tokens: int = 0,
                rows_per_prompt: int = 1, generation: bool = False) -> int:
    """The prompts per batch: `batch_size` if it is an integer; for "auto", as many prompts as fit.

    `model` is a TransformerBridge or a Hugging Face model; `lengths` are the prompts' token counts, of
    which the longest is sized for, plus `extra_tokens` generated; `rows_per_prompt` is how many rows one
    prompt occupies (2 for the patched fast path, which runs M1 and M2 rows side by side); `generation`
    says only the last position's logits are computed (row_bytes)."""
    check_batch_size(batch_size)
    if batch_size != "auto":
        return int(batch_size)
    if not lengths:
        raise ValueError("no prompts to size a batch for: the prompt set is empty")
    hf = getattr(model, "original_model", model)
    param = next(hf.parameters())
    if param.device.type != "cuda":
        return CPU_ROWS
    free, _total = torch.cuda.mem_get_info(param.device)
    return rows_that_fit(free, architecture(hf.config), max(lengths) + extra_tokens, param.element_size(),
                         rows_per_prompt=rows_per_prompt, n_prompts=len(lengths), where=str(param.device),
                         generation=generation)


def fitted_forward_batches(batch_size: BatchSize, model, lengths: Sequence[int]) -> list[list[int]]:
    """sharding.forward_batches of rows with these token counts, `batch_size` sized for `model` if "auto":
    the batches of every single forward pass (teacher forcing, captures, judges)."""
    return forward_batches(lengths, fitted_rows(batch_size, model, lengths))


def rows_that_fit(free_bytes: int, sizes: dict[str, int], tokens: int, element_bytes: int, *, rows_per_prompt: int = 1,
                  n_prompts: int = AUTO_MAX_ROWS, where: str = "the GPU", generation: bool = False) -> int:
    """How many prompts of `tokens` tokens fit in `AUTO_MEMORY_FRACTION` of `free_bytes` (at least 1, at
    most AUTO_MAX_ROWS and n_prompts); an error if not even one does."""
    per_prompt = rows_per_prompt * row_bytes(sizes, tokens, element_bytes, generation=generation)
    rows = int(free_bytes * AUTO_MEMORY_FRACTION) // per_prompt
    if rows < 1:
        raise RuntimeError(f"one prompt of {tokens} tokens needs about {per_prompt / 2**30:.2f} GiB and {where} has "
                           f"{free_bytes / 2**30:.2f} GiB free: shorten the prompts or answers (max_new_tokens, "
                           "eval_tokens) or use a GPU with more memory")
    return min(rows, AUTO_MAX_ROWS, n_prompts)


@contextmanager
def explained_oom(batch_size: BatchSize, rows: int, tokens: int):
    """Around a loop over batches of `rows` prompts of up to `tokens` tokens: CUDA running out of memory
    becomes an error that names the batch and the fix (the bare one names only the bytes)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        fix = (f"the estimate behind batch_size='auto' was too optimistic here: set batch_size to an integer below {rows}"
               if batch_size == "auto" else f"set batch_size below {rows}, or to 'auto' to size it from free GPU memory")
        raise RuntimeError(f"CUDA ran out of memory on a batch of {rows} prompts of up to {tokens} tokens: {fix}") from error
