"""Perplexity on the same text tokens with and without the BOS token at position 0 (issue 21).

For each model: the tokenizer's BOS token and what its tokenizer reports for `add_bos_token`, whether its chat
template writes BOS, and the perplexity over the evaluation split of the text corpus (the paragraphs the study
scores perplexity on), each cut to `--tokens` text tokens. Both figures score exactly the same targets (text
tokens 1..n-1); with BOS the model also sees BOS before token 0.

    python benchmarks/bos_perplexity.py [--models smollm2-135m-instruct gemma3-270m] [--texts 24] [--tokens 128]
"""
from __future__ import annotations

import argparse
import math

import torch


@torch.no_grad()
def nll_sum(model, ids: list[int], offset: int) -> tuple[float, int]:
    """Summed NLL of ids[offset + 1:] given the tokens before each (offset = 1 skips a leading BOS's target)."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
    targets = x[0, 1:]
    nll = -logp.gather(-1, targets[:, None])[:, 0]
    return float(nll[offset:].sum()), int(nll[offset:].numel())


def measure(name: str, texts: list[str], n_tokens: int) -> dict:
    from safety_neurons.lm.chat import format_prompt
    from safety_neurons.lm.models import load_hf_model

    model, tokenizer = load_hf_model(name)
    bos = tokenizer.bos_token_id
    plain = [0.0, 0]
    with_bos = [0.0, 0]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
        if len(ids) < 2:
            continue
        for total, (seq, offset) in ((plain, (ids, 0)), (with_bos, ([bos, *ids], 1))):
            s, n = nll_sum(model, seq, offset)
            total[0] += s
            total[1] += n
    chat = format_prompt(tokenizer, "hi") if getattr(tokenizer, "chat_template", None) else None
    return {"model": name, "bos_token": tokenizer.bos_token, "add_bos_token": getattr(tokenizer, "add_bos_token", None),
            "chat_template_starts_with_bos": None if chat is None else chat.startswith(tokenizer.bos_token or "\0"),
            "scored_tokens": plain[1], "ppl_without_bos": math.exp(plain[0] / plain[1]),
            "ppl_with_bos": math.exp(with_bos[0] / with_bos[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--texts", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    from safety_neurons.config import load_config
    from safety_neurons.study.prompts import text_corpus

    texts = text_corpus(load_config("default", {"ppl_texts": args.texts}))
    print(f"{len(texts)} paragraphs of the default text corpus, {args.tokens} text tokens each at most")
    for name in args.models:
        r = measure(name, texts, args.tokens)
        print(f"{r['model']}: bos {r['bos_token']!r}, add_bos_token {r['add_bos_token']}, chat template writes BOS: "
              f"{r['chat_template_starts_with_bos']}; perplexity over {r['scored_tokens']} tokens: "
              f"{r['ppl_without_bos']:.2f} without BOS, {r['ppl_with_bos']:.2f} with")


if __name__ == "__main__":
    main()
