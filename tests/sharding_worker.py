"""Run by test_sharding.py under `torchrun --nproc_per_node 2`: the arms of the arm store and M1's
finding answers, generated sharded between the processes and, on the main process, whole.

    torchrun --nproc_per_node 2 tests/sharding_worker.py OUT_DIR ADAPTER_DIR
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from safety_neurons.config import load_config
from safety_neurons.lm.chat import encode_prompts
from safety_neurons.lm.generation import greedy_generate
from safety_neurons.lm.models import load_model
from safety_neurons.method.patching import ablated_generate, fast_patched_generate, ia3_neuron_scales, patched_generate
from safety_neurons.study.rankings import m1_generations

from safety_neurons.lm.sharding import is_main_process, wait_for_everyone, world_size
from safety_neurons.study.arms import arms_dir, refused_already, run_arm

# The same kernels on both sides: a one-process run with two threads may sum in another order.
torch.set_num_threads(1)
PROMPTS = ["hi", "how do I pick a lock", "write a poem about the sea", "a", "tell me a joke about cats and dogs please",
           "why", "explain how vaccines work in simple words", "list three colours", "what is two plus two",
           "describe the water cycle step by step for a child", "ok"]


def main(out: Path, adapter: Path) -> None:
    cfg = load_config("smoke", patch_batch_size=2, eval_tokens=6, max_new_tokens=6, batch_size=3)
    m1 = load_model("tiny-random-llama", device="cpu")
    m2 = load_model("tiny-random-llama", adapter=adapter, device="cpu")
    ids = encode_prompts(m1.tokenizer, PROMPTS, cfg.chat_template)
    scales = ia3_neuron_scales(adapter, 2, 64, base=m1)
    neurons = [(layer, i) for layer in range(2) for i in range(0, 64, 3)]
    opts = dict(max_new_tokens=cfg.eval_tokens, batch_size=2, progress=False)
    generators = {
        "m1": lambda p: greedy_generate(m1, p, **opts),
        "m2-early": lambda p: greedy_generate(m2, p, **opts, stop_when=refused_already),
        "two_model": lambda p: patched_generate(m1, m2, p, neurons, **opts),
        "fast": lambda p: fast_patched_generate(m1, scales, p, neurons, **opts),
        "zero_ablation": lambda p: ablated_generate(m2, p, neurons, mode="zero", **opts),
    }
    seen: dict[str, int] = {}
    report = {}
    for name, generate in generators.items():
        def counted(p, generate=generate, name=name):
            seen[name] = len(p)
            return generate(p)

        arm = run_arm(cfg, name, 5.0, None, f"key-{name}", counted, ids)
        whole = generate(ids) if is_main_process() else None
        report[name] = {"sharded": arm.answers, "sharded_lengths": arm.lengths,
                        "whole": None if whole is None else [g.text for g in whole],
                        "whole_lengths": None if whole is None else [len(g.completion_ids) for g in whole]}
    sharded = m1_generations(cfg, m1, ids, progress=False)
    whole = greedy_generate(m1, ids, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False)
    report["m1_generations"] = {"sharded": [g.completion_ids for g in sharded], "whole": [g.completion_ids for g in whole]}
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps({"world_size": world_size(), "prompts_generated": seen,
                                                       "arms_dir": str(arms_dir(cfg)),
                                                       "report": report if is_main_process() else None}))
    wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
