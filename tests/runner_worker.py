"""One process of a distributed notebook run (tests/test_runner.py starts two with torchrun):
runs the runner on the given notebooks and records what it returned."""
import json
import os
import sys
from pathlib import Path

from safety_neurons.runner import run

notebooks, out, label = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
results = run("smoke", notebooks_dir=notebooks, progress=False)
(out / f"results-{label}-rank{os.environ['RANK']}.json").write_text(
    json.dumps([[r.stem, r.status, r.metrics] for r in results]))
