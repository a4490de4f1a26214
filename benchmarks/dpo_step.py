"""DPO step cost against a plain forward+backward of the same tokens (issue: at most 2x).

Builds one batch of preference pairs, runs trl's DPOTrainer for a few steps (reference log-probs
precomputed, as the alignment stage does), and times a plain forward+backward of the very same
chosen and rejected sequences through the same (IA)^3 model. Prints both and their ratio.

    python benchmarks/dpo_step.py [--model smollm2-135m-instruct] [--pairs 8] [--steps 4] [--trl-head]

On the CPU the library scores DPO log-probs with a dense head (safety_neurons.method.cpu_logprobs); --trl-head
times the same steps through trl's own chunked head too.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step (batch size)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--answer-words", type=int, default=30)
    parser.add_argument("--trl-head", action="store_true", help="also time the steps with trl's chunked LM head")
    args = parser.parse_args()

    from peft import get_peft_model

    from safety_neurons.method.alignment import TrainSettings, ia3_mlp_config, train_dpo
    from safety_neurons.lm.chat import format_prompt
    from safety_neurons.lm.models import load_hf_model
    from safety_neurons.data.preferences import Preference

    words = " ".join(["information"] * args.answer_words)
    pairs = [Preference(f"Question number {i}: explain the topic in detail.", f"Sure. {words}", f"No. {words} {words[:40]}", "bench")
             for i in range(args.pairs * args.steps)]
    settings = TrainSettings(learning_rate=1e-3, epochs=1.0, batch_size=args.pairs, save_steps=10_000)

    with tempfile.TemporaryDirectory() as out:
        result = train_dpo(args.model, pairs, out, settings=settings, progress=False)
    dpo_step = result.step_seconds
    trl_step = None
    if args.trl_head:  # the same steps through trl's own chunked LM head (what a CPU run used before)
        import contextlib

        import safety_neurons.method.alignment as alignment

        dense = alignment.dense_cpu_logprobs
        alignment.dense_cpu_logprobs = lambda device: contextlib.nullcontext()
        try:
            with tempfile.TemporaryDirectory() as out:
                trl_step = train_dpo(args.model, pairs, out, settings=settings, progress=False).step_seconds
        finally:
            alignment.dense_cpu_logprobs = dense

    model, tok = load_hf_model(args.model)
    peft_model = get_peft_model(model, ia3_mlp_config())
    peft_model.train()
    texts = []
    for p in pairs[: args.pairs]:
        prompt = format_prompt(tok, p.prompt)
        texts += [prompt + p.chosen + tok.eos_token, prompt + p.rejected + tok.eos_token]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    n_tokens = int(batch["attention_mask"].sum())
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        out = peft_model(**batch)
        loss = out.logits.float().log_softmax(-1).mean()
        loss.backward()
        peft_model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    plain = statistics.median(times[1:] if len(times) > 1 else times)
    print(f"device: cpu, threads: {torch.get_num_threads()}, model: {args.model}")
    print(f"batch: {args.pairs} pairs = {2 * args.pairs} sequences, {n_tokens} tokens")
    print(f"plain forward+backward: {plain:.2f} s")
    print(f"DPO step (trl, mean of {result.steps}): {dpo_step:.2f} s")
    print(f"ratio DPO / plain: {dpo_step / plain:.2f}")
    if trl_step is not None:
        print(f"DPO step with trl's chunked LM head: {trl_step:.2f} s (ratio to plain {trl_step / plain:.2f})")


if __name__ == "__main__":
    main()
