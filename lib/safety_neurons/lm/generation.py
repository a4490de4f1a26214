"""Batched greedy generation that keeps token ids (later stages teacher-force on the same ids).

Prompts are sorted by length and batched with left padding, so each batch pads little; results come
back in the caller's order. Generation runs Hugging Face's `generate` on the bridged model: the
bridge wraps the HF modules in place, so TransformerLens hooks fire on every step (prefill sees all
prompt positions, later steps one position with the KV cache).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .memory import BatchSize, explained_oom, fitted_rows
from .sharding import length_batches


@dataclass(frozen=True)
class Generation:
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including the first EOS, if one came
    text: str  # the completion, special tokens removed
    stopped: bool  # True if an EOS ended it, False if max_new_tokens did


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS plus the generation config's."""
    ids: list[int] = []
    gen_cfg = getattr(model, "generation_config", None)
    for value in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.extend([value] if isinstance(value, int) else list(value))
    if not ids:
        raise ValueError("the tokenizer and model define no EOS token: cannot tell where an answer ends")
    return sorted(set(ids))


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS (padding is always masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def hf_and_device(bridge):
    """The Hugging Face model a bridge wraps (its modules carry the hooks) and the device it is on."""
    hf = bridge.original_model
    return hf, next(hf.parameters()).device


def checked_prompt_ids(prompt_ids, what: str = "prompts") -> list[list[int]]:
    """The prompts as lists of ints; an empty set, or a prompt without tokens, is an error naming `what`."""
    if len(prompt_ids) == 0:
        raise ValueError(f"no {what}: the prompt set is empty")
    rows = [[int(t) for t in row] for row in prompt_ids]
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {i} of the {what} has no tokens")
    return rows


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), left-padded to the longest row."""
    width = max(len(row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        if len(row) == 0:
            raise ValueError(f"prompt {i} of the batch has no tokens")
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def right_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest row: positions stay those of the unpadded text."""
    width = max(len(row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only (left padding does not shift them), as HF generate does."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def encode_texts(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Plain text (no template) as ids, BOS first where the tokenizer has one (see `chat`), each cut to
    max_tokens in all; texts of fewer than 2 tokens are dropped (they have no next token to predict)."""
    from .chat import ids_with_bos

    encoded = (ids_with_bos(tokenizer, tokenizer(t, add_special_tokens=False)["input_ids"])[:max_tokens] for t in texts)
    return [e for e in encoded if len(e) >= 2]


def truncate_at_eos(ids: list[int], eos_ids: list[int]) -> tuple[list[int], bool]:
    for pos, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[: pos + 1], True
    return ids, False


@torch.no_grad()
def greedy_generate(
    bridge,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: BatchSize = 16,
    progress: bool = True,
    desc: str = "generate",
    stop_when: Callable[[str], bool] | None = None,
) -> list[Generation]:
    """Greedy answers for already-encoded prompts, batched with left padding and per-row EOS.

    `stop_when(text)` ends a row as soon as it holds for the answer so far (that token kept, nothing
    after it), as the patched generators' option of the same name does; a batch ends once every row has."""
    if len(prompt_ids) == 0:
        raise ValueError("no prompts to generate from: the prompt set is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    hf, device = hf_and_device(bridge)
    lengths = [len(p) for p in prompt_ids]
    rows_per_batch = fitted_rows(batch_size, hf, lengths, extra_tokens=max_new_tokens, generation=True)
    tokenizer = bridge.tokenizer
    eos_ids = eos_token_ids(hf, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    results: list[Generation | None] = [None] * len(prompt_ids)
    bar = tqdm(total=len(prompt_ids), desc=desc, unit="prompt", disable=not progress)
    with explained_oom(batch_size, rows_per_batch, max(lengths) + max_new_tokens):
        for rows in length_batches(lengths, rows_per_batch):
            ids, mask = left_pad([prompt_ids[i] for i in rows], pad_id)
            stopper = None if stop_when is None else _TextStop(tokenizer, stop_when, ids.shape[1], eos_ids)
            out = hf.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
                # Greedy decoding must not inherit sampling knobs from the checkpoint's generation config.
                temperature=None,
                top_p=None,
                top_k=None,
                **({} if stopper is None else {"stopping_criteria": [stopper]}),
            )
            new = out[:, ids.shape[1] :].tolist()
            for b, (row, completion) in enumerate(zip(rows, new)):
                cut = None if stopper is None or stopper.kept is None else stopper.kept[b]
                kept, stopped = truncate_at_eos(completion[:cut], eos_ids)
                text = tokenizer.decode(kept, skip_special_tokens=True)
                results[row] = Generation(list(prompt_ids[row]), kept, text, stopped or cut is not None)
            bar.update(len(rows))
    bar.close()
    return results  # type: ignore[return-value]


class _TextStop:
    """A per-row stopping criterion for HF generate: a row is done once `stop_when` holds for its decoded
    answer; `kept[b]` is then how many new tokens it keeps (None: it was not stopped this way)."""

    def __init__(self, tokenizer, stop_when: Callable[[str], bool], prompt_width: int, eos_ids: list[int]):
        self.tokenizer, self.stop_when, self.prompt_width, self.eos_ids = tokenizer, stop_when, prompt_width, eos_ids
        self.kept: list[int | None] | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.prompt_width :].tolist()
        if self.kept is None:
            self.kept = [None] * len(new)
        done = []
        for b, row in enumerate(new):
            if self.kept[b] is None and not any(t in self.eos_ids for t in row):
                if self.stop_when(self.tokenizer.decode(row, skip_special_tokens=True)):
                    self.kept[b] = len(row)
            done.append(self.kept[b] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def answer_prompts(bridge, prompts: list[str], *, template: str = "auto", max_new_tokens: int, batch_size: BatchSize = 16,
                   progress: bool = True, desc: str = "generate") -> list[Generation]:
    """Format prompts with the chat template, encode them and generate greedy answers."""
    from .chat import encode_prompts

    ids = encode_prompts(bridge.tokenizer, prompts, template)
    return greedy_generate(bridge, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, desc=desc)
