"""One config object per run: the profiles, papermill-style overrides, and where a run writes.

A notebook starts with `cfg = load_config(profile, overrides)`; the runner passes the same two
parameters through papermill, so a JupyterLab session and a headless run see one object.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .names import BASELINES, JUDGE_NAMES, parse_judge

# The repository root: lib/safety_neurons/config.py -> parents[2]. Runs and notebooks are found from
# here, so a notebook opened in notebooks/ and a runner started in the root write to the same place.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

EMBEDDED_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random-llama"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on. Two runs with equal configs must produce equal artifacts."""

    profile: str
    model: str = EMBEDDED_MODEL
    chat_template: str = "auto"  # auto (the tokenizer's, else plain) | chat | plain | tulu
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 where the GPU supports it) | float32 | bfloat16 | float16
    seed: int = 0
    split_seed: int = 0
    # Fractions of every prompt set given to DPO training, neuron finding and evaluation.
    split_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3)
    harmful_sets: tuple[str, ...] = ("harmbench", "donotanswer", "jailbreak", "past_tense")
    benign_sets: tuple[str, ...] = ("benign_everyday", "benign_sensitive")
    text_corpus: str = "pydoc_topics"
    max_prompts_per_split: int | None = None  # None: every prompt of the split
    max_new_tokens: int = 48
    # Prompts per batch of generation and forward passes: an integer, used as given on every device, or
    # "auto": as many as fit in the GPU's free memory at each call (lm/memory.py), 32 on a CPU.
    batch_size: int | str = "auto"
    n_setup_examples: int = 3
    train_seeds: tuple[int, ...] = (0, 1, 2)
    sft_dataset: str | None = None  # None: the model is already instruction-tuned, SFT is skipped
    sft_examples: int = 2000
    dpo_dataset: str = "harmless"  # harmless (built in code from M1's answers) or a hub preference set
    # The helpful objective's preferences: helpful (built in code from M1's answers to the benign alignment
    # prompts, needs align_benign > 0) or a hub preference set (the paper: hh_rlhf_helpful).
    helpful_dataset: str = "helpful"
    # Objectives of the alignment-tax study; the first harmless seed is "M2" for every later stage.
    objectives: tuple[str, ...] = ("harmless", "helpful", "reasoning", "extraction")
    train_harmful_sets: tuple[str, ...] = ("harmbench", "donotanswer")  # DPO sees only these sets
    align_harmful: int = 160  # harmful prompts in the preference set (from the alignment splits)
    align_benign: int = 80  # benign prompts in the preference set
    answer_tokens: int = 40  # length of M1's own answers used in the preference pairs
    dpo_learning_rate: float = 3e-2
    dpo_epochs: float = 2.0
    dpo_batch_size: int = 8
    dpo_beta: float = 0.1
    # NLL on the chosen answers added to the DPO loss (trl loss_type "sft", RPO-style); 0 = pure DPO.
    # Measured on the embedded model: pure DPO moved held-out refusals from 1% to 15% (60 steps),
    # DPO + NLL to 79% in half the steps. The paper profile keeps pure DPO.
    dpo_sft_weight: float = 1.0
    # KL(M1 || M2) on general text (the text corpus's alignment split) added to each DPO step, so that
    # aligning does not cost general language modelling; 0 = none (the paper). Measured on the embedded
    # model (seed 0, 60 steps): perplexity +19% without it, +6% at weight 1, +2% at weight 5, refusals
    # of held-out HarmBench prompts 0.98-1.00 in all three.
    dpo_retain_weight: float = 5.0
    dpo_adam_epsilon: float = 1e-8
    # Neuron finding (stage 02): harmful prompts of the finding splits (None: all), and the positions
    # change scores are computed over: completion (the paper's), prompt or prompt_last.
    finding_prompts: int | None = 128
    finding_token_type: str = "completion"
    # Dynamic patching (stage 03): k as percentages of all neurons, random-baseline seeds, the held-out
    # prompts (the first harmful set's evaluation split; None: all), the path (fast: one model for an
    # (IA)^3 M2; two_model: any M2), the k whose C is the headline, bootstrap resamples.
    patch_k_pcts: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20)
    patch_random_seeds: tuple[int, ...] = (0, 1, 2)
    patch_prompts: int | None = 64
    patch_path: str = "fast"
    # Prompts per patched batch (None: batch_size; "auto" as there, a patched prompt counting two rows).
    # On the 2-core CPU 32 prompts gave 55 tokens/s against 46 at 16 (benchmarks/patching_throughput.py).
    patch_batch_size: int | str | None = None
    headline_pct: float = 5.0
    bootstrap_samples: int = 2000
    # Safeguard (stage 07): held-out harmful prompts per guard set (None: all), the k sweep, the k of
    # the guard put to use, and the seeds of both random-neuron baselines.
    safeguard_prompts: int | None = 64
    safeguard_ks: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000, 1500)
    safeguard_k: int = 100
    safeguard_random_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # Interpretation (stage 08): value vectors of the top `value_neurons` neurons (`value_tokens` tokens
    # each way); per-layer probes on `probe_prompts` held-out harmful and as many benign prompts
    # (`probe_folds`-fold cross-validation); component tracing on `trace_pairs` harmful/benign pairs;
    # zero/mean ablation in M2 vs patching into M1 at `ablation_k_pcts` (random controls at
    # `ablation_random_seeds`, whose first seed also draws the tuning's random neurons); the training-free
    # rankings of stage 02 patched at headline_pct; targeted tuning of the top `tune_k_pct`% neurons'
    # (IA)^3 scales (Adam, `tune_steps` steps of `tune_batch_size` examples), safety measured on
    # `tune_eval_prompts` held-out harmful prompts every `tune_eval_every` steps.
    value_neurons: int = 20
    value_tokens: int = 10
    probe_prompts: int = 96
    probe_folds: int = 5
    trace_pairs: int = 24
    ablation_k_pcts: tuple[float, ...] = (1, 5, 20)
    ablation_random_seeds: tuple[int, ...] = (0,)
    baseline_methods: tuple[str, ...] = ("mean_difference", "activation_variance")
    tune_k_pct: float = 5.0
    tune_steps: int = 12
    tune_eval_every: int = 3
    # Measured on the embedded model (`default`, 16 prompts, read every 3 steps): at 0.1 the top 5% took M2's
    # safety from 1.00 to 0.25 by step 6 (random neurons 0.81) but overshot back to 0.75 at step 12, and M1's
    # from 0 to 0.81 by step 9 (random 0.12); in an earlier trial at 0.05, 0.88 after 6 steps.
    tune_learning_rate: float = 0.1
    tune_batch_size: int = 8
    tune_eval_prompts: int = 16
    eval_prompts: int | None = 64  # per evaluation set; None: the whole evaluation split
    eval_tokens: int = 32  # answer length when judging refusal
    # Judges of stage 04's transfer answers, side by side with Cohen's kappa: model_judges names
    # (refusal-phrase, beaver-cost, llamaguard), each optionally "name=checkpoint" (a folder or hub id).
    # Every other number of the study is refusal-phrase's. With a model judge the transfer answers run
    # full length, not stopped at the first refusal phrase (a model judge reads the whole answer).
    judges: tuple[str, ...] = ("refusal-phrase",)
    ppl_texts: int = 64  # paragraphs of the text corpus for perplexity
    run_root: str = "runs"
    run_name: str | None = None  # None: the profile name

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def run_dir(self) -> Path:
        root = Path(os.environ.get("SAFETY_NEURONS_RUNS", self.run_root))
        if not root.is_absolute():
            root = PROJECT_ROOT / root
        return root / (self.run_name or self.profile)

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    def metrics_path(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.json"

    def artifact_dir(self, stage: str) -> Path:
        return self.run_dir / "artifacts" / stage

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def fingerprint(self) -> str:
        """A short hash of every field: equal configs, equal fingerprints."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


PROFILES: dict[str, dict[str, Any]] = {
    # A tiny random Llama built in code (seconds): what the tests run every notebook on.
    "smoke": dict(
        model=TINY_MODEL,
        max_prompts_per_split=4,
        max_new_tokens=8,
        batch_size=4,
        train_seeds=(0,),
        n_setup_examples=2,
        align_harmful=6,
        align_benign=4,
        answer_tokens=6,
        dpo_epochs=1.0,
        dpo_batch_size=4,
        finding_prompts=6,
        patch_k_pcts=(5, 20),
        patch_random_seeds=(0, 1),
        patch_prompts=4,
        bootstrap_samples=200,
        safeguard_prompts=4,
        safeguard_ks=(4, 8),
        safeguard_k=8,
        safeguard_random_seeds=(0, 1),
        value_neurons=4,
        value_tokens=3,
        probe_prompts=4,
        probe_folds=2,
        trace_pairs=2,
        ablation_k_pcts=(5, 20),
        tune_steps=2,
        tune_eval_every=1,
        tune_batch_size=2,
        tune_eval_prompts=2,
        eval_prompts=4,
        eval_tokens=6,
        ppl_texts=4,
    ),
    # The embedded model, every stage at small sizes (one seed, 64 preference pairs, 16 prompts per set,
    # three k against one random draw): a first look in minutes on a laptop CPU, not a result.
    "quick": dict(
        model=EMBEDDED_MODEL, max_prompts_per_split=24, max_new_tokens=24, train_seeds=(0,),
        objectives=("harmless", "helpful"), align_harmful=48, align_benign=16, answer_tokens=24, dpo_epochs=1.0,
        eval_prompts=16, eval_tokens=24, ppl_texts=12, finding_prompts=32,
        patch_k_pcts=(1, 5, 20), patch_random_seeds=(0,), patch_prompts=16, bootstrap_samples=1000,
        safeguard_prompts=16, safeguard_ks=(50, 200), safeguard_random_seeds=(0,),
        probe_prompts=24, probe_folds=3, trace_pairs=4, ablation_k_pcts=(5,),
        tune_steps=4, tune_eval_every=2, tune_eval_prompts=8,
    ),
    # The embedded model, the whole study sized to finish within an hour on a 2-core CPU (`make all`):
    # two harmless seeds and the helpful objective, one DPO epoch on 192 pairs with 32-token answers,
    # 32 held-out prompts per set judged on 24-token answers, four k in the sweep against one random draw.
    # At the first trial sizes (240 pairs of 40 tokens, 32-token answers, five k, two draws) the whole run
    # took 73.5 min. One epoch was checked against two on seed 0 (240 pairs): HarmBench refusal 0.95,
    # benign 0.05, perplexity +2.0%, against 1.00 / 0.08 / +2.1%. `full` runs the study at the sizes below.
    "default": dict(
        model=EMBEDDED_MODEL,
        max_new_tokens=32,
        # "auto": 32 on a CPU, whose decode step is bound by reading the weights, so wider batches are nearly
        # free (16 x 24 new tokens took 0.45-0.49 s per prompt, 32 rows 0.33-0.37 s; every set here has 32
        # prompts); on a GPU as many as fit in its free memory.
        batch_size="auto",
        train_seeds=(0, 1),
        objectives=("harmless", "helpful"),
        align_harmful=128,
        align_benign=64,
        answer_tokens=32,
        dpo_epochs=1.0,
        finding_prompts=64,
        patch_k_pcts=(1, 5, 10, 20),
        patch_random_seeds=(0,),
        patch_prompts=32,
        eval_prompts=32,
        eval_tokens=24,
        ppl_texts=24,
        safeguard_prompts=24,
        safeguard_ks=(10, 50, 100, 200, 500),
        safeguard_random_seeds=(0, 1, 2),
        probe_prompts=48,
        trace_pairs=8,
        ablation_k_pcts=(5, 20),
        tune_steps=6,
        tune_eval_every=2,
    ),
    # The embedded model, the full study at the RunConfig sizes: three harmless seeds, four objectives,
    # 240 preference pairs, two DPO epochs, 64 held-out prompts per set, nine k in the sweep against three
    # random draws (about 2.6 hours on a 2-core CPU).
    # Batches as it was timed (16 prompts, 32 per patched batch); batch_size="auto" gives 32 on a CPU.
    "full": dict(model=EMBEDDED_MODEL, batch_size=16, patch_batch_size=32),
    # The paper's setting, by hub name: needs the hub and a GPU.
    "paper": dict(
        model="meta-llama/Llama-2-7b-hf",
        chat_template="tulu",
        harmful_sets=("beavertails", "redteam", "harmbench_csv", "jailbreakllms"),
        benign_sets=("benign_everyday", "benign_sensitive"),
        text_corpus="wikitext2",
        max_prompts_per_split=200,
        max_new_tokens=128,
        batch_size="auto",
        train_seeds=(0, 1, 2, 3, 4),
        sft_dataset="sharegpt",
        dpo_dataset="hh_rlhf_harmless",
        helpful_dataset="hh_rlhf_helpful",
        train_harmful_sets=("beavertails",),
        align_harmful=2000,
        align_benign=0,
        answer_tokens=128,
        dpo_learning_rate=5e-3,
        dpo_epochs=1.0,
        dpo_sft_weight=0.0,
        dpo_retain_weight=0.0,
        eval_prompts=None,
        eval_tokens=128,
        judges=("refusal-phrase", "beaver-cost", "llamaguard"),
        ppl_texts=256,
    ),
}

_CHAT_TEMPLATES = ("auto", "chat", "plain", "tulu")
OBJECTIVES = ("harmless", "helpful", "reasoning", "extraction")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_config(profile: str, overrides: Mapping[str, Any] | None = None, **more: Any) -> RunConfig:
    """The profile's config with `overrides` applied (papermill passes them as a dict)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    values: dict[str, Any] = {"profile": profile, **PROFILES[profile]}
    names = {f.name: f for f in dataclasses.fields(RunConfig)}
    for key, value in {**(overrides or {}), **more}.items():
        if key not in names or key == "profile":
            valid = ", ".join(n for n in names if n != "profile")
            raise ValueError(f"unknown config key {key!r}; valid keys: {valid}")
        values[key] = _coerce(names[key], value)
    return RunConfig(**values)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `key=value` from the command line; the value is JSON if it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not of the form key=value (for example max_new_tokens=32)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    # JSON and papermill give lists where the config keeps tuples (hashable, frozen).
    if isinstance(value, list):
        return tuple(value)
    if f.name in {"max_prompts_per_split", "sft_dataset", "run_name", "eval_prompts", "finding_prompts", "patch_prompts", "patch_batch_size", "safeguard_prompts"} and value in ("None", "none", "null"):
        return None
    return value


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _validate(cfg: RunConfig) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"config {cfg.profile!r}: {msg}")

    need(isinstance(cfg.model, str) and bool(cfg.model), "model must be a non-empty name, hub id or directory")
    need(cfg.chat_template in _CHAT_TEMPLATES, f"chat_template must be one of {_CHAT_TEMPLATES}, got {cfg.chat_template!r}")
    need(cfg.dtype in _DTYPES, f"dtype must be one of {_DTYPES}, got {cfg.dtype!r}")
    need(len(cfg.split_fractions) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in cfg.split_fractions),
         f"split_fractions must be three positive numbers (alignment, finding, evaluation), got {cfg.split_fractions!r}")
    need(abs(sum(cfg.split_fractions) - 1.0) < 1e-6, f"split_fractions must sum to 1, got {sum(cfg.split_fractions)}")
    need(cfg.batch_size == "auto" or (isinstance(cfg.batch_size, int) and not isinstance(cfg.batch_size, bool) and cfg.batch_size > 0),
         f"batch_size must be a positive integer or 'auto' (sized from free GPU memory), got {cfg.batch_size!r}")
    for name in ("max_new_tokens", "n_setup_examples", "align_harmful", "answer_tokens",
                 "dpo_batch_size", "eval_tokens", "ppl_texts", "sft_examples"):
        value = getattr(cfg, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value > 0, f"{name} must be a positive integer, got {value!r}")
    need(cfg.max_prompts_per_split is None or (isinstance(cfg.max_prompts_per_split, int) and cfg.max_prompts_per_split > 0),
         f"max_prompts_per_split must be a positive integer or None, got {cfg.max_prompts_per_split!r}")
    need(isinstance(cfg.harmful_sets, tuple) and len(cfg.harmful_sets) > 0, "harmful_sets must name at least one prompt set")
    need(isinstance(cfg.align_benign, int) and cfg.align_benign >= 0, f"align_benign must be >= 0, got {cfg.align_benign!r}")
    need(cfg.eval_prompts is None or (isinstance(cfg.eval_prompts, int) and cfg.eval_prompts > 0),
         f"eval_prompts must be a positive integer or None, got {cfg.eval_prompts!r}")
    need(isinstance(cfg.objectives, tuple) and len(cfg.objectives) > 0 and cfg.objectives[0] == "harmless"
         and set(cfg.objectives) <= set(OBJECTIVES),
         f"objectives must start with 'harmless' and be among {OBJECTIVES}, got {cfg.objectives!r}")
    need("helpful" not in cfg.objectives or cfg.helpful_dataset != "helpful" or cfg.align_benign > 0,
         "the helpful objective builds its preferences from benign prompts, and align_benign is 0: set align_benign > 0 "
         "or helpful_dataset to a hub preference set (hh_rlhf_helpful)")
    need(isinstance(cfg.train_harmful_sets, tuple) and len(cfg.train_harmful_sets) > 0,
         "train_harmful_sets must name at least one prompt set")
    need(cfg.dpo_learning_rate > 0 and cfg.dpo_epochs > 0 and cfg.dpo_beta > 0,
         "dpo_learning_rate, dpo_epochs and dpo_beta must be positive")
    need(cfg.dpo_sft_weight >= 0, f"dpo_sft_weight must be >= 0, got {cfg.dpo_sft_weight!r}")
    need(cfg.dpo_retain_weight >= 0, f"dpo_retain_weight must be >= 0, got {cfg.dpo_retain_weight!r}")
    need(cfg.dpo_adam_epsilon > 0, f"dpo_adam_epsilon must be > 0, got {cfg.dpo_adam_epsilon!r}")
    need(isinstance(cfg.benign_sets, tuple), "benign_sets must be a list of prompt-set names")
    need(isinstance(cfg.train_seeds, tuple) and len(cfg.train_seeds) > 0 and all(isinstance(s, int) for s in cfg.train_seeds),
         f"train_seeds must be a non-empty list of integers, got {cfg.train_seeds!r}")
    need(cfg.finding_prompts is None or (isinstance(cfg.finding_prompts, int) and cfg.finding_prompts > 0),
         f"finding_prompts must be a positive integer or None, got {cfg.finding_prompts!r}")
    need(cfg.finding_token_type in ("completion", "prompt", "prompt_last"),
         f"finding_token_type must be completion, prompt or prompt_last, got {cfg.finding_token_type!r}")
    need(isinstance(cfg.patch_k_pcts, tuple) and len(cfg.patch_k_pcts) > 0 and all(0 < p <= 100 for p in cfg.patch_k_pcts),
         f"patch_k_pcts must be percentages in (0, 100] (k = 0 is M1, always run), got {cfg.patch_k_pcts!r}")
    need(cfg.headline_pct in cfg.patch_k_pcts, f"headline_pct {cfg.headline_pct} must be one of patch_k_pcts {cfg.patch_k_pcts}")
    need(isinstance(cfg.patch_random_seeds, tuple) and len(cfg.patch_random_seeds) > 0,
         "patch_random_seeds must list at least one seed")
    need(cfg.patch_prompts is None or (isinstance(cfg.patch_prompts, int) and cfg.patch_prompts > 0),
         f"patch_prompts must be a positive integer or None, got {cfg.patch_prompts!r}")
    need(cfg.patch_batch_size in (None, "auto") or (isinstance(cfg.patch_batch_size, int) and not isinstance(cfg.patch_batch_size, bool)
                                                    and cfg.patch_batch_size > 0),
         f"patch_batch_size must be a positive integer, 'auto' or None (batch_size's), got {cfg.patch_batch_size!r}")
    need(cfg.safeguard_prompts is None or (isinstance(cfg.safeguard_prompts, int) and cfg.safeguard_prompts > 0),
         f"safeguard_prompts must be a positive integer or None, got {cfg.safeguard_prompts!r}")
    need(len(cfg.safeguard_ks) > 0 and all(isinstance(k, int) and k > 0 for k in cfg.safeguard_ks),
         f"safeguard_ks must be positive neuron counts, got {cfg.safeguard_ks!r}")
    need(isinstance(cfg.safeguard_k, int) and cfg.safeguard_k > 0, f"safeguard_k must be a positive neuron count, got {cfg.safeguard_k!r}")
    need(len(cfg.safeguard_random_seeds) > 0, "safeguard_random_seeds must name at least one seed")
    for name in ("value_neurons", "value_tokens", "probe_prompts", "trace_pairs", "tune_steps", "tune_eval_every",
                 "tune_batch_size", "tune_eval_prompts"):
        value = getattr(cfg, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value > 0, f"{name} must be a positive integer, got {value!r}")
    need(isinstance(cfg.probe_folds, int) and cfg.probe_folds >= 2, f"probe_folds must be an integer >= 2, got {cfg.probe_folds!r}")
    need(isinstance(cfg.ablation_k_pcts, tuple) and len(cfg.ablation_k_pcts) > 0 and all(0 < p <= 100 for p in cfg.ablation_k_pcts),
         f"ablation_k_pcts must be percentages in (0, 100], got {cfg.ablation_k_pcts!r}")
    need(isinstance(cfg.ablation_random_seeds, tuple) and len(cfg.ablation_random_seeds) > 0,
         "ablation_random_seeds must list at least one seed")
    need(0 < cfg.tune_k_pct <= 100, f"tune_k_pct must be a percentage in (0, 100], got {cfg.tune_k_pct!r}")
    need(cfg.tune_learning_rate > 0, f"tune_learning_rate must be positive, got {cfg.tune_learning_rate!r}")
    need(isinstance(cfg.baseline_methods, tuple) and all(m in BASELINES for m in cfg.baseline_methods),
         f"baseline_methods must be among {BASELINES} (the training-free rankings of stage 02), got {cfg.baseline_methods!r}")
    need(isinstance(cfg.judges, tuple) and len(cfg.judges) > 0, f"judges must name at least one judge, got {cfg.judges!r}")
    names = [parse_judge(spec)[0] for spec in cfg.judges]
    for name in names:
        need(name in JUDGE_NAMES, f"unknown judge {name!r} in judges; known judges: {', '.join(JUDGE_NAMES)} "
                                  "(a model judge may name its checkpoint: 'beaver-cost=/path/or/hub-id')")
    need(len(set(names)) == len(names), f"judges names a judge twice: {cfg.judges!r}")
    need(cfg.patch_path in ("fast", "two_model"), f"patch_path must be fast or two_model, got {cfg.patch_path!r}")
    need(isinstance(cfg.bootstrap_samples, int) and cfg.bootstrap_samples > 0, "bootstrap_samples must be a positive integer")
