"""What writing a figure costs: seconds per format and size on disk, for three of the study's figures at
`default` sizes built from synthetic data (no model needed).

  figure                  a k sweep (03_causal_effect), a log-log curve of 4 x 2000 points (02_sorted_scores),
                          a four-panel line chart (07_safeguard_accuracy_vs_k)
  per format              json, html (plotly.js written once per folder, not counted), png, svg, pdf:
                          the median of --repeats writes, seconds, and the file's size in KiB

    python benchmarks/figure_cost.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.study import plots
from safety_neurons.study.figures import FORMATS, write_figure


def figures() -> dict:
    rng = np.random.default_rng(0)
    ks = [1, 5, 10, 20]
    effects = pd.DataFrame({"k_pct": ks, **{f"C_{arm}{end}": np.sort(rng.random(4)) + shift
                                            for arm in ("safety", "random") for end, shift in (("", 0), ("_lo", -0.1), ("_hi", 0.1))}})
    rankings = {f"seed {s}": NeuronRanking("change_score", torch.rand(30, 1536, generator=torch.Generator().manual_seed(s)))
                for s in range(4)}
    scores = pd.DataFrame([{"test": t, "k": k, "arm": a, "accuracy": rng.random()}
                           for t in ("harmbench", "donotanswer", "jailbreak", "past_tense")
                           for k in (10, 50, 100, 200, 500) for a in ("safety", "random", "random_last", "majority")])
    return {"03_causal_effect": plots.causal_effect_curve(effects),
            "02_sorted_scores": plots.sorted_scores(rankings),
            "07_safeguard_accuracy_vs_k": plots.safeguard_accuracy(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_figure(figures()["03_causal_effect"], folder, "warmup", FORMATS)  # first use: imports, plotly.js
        print(f"{'figure':28s}" + "".join(f"{fmt:>16s}" for fmt in FORMATS) + f"{'all':>8s}")
        for name, fig in figures().items():
            seconds = {}
            for fmt in FORMATS:
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    write_figure(fig, folder, name, (fmt,))
                    times.append(time.perf_counter() - start)
                seconds[fmt] = statistics.median(times)
            cells = "".join(f"{seconds[f]:7.2f} s {(folder / f'{name}.{f}').stat().st_size / 1024:5.0f}K" for f in FORMATS)
            print(f"{name:28s}{cells}{sum(seconds.values()):7.2f}s")


if __name__ == "__main__":
    main()
