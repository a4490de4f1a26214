"""Sharded generation: the batch dealing, and a real two-process run (torchrun, gloo on the CPU)
giving the same per-prompt answers as one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safety_neurons.lm import sharding


def split_like_accelerate(items: list, n: int, p: int) -> list:
    """accelerate's split_between_processes on a list: contiguous runs, the first ones one longer."""
    per, extra = divmod(len(items), n)
    start = p * per + min(p, extra)
    return items[start : start + per + (1 if p < extra else 0)]


def test_length_batches_are_the_generators_batches():
    assert sharding.length_batches([3, 1, 2, 1, 5], 2) == [[1, 3], [2, 0], [4]]
    with pytest.raises(ValueError, match="batch_size"):
        sharding.length_batches([1], 0)


@pytest.mark.parametrize("n_prompts,batch_size,n_processes", [(11, 2, 2), (7, 3, 2), (16, 4, 3), (3, 4, 2), (5, 1, 4)])
def test_each_process_rebuilds_exactly_its_batches(n_prompts, batch_size, n_processes):
    lengths = [(7 * i) % 5 + 1 for i in range(n_prompts)]  # many ties: the stable order matters
    batches = sharding.length_batches(lengths, batch_size)
    dealt = sharding.dealt_batches(batches, n_processes)
    mine = [split_like_accelerate(dealt, n_processes, p) for p in range(n_processes)]
    assert sorted(b for m in mine for b in map(tuple, m)) == sorted(map(tuple, batches))  # every batch once
    for p, own in enumerate(mine):
        assert own == batches[p::n_processes]  # round-robin: lengths spread over the processes
        rows = [r for b in own for r in b]
        # the process's generator sorts its prompts again and cuts them: the same batches come out
        rebuilt = [[rows[i] for i in b] for b in sharding.length_batches([lengths[r] for r in rows], batch_size)]
        assert rebuilt == own


def test_one_process_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not sharding.is_sharded() and sharding.is_main_process()
    assert sharding.main_decides(lambda: 42) == 42
    assert sharding.sharded_generate(lambda p: [len(x) for x in p], [[1], [1, 2]], 1) == [1, 2]


def test_two_processes_give_the_answers_of_one(tmp_path, adapter):
    # gloo on the loopback device: a container whose hostname does not resolve still connects.
    loopback = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
    env = dict(os.environ, **loopback, SAFETY_NEURONS_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("sharding_worker.py")), str(tmp_path), str(adapter)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # 11 prompts in batches of 2: six batches, three to each process
    assert ranks[0]["prompts_generated"] == {"m1": 6, "m2-early": 6, "two_model": 6, "fast": 6, "zero_ablation": 6}
    assert ranks[1]["prompts_generated"] == {"m1": 5, "m2-early": 5, "two_model": 5, "fast": 5, "zero_ablation": 5}
    report = ranks[0]["report"]
    for name in ("m1", "m2-early", "two_model", "fast", "zero_ablation"):
        assert report[name]["sharded"] == report[name]["whole"], name
        assert report[name]["sharded_lengths"] == report[name]["whole_lengths"], name
    assert report["m1_generations"]["sharded"] == report["m1_generations"]["whole"]
    arms = Path(ranks[0]["arms_dir"])
    assert arms.is_relative_to(tmp_path / "runs")  # the run's arm store, under the test's run root
    assert sorted(p.name for p in arms.iterdir()) == sorted(f"key-{n}.json" for n in report if n != "m1_generations")


def test_forward_batches_keep_long_rows_from_padding_short_ones():
    assert sharding.forward_batches([40] * 5, 2) == sharding.length_batches([40] * 5, 2)  # even lengths: the same
    lengths = [40] * 6 + [300] * 3
    batches = sharding.forward_batches(lengths, 4)
    assert batches == [[0, 1, 2, 3], [4, 5], [6, 7, 8]]  # the 300-token rows do not join the 40-token ones
    assert sorted(r for b in batches for r in b) == list(range(9))
    assert all(len(b) * max(lengths[r] for r in b) <= 4 * min(lengths[r] for r in b) for b in batches)
    with pytest.raises(ValueError, match="batch_size"):
        sharding.forward_batches([1], 0)
