"""Which prompts each part of the study uses: deterministic selections from the registry's splits."""
from __future__ import annotations

from ..config import RunConfig
from ..data.registry import load_split


def round_robin(lists: list[list[str]], n: int) -> list[str]:
    """Up to n items taking one from each list in turn, so every set is represented."""
    out: list[str] = []
    for i in range(max((len(x) for x in lists), default=0)):
        for lst in lists:
            if i < len(lst) and len(out) < n:
                out.append(lst[i])
    return out


def alignment_prompts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Harmful prompts (from the training sets' alignment splits) and benign ones for the preference set."""
    harmful = round_robin([load_split(cfg, s, "alignment") for s in cfg.train_harmful_sets], cfg.align_harmful)
    benign = round_robin([load_split(cfg, s, "alignment") for s in cfg.benign_sets], cfg.align_benign) if cfg.align_benign else []
    return harmful, benign


def evaluation_prompts(cfg: RunConfig) -> dict[str, list[str]]:
    """Held-out prompts: the first harmful set's evaluation split, and the benign sets' (pooled)."""
    n = cfg.eval_prompts
    harmful = load_split(cfg, cfg.harmful_sets[0], "evaluation")[:n]
    benign = round_robin([load_split(cfg, s, "evaluation") for s in cfg.benign_sets], n or 10**9)
    return {cfg.harmful_sets[0]: harmful, "benign": benign}


def text_corpus(cfg: RunConfig) -> list[str]:
    """Held-out paragraphs of the general text corpus, for perplexity."""
    return load_split(cfg, cfg.text_corpus, "evaluation")[: cfg.ppl_texts]


def finding_prompts(cfg: RunConfig) -> list[str]:
    """Harmful prompts of the neuron-finding splits, taken in turn from every harmful set."""
    return round_robin([load_split(cfg, s, "finding") for s in cfg.harmful_sets], cfg.finding_prompts or 10**9)


def benign_finding_prompts(cfg: RunConfig) -> list[str]:
    """Benign prompts of the neuron-finding splits (the mean-difference baseline's contrast set)."""
    return round_robin([load_split(cfg, s, "finding") for s in cfg.benign_sets], cfg.finding_prompts or 10**9)


def held_out_prompts(cfg: RunConfig, name: str) -> list[str]:
    """The evaluation split of one prompt set, as many prompts as the patching stages use."""
    return load_split(cfg, name, "evaluation")[: cfg.patch_prompts or None]


def patch_prompts(cfg: RunConfig) -> list[str]:
    """Held-out harmful prompts: the first harmful set's evaluation split."""
    return held_out_prompts(cfg, cfg.harmful_sets[0])
