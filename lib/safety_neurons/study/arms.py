"""The run's arm store: every judged generation run ("arm") of the patching stages.

An arm (M1, M2, top-k safety neurons at k%, random neurons at k% and seed s, all neurons, an ablation)
is judged per prompt and saved as JSON in runs/<name>/artifacts/arms/, named by a key of what it was
made from: the base model, the prompts, how they were generated, the adapter(s), the neurons and the
answer length. An interrupted sweep resumes at the next unfinished arm, a changed ranking, adapter or
prompt set recomputes, and any stage asking for the same generation reads it instead of generating again.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import RunConfig
from ..io import content_key, store_json, stored_json
from ..judges.refusal import refusal_judge
from ..lm.generation import Generation
from ..names import PHRASE_JUDGE
from .checkpoints import m1_key


JUDGE = PHRASE_JUDGE


def generation_options(cfg: RunConfig) -> dict:
    """Greedy answers of eval_tokens in batches of patch_batch_size prompts (batch_size if unset): the
    settings every patching-stage arm, patched or not, is generated with."""
    return dict(max_new_tokens=cfg.eval_tokens, batch_size=cfg.patch_batch_size or cfg.batch_size, progress=False)


def pct_label(pct: float) -> str:
    """5 -> "5", 7.5 -> "7p5", 0.5 -> "0p5": metric keys are k<label>, and a dot would read as a level."""
    return f"{pct:g}".replace(".", "p")


@dataclass
class Arm:
    """One generation run over the patch prompts, judged."""

    name: str  # m1 | m2 | safety | random | all | zero_ablation | mean_ablation | safety_two_model
    k_pct: float
    seed: int | None
    answers: list[str]
    refused: list[bool]
    n_tokens: int
    seconds: float
    lengths: list[int] | None = None  # answer tokens per prompt (arms saved before it was kept: None)

    @property
    def score(self) -> np.ndarray:
        """Per-prompt safety score under the refusal-phrase judge (refusal of a harmful prompt = safe)."""
        return np.asarray(self.refused, dtype=np.float64)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


def refused_already(text: str) -> bool:
    """True once the answer so far holds a refusal phrase in its opening: the phrase judge's verdict is final."""
    from ..judges.refusal import phrase_verdict

    return phrase_verdict(text).refused


def arm_id(name: str, k_pct: float, seed: int | None) -> str:
    return f"{name}-k{pct_label(k_pct)}" + ("" if seed is None else f"-s{seed}")


def arms_dir(cfg: RunConfig) -> Path:
    """The run's arm store, shared by every stage that generates judged answers."""
    return cfg.artifact_dir("arms")


ARM_METHODS = ("generate", "fast", "two_model", "zero_ablation", "mean_ablation")


def arm_key(cfg: RunConfig, prompt_ids: list[list[int]], method: str, adapters, neurons=None, *extra) -> str:
    """What an arm's answers are made from: the base model, the prompt ids, the method (plain `generate`,
    patching on the `fast` or `two_model` path, or an ablation), the adapter digest(s) (None: M1 itself),
    the neurons (as (layer, index) pairs) and the answer length; `extra` for anything else (ablation means)."""
    if method not in ARM_METHODS:
        raise ValueError(f"unknown arm method {method!r}; use one of {', '.join(ARM_METHODS)}")
    pairs = None if neurons is None else [[int(layer), int(i)] for layer, i in neurons]
    return content_key(m1_key(cfg), prompt_ids, method, adapters, pairs, cfg.eval_tokens, *extra)


def ablation_key(cfg: RunConfig, prompt_ids: list[list[int]], mode: str, digest: str | None, neurons, ranking) -> str:
    """The arm key of M2 with `neurons` zero- or mean-ablated; a mean ablation also names its means
    (M2's means over the finding completions, by the ranking's key)."""
    if mode == "zero":
        return arm_key(cfg, prompt_ids, "zero_ablation", digest, neurons)
    means = ranking.meta.get("key") or content_key(np.asarray(ranking.extras["mean_m2"]).tolist())
    return arm_key(cfg, prompt_ids, f"{mode}_ablation", digest, neurons, means)


def run_arm(cfg: RunConfig, name: str, k_pct: float, seed: int | None, key: str,
            generate: Callable[[list[list[int]]], list[Generation]], prompt_ids: list[list[int]], *,
            early: bool = False) -> Arm:
    """`generate(prompt_ids)` (unless an arm of the same key is stored), judge and store one arm.

    `early` says that `generate` may stop a row once its verdict is final (refused_already): such an arm
    serves later requests that allow it, while a request for full answers regenerates. The stored arm is
    returned under the caller's name, k and seed, from the run's store (arms_dir).
    Under a distributed launch the prompts are shared out between the processes in whole batches of
    the generators' own (generation_options) batch size and gathered; only the main process writes."""
    from ..lm.sharding import is_main_process, main_decides, sharded_generate

    path = arms_dir(cfg) / f"{key}.json"

    def stored() -> dict | None:
        saved = stored_json(path, key)
        return saved["arm"] if saved is not None and (early or not saved.get("early", False)) else None

    saved = main_decides(stored)
    if saved is not None:
        return replace(Arm(**saved), name=name, k_pct=k_pct, seed=seed)
    start = time.perf_counter()
    generations = sharded_generate(generate, prompt_ids, generation_options(cfg)["batch_size"])
    seconds = time.perf_counter() - start
    answers = [g.text for g in generations]
    lengths = [len(g.completion_ids) for g in generations]
    arm = Arm(name, k_pct, seed, answers, refusal_judge(answers), sum(lengths), seconds, lengths)
    if is_main_process():
        store_json(path, key, {"judge": JUDGE, "early": early, "arm": asdict(arm)})
    return arm


def mean_over_seeds(arms: list[Arm]) -> np.ndarray:
    """Per-prompt safety score averaged over the random seeds of one k."""
    return np.mean([a.score for a in arms], axis=0)


def effect_defined(m1: Arm, m2: Arm) -> bool:
    """C has a denominator only when M2 scores differently from M1."""
    return m2.score.mean() != m1.score.mean()


class ArmRunner:
    """Runs and stores the four kinds of arm over any prompt list: M1 and M2 by plain generate, M1
    patched with given neurons by the configured path (fast for an (IA)^3 M2). Arms live in the run's
    arm store (run_arm), so one that stage 03 (or another stage) already generated from the
    same prompts, adapter and neurons is read, not regenerated; M1's arm serves every M2.

    `early`: rows may stop once the refusal-phrase verdict is final (only valid when that judge alone
    reads the answers)."""

    def __init__(self, cfg: RunConfig, m1, m2, adapter: Path, *, early: bool = False):
        from ..lm.models import adapter_digest
        from ..lm.models import model_shape
        from ..method.patching import SharedM2Prefill, ia3_neuron_scales

        self.cfg, self.m1, self.m2, self.early = cfg, m1, m2, early
        self.digest = adapter_digest(adapter)
        self.shape = model_shape(m1)
        self.scales = ia3_neuron_scales(adapter, self.shape.n_layers, self.shape.d_mlp, base=m1) if cfg.patch_path == "fast" else None
        self.shared = SharedM2Prefill()
        self.opts = generation_options(cfg) | ({"stop_when": refused_already} if early else {})

    def run(self, arm: str, set_name: str, prompts: list[str], neurons=None, *, seed: int | None = None):
        """One arm ("m1", "m2" or a patched arm's name, e.g. "safety", "random") on `prompts`."""
        from ..lm.chat import encode_prompts
        from ..lm.generation import greedy_generate
        from ..method.neurons import as_neuron_list
        from ..method.patching import fast_patched_generate, patched_generate

        ids = encode_prompts(self.m1.tokenizer, prompts, self.cfg.chat_template)
        if arm in ("m1", "m2"):
            if neurons is not None:
                raise ValueError(f"arm {arm!r} is a plain model: it takes no neurons")
            model, digest, pct = (self.m1, None, 0.0) if arm == "m1" else (self.m2, self.digest, 100.0)
            key = arm_key(self.cfg, ids, "generate", digest)
            generate = lambda p: greedy_generate(model, p, **self.opts)  # noqa: E731
        else:
            if neurons is None:
                raise ValueError(f"arm {arm!r} patches neurons: pass the neurons (an empty list patches none)")
            pairs, pct = as_neuron_list(neurons, self.shape.n_layers, self.shape.d_mlp), self.cfg.headline_pct
            key = arm_key(self.cfg, ids, self.cfg.patch_path, self.digest, pairs)
            if self.scales is not None:
                generate = lambda p: fast_patched_generate(self.m1, self.scales, p, pairs, shared_prefill=self.shared, **self.opts)  # noqa: E731
            else:
                generate = lambda p: patched_generate(self.m1, self.m2, p, pairs, **self.opts)  # noqa: E731
        return run_arm(self.cfg, arm, pct, seed, key, generate, ids, early=self.early)
