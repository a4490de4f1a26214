"""Stage 01 (alignment): from a config to M1, the preference sets, the trained M2 adapters and
their evaluation. Each function is one step the notebook shows; each caches its artifact under
runs/<name>/artifacts/01_alignment/ so a re-run (or a killed run) redoes nothing finished.

Later stages get their models from here: `m1_name(cfg)` and `m2_adapter(cfg, objective, seed)`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .alignment import TrainResult, TrainSettings, adapter_done, save_merged_model, train_dpo, train_sft
from .config import RunConfig
from .data import load_split
from .io import content_key, read_json, write_json_atomic
from .preferences import Preference, extraction_pairs, harmless_pairs, helpful_pairs, reasoning_pairs
from .sharding import done_by_main

STAGE = "01_alignment"


def stage_dir(cfg: RunConfig) -> Path:
    return cfg.artifact_dir(STAGE)


# ---------------------------------------------------------------- M1


def m1_name(cfg: RunConfig) -> str:
    """The unaligned model M1: the configured model, or its SFT'd checkpoint when the profile has SFT."""
    if cfg.sft_dataset is None:
        return cfg.model
    path = m1_sft_dir(cfg)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"M1 (the SFT checkpoint) is missing at {path}: run notebook 01_alignment first")
    return str(path)


def m1_sft_dir(cfg: RunConfig) -> Path:
    return stage_dir(cfg) / "sft" / "m1_merged"


def run_sft(cfg: RunConfig, *, conversations_path: str | None = None, progress: bool = True) -> str | None:
    """SFT the base on the profile's SFT data and save the folded result as M1; None when skipped."""
    if cfg.sft_dataset is None:
        return None
    from .hub_data import load_hub_conversations

    out = stage_dir(cfg) / "sft"
    if not adapter_done(out):
        conversations = load_hub_conversations(cfg.sft_dataset, path=conversations_path, limit=cfg.sft_examples)
        train_sft(cfg.model, conversations, out, template=cfg.chat_template, settings=dpo_settings(cfg, cfg.seed),
                  device=cfg.device, progress=progress)
    # Inside the SFT folder: retraining SFT (another config) removes the merged M1 with it.
    done_by_main(lambda: save_merged_model(cfg.model, out / "adapter", m1_sft_dir(cfg)))
    return str(m1_sft_dir(cfg))


# ---------------------------------------------------------------- preference data


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


def cached_answers(cfg: RunConfig, m1, prompts: list[str], *, name: str, progress: bool = True) -> list[str]:
    """M1's greedy answers to `prompts`, cached by the prompts, model and length."""
    from .generation import answer_prompts

    if not prompts:
        return []
    key = hashlib.sha256(json.dumps([cfg.model, cfg.chat_template, cfg.answer_tokens, prompts]).encode()).hexdigest()[:16]
    path = stage_dir(cfg) / "m1_answers" / f"{name}-{key}.json"
    if path.exists():
        return read_json(path)
    answers = [g.text for g in answer_prompts(m1, prompts, template=cfg.chat_template, max_new_tokens=cfg.answer_tokens,
                                               batch_size=cfg.batch_size, progress=progress, desc=f"M1 answers ({name})")]
    write_json_atomic(path, answers)
    return answers


def preference_pairs(cfg: RunConfig, objective: str, m1, *, progress: bool = True) -> list[Preference]:
    """The preference set of one objective, built once and saved as JSON beside the adapters
    (the file name carries a key of everything the set is made from, so a changed config rebuilds it)."""
    harmful, benign = alignment_prompts(cfg)
    source = cfg.helpful_dataset if objective == "helpful" else cfg.dpo_dataset  # a built-in name or a hub set
    key = content_key(objective, harmful, benign, cfg.model, cfg.chat_template, cfg.answer_tokens, cfg.seed,
                      source, cfg.align_harmful)
    path = stage_dir(cfg) / "preferences" / f"{objective}-{key}.json"
    if path.exists():
        return [Preference(**r) for r in read_json(path)]
    if objective in ("harmless", "helpful") and source != objective:
        from .hub_data import load_hub_preferences

        pairs = [Preference(p.prompt, p.chosen, p.rejected, source)
                 for p in load_hub_preferences(source, limit=cfg.align_harmful)]
    elif objective == "harmless":
        pairs = harmless_pairs(harmful, cached_answers(cfg, m1, harmful, name="harmful", progress=progress),
                               benign, cached_answers(cfg, m1, benign, name="benign", progress=progress), seed=cfg.seed)
    elif objective == "helpful":
        if not benign:
            raise ValueError("the helpful objective needs benign prompts: set align_benign > 0")
        pairs = helpful_pairs(benign, cached_answers(cfg, m1, benign, name="benign", progress=progress), seed=cfg.seed)
    elif objective == "reasoning":
        pairs = reasoning_pairs(synthetic_pairs(cfg), seed=cfg.seed)
    elif objective == "extraction":
        pairs = extraction_pairs(synthetic_pairs(cfg), seed=cfg.seed)
    else:
        raise ValueError(f"unknown objective {objective!r}; use harmless, helpful, reasoning or extraction")
    write_json_atomic(path, [asdict(p) for p in pairs])
    return pairs


def synthetic_pairs(cfg: RunConfig) -> int:
    """Size of the generated reasoning and extraction sets: half the harmless set (they are
    templated, so fewer pairs teach them; the CPU budget goes to the harmless seeds)."""
    return max(1, (cfg.align_harmful + cfg.align_benign) // 2)


# ---------------------------------------------------------------- training


def dpo_settings(cfg: RunConfig, seed: int) -> TrainSettings:
    return TrainSettings(learning_rate=cfg.dpo_learning_rate, epochs=cfg.dpo_epochs, batch_size=cfg.dpo_batch_size,
                         beta=cfg.dpo_beta, sft_weight=cfg.dpo_sft_weight, retain_weight=cfg.dpo_retain_weight,
                         adam_epsilon=cfg.dpo_adam_epsilon, seed=seed)


def retain_texts(cfg: RunConfig) -> list[str]:
    """General text M2 is kept close to M1 on (the text corpus's alignment split; perplexity is
    measured on its evaluation split); empty when the profile has no retain term."""
    return load_split(cfg, cfg.text_corpus, "alignment") if cfg.dpo_retain_weight > 0 else []


def training_runs(cfg: RunConfig) -> list[tuple[str, int]]:
    """(objective, seed) of every M2: the harmless objective at every training seed, the others at the first."""
    first = cfg.train_seeds[0]
    return [("harmless", s) for s in cfg.train_seeds] + [(o, first) for o in cfg.objectives if o != "harmless"]


def run_dir_of(cfg: RunConfig, objective: str, seed: int) -> Path:
    return stage_dir(cfg) / objective / f"seed{seed}"


def train_m2(cfg: RunConfig, objective: str, seed: int, pairs: list[Preference], *, progress: bool = True) -> TrainResult:
    return train_dpo(m1_name(cfg), pairs, run_dir_of(cfg, objective, seed), template=cfg.chat_template,
                     settings=dpo_settings(cfg, seed), retain_texts=retain_texts(cfg),
                     reference_dir=stage_dir(cfg) / objective / "reference", device=cfg.device, progress=progress)


def train_all(cfg: RunConfig, runs: list[tuple[str, int]] | None = None, *, progress: bool = True) -> dict[tuple[str, int], TrainResult]:
    """Stage 01's training outside the notebook: SFT when the profile has it, then every M2 of `runs`
    (default: `training_runs(cfg)`). Under `accelerate launch` or `torchrun` every process trains the same
    model on its share of each batch; the main process builds the preference sets (generating M1's
    answers where a set needs them) and writes. The notebook then finds the adapters done."""
    runs = training_runs(cfg) if runs is None else runs
    unknown = sorted(set(runs) - set(training_runs(cfg)))
    if unknown:
        raise ValueError(f"{unknown} are not among this profile's training runs {training_runs(cfg)}")
    run_sft(cfg, progress=progress)
    objectives = list(dict.fromkeys(objective for objective, _ in runs))

    def build_preferences() -> None:
        needs_m1 = (cfg.dpo_dataset == "harmless" and "harmless" in objectives) or (
            cfg.helpful_dataset == "helpful" and "helpful" in objectives)
        m1 = _load_m1(cfg) if needs_m1 else None
        for objective in objectives:
            preference_pairs(cfg, objective, m1, progress=progress)

    done_by_main(build_preferences)
    pairs = {objective: preference_pairs(cfg, objective, None, progress=progress) for objective in objectives}
    return {(objective, seed): train_m2(cfg, objective, seed, pairs[objective], progress=progress) for objective, seed in runs}


def _load_m1(cfg: RunConfig):
    from .models import load_model

    return load_model(m1_name(cfg), device=cfg.device, dtype=cfg.dtype)


def m2_adapter(cfg: RunConfig, objective: str = "harmless", seed: int | None = None) -> Path:
    """The adapter of one M2 (default: the first harmless seed, "M2" of every later stage)."""
    seed = cfg.train_seeds[0] if seed is None else seed
    out = run_dir_of(cfg, objective, seed)
    if not adapter_done(out):
        raise FileNotFoundError(f"no trained adapter for objective {objective!r}, seed {seed} at {out}: run notebook 01_alignment first")
    return out / "adapter"


# ---------------------------------------------------------------- evaluation


def evaluation_prompts(cfg: RunConfig) -> dict[str, list[str]]:
    """Held-out prompts: the first harmful set's evaluation split, and the benign sets' (pooled)."""
    n = cfg.eval_prompts
    harmful = load_split(cfg, cfg.harmful_sets[0], "evaluation")[:n]
    benign = round_robin([load_split(cfg, s, "evaluation") for s in cfg.benign_sets], n or 10**9)
    return {cfg.harmful_sets[0]: harmful, "benign": benign}


def text_corpus(cfg: RunConfig) -> list[str]:
    """Held-out paragraphs of the general text corpus, for perplexity."""
    return load_split(cfg, cfg.text_corpus, "evaluation")[: cfg.ppl_texts]


def model_name(objective: str, seed: int) -> str:
    return f"{objective}/seed{seed}"


def alignment_metrics(cfg: RunConfig, results: dict, evals: dict, ppl: dict, *, judge_auroc: float,
                      n_pairs: int, seconds: float) -> dict:
    """Metrics of stage 01. Unprefixed keys: M1 and M2 (the harmless model at the first seed);
    `seed<s>.` the other harmless seeds; `objective.<name>.` the other objectives."""
    sets = sorted({s for _, s in evals})

    def of(name: str, role: str) -> dict:
        return {"refusal": {role: {s: evals[(name, s)].rate for s in sets}},
                "logodds": {role: {s: evals[(name, s)].mean_logodds for s in sets}},
                "ppl": {role: ppl[name]}}

    def train(r: TrainResult) -> dict:
        return {"train": {"seconds": r.seconds, "step_seconds": r.step_seconds, "steps": r.steps}}

    first = cfg.train_seeds[0]
    m2 = model_name("harmless", first)
    metrics = _merge(of("m1", "m1"), of(m2, "m2"), train(results[("harmless", first)]))
    metrics |= {"judge": {"logodds_auroc": judge_auroc}, "n_pairs": n_pairs, "seconds": seconds}
    for (objective, seed), r in results.items():
        if (objective, seed) == ("harmless", first):
            continue
        entry = _merge(of(model_name(objective, seed), "m2"), train(r))
        if objective == "harmless":
            metrics[f"seed{seed}"] = entry
        else:
            metrics.setdefault("objective", {})[objective] = entry
    return metrics


def _merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def evaluate_model(cfg: RunConfig, name: str, adapter: Path | None, sets: dict[str, list[str]], corpus: list[str], *,
                   progress: bool = True):
    """Refusal on every evaluation set and perplexity on the corpus for M1 (adapter None) or one M2,
    cached under a key of the model, the prompts and the settings (a resumed stage does not redo it).
    Returns ({set: RefusalEval}, perplexity)."""
    from .evaluation import RefusalEval, evaluate_refusal, perplexity
    from .generation import Generation
    from .models import adapter_digest

    key = content_key(m1_name(cfg), adapter_digest(adapter), sets, corpus, cfg.chat_template, cfg.eval_tokens)
    path = stage_dir(cfg) / "evaluations" / f"{name.replace('/', '-')}.json"
    if path.exists() and (saved := read_json(path))["key"] == key:
        evals = {s: RefusalEval(e["prompts"], [Generation(**g) for g in e["answers"]], e["refused"], e["logodds"])
                 for s, e in saved["evals"].items()}
        return evals, saved["ppl"]
    from .models import load_model

    model = load_model(m1_name(cfg), adapter=adapter, device=cfg.device, dtype=cfg.dtype)
    evals = {s: evaluate_refusal(model, prompts, template=cfg.chat_template, max_new_tokens=cfg.eval_tokens,
                                 batch_size=cfg.batch_size, progress=progress, desc=f"{name} on {s}")
             for s, prompts in sets.items()}
    ppl = perplexity(model, corpus, batch_size=cfg.batch_size, progress=progress)
    write_json_atomic(path, {"key": key, "ppl": ppl, "evals": {s: asdict(e) for s, e in evals.items()}})
    return evals, ppl
