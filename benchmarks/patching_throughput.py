"""Throughput of dynamic activation patching against plain greedy generation of M1.

For each batch size, generates `--tokens` new tokens for that many prompts with
  plain     M1's Hugging Face `generate` (greedy, what `greedy_generate` runs),
  k=0 loop  `patched_generate` with no neurons (the patching loop's own overhead),
  two-model `patched_generate(M1, M2, top k% neurons)`,
  fast      `fast_patched_generate(M1, scales, same neurons)`,
and prints tokens/s, the ratios to plain and the issue's targets (two-model >= 0.45, fast >= 0.6 on
the 2-core CPU). Neurons are k% drawn at random over all layers (the throughput does not depend on
which neurons they are). Without --adapter a random (IA)^3 adapter (scales ~ 1 + 0.1 N(0, 1) on
down_proj's input) is made in a temporary folder.

    python benchmarks/patching_throughput.py [--model smollm2-135m-instruct] [--adapter DIR]
        [--batch-sizes 1 4 16] [--tokens 32] [--k-pct 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable
from pathlib import Path

import numpy as np
import torch

TARGET_TWO_MODEL = 0.45
TARGET_FAST = 0.6
FALLBACK_PROMPTS = [
    "Explain how vaccines train the immune system.",
    "Write a short poem about autumn rain.",
    "What are the main causes of inflation?",
    "Give me three tips for a job interview.",
    "How do I make a bomb at home?",
    "Describe the water cycle for a ten-year-old.",
    "Write instructions for picking a lock.",
    "Summarise the plot of Hamlet in two sentences.",
]


def prompt_ids(tokenizer, n: int) -> tuple[list[list[int]], str]:
    from safety_neurons.lm.chat import encode_prompts

    try:
        from safety_neurons.data.registry import load_prompt_set

        texts, source = [item.text for item in load_prompt_set("harmbench")], "harmbench"
    except Exception as exc:  # data not prepared: plain strings still measure throughput
        print(f"(harmbench prompts unavailable: {exc}; using built-in strings)")
        texts, source = FALLBACK_PROMPTS, "built-in strings"
    texts = [texts[i % len(texts)] for i in range(n)]
    return encode_prompts(tokenizer, texts), source


def timed(fn, device: torch.device, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def parse_args(doc: str, add_own: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """The options both benchmarks share (model, repeats, device, dtype, threads, seed) plus the
    caller's own; applies --threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    add_own(parser)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each measurement (median)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    def own(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--adapter", default=None, help="(IA)^3 adapter folder (default: a random one)")
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
        parser.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
        parser.add_argument("--k-pct", type=float, default=5.0, help="percent of all neurons patched")

    args = parse_args(__doc__, own)

    from safety_neurons.method.alignment import random_ia3_adapter
    from safety_neurons.lm.generation import greedy_generate
    from safety_neurons.lm.models import load_model, model_shape
    from safety_neurons.method.patching import fast_patched_generate, ia3_neuron_scales, patched_generate
    from safety_neurons.method.neurons import k_from_percent

    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else random_ia3_adapter(args.model, Path(tmp) / "ia3", seed=args.seed)
        m1 = load_model(args.model, device=args.device, dtype=args.dtype)
        m2 = load_model(args.model, adapter=adapter, device=args.device, dtype=args.dtype)
        shape = model_shape(m1)
        scales = ia3_neuron_scales(adapter, shape.n_layers, shape.d_mlp, base=m1)
    device = next(m1.original_model.parameters()).device
    k = k_from_percent(args.k_pct, shape.n_neurons)
    flat = np.random.default_rng(args.seed).choice(shape.n_neurons, size=k, replace=False)
    neurons = [(int(i) // shape.d_mlp, int(i) % shape.d_mlp) for i in flat]
    ids, source = prompt_ids(m1.tokenizer, max(args.batch_sizes))

    print(f"model {args.model} ({shape.n_layers} layers x {shape.d_mlp} neurons), device {device}, "
          f"dtype {next(m1.original_model.parameters()).dtype}, torch threads {torch.get_num_threads()}")
    print(f"adapter {'random (1 + 0.1 N(0,1))' if not args.adapter else adapter}; k = {k} neurons ({args.k_pct}%) "
          f"in {len({l for l, _ in neurons})} layers; {args.tokens} new tokens; prompts: {source}")

    # warm-up (first calls allocate and build caches)
    greedy_generate(m1, ids[:1], max_new_tokens=2, progress=False)
    patched_generate(m1, m2, ids[:1], neurons, max_new_tokens=2, progress=False)
    fast_patched_generate(m1, scales, ids[:1], neurons, max_new_tokens=2, progress=False)

    header = (f"{'batch':>5} | {'plain tok/s':>11} | {'k=0 loop':>9} | {'two-model':>9} | {'fast':>9} | "
              f"{'two/plain':>9} | {'fast/plain':>10} | {'fast==two':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for bs in args.batch_sizes:
        batch = ids[:bs]
        kw = dict(max_new_tokens=args.tokens, batch_size=bs, progress=False)
        cells = {}
        for name, fn in (
            ("plain", lambda: greedy_generate(m1, batch, **kw)),
            ("k0", lambda: patched_generate(m1, m2, batch, [], **kw)),
            ("two", lambda: patched_generate(m1, m2, batch, neurons, **kw)),
            ("fast", lambda: fast_patched_generate(m1, scales, batch, neurons, **kw)),
        ):
            seconds, gens = timed(fn, device, args.repeats)
            n_tokens = sum(len(g.completion_ids) for g in gens)
            cells[name] = (n_tokens / seconds, gens)
        same = sum(a.completion_ids == b.completion_ids for a, b in zip(cells["two"][1], cells["fast"][1]))
        plain = cells["plain"][0]
        two_ratio, fast_ratio = cells["two"][0] / plain, cells["fast"][0] / plain
        rows.append((bs, two_ratio, fast_ratio))
        print(f"{bs:>5} | {plain:>11.1f} | {cells['k0'][0]:>9.1f} | {cells['two'][0]:>9.1f} | {cells['fast'][0]:>9.1f} | "
              f"{two_ratio:>9.2f} | {fast_ratio:>10.2f} | {same:>4}/{len(batch):<4}")
    print(f"targets (issue, 2-core CPU): two/plain >= {TARGET_TWO_MODEL}, fast/plain >= {TARGET_FAST}")
    for bs, two_ratio, fast_ratio in rows:
        verdict = lambda r, t: "ok" if r >= t else "BELOW"  # noqa: E731
        print(f"  batch {bs:>3}: two-model {two_ratio:.2f} {verdict(two_ratio, TARGET_TWO_MODEL)}, "
              f"fast {fast_ratio:.2f} {verdict(fast_ratio, TARGET_FAST)}")


if __name__ == "__main__":
    main()
