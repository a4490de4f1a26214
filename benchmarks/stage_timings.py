"""End-to-end stage timings: run every notebook of a profile into its own run directory and print
each stage's seconds, the total, and the machine it ran on.

The run goes to runs/bench-<profile>/ (its own run_name), so it never reuses or disturbs the study's
runs; `--force` re-runs stages that are already finished there (otherwise a second call only shows
what the first one measured). Cached artifacts inside the bench run directory are reused unless
--fresh deletes it first, which is what a first-run timing needs.

    python benchmarks/stage_timings.py [--profile quick] [--fresh] [--force] [--run-name NAME]

`--run-name default` times the study's own run directory (runs/default), as `make all` fills it.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="smoke | quick | default | full | paper")
    parser.add_argument("--fresh", action="store_true", help="delete the bench run directory first (first-run timings)")
    parser.add_argument("--force", action="store_true", help="re-run stages already finished in the bench run directory")
    parser.add_argument("--run-name", help="run directory name under runs/ (default: bench-<profile>)")
    args = parser.parse_args()

    from safety_neurons.config import load_config
    from safety_neurons.runner import run

    overrides = {"run_name": args.run_name or f"bench-{args.profile}"}
    run_dir = load_config(args.profile, overrides).run_dir
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.time()
    results = run(args.profile, force=args.force, overrides=overrides, progress=False)
    wall = time.time() - start
    print(f"profile {args.profile}, run directory {run_dir}")
    print(f"machine: {machine()}")
    print(f"{'stage':<26} {'status':<8} {'seconds':>9}")
    for r in results:
        print(f"{r.stem:<26} {r.status:<8} {r.seconds:>9.1f}")
    ran = sum(r.seconds for r in results if r.status == "ran")
    print(f"{'stages that ran':<35} {ran:>9.1f}")
    print(f"{'wall, with papermill start-up':<35} {wall:>9.1f}")


if __name__ == "__main__":
    main()
