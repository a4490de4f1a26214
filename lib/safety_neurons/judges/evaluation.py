"""Evaluation shared by the stages: refusal on prompt sets and perplexity on general text."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..lm.generation import Generation, answer_prompts, encode_texts, hf_and_device, pad_token_id, right_pad
from ..lm.memory import BatchSize, fitted_rows
from .refusal import refusal_judge, refusal_logodds


@dataclass(frozen=True)
class RefusalEval:
    prompts: list[str]
    answers: list[Generation]
    refused: list[bool]  # phrase judge
    logodds: list[float]  # model-based judge

    @property
    def rate(self) -> float:
        return sum(self.refused) / len(self.refused)

    @property
    def mean_logodds(self) -> float:
        return sum(self.logodds) / len(self.logodds)


def evaluate_refusal(bridge, prompts: list[str], *, template: str, max_new_tokens: int, batch_size: BatchSize,
                     progress: bool = True, desc: str = "evaluate") -> RefusalEval:
    """Greedy answers judged by the phrase judge, plus the model's refusal log-odds."""
    answers = answer_prompts(bridge, prompts, template=template, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, progress=progress, desc=desc)
    logodds = refusal_logodds(bridge, [a.prompt_ids for a in answers], batch_size=batch_size)
    return RefusalEval(prompts, answers, refusal_judge([a.text for a in answers]), logodds)


def answer_format(answers: list[Generation], markers: tuple[str, ...]) -> dict[str, float]:
    """Does a model answer like an assistant or continue the document? `stopped`: the share of answers that
    end with EOS within the length limit; `new_turn`: the share that write a new turn of the template (any of
    `markers`, chat.turn_markers). An instruction-tuned model is near 1 and 0; a base model usually is not."""
    if not answers:
        raise ValueError("no answers to judge the format of")
    return {"stopped": sum(a.stopped for a in answers) / len(answers),
            "new_turn": sum(any(m in a.text for m in markers) for a in answers) / len(answers)}


@torch.no_grad()
def perplexity(bridge, texts: list[str], *, batch_size: BatchSize = 8, max_tokens: int = 256, progress: bool = True,
               forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float:
    """exp(mean next-token NLL) over all tokens of `texts` (each truncated to `max_tokens`).
    `forward(ids, mask) -> logits` replaces the bridge's own forward (e.g. a patched one)."""
    if not texts:
        raise ValueError("no text to compute perplexity on")
    tokenizer = bridge.tokenizer
    hf, device = hf_and_device(bridge)
    pad_id = pad_token_id(tokenizer)
    encoded = encode_texts(tokenizer, texts, max_tokens)
    # a replaced forward is a patched one, which runs M2's rows beside M1's
    batch_size = fitted_rows(batch_size, hf, [len(e) for e in encoded], rows_per_prompt=1 if forward is None else 2)
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(encoded), batch_size), desc="perplexity", disable=not progress):
        ids, mask = right_pad(encoded[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = (forward(ids, mask) if forward is not None else hf(input_ids=ids, attention_mask=mask).logits).float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:]
        nll = -logp.gather(-1, target[..., None])[..., 0]
        keep = mask[:, 1:].bool()
        total_nll += nll[keep].sum().item()
        total_tokens += int(keep.sum())
    return math.exp(total_nll / total_tokens)
