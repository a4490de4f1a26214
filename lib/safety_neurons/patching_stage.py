"""Stage 03 (dynamic_patching): the k sweep, the random baseline, ablations and the causal effect.

Every generation run ("arm": M1, M2, top-k safety neurons at k%, random neurons at k% and seed s,
all neurons, ablations) is judged per prompt and saved as JSON in the run's arm store
(runs/<name>/artifacts/arms/), named by a key of what it was made from: the base model, the prompts,
how they were generated, the adapter(s), the neurons and the answer length. So an interrupted sweep
resumes at the next unfinished arm, a changed ranking, adapter or prompt set recomputes, and any later
stage asking for the same generation (M1 or M2 on the same prompts, the same neurons patched) reads it
instead of generating it again. Per-prompt rows (prompt, arm, k, seed, answer, verdict) make every
figure recomputable.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .config import RunConfig
from .data import load_split
from .generation import Generation
from .io import content_key, read_json, write_json_atomic
from .judge import PHRASE_JUDGE, refusal_judge

STAGE = "03_dynamic_patching"
JUDGE = PHRASE_JUDGE


def stage_dir(cfg: RunConfig) -> Path:
    """The stage's own artifacts (its arms live in the run's arm store): created on first use."""
    path = cfg.artifact_dir(STAGE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def held_out_prompts(cfg: RunConfig, name: str) -> list[str]:
    """The evaluation split of one prompt set, as many prompts as the patching stages use."""
    return load_split(cfg, name, "evaluation")[: cfg.patch_prompts or None]


def patch_prompts(cfg: RunConfig) -> list[str]:
    """Held-out harmful prompts: the first harmful set's evaluation split."""
    return held_out_prompts(cfg, cfg.harmful_sets[0])


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
    from .judge import phrase_verdict

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
    from .alignment_stage import m1_name

    if method not in ARM_METHODS:
        raise ValueError(f"unknown arm method {method!r}; use one of {', '.join(ARM_METHODS)}")
    pairs = None if neurons is None else [[int(layer), int(i)] for layer, i in neurons]
    return content_key(m1_name(cfg), prompt_ids, method, adapters, pairs, cfg.eval_tokens, *extra)


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
    from .sharding import is_main_process, main_decides, sharded_generate

    path = arms_dir(cfg) / f"{key}.json"

    def stored() -> dict | None:
        if not path.exists():
            return None
        saved = read_json(path)
        return saved["arm"] if saved.get("key") == key and (early or not saved.get("early", False)) else None

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
        write_json_atomic(path, {"key": key, "judge": JUDGE, "early": early, "arm": asdict(arm)})
    return arm


def results_table(arms: list[Arm], prompts: list[str]):
    """One row per (arm, prompt): the per-prompt results every figure is computed from."""
    import pandas as pd

    rows = [{"arm": a.name, "k_pct": a.k_pct, "seed": a.seed, "prompt_index": i, "prompt": p, "answer": ans,
             "refused": r, "judge": JUDGE}
            for a in arms for i, (p, ans, r) in enumerate(zip(prompts, a.answers, a.refused))]
    return pd.DataFrame(rows)


def mean_over_seeds(arms: list[Arm]) -> np.ndarray:
    """Per-prompt safety score averaged over the random seeds of one k."""
    return np.mean([a.score for a in arms], axis=0)


def effect_defined(m1: Arm, m2: Arm) -> bool:
    """C has a denominator only when M2 scores differently from M1."""
    return m2.score.mean() != m1.score.mean()


def effect_table(cfg: RunConfig, m1: Arm, m2: Arm, safety: dict[float, Arm], random: dict[float, list[Arm]]):
    """Per k: safety score and causal effect C with bootstrap 95% intervals, for both arms,
    and the paired test of safety vs random neurons on the same prompts."""
    import pandas as pd

    from .stats import bootstrap_causal_effect, paired_test

    defined = effect_defined(m1, m2)
    if not defined:
        import warnings

        warnings.warn(f"M2 is no safer than M1 on these prompts (both score {m1.score.mean():.3f} under {JUDGE}): "
                      "the causal effect C is undefined and reported as NaN", stacklevel=2)
    nan = (math.nan, math.nan, math.nan)

    def effect(scores):
        return tuple(bootstrap_causal_effect(scores, m1.score, m2.score, n_boot=cfg.bootstrap_samples, seed=cfg.seed)) if defined else nan

    rows = []
    for pct in sorted(safety):
        s_safe, s_rand = safety[pct].score, mean_over_seeds(random[pct])
        c_safe, c_rand = effect(s_safe), effect(s_rand)
        rows.append({"k_pct": pct, "safety": s_safe.mean(), "random": s_rand.mean(),
                     "random_sd_over_seeds": float(np.std([a.score.mean() for a in random[pct]])),
                     "C_safety": c_safe[0], "C_safety_lo": c_safe[1], "C_safety_hi": c_safe[2],
                     "C_random": c_rand[0], "C_random_lo": c_rand[1], "C_random_hi": c_rand[2],
                     "pvalue": paired_test(s_safe, s_rand, seed=cfg.seed)})
    return pd.DataFrame(rows)


def smallest_k(effects, threshold: float = 0.9) -> float:
    """The smallest k% whose C reaches `threshold` (NaN if none does)."""
    hit = effects[effects["C_safety"] >= threshold]
    return float(hit["k_pct"].min()) if len(hit) else math.nan


def at_pct(effects, pct: float):
    rows = effects[np.isclose(effects["k_pct"], pct)]
    if not len(rows):
        raise ValueError(f"the sweep has no k = {pct:g}%: add it to patch_k_pcts")
    return rows.iloc[0]


def patching_metrics(cfg: RunConfig, effects, sweep: "Sweep", seconds: float) -> dict:
    """Metrics of stage 03 (judge: refusal-phrase). `C.<arm>.k<pct>` with `.lo`/`.hi` bounds; the
    throughput compares the patched runs at the headline k with M1's plain HF generate."""
    from .stats import causal_effect

    m1, m2, all_arm, ablations = sweep.m1, sweep.m2, sweep.all_neurons, sweep.ablations
    two_model = sweep.two_model
    fast = sweep.safety[cfg.headline_pct] if cfg.patch_path == "fast" else two_model

    metrics: dict = {"safety": {"m1": m1.score.mean(), "m2": m2.score.mean()}, "C": {"safety": {}, "random": {}}}
    for _, row in effects.iterrows():
        label = f"k{pct_label(row['k_pct'])}"
        for arm in ("safety", "random"):
            metrics["C"][arm] |= {label: row[f"C_{arm}"], f"{label}.lo": row[f"C_{arm}_lo"], f"{label}.hi": row[f"C_{arm}_hi"]}
    five = at_pct(effects, cfg.headline_pct)
    metrics["C"]["safety"]["at_5pct"] = five["C_safety"]
    metrics["C"]["random"]["at_5pct"] = five["C_random"]
    defined = effect_defined(m1, m2)
    metrics["C"]["all_neurons"] = causal_effect(all_arm.score.mean(), m1.score.mean(), m2.score.mean()) if defined else math.nan
    metrics["pvalue"] = {"at_5pct": five["pvalue"]}
    metrics["k_pct_for_C90"] = smallest_k(effects)
    metrics["ablation"] = {mode.split("_")[0]: {"at_5pct": arm.score.mean()} for mode, arm in ablations.items()}
    # M1's arm is plain HF generate: the throughput reference
    metrics["throughput"] = {"plain_tok_s": m1.tokens_per_second, "patched_tok_s": two_model.tokens_per_second,
                             "fast_tok_s": fast.tokens_per_second,
                             "patched_over_plain": two_model.tokens_per_second / m1.tokens_per_second,
                             "fast_over_plain": fast.tokens_per_second / m1.tokens_per_second}
    metrics["fast_equals_two_model"] = float(np.mean([a == b for a, b in zip(fast.answers, two_model.answers)]))
    metrics["all_neurons_equals_m2"] = float(np.mean([a == b for a, b in zip(all_arm.answers, m2.answers)]))
    metrics["seconds"] = seconds
    return metrics



@dataclass
class Sweep:
    """Every arm of the stage, by role."""

    m1: Arm  # plain HF generate
    m2: Arm
    all_neurons: Arm
    safety: dict[float, Arm]
    random: dict[float, list[Arm]]
    ablations: dict[str, Arm]
    two_model: Arm

    def arms(self) -> list[Arm]:
        return [self.m1, self.m2, self.all_neurons, *self.safety.values(),
                *[a for arms in self.random.values() for a in arms], *self.ablations.values(), self.two_model]


def run_sweep(cfg: RunConfig, m1, m2, adapter: Path, ranking, prompt_ids: list[list[int]], *,
              progress: bool = True) -> Sweep:
    """All arms of the stage. `m1` is the M1 bridge (the fast path's base), `m2` the folded M2 bridge
    (the two-model path, M2's own answers and the ablations), `ranking` a NeuronRanking."""
    from tqdm.auto import tqdm

    from .generation import greedy_generate
    from .patching import (SharedM2Prefill, ablated_generate, fast_patched_generate, ia3_neuron_scales,
                           k_from_percent, patched_generate, random_neurons)

    from .models import adapter_digest

    n_neurons, d_mlp = ranking.n_neurons, ranking.d_mlp
    digest = adapter_digest(adapter)
    opts = generation_options(cfg)
    scales = ia3_neuron_scales(adapter, ranking.n_layers, d_mlp, base=m1) if cfg.patch_path == "fast" else None
    # M2 sees only the prompt at prefill, so every fast arm can share its prefill of each batch.
    shared = SharedM2Prefill()

    # Rows whose opening already holds a refusal phrase stop there: the judge's verdict cannot change
    # any more (it only looks for phrases in the opening), so the rest is not worth generating. The
    # arms that are compared token for token (M1, all neurons, the headline k on both paths) run in full.
    early = dict(opts, stop_when=refused_already)
    Planned = tuple[str, float, "int | None", str, Callable[[list[list[int]]], list[Generation]], bool]

    def patch(name: str, pct: float, seed: int | None, neurons, path: str = cfg.patch_path, full: bool = False) -> Planned:
        kw = opts if full else early
        key = arm_key(cfg, prompt_ids, path, digest, neurons)
        if path == "fast":
            return name, pct, seed, key, lambda ids: fast_patched_generate(m1, scales, ids, neurons, shared_prefill=shared, **kw), not full
        return name, pct, seed, key, lambda ids: patched_generate(m1, m2, ids, neurons, **kw), not full

    # M1's answers come from plain HF generate (also the throughput reference); that the patching
    # loop with no neurons gives the same tokens is a unit test, not worth an arm of the sweep.
    plan: list[Planned] = [
        ("m1", 0.0, None, arm_key(cfg, prompt_ids, "generate", None), lambda ids: greedy_generate(m1, ids, **opts), False),
        ("m2", 100.0, None, arm_key(cfg, prompt_ids, "generate", digest), lambda ids: greedy_generate(m2, ids, **opts), False),
        patch("all", 100.0, None, ranking.top(n_neurons), full=True),
    ]
    for pct in cfg.patch_k_pcts:
        top = ranking.top(k_from_percent(pct, n_neurons))
        plan.append(patch("safety", pct, None, top, full=pct == cfg.headline_pct))
        plan += [patch("random", pct, s, random_neurons(top, d_mlp, s)) for s in cfg.patch_random_seeds]
    head = ranking.top(k_from_percent(cfg.headline_pct, n_neurons))
    means = ranking.extras.get("mean_m2")
    plan += [
        patch("safety_two_model", cfg.headline_pct, None, head, "two_model", full=True),
        ("zero_ablation", cfg.headline_pct, None, ablation_key(cfg, prompt_ids, "zero", digest, head, ranking),
         lambda ids: ablated_generate(m2, ids, head, mode="zero", **early), True),
    ]
    if means is not None:
        plan.append(("mean_ablation", cfg.headline_pct, None, ablation_key(cfg, prompt_ids, "mean", digest, head, ranking),
                     lambda ids: ablated_generate(m2, ids, head, mode="mean", means=means, **early), True))
    # The headline arms first (M1, M2, the headline k, its random seeds, the two-model check, all
    # neurons): an interrupted sweep has the central numbers before the rest of the k grid.
    def priority(item: Planned) -> int:
        name, pct = item[0], item[1]
        return 0 if name in ("m1", "m2") else 1 if pct == cfg.headline_pct else 2 if name == "all" else 3

    plan.sort(key=priority)
    done: dict[tuple[str, float, int | None], Arm] = {}
    bar = tqdm(plan, desc="patching arms", unit="arm", disable=not progress)
    for name, pct, seed, key, generate, stops_early in bar:
        bar.set_postfix_str(arm_id(name, pct, seed))
        done[(name, pct, seed)] = run_arm(cfg, name, pct, seed, key, generate, prompt_ids, early=stops_early)
    return Sweep(
        m1=done[("m1", 0.0, None)], m2=done[("m2", 100.0, None)],
        all_neurons=done[("all", 100.0, None)],
        safety={p: done[("safety", p, None)] for p in cfg.patch_k_pcts},
        random={p: [done[("random", p, s)] for s in cfg.patch_random_seeds] for p in cfg.patch_k_pcts},
        ablations={n: a for (n, _, _), a in done.items() if n.endswith("_ablation")},
        two_model=done[("safety_two_model", cfg.headline_pct, None)],
    )
