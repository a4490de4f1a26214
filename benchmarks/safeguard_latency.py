"""Latency of the safeguard: the last-token feature pass and the classifier on top of it.

Encodes N prompts (harmbench when prepared, else built-in strings) and measures
  feature pass   `last_token_activations` over all layers, ms per prompt, at each batch size;
  safeguard      `Safeguard.predict_proba` end to end (hooks only the neurons' layers and stops after
                 the deepest), ms per prompt, at each batch size;
  classifier     `predict_proba_from_activations` on one row (median of --calls calls, microseconds)
                 and on one batch of the largest batch size (microseconds per batch);
for safeguards fitted on synthetic labels (a random projection of the activations above its median)
with k neurons drawn at random over all layers. A k larger than the model's neuron count is skipped.
If the model cannot be loaded, the tiny random model stands in (the reason is printed).

    python benchmarks/safeguard_latency.py [--model smollm2-135m-instruct] [--prompts 64]
        [--ks 10 100 1000] [--batch-sizes 1 16] [--calls 1000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from patching_throughput import parse_args, prompt_ids, timed  # the sibling benchmark's options, prompts and timer

FALLBACK_MODEL = "tiny-random-llama"


def load_or_fallback(name: str, device: str, dtype: str):
    from safety_neurons.lm.models import load_model

    try:
        return name, load_model(name, device=device, dtype=dtype)
    except Exception as exc:  # a missing or unprepared model should not stop the measurement
        print(f"(could not load {name}: {exc}; using {FALLBACK_MODEL})")
        return FALLBACK_MODEL, load_model(FALLBACK_MODEL, device=device, dtype=dtype)


def median_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def main() -> None:
    def own(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prompts", type=int, default=64, help="number of prompts N")
        parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000], help="neurons per safeguard")
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
        parser.add_argument("--calls", type=int, default=1000, help="classifier calls per median")

    args = parse_args(__doc__, own)

    from safety_neurons.lm.models import base_fingerprint, model_shape
    from safety_neurons.method.safeguard import Safeguard, classification_scores, last_token_activations

    name, bridge = load_or_fallback(args.model, args.device, args.dtype)
    shape = model_shape(bridge)
    hf = bridge.original_model
    device = next(hf.parameters()).device
    ids, source = prompt_ids(bridge.tokenizer, args.prompts)
    print(f"model {name} ({shape.n_layers} layers x {shape.d_mlp} neurons), device {device}, "
          f"dtype {next(hf.parameters()).dtype}, torch threads {torch.get_num_threads()}")
    print(f"{len(ids)} prompts ({source}), {statistics.mean(len(p) for p in ids):.0f} tokens on average")

    last_token_activations(bridge, ids[:1], progress=False)  # warm-up: first calls allocate
    print("feature pass, all layers:")
    acts = None
    for bs in args.batch_sizes:
        seconds, acts = timed(lambda: last_token_activations(bridge, ids, batch_size=bs, progress=False), device, args.repeats)
        print(f"  batch {bs:>3}: {1e3 * seconds / len(ids):8.2f} ms/prompt")

    rng = np.random.default_rng(args.seed)
    projection = acts.astype(np.float64) @ rng.standard_normal(acts.shape[1])
    labels = (projection > np.median(projection)).astype(int)
    row, batch = acts[:1], acts[: max(args.batch_sizes)]
    header = (f"{'k':>5} | {'layers':>6} | {'train acc':>9} | "
              + " | ".join(f"{f'e2e b{bs} ms/p':>13}" for bs in args.batch_sizes)
              + f" | {'clf us/prompt':>13} | {f'clf us/batch{len(batch)}':>15}")
    print(header)
    print("-" * len(header))
    for k in args.ks:
        if k > shape.n_neurons:
            print(f"{k:>5} | skipped: the model has {shape.n_neurons} neurons")
            continue
        flat = rng.choice(shape.n_neurons, size=k, replace=False)
        neurons = [(int(i) // shape.d_mlp, int(i) % shape.d_mlp) for i in flat]
        safeguard = Safeguard.fit(acts, labels, neurons, n_layers=shape.n_layers, d_mlp=shape.d_mlp, model_name=name,
                                  fingerprint=base_fingerprint(bridge), seed=args.seed)
        train_accuracy = classification_scores(labels, safeguard.predict_proba_from_activations(acts))["accuracy"]
        end_to_end = [timed(lambda: safeguard.predict_proba(bridge, ids, batch_size=bs), device, args.repeats)[0]
                      for bs in args.batch_sizes]
        per_row = median_us(lambda: safeguard.predict_proba_from_activations(row), args.calls)
        per_batch = median_us(lambda: safeguard.predict_proba_from_activations(batch), args.calls)
        print(f"{k:>5} | {len({layer for layer, _ in neurons}):>6} | {train_accuracy:>9.3f} | "
              + " | ".join(f"{1e3 * s / len(ids):>13.2f}" for s in end_to_end)
              + f" | {per_row:>13.1f} | {per_batch:>15.1f}")


if __name__ == "__main__":
    main()
