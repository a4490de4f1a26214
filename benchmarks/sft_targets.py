"""How the answers of the offline SFT set end (issue 21), read from a run's cached teacher answers.

The distilled SFT set (`sft_dataset="distilled"`) is `sft_teacher`'s greedy answers, each cut at
`sft_answer_tokens` of the teacher's tokens, and SFT trains on each answer followed by EOS (method.alignment).
An answer that reached the limit was cut mid-sentence, yet SFT teaches the student to stop there. This
prints how many answers reached the limit, and their lengths in the student's tokens, which is the scale
`sft.m1.stopped` (M1 ends with EOS within `sft_answer_tokens` of its own tokens) is measured on.

    python benchmarks/sft_targets.py [--profile gemma] [--run-name NAME]
"""
from __future__ import annotations

import argparse
import json
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gemma")
    parser.add_argument("--run-name", help="run directory name under runs/ (default: the profile's own)")
    args = parser.parse_args()

    from safety_neurons.config import load_config
    from safety_neurons.lm.models import load_tokenizer
    from safety_neurons.study.paths import ALIGNMENT

    cfg = load_config(args.profile, {"run_name": args.run_name} if args.run_name else {})
    path = cfg.artifact_dir(ALIGNMENT) / "sft_data" / "distilled.json"
    if cfg.sft_dataset != "distilled" or not path.exists():
        raise SystemExit(f"no distilled SFT answers at {path}: run stage 01 of a profile with sft_dataset='distilled'")

    answers = [a.strip() for a in json.loads(path.read_text())["answers"] if a.strip()]
    limit = cfg.sft_answer_tokens
    teacher_tokenizer, student_tokenizer = load_tokenizer(cfg.sft_teacher), load_tokenizer(cfg.model)
    teacher = [len(teacher_tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    student = [len(student_tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    # a cut answer has `limit` tokens; stripping whitespace can take one off
    cut = sum(n >= limit - 1 for n in teacher)
    print(f"{path}: {len(answers)} answers by {cfg.sft_teacher}, limit {limit} teacher tokens")
    print(f"answers that reached the limit (cut, then followed by EOS in training): {cut} ({cut / len(answers):.2f})")
    print(f"in {cfg.model}'s tokens: median {statistics.median(student):.0f}, "
          f"share within {limit} tokens {sum(n <= limit for n in student) / len(student):.2f}")


if __name__ == "__main__":
    main()
