"""One config object per run: the profiles, papermill-style overrides, and where a run writes.

A notebook starts with `cfg = load_config(profile, overrides)`; the runner passes the same two
parameters through papermill, so a JupyterLab session and a headless run see one object.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .names import BASELINES, JUDGE_NAMES, RECIPES, parse_judge

# The repository root: lib/safety_neurons/config.py -> parents[2]. Runs and notebooks are found from
# here, so a notebook opened in notebooks/ and a runner started in the root write to the same place.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

EMBEDDED_MODEL = "smollm2-135m-instruct"
SFT_DISTILLED = "distilled"  # the offline SFT set (see RunConfig.sft_dataset)
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
    # The instruction set of the SFT stage (M1 = the model + an SFT (IA)^3 adapter, folded in): None, the model is
    # already instruction-tuned and SFT is skipped; "distilled", offline: `sft_teacher`'s greedy answers to the
    # alignment splits' harmful and benign prompts (so M1 follows instructions and complies, as the paper's SFT
    # model did); or a hub conversation set ("sharegpt", the paper's).
    sft_dataset: str | None = None
    sft_examples: int = 2000  # conversations the SFT stage trains on (at most)
    sft_teacher: str = EMBEDDED_MODEL  # the instruct model whose answers make the "distilled" set
    sft_answer_tokens: int = 64  # length of the teacher's answers (each ends with EOS in training)
    sft_learning_rate: float | None = None  # None: dpo_learning_rate
    sft_epochs: float | None = None  # None: dpo_epochs
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
    # The optimiser: adamw (Adam, no weight decay) or sgd (with dpo_momentum), whose steps follow the gradient;
    # notebook 09 compares them (and Adam's epsilon, the rate, the NLL term) on the same pairs.
    dpo_optimizer: str = "adamw"
    dpo_momentum: float = 0.0
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
    # Seeds of the sampled refusal measure (one sampled answer per prompt and seed, temperature 1) at the
    # headline arms of stage 03: M1, M2, the top headline-k neurons and their random draws.
    sample_seeds: tuple[int, ...] = (0, 1, 2, 3)
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
    # Recipe study (notebook 09, outside `make all`: `run --only 9`): the first harmless M2 retrained on the same
    # pairs under each regime named (names.RECIPES; the first must be "profile", the profile's own recipe),
    # each judged on refusal, over-refusal, perplexity and its update, with C at `recipe_k_pcts` on every measure.
    recipe_regimes: tuple[str, ...] = ("profile", "adam_eps", "small_lr", "sgd_momentum", "pure_dpo")
    recipe_k_pcts: tuple[float, ...] = (1, 5, 20)
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

    def identity(self) -> dict[str, Any]:
        """Every field that decides what a run computes (not where it writes: run_root, run_name). A field added
        after runs were made is left out while it holds the value it had in this profile when it was added
        (_ADDED_FIELDS), so an older run directory, made when the field did not exist, is still this config's
        (and keeps its fingerprint), while a later change of the profile's value gives a new fingerprint."""
        added = {**_ADDED_FIELDS, **_ADDED_FIELDS_IN_PROFILES.get(self.profile, {})}
        return {k: v for k, v in self.to_dict().items()
                if k not in _LOCATION_FIELDS and not (k in added and v == _jsonable(added[k]))}

    def fingerprint(self) -> str:
        """A short hash of `identity()`: equal configs, equal fingerprints, wherever they write."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# The study's sizes for a run within an hour on a 2-core CPU (`default`, see its note below; `gemma` uses them too, so
# that the two models compare like with like): two harmless seeds and the helpful objective, one DPO epoch on
# 32-token answers, 24 held-out prompts per set judged on 24-token answers, k = 1, 5, 20% against one random draw.
_HOUR_STUDY: dict[str, Any] = dict(
    max_new_tokens=32,
    # "auto": 32 on a CPU, whose decode step is bound by reading the weights, so wider batches are nearly
    # free (16 x 24 new tokens took 0.45-0.49 s per prompt, 32 rows 0.33-0.37 s); on a GPU as many as fit
    # in its free memory.
    batch_size="auto",
    train_seeds=(0, 1),
    objectives=("harmless", "helpful"),
    answer_tokens=32,
    dpo_epochs=1.0,
    finding_prompts=32,
    patch_k_pcts=(1, 5, 20),
    patch_random_seeds=(0,),
    patch_prompts=24,
    sample_seeds=(0, 1),
    eval_prompts=24,
    eval_tokens=24,
    ppl_texts=24,
    safeguard_prompts=16,
    safeguard_ks=(10, 50, 100, 200, 500),
    safeguard_random_seeds=(0, 1, 2),
    probe_prompts=32,
    trace_pairs=4,
    ablation_k_pcts=(5, 20),
    tune_steps=6,
    tune_eval_every=2,
)

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
        sample_seeds=(0, 1),
        recipe_regimes=("profile", "sgd_momentum"),
        recipe_k_pcts=(5, 100),
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
        patch_k_pcts=(1, 5, 20), patch_random_seeds=(0,), patch_prompts=16, bootstrap_samples=1000, sample_seeds=(0, 1),
        safeguard_prompts=16, safeguard_ks=(50, 200), safeguard_random_seeds=(0,),
        probe_prompts=24, probe_folds=3, trace_pairs=4, ablation_k_pcts=(5,),
        tune_steps=4, tune_eval_every=2, tune_eval_prompts=8,
    ),
    # The embedded model, the whole study sized to finish within an hour on a 2-core CPU (`make all`):
    # two harmless seeds and the helpful objective, one DPO epoch on 192 pairs with 32-token answers,
    # 24 held-out prompts per set judged on 24-token answers, k = 1, 5, 20% against one random draw, C on
    # every measure (the sampled one over two seeds). At 32 prompts per set, four k, three sample seeds and
    # 64 finding prompts, stages 00-05 alone took 58.3 min once the continuous and sampled measures were
    # added (issue 20; docs/performance.md), hence these sizes. At the first trial sizes (240 pairs of 40
    # tokens, 32-token answers, five k, two draws) the whole run took 73.5 min. One epoch was checked against
    # two on seed 0 (240 pairs): HarmBench refusal 0.95, benign 0.05, perplexity +2.0%, against
    # 1.00 / 0.08 / +2.1%. `full` runs the study at the sizes below.
    "default": dict(model=EMBEDDED_MODEL, align_harmful=128, align_benign=64, **_HOUR_STUDY),
    # The embedded model, the full study at the RunConfig sizes: three harmless seeds, four objectives,
    # 240 preference pairs, 64 held-out prompts per set, nine k in the sweep against three random draws.
    # Its DPO recipe is the one the recipe study (notebook 09) chose by criteria fixed before it ran, never by C:
    # `small_lr`, a third of the learning rate for twice the epochs (lr 1e-2, four epochs here), the only one of
    # five regimes whose M2 refused, kept its perplexity and over-refusal, and whose update followed its gradient
    # (docs/results.md). `default` keeps lr 3e-2 for one epoch: twice the steps would take it past the hour.
    # Timed before the change at about 2.6 hours on a 2-core CPU; the doubled DPO steps add to that (not re-timed).
    # Batches as it was timed (16 prompts, 32 per patched batch); batch_size="auto" gives 32 on a CPU.
    "full": dict(model=EMBEDDED_MODEL, batch_size=16, patch_batch_size=32, dpo_learning_rate=1e-2, dpo_epochs=4.0),
    # The paper's pipeline on a second architecture, offline (issue 21): Gemma 3 270M base (18 x 2048 neurons,
    # `python -m safety_neurons prepare --model gemma3-270m`), SFT with (IA)^3 on the embedded SmolLM2-Instruct's
    # answers ("distilled") to make M1, then DPO with (IA)^3 on M1, then the study at `default`'s study sizes
    # (so the two compare like with like) on fewer preference pairs (a Gemma step costs more: its vocabulary
    # head has 262k rows). Its chat template is `plain` (the GGUF's tokenizer has none). SFT at lr 1e-2, a third
    # of the DPO rate, by the bar for M1, fixed before any C was seen: at 3e-2 M1 refused 0.12 of held-out
    # HarmBench prompts and lost 47% perplexity, at 1e-2 it refused 0.00 and lost 13%, both keeping the answer
    # format (benchmarks/sft_recipe.py, docs/results.md). All nine stages took 103.0 min on a 2-core CPU at 1e-2,
    # 77.7 min at 3e-2 on a faster session of the same machine (docs/performance.md).
    "gemma": dict(model="gemma3-270m", sft_dataset="distilled", sft_examples=256, sft_answer_tokens=48, sft_epochs=2.0,
                  sft_learning_rate=1e-2, align_harmful=96, align_benign=32, **_HOUR_STUDY),
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
_LOCATION_FIELDS = ("run_root", "run_name")
# Fields added after run directories were made (issues 20 and 21), with the value each had when it was added: its
# default (_ADDED_FIELDS) or the profile's own (_ADDED_FIELDS_IN_PROFILES); see RunConfig.identity. Frozen literals,
# never the live defaults or profiles: when identity read the live profile, `gemma`'s move to SFT at lr 1e-2
# (8726beb) kept the fingerprint of its lr 3e-2 runs (b0e132ae) for a config that computes something else. A field
# added later gets an entry here; an entry is never edited.
_ADDED_FIELDS: dict[str, Any] = dict(
    sample_seeds=(0, 1, 2, 3), recipe_regimes=("profile", "adam_eps", "small_lr", "sgd_momentum", "pure_dpo"),
    recipe_k_pcts=(1, 5, 20), dpo_optimizer="adamw", dpo_momentum=0.0, sft_teacher="smollm2-135m-instruct",
    sft_answer_tokens=64, sft_learning_rate=None, sft_epochs=None)
_ADDED_FIELDS_IN_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(sample_seeds=(0, 1), recipe_regimes=("profile", "sgd_momentum"), recipe_k_pcts=(5, 100)),
    "quick": dict(sample_seeds=(0, 1)),
    "default": dict(sample_seeds=(0, 1)),
    "gemma": dict(sample_seeds=(0, 1), sft_answer_tokens=48, sft_epochs=2.0),  # sft_learning_rate: None until 8726beb
}
# Fields that name prompt sets (checked against the registry at load; `file:PATH` sets resolved to absolute paths).
_SET_FIELDS = ("harmful_sets", "benign_sets", "train_harmful_sets", "text_corpus")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
OBJECTIVES = ("harmless", "helpful", "reasoning", "extraction")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the field, what it got and the fix."""


def load_config(profile: str, overrides: Mapping[str, Any] | None = None, **more: Any) -> RunConfig:
    """The profile's config with `overrides` applied (papermill passes them as a dict).

    Overrides that change what the run computes give it a run directory of its own,
    runs/<profile>-<fingerprint> (unless they name one with run_name), so another config's finished
    results are never overwritten or deleted. Relative paths (a model folder, a `file:` prompt set) are
    resolved against the current working directory here, once."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    values: dict[str, Any] = {"profile": profile, **PROFILES[profile]}
    names = {f.name: f for f in dataclasses.fields(RunConfig)}
    given = {**(overrides or {}), **more}
    for key, value in given.items():
        if key == "profile":
            raise ConfigError(f"profile is not an override: choose it with --profile {value} (papermill: -p profile {value})")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown config key {key!r}; {hint}valid keys: {', '.join(n for n in names if n != 'profile')}")
        values[key] = _coerce(names[key], value)
    values = _resolve_paths(values)
    cfg = RunConfig(**values)
    if cfg.run_name is None and given.keys() - set(_LOCATION_FIELDS):
        base = RunConfig(**{"profile": profile, **PROFILES[profile]})
        if base.fingerprint() != cfg.fingerprint():
            cfg = dataclasses.replace(cfg, run_name=f"{profile}-{cfg.fingerprint()[:8]}")
    return cfg


def notebook_config(namespace: Mapping[str, Any]) -> RunConfig:
    """The config of a notebook from its parameters cell (`profile`, `overrides`), as papermill or a
    JupyterLab user set them. A parameter the notebook does not take (a papermill typo such as
    `-p profle smoke`) is an error, not a silently ignored value; the run directory is claimed for it."""
    known = {"profile", "overrides"}
    unknown = sorted(k for k, v in namespace.items()
                     if not k.startswith("_") and k not in known and k not in ("In", "Out") and not k.isupper()
                     and (v is None or isinstance(v, (str, int, float, bool, list, dict))))
    if unknown:
        raise ConfigError(f"unknown notebook parameter {unknown[0]!r}: the notebooks take `profile` (a profile name) and "
                          "`overrides` (a dict of RunConfig fields), e.g. -p profile smoke -y \"overrides: {max_new_tokens: 16}\"")
    cfg = load_config(namespace["profile"], namespace.get("overrides") or {})
    claim_run_dir(cfg)
    return cfg


RUN_CONFIG_FILE = "config.json"


def claim_run_dir(cfg: RunConfig) -> Path:
    """Make cfg.run_dir the directory of this config: record it there on first use, and refuse a
    directory that holds another config's results (nothing of a finished config is overwritten)."""
    from .io import read_json, write_json_atomic

    path = cfg.run_dir / RUN_CONFIG_FILE
    recorded = None
    for source in (path, cfg.run_dir / "manifest.json"):  # runs made before config.json have a manifest
        if source.exists():
            try:
                recorded = read_json(source)["config"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            break
    if recorded is not None:
        mine = cfg.identity()
        full = {k: v for k, v in cfg.to_dict().items() if k not in _LOCATION_FIELDS}
        theirs = {k: v for k, v in recorded.items() if k not in _LOCATION_FIELDS}
        # a field the record has is compared whatever its value; one it lacks only if it is part of the identity
        differ = sorted(k for k in mine.keys() | theirs.keys()
                        if (k in theirs and full.get(k) != theirs[k]) or (k not in theirs and k in mine))
        if differ:
            shown = ", ".join(f"{k} {theirs.get(k)!r} -> {mine.get(k)!r}" for k in differ[:3]) + (" ..." if len(differ) > 3 else "")
            raise ConfigError(f"{cfg.run_dir} holds the results of another config ({shown}); give this config its own "
                              f"directory with -p run_name=NAME, or move {cfg.run_dir} away")
    if not path.exists():
        write_json_atomic(path, {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})
    return cfg.run_dir


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `key=value` from the command line: JSON if it parses (numbers, lists, null), else the
    text; a field that holds a name or path (run_name, model, ...) keeps the text as typed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (for example max_new_tokens=32)")
    field = {f.name: f for f in dataclasses.fields(RunConfig)}.get(key)
    if field is not None and _base_type(field.type) == "str" and raw not in ("null", "None", "none"):
        return key, raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _base_type(annotation: str) -> str:
    """"int | None" -> "int", "tuple[str, ...]" -> "tuple[str, ...]": the type apart from None."""
    parts = [p.strip() for p in str(annotation).split("|") if p.strip() != "None"]
    return " | ".join(parts)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    # JSON and papermill give lists where the config keeps tuples (hashable, frozen).
    if isinstance(value, list):
        return tuple(value)
    if "None" in str(f.type) and value in ("None", "none", "null"):
        return None
    return value


def _resolve_paths(values: dict[str, Any]) -> dict[str, Any]:
    """A model given as a folder that exists, and `file:` prompt sets, as absolute paths: a notebook's
    kernel runs in notebooks/, where a path relative to the user's directory means something else."""
    model = values.get("model")
    if isinstance(model, str) and model and not Path(model).is_absolute() and Path(model).expanduser().exists():
        values["model"] = str(Path(model).expanduser().resolve())
    from .data.registry import resolve_set_name  # torch-free

    for key in _SET_FIELDS:
        value = values.get(key)
        if isinstance(value, tuple):
            values[key] = tuple(resolve_set_name(v) if isinstance(v, str) else v for v in value)
        elif isinstance(value, str):
            values[key] = resolve_set_name(value)
    return values


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _type_error(name: str, annotation: str, value: Any) -> str | None:
    """Why `value` is not of the field's declared type (None when it is), with the fix."""
    base = _base_type(annotation)
    if value is None:
        return None if "None" in str(annotation) else f"{name} must be {_describe(base)}, got None"
    options = [o.strip() for o in base.split("|")]
    for option in options:
        if _is_type(option, value):
            return None
    got = f"{value!r} ({type(value).__name__})"
    if base.startswith("tuple[") and isinstance(value, (str, int, float)):
        example = json.dumps([value])
        return (f"{name} must be a list, got the single value {value!r}: write it as a list, "
                f"e.g. -p {name}='{example}' (papermill: overrides {{{name}: {example}}})")
    return f"{name} must be {_describe(base)}, got {got}"


def _is_type(option: str, value: Any) -> bool:
    if option == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if option == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if option in ("str", "bool"):
        return isinstance(value, {"str": str, "bool": bool}[option])
    if option.startswith("tuple["):
        inner = [t.strip() for t in option[len("tuple["):-1].split(",")]
        if not isinstance(value, tuple):
            return False
        if inner[-1] == "...":
            return all(_is_type(inner[0], v) for v in value)
        return len(value) == len(inner) and all(_is_type(t, v) for t, v in zip(inner, value))
    return True


_DESCRIPTIONS = {
    "int": "an integer", "float": "a number", "str": "a string", "int | str": "a positive integer or 'auto'",
    "tuple[str, ...]": "a list of names", "tuple[int, ...]": "a list of integers", "tuple[float, ...]": "a list of numbers",
    "tuple[float, float, float]": "a list of three numbers",
}


def _hub_sets(kind: str) -> list[str]:
    from .data.hub import HUB_DATASETS  # torch-free

    return sorted(name for name, spec in HUB_DATASETS.items() if spec.kind == kind)


def _describe(base: str) -> str:
    return _DESCRIPTIONS.get(base, base)


def _validate(cfg: RunConfig) -> None:
    def need(cond: bool, msg) -> None:
        if not cond:
            raise ConfigError(f"config {cfg.profile!r}: {msg() if callable(msg) else msg}")

    # Types first, for every field: a wrong type is named here, at load, not deep inside a stage.
    for f in dataclasses.fields(cfg):
        problem = _type_error(f.name, f.type, getattr(cfg, f.name))
        need(problem is None, problem or "")
    need(bool(_DEVICE.match(cfg.device)), f"device must be auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    need(cfg.run_name is None or (bool(cfg.run_name) and "/" not in cfg.run_name and not cfg.run_name.startswith(".")),
         f"run_name must be a folder name (no '/', not starting with '.'), got {cfg.run_name!r}")
    from .data.registry import check_set_name  # torch-free

    for key in _SET_FIELDS:
        for name in (getattr(cfg, key) if isinstance(getattr(cfg, key), tuple) else (getattr(cfg, key),)):
            try:
                check_set_name(name)
            except ValueError as exc:
                need(False, f"{key}: {exc}")

    need(isinstance(cfg.model, str) and bool(cfg.model), "model must be a non-empty name, hub id or directory")
    need(cfg.chat_template in _CHAT_TEMPLATES, f"chat_template must be one of {_CHAT_TEMPLATES}, got {cfg.chat_template!r}")
    need(cfg.dtype in _DTYPES, f"dtype must be one of {_DTYPES}, got {cfg.dtype!r}")
    need(len(cfg.split_fractions) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in cfg.split_fractions),
         f"split_fractions must be three positive numbers (alignment, finding, evaluation), got {cfg.split_fractions!r}")
    need(abs(sum(cfg.split_fractions) - 1.0) < 1e-6, f"split_fractions must sum to 1, got {sum(cfg.split_fractions)}")
    need(cfg.batch_size == "auto" or (isinstance(cfg.batch_size, int) and not isinstance(cfg.batch_size, bool) and cfg.batch_size > 0),
         f"batch_size must be a positive integer or 'auto' (sized from free GPU memory), got {cfg.batch_size!r}")
    for name in ("max_new_tokens", "n_setup_examples", "align_harmful", "answer_tokens",
                 "dpo_batch_size", "eval_tokens", "ppl_texts", "sft_examples", "sft_answer_tokens"):
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
    need(all(v is None or v > 0 for v in (cfg.sft_learning_rate, cfg.sft_epochs)),
         f"sft_learning_rate and sft_epochs must be positive (or None: the DPO values), got {cfg.sft_learning_rate!r}, {cfg.sft_epochs!r}")
    # the hub's names only when one is given: reading them imports `datasets`, slow for every config load
    need(cfg.sft_dataset in (None, SFT_DISTILLED) or cfg.sft_dataset in _hub_sets("conversations"),
         lambda: f"sft_dataset must be None (no SFT), {SFT_DISTILLED!r} (offline: the teacher's answers) or a hub conversation set "
         f"({', '.join(_hub_sets('conversations'))}), got {cfg.sft_dataset!r}")
    need(cfg.sft_dataset != SFT_DISTILLED or bool(cfg.sft_teacher),
         "sft_dataset='distilled' needs sft_teacher: the instruct model whose answers it distils")
    need(cfg.dpo_sft_weight >= 0, f"dpo_sft_weight must be >= 0, got {cfg.dpo_sft_weight!r}")
    need(cfg.dpo_retain_weight >= 0, f"dpo_retain_weight must be >= 0, got {cfg.dpo_retain_weight!r}")
    need(cfg.dpo_adam_epsilon > 0, f"dpo_adam_epsilon must be > 0, got {cfg.dpo_adam_epsilon!r}")
    need(cfg.dpo_optimizer in ("adamw", "sgd"), f"dpo_optimizer must be adamw or sgd, got {cfg.dpo_optimizer!r}")
    need(0 <= cfg.dpo_momentum < 1 and (cfg.dpo_optimizer == "sgd" or cfg.dpo_momentum == 0),
         f"dpo_momentum must be in [0, 1) and is an sgd setting (dpo_optimizer='sgd'), got {cfg.dpo_momentum!r}")
    need(isinstance(cfg.benign_sets, tuple), "benign_sets must be a list of prompt-set names")
    need(isinstance(cfg.train_seeds, tuple) and len(cfg.train_seeds) > 0 and all(isinstance(s, int) for s in cfg.train_seeds),
         f"train_seeds must be a non-empty list of integers, got {cfg.train_seeds!r}")
    need(cfg.finding_prompts is None or (isinstance(cfg.finding_prompts, int) and cfg.finding_prompts > 0),
         f"finding_prompts must be a positive integer or None, got {cfg.finding_prompts!r}")
    need(cfg.finding_token_type in ("completion", "prompt", "prompt_last"),
         f"finding_token_type must be completion, prompt or prompt_last, got {cfg.finding_token_type!r}")
    need(isinstance(cfg.patch_k_pcts, tuple) and len(cfg.patch_k_pcts) > 0 and all(0 < p <= 100 for p in cfg.patch_k_pcts),
         f"patch_k_pcts must be percentages in (0, 100] (k = 0 is M1, always run), got {cfg.patch_k_pcts!r}")
    need(len(cfg.sample_seeds) > 0 and all(isinstance(s, int) for s in cfg.sample_seeds),
         f"sample_seeds must be a non-empty list of integers (one sampled answer per prompt and seed), got {cfg.sample_seeds!r}")
    need(len(cfg.recipe_regimes) > 0 and cfg.recipe_regimes[0] == "profile" and set(cfg.recipe_regimes) <= set(RECIPES)
         and len(set(cfg.recipe_regimes)) == len(cfg.recipe_regimes),
         f"recipe_regimes must start with 'profile' (the baseline) and name each of {RECIPES} at most once, "
         f"got {cfg.recipe_regimes!r}")
    need(len(cfg.recipe_k_pcts) > 0 and all(0 < p <= 100 for p in cfg.recipe_k_pcts),
         f"recipe_k_pcts must be percentages in (0, 100], got {cfg.recipe_k_pcts!r}")
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
