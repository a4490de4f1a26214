"""Change-score memory against the number of prompts (issue: peak for N and 4N within 10%).

Each size runs in its own process (peak RSS only grows within a process). The figure that matters is
the peak RSS *added* by the computation, over the RSS after both models are loaded: the models
themselves are the same for every N. Also prints the seconds, the tokens and the tokens per second.

    python benchmarks/change_score_memory.py [--model smollm2-135m-instruct] [--adapter DIR] [--prompts 32]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(model: str, adapter: str, n_prompts: int, tokens: int, batch_size: int) -> dict:
    from safety_neurons.method.change_scores import change_scores
    from safety_neurons.lm.chat import encode_prompts
    from safety_neurons.data.registry import load_prompt_set
    from safety_neurons.lm.models import load_model

    m1 = load_model(model, device="cpu")
    m2 = load_model(model, adapter=adapter, device="cpu")
    items = load_prompt_set("donotanswer")
    prompts = [i.text for i in items][:n_prompts]
    ids = encode_prompts(m1.tokenizer, prompts)
    before = rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = change_scores(m1, m2, ids, max_new_tokens=tokens, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"prompts": n_prompts, "tokens": result.n_tokens, "seconds": seconds, "rss_after_load_mib": before,
            "peak_mib": peak, "added_peak_mib": peak - max(before, peak_before)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", help="a trained M2 adapter (default: a random one)")
    parser.add_argument("--prompts", type=int, default=32, help="N: the runs use N and 4N prompts")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.model, args.adapter, args.child, args.tokens, args.batch_size)))
        return
    from safety_neurons.method.alignment import random_ia3_adapter

    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or str(random_ia3_adapter(args.model, tmp))
        rows = []
        for n in (args.prompts, 4 * args.prompts):
            cmd = [sys.executable, __file__, "--model", args.model, "--adapter", adapter, "--tokens", str(args.tokens),
                   "--batch-size", str(args.batch_size), "--child", str(n)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"model {args.model}, {args.tokens} new tokens, batch {args.batch_size}")
    print(f"{'prompts':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'RSS loaded':>11} {'peak':>8} {'added peak':>11}")
    for r in rows:
        print(f"{r['prompts']:8d} {r['tokens']:7d} {r['seconds']:8.1f} {r['tokens'] / r['seconds']:7.1f} "
              f"{r['rss_after_load_mib']:9.0f}Mi {r['peak_mib']:6.0f}Mi {r['added_peak_mib']:9.0f}Mi")
    small, large = rows
    ratio = large["peak_mib"] / small["peak_mib"]
    print(f"peak RSS {4 * args.prompts} vs {args.prompts} prompts: x{ratio:.3f} (target: within 10%, i.e. <= 1.10)")


if __name__ == "__main__":
    main()
