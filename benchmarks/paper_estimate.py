"""Expected runtime and peak memory of every stage of a profile (default: `paper`) on one GPU: an estimate.

The work of each stage is counted from the profile's config (tokens generated, teacher-forced and trained
on, by how many models); its cost comes from the model's shape and the GPU's published peaks:
- forward, prefill and training tokens are compute-bound: FLOPs / (peak bf16 FLOP/s x `--mfu`);
  a forward costs 2 FLOPs per parameter per token; an (IA)^3 training token 4 (forward, and a backward
  through the activations only: no weight gradients) plus the reference forward (2);
- a decode step is bound by reading the weights (and the KV cache) once: bytes / (bandwidth x `--bw-eff`),
  plus a fixed per-step cost for the hooks and Python around it (`--step-ms`);
- patched generation: the fast path runs two rows per prompt (M1 and M2 in one batch), the two-model
  path two models.
None of this was measured on a GPU: no GPU was lent while it was written. The one CPU-measured ratio it
uses (a trl DPO step against a plain forward+backward) is named in the output. With a GPU,
`benchmarks/stage_timings.py --profile default` measures the embedded study; replace these figures by
measured ones when a GPU run of `paper` exists.

    python benchmarks/paper_estimate.py [--profile paper] [--model llama-2-7b] [--gpu h100]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

# Shapes of the paper's models (their published configs): layers, d_model, d_mlp, vocab, heads, kv heads,
# head dim, tied embeddings.
SHAPES = {
    "llama-2-7b": dict(layers=32, d_model=4096, d_mlp=11008, vocab=32000, heads=32, kv_heads=32, head_dim=128, tied=False),
    "mistral-7b": dict(layers=32, d_model=4096, d_mlp=14336, vocab=32000, heads=32, kv_heads=8, head_dim=128, tied=False),
    "gemma-7b": dict(layers=28, d_model=3072, d_mlp=24576, vocab=256000, heads=16, kv_heads=16, head_dim=256, tied=True),
    "qwen2.5-3b": dict(layers=36, d_model=2048, d_mlp=11008, vocab=151936, heads=16, kv_heads=2, head_dim=128, tied=True),
}
# Published dense bf16 peak (FLOP/s), HBM bandwidth (bytes/s) and memory (GiB).
GPUS = {
    "h100": dict(flops=989e12, bandwidth=3.35e12, memory_gib=80),
    "a100": dict(flops=312e12, bandwidth=2.0e12, memory_gib=80),
}
BYTES = 2  # bf16 weights, activations and KV cache
# Measured on the 2-core CPU with the embedded model: a DPO step (trl, dense CPU head, no retain term) against a
# plain forward+backward of the same 16 sequences (`python benchmarks/dpo_step.py`; README, performance section).
DPO_STEP_OVERHEAD = 1.4


def parameters(shape: dict) -> tuple[float, float]:
    """(parameters a token's forward multiplies by: layers and LM head, parameters stored)."""
    attn = shape["d_model"] * shape["head_dim"] * (2 * shape["heads"] + 2 * shape["kv_heads"])
    mlp = 3 * shape["d_model"] * shape["d_mlp"]
    body = shape["layers"] * (attn + mlp)
    head = shape["vocab"] * shape["d_model"]
    return body + head, body + head * (1 if shape["tied"] else 2)


@dataclass
class Work:
    """What one stage does, in tokens."""

    generate: list[tuple[int, int, int, int]] = field(default_factory=list)  # (prompts, rows per prompt, prompt tokens, new tokens)
    forward: float = 0.0  # teacher-forced tokens (no generation)
    train: float = 0.0  # training tokens, (IA)^3 forward+backward with a reference forward
    models: int = 1  # models resident at once (two-model patching, judges)
    train_batch_tokens: int = 0  # tokens in one training step (activation memory)


def stage_work(cfg, layers: int, prompt_tokens: int, jailbreak_tokens: int) -> dict[str, Work]:
    split = cfg.max_prompts_per_split or 200
    evals = min(cfg.eval_prompts or split, split)
    patch = min(cfg.patch_prompts or split, split)
    new, ans = cfg.max_new_tokens, cfg.eval_tokens
    n_models = len(cfg.train_seeds) + len(cfg.objectives) - 1
    pair_tokens = 2 * (prompt_tokens + cfg.answer_tokens)
    pairs = {"harmless": cfg.align_harmful, "helpful": cfg.align_harmful if cfg.helpful_dataset != "helpful" else cfg.align_benign,
             "reasoning": (cfg.align_harmful + cfg.align_benign) // 2, "extraction": (cfg.align_harmful + cfg.align_benign) // 2}
    trained = sum(pairs["harmless"] for _ in cfg.train_seeds) + sum(pairs[o] for o in cfg.objectives if o != "harmless")
    sft = cfg.sft_examples * 256 if cfg.sft_dataset else 0
    w = {}
    w["00_setup"] = Work(generate=[(cfg.n_setup_examples, 1, prompt_tokens, new)])
    w["01_alignment"] = Work(
        generate=[((n_models + 1) * 2 * evals, 1, prompt_tokens, ans)], forward=(n_models + 1) * cfg.ppl_texts * 256,
        train=sft + trained * cfg.dpo_epochs * pair_tokens, train_batch_tokens=cfg.dpo_batch_size * pair_tokens)
    finding = cfg.finding_prompts or split
    w["02_change_scores"] = Work(generate=[(finding, 1, prompt_tokens, new)],
                                 forward=n_models * 2 * finding * (prompt_tokens + new) + 2 * 2 * finding * prompt_tokens)
    arms = len(cfg.patch_k_pcts) * (1 + len(cfg.patch_random_seeds)) + 1  # + all neurons
    w["03_dynamic_patching"] = Work(generate=[(arms * patch, 2, prompt_tokens, ans), (4 * patch, 1, prompt_tokens, ans),
                                              (patch, 2, prompt_tokens, ans)], models=2)
    sets = len(cfg.harmful_sets)
    prompts_04 = [(2 * evals, 2, prompt_tokens, ans), (2 * evals, 1, prompt_tokens, ans)]  # patched + M1/M2 arms per set
    w["04_transfer_capability"] = Work(
        generate=[(p * (sets - 1), r, t, n) for p, r, t, n in prompts_04] + [(p, r, jailbreak_tokens, n) for p, r, _, n in prompts_04],
        forward=(len(cfg.judges) - 1) * 4 * sets * evals * (prompt_tokens + ans) + 3 * cfg.ppl_texts * 256,
        models=1 + (len(cfg.judges) > 1))
    w["05_stability"] = Work(generate=[((len(cfg.train_seeds) - 1) * patch, 3, prompt_tokens, ans)])
    w["06_alignment_tax"] = Work(generate=[(4 * (patch + evals), 2, prompt_tokens, ans)])
    guard = min(cfg.safeguard_prompts or split, split)
    w["07_safeguard"] = Work(generate=[(2 * sets * guard * 1.6, 1, prompt_tokens, ans)], forward=2 * sets * guard * 1.6 * prompt_tokens)
    tune_evals = cfg.tune_steps // cfg.tune_eval_every + 1
    w["08_interpretation"] = Work(
        generate=[(len(cfg.ablation_k_pcts) * 2 * (1 + len(cfg.ablation_random_seeds)) * patch, 1, prompt_tokens, ans),
                  ((2 + len(cfg.baseline_methods)) * patch, 2, prompt_tokens, ans),
                  (4 * tune_evals * cfg.tune_eval_prompts, 1, prompt_tokens, ans)],
        forward=cfg.trace_pairs * 2 * 2 * layers * 2 * prompt_tokens + 2 * 2 * cfg.probe_prompts * prompt_tokens,
        train=4 * cfg.tune_steps * cfg.tune_batch_size * (prompt_tokens + ans),
        train_batch_tokens=cfg.tune_batch_size * (prompt_tokens + ans))
    return w


def batch_prompts(batch_size: int | str, shape: dict, gpu: dict, resident: float, prompts: int, rows: int, tokens: int) -> int:
    """Prompts per batch: an integer batch_size as it is; "auto" as the library sizes it (lm/memory.py) from the
    memory the resident models leave free."""
    if batch_size != "auto":
        return int(batch_size)
    from safety_neurons.lm.memory import rows_that_fit

    sizes = dict(n_layers=shape["layers"], d_model=shape["d_model"], n_heads=shape["heads"], d_mlp=shape["d_mlp"],
                 d_vocab=shape["vocab"], d_head=shape["head_dim"], n_kv_heads=shape["kv_heads"])
    free = int(gpu["memory_gib"] * 2**30 - resident)
    return rows_that_fit(free, sizes, tokens, BYTES, rows_per_prompt=rows, n_prompts=max(1, int(prompts)), generation=True)


def estimate(work: Work, shape: dict, gpu: dict, args, batch_size: int | str) -> tuple[float, float, list[int]]:
    """(seconds, peak GiB, prompts per batch of each generation) of one stage."""
    n, stored = parameters(shape)
    weights = stored * BYTES
    flops = gpu["flops"] * args.mfu
    kv_per_token = 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * BYTES
    seconds, peak, sizes = 0.0, work.models * weights, []
    for prompts, rows, ptok, ntok in work.generate:
        batch = batch_prompts(batch_size, shape, gpu, work.models * weights, prompts, rows, ptok + ntok)
        sizes.append(batch)
        batches = math.ceil(prompts / batch)
        batch_rows = min(prompts, batch) * rows
        kv = batch_rows * (ptok + ntok) * kv_per_token
        step = (weights * (2 if rows == 2 and work.models == 2 else 1) + kv) / (gpu["bandwidth"] * args.bw_eff)
        step = max(step, 2 * n * batch_rows / flops) + args.step_ms / 1000
        prefill = 2 * n * batch_rows * ptok / flops
        seconds += batches * (prefill + ntok * step)
        peak = max(peak, work.models * weights + kv)
    seconds += 2 * n * work.forward / flops
    if work.train:
        seconds += (4 * DPO_STEP_OVERHEAD + 2) * n * work.train / (gpu["flops"] * args.train_mfu)
        # activations kept for the backward: about 34 d_model bytes per token per layer in bf16 (no recomputation)
        peak = max(peak, weights + work.train_batch_tokens * shape["layers"] * 34 * shape["d_model"])
    return seconds, peak / 2**30, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--model", default="llama-2-7b", choices=sorted(SHAPES))
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    parser.add_argument("--mfu", type=float, default=0.4, help="sustained fraction of peak FLOP/s, forward (assumed)")
    parser.add_argument("--train-mfu", type=float, default=0.3, help="sustained fraction of peak FLOP/s, training (assumed)")
    parser.add_argument("--bw-eff", type=float, default=0.7, help="sustained fraction of HBM bandwidth (assumed)")
    parser.add_argument("--step-ms", type=float, default=25.0, help="hooks and Python per decode step, ms (assumed)")
    parser.add_argument("--prompt-tokens", type=int, default=80, help="mean templated prompt length (assumed)")
    parser.add_argument("--jailbreak-tokens", type=int, default=300, help="mean jailbreak prompt length (assumed)")
    args = parser.parse_args()

    from safety_neurons.config import load_config

    cfg = load_config(args.profile)
    shape, gpu = SHAPES[args.model], GPUS[args.gpu]
    n, _ = parameters(shape)
    print(f"profile {args.profile}, model shape {args.model} ({n / 1e9:.2f} B parameters per token), one {args.gpu.upper()} "
          f"({gpu['memory_gib']} GB), bf16")
    print(f"ESTIMATED, not measured: mfu {args.mfu} (training {args.train_mfu}), bandwidth x{args.bw_eff}, "
          f"{args.step_ms:g} ms per decode step, prompts {args.prompt_tokens} tokens (jailbreak {args.jailbreak_tokens}); "
          f"CPU-measured: DPO step / plain forward+backward x{DPO_STEP_OVERHEAD}")
    print(f"batch_size {cfg.batch_size!r}" + (" (sized as lm/memory.py does, from the memory the models leave free)"
                                              if cfg.batch_size == "auto" else ""))
    print(f"{'stage':<26} {'minutes':>8} {'peak GiB':>9}  prompts per batch")
    total = 0.0
    for stage, work in stage_work(cfg, shape["layers"], args.prompt_tokens, args.jailbreak_tokens).items():
        seconds, gib, batches = estimate(work, shape, gpu, args, cfg.batch_size)
        total += seconds
        flag = "  (over the GPU's memory)" if gib > gpu["memory_gib"] else ""
        print(f"{stage:<26} {seconds / 60:>8.1f} {gib:>9.1f}  {'/'.join(map(str, batches))}{flag}")
    print(f"{'total':<26} {total / 60:>8.1f}")


if __name__ == "__main__":
    main()
