"""What one SFT recipe does to the base model (issue 21): stage 01's SFT and its evaluation, without DPO.

Trains (or reuses) the profile's SFT adapter in its own run directory, then prints one row: the base model and M1
on the held-out prompts (refusal per set, perplexity on the text corpus) and how they answer
(`judges.evaluation.answer_format`: `stopped` ends with EOS within `sft_answer_tokens`, `new_turn` writes the
template's next turn), with the SFT's steps and seconds. Everything is cached like stage 01's, so a second call
with the same settings only prints. Compare recipes by overrides, each in its own run directory:

    python benchmarks/sft_recipe.py --profile gemma --run-name gemma-sft-lr1e-2 -p sft_learning_rate=0.01
"""
from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gemma")
    parser.add_argument("--run-name", required=True, help="run directory name under runs/ (one per recipe)")
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, as for `python -m safety_neurons run`")
    args = parser.parse_args()

    from safety_neurons.config import load_config, parse_override
    from safety_neurons.study.prompts import evaluation_prompts, text_corpus
    from safety_neurons.study.training import evaluate_model, evaluate_sft, run_sft, sft_settings

    cfg = load_config(args.profile, dict(parse_override(p) for p in args.params) | {"run_name": args.run_name})
    if cfg.sft_dataset is None:
        raise SystemExit(f"profile {args.profile!r} has no SFT (sft_dataset is None): nothing to measure")
    result = run_sft(cfg, progress=False)
    sets, corpus = evaluation_prompts(cfg), text_corpus(cfg)
    m1_evals, m1_ppl = evaluate_model(cfg, "m1", None, sets, corpus, progress=False)
    sft = evaluate_sft(cfg, sets, corpus, progress=False)
    settings = sft_settings(cfg)
    print(f"run directory {cfg.run_dir}; SFT lr {settings.learning_rate}, epochs {settings.epochs}, "
          f"{result.steps} steps, {result.seconds:.0f} s")
    print(f"{'model':<6} " + " ".join(f"{'refusal ' + s:>22}" for s in sets) + f" {'perplexity':>11} {'stopped':>8} {'new_turn':>9}")
    base = sft["base"]
    print(f"{'base':<6} " + " ".join(f"{base['refusal'][s]:>22.2f}" for s in sets)
          + f" {base['ppl']:>11.2f} {base['stopped']:>8.2f} {base['new_turn']:>9.2f}")
    print(f"{'M1':<6} " + " ".join(f"{m1_evals[s].rate:>22.2f}" for s in sets)
          + f" {m1_ppl:>11.2f} {sft['m1']['stopped']:>8.2f} {sft['m1']['new_turn']:>9.2f}")


if __name__ == "__main__":
    main()
