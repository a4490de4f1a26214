"""Stage 01's work that others call too: the preference sets, training every M2 (the notebook, and the
`train` command under a distributed launch), and the cached evaluation of a model (stages 01 and 04).

Each step caches its artifact under runs/<name>/artifacts/01_alignment/, so a re-run (or a killed run)
redoes nothing finished.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from ..config import SFT_DISTILLED, RunConfig
from ..data.preferences import Preference, extraction_pairs, harmless_pairs, helpful_pairs, reasoning_pairs
from ..data.registry import load_split
from ..io import cached_json, content_key
from ..lm.chat import ENCODING
from ..lm.sharding import done_by_main
from ..method.alignment import TrainResult, TrainSettings, save_merged_model, train_dpo, train_sft
from .checkpoints import load_m1, load_with_adapter, m1_key, m1_name, m1_sft_dir, run_dir_of, sft_dir
from .paths import ALIGNMENT
from .prompts import alignment_prompts, round_robin


def run_sft(cfg: RunConfig, *, conversations_path: str | None = None, progress: bool = True) -> TrainResult | None:
    """SFT the base on the profile's SFT data and save the folded result as M1 (its folder is then
    checkpoints.m1_name); the SFT's training result, or None when the profile has no SFT. Training is keyed
    by its data and settings (method.alignment.train_sft): a finished SFT is not redone."""
    if cfg.sft_dataset is None:
        return None
    out = sft_dir(cfg)
    conversations = sft_conversations(cfg, conversations_path=conversations_path, progress=progress)
    result = train_sft(cfg.model, conversations, out, template=cfg.chat_template, settings=sft_settings(cfg),
                       device=cfg.device, progress=progress)
    # Inside the SFT folder: retraining SFT (another config) removes the merged M1 with it.
    done_by_main(lambda: save_merged_model(cfg.model, result.adapter_dir, m1_sft_dir(cfg)))
    return result


def sft_conversations(cfg: RunConfig, *, conversations_path: str | None = None, progress: bool = True) -> list[list[dict]]:
    """The SFT set: the offline distilled one, or a hub conversation set (`conversations_path`: a local copy)."""
    if cfg.sft_dataset == SFT_DISTILLED:
        return distilled_conversations(cfg, progress=progress)
    from ..data.hub import load_hub_conversations

    return load_hub_conversations(cfg.sft_dataset, path=conversations_path, limit=cfg.sft_examples)


def distilled_conversations(cfg: RunConfig, *, progress: bool = True) -> list[list[dict]]:
    """The offline SFT set: `sft_teacher`'s greedy answers (under its own chat template, `sft_answer_tokens`
    long) to the alignment splits' harmful and benign prompts, taken in turn, `sft_examples` at most; one
    user-assistant turn each. Cached by teacher and prompts; empty answers are left out."""
    from ..lm.generation import answer_prompts
    from ..lm.models import load_model

    harmful = round_robin([load_split(cfg, s, "alignment") for s in cfg.train_harmful_sets], cfg.sft_examples)
    benign = round_robin([load_split(cfg, s, "alignment") for s in cfg.benign_sets], cfg.sft_examples)
    prompts = round_robin([harmful, benign], cfg.sft_examples)

    def answer() -> list[str]:
        teacher = load_model(cfg.sft_teacher, device=cfg.device, dtype=cfg.dtype)
        return [g.text for g in answer_prompts(teacher, prompts, template="auto", max_new_tokens=cfg.sft_answer_tokens,
                                               batch_size=cfg.batch_size, progress=progress, desc="SFT teacher answers")]

    # beside the SFT folder, not in it: a retrained SFT empties its folder, and these answers do not depend on it
    key = content_key(cfg.sft_teacher, ENCODING, cfg.sft_answer_tokens, prompts)
    answers = cached_json(cfg.artifact_dir(ALIGNMENT) / "sft_data" / "distilled.json", key, answer, field="answers")
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": a.strip()}]
            for p, a in zip(prompts, answers) if a.strip()]


def sft_settings(cfg: RunConfig) -> TrainSettings:
    """SFT's training settings: the DPO ones at `sft_learning_rate` and `sft_epochs` where set, with AdamW."""
    return replace(dpo_settings(cfg, cfg.seed), learning_rate=cfg.sft_learning_rate or cfg.dpo_learning_rate,
                   epochs=cfg.sft_epochs or cfg.dpo_epochs, optimizer="adamw", momentum=0.0)


def cached_answers(cfg: RunConfig, m1, prompts: list[str], *, name: str, progress: bool = True) -> list[str]:
    """M1's greedy answers to `prompts`, cached by the prompts, model and length."""
    from ..lm.generation import answer_prompts

    if not prompts:
        return []
    key = content_key(cfg.model, cfg.chat_template, ENCODING, cfg.answer_tokens, prompts)
    return cached_json(cfg.artifact_dir(ALIGNMENT) / "m1_answers" / f"{name}.json", key,
                       lambda: [g.text for g in answer_prompts(m1, prompts, template=cfg.chat_template,
                                                               max_new_tokens=cfg.answer_tokens, batch_size=cfg.batch_size,
                                                               progress=progress, desc=f"M1 answers ({name})")],
                       field="answers")


def preference_pairs(cfg: RunConfig, objective: str, m1, *, progress: bool = True) -> list[Preference]:
    """The preference set of one objective, built once and saved as JSON beside the adapters
    (under a key of everything the set is made from, so a changed config rebuilds it)."""
    harmful, benign = alignment_prompts(cfg)
    source = cfg.helpful_dataset if objective == "helpful" else cfg.dpo_dataset  # a built-in name or a hub set
    key = content_key(objective, harmful, benign, cfg.model, cfg.chat_template, ENCODING, cfg.answer_tokens, cfg.seed,
                      source, cfg.align_harmful)
    path = cfg.artifact_dir(ALIGNMENT) / "preferences" / f"{objective}.json"
    stored = cached_json(path, key, lambda: [asdict(p) for p in build_pairs(cfg, objective, m1, source, harmful, benign,
                                                                             progress=progress)], field="pairs")
    return [Preference(**r) for r in stored]


def build_pairs(cfg: RunConfig, objective: str, m1, source: str, harmful: list[str], benign: list[str], *,
                progress: bool = True) -> list[Preference]:
    """The preference pairs of one objective, from the hub (`source` a hub set) or built from M1's answers."""
    if objective in ("harmless", "helpful") and source != objective:
        from ..data.hub import load_hub_preferences

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
    return pairs


def synthetic_pairs(cfg: RunConfig) -> int:
    """Size of the generated reasoning and extraction sets: half the harmless set (they are
    templated, so fewer pairs teach them; the CPU budget goes to the harmless seeds)."""
    return max(1, (cfg.align_harmful + cfg.align_benign) // 2)


def dpo_settings(cfg: RunConfig, seed: int) -> TrainSettings:
    return TrainSettings(learning_rate=cfg.dpo_learning_rate, epochs=cfg.dpo_epochs, batch_size=cfg.dpo_batch_size,
                         beta=cfg.dpo_beta, sft_weight=cfg.dpo_sft_weight, retain_weight=cfg.dpo_retain_weight,
                         adam_epsilon=cfg.dpo_adam_epsilon, optimizer=cfg.dpo_optimizer, momentum=cfg.dpo_momentum,
                         seed=seed)


def retain_texts(cfg: RunConfig) -> list[str]:
    """General text M2 is kept close to M1 on (the text corpus's alignment split; perplexity is
    measured on its evaluation split); empty when the profile has no retain term."""
    return load_split(cfg, cfg.text_corpus, "alignment") if cfg.dpo_retain_weight > 0 else []


def training_runs(cfg: RunConfig) -> list[tuple[str, int]]:
    """(objective, seed) of every M2: the harmless objective at every training seed, the others at the first."""
    first = cfg.train_seeds[0]
    return [("harmless", s) for s in cfg.train_seeds] + [(o, first) for o in cfg.objectives if o != "harmless"]


def train_m2(cfg: RunConfig, objective: str, seed: int, pairs: list[Preference], *, progress: bool = True) -> TrainResult:
    return train_dpo(m1_name(cfg), pairs, run_dir_of(cfg, objective, seed), template=cfg.chat_template,
                     settings=dpo_settings(cfg, seed), retain_texts=retain_texts(cfg),
                     reference_dir=cfg.artifact_dir(ALIGNMENT) / objective / "reference", base_key=m1_key(cfg),
                     device=cfg.device, progress=progress)


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
        m1 = load_m1(cfg) if needs_m1 else None
        for objective in objectives:
            preference_pairs(cfg, objective, m1, progress=progress)

    done_by_main(build_preferences)
    pairs = {objective: preference_pairs(cfg, objective, None, progress=progress) for objective in objectives}
    return {(objective, seed): train_m2(cfg, objective, seed, pairs[objective], progress=progress) for objective, seed in runs}


def evaluate_model(cfg: RunConfig, name: str, adapter: Path | None, sets: dict[str, list[str]], corpus: list[str], *,
                   progress: bool = True):
    """Refusal on every evaluation set and perplexity on the corpus for M1 (adapter None) or one M2,
    cached under a key of the model, the prompts and the settings (a resumed stage does not redo it).
    Returns ({set: RefusalEval}, perplexity)."""
    from ..judges.evaluation import RefusalEval, evaluate_refusal, perplexity
    from ..lm.generation import Generation
    from ..lm.models import adapter_digest

    key = content_key(m1_key(cfg), adapter_digest(adapter), sets, corpus, cfg.chat_template, ENCODING, cfg.eval_tokens)
    path = cfg.artifact_dir(ALIGNMENT) / "evaluations" / f"{name.replace('/', '-')}.json"

    def compute() -> dict:
        model = load_with_adapter(cfg, adapter)
        evals = {s: evaluate_refusal(model, prompts, template=cfg.chat_template, max_new_tokens=cfg.eval_tokens,
                                     batch_size=cfg.batch_size, progress=progress, desc=f"{name} on {s}")
                 for s, prompts in sets.items()}
        return {"ppl": perplexity(model, corpus, batch_size=cfg.batch_size, progress=progress),
                "evals": {s: asdict(e) for s, e in evals.items()}}

    saved = cached_json(path, key, compute, field=None)
    evals = {s: RefusalEval(e["prompts"], [Generation(**g) for g in e["answers"]], e["refused"], e["logodds"])
             for s, e in saved["evals"].items()}
    return evals, saved["ppl"]


def evaluate_sft(cfg: RunConfig, sets: dict[str, list[str]], corpus: list[str], *, progress: bool = True) -> dict:
    """What SFT did: the base model's refusal on every evaluation set and its perplexity (M1's are stage 01's
    own evaluation), and how base and M1 answer: judges.evaluation.answer_format of their greedy answers,
    `sft_answer_tokens` long, to every evaluation prompt, with the first few answers of each. Cached like
    evaluate_model. Returns {"base": {"refusal": {set: rate}, "ppl", "stopped", "new_turn", "examples"},
    "m1": {"stopped", "new_turn", "examples"}}."""
    from ..judges.evaluation import answer_format, evaluate_refusal, perplexity
    from ..lm.chat import turn_markers
    from ..lm.generation import answer_prompts
    from ..lm.models import load_model

    prompts = [p for ps in sets.values() for p in ps]
    # M1 by its SFT adapter's weights (m1_key), not its folder's name: a retrained SFT is evaluated again
    key = content_key(m1_key(cfg), sets, corpus, cfg.chat_template, ENCODING, cfg.eval_tokens, cfg.sft_answer_tokens)

    def formats(model, role: str) -> dict:
        answers = answer_prompts(model, prompts, template=cfg.chat_template, max_new_tokens=cfg.sft_answer_tokens,
                                 batch_size=cfg.batch_size, progress=progress, desc=f"{role} answers")
        return answer_format(answers, turn_markers(model.tokenizer, cfg.chat_template)) | {
            "examples": [{"prompt": p, "answer": a.text} for p, a in zip(prompts[:4], answers[:4])]}

    def compute() -> dict:
        base = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        refusal = {s: evaluate_refusal(base, ps, template=cfg.chat_template, max_new_tokens=cfg.eval_tokens,
                                       batch_size=cfg.batch_size, progress=progress, desc=f"base on {s}").rate
                   for s, ps in sets.items()}
        out = {"base": {"refusal": refusal, "ppl": perplexity(base, corpus, batch_size=cfg.batch_size, progress=progress),
                        **formats(base, "base")}}
        del base
        return out | {"m1": formats(load_m1(cfg), "M1")}

    return cached_json(cfg.artifact_dir(ALIGNMENT) / "evaluations" / "sft.json", key, compute, field=None)
