"""Generation sweeps sharded across processes with accelerate, identical to a one-process run.

Under `torchrun --nproc_per_node N -m safety_neurons run ...` (or accelerate launch) every process runs
the same notebook code (the runner gives each stage's kernels a rendezvous of their own); each
generation of the arm store (`study.arms.run_arm`) and M1's finding answers are split between the
processes and gathered, and only the main process writes them. One process (a plain `python` or
Jupyter kernel) never touches torch.distributed: everything here is then the identity.

Why the results are identical, not just close: every generator here sorts its prompts by length
(stably) and cuts them into batches of `batch_size`. The split hands each process whole batches of
that very order, dealt round-robin (batch 0 to process 0, batch 1 to process 1, ...) so long and
short prompts spread evenly, and each process gets its batches in increasing length. The process's
own stable sort then rebuilds exactly those batches, so every prompt is generated with the same
batch-mates and padding as in one process. (Kernels that change with the thread count can still
differ in the last bit; on the CPU the test pins one thread per process on both sides.)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """The number of processes this one was launched among (1 outside a distributed launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@lru_cache(maxsize=1)
def _state():
    # PartialState joins the process group that accelerate launch / torchrun describes in the environment.
    # Without CUDA it must be told to use the CPU (gloo), or it would see one process and shard nothing.
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world_size():
        raise RuntimeError(f"launched as one of {world_size()} processes (WORLD_SIZE) but accelerate joined "
                           f"{state.num_processes}: launch with `accelerate launch` or `torchrun`")
    return state


def is_sharded() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """Rank 0 of the launch (RANK, as torchrun and accelerate launch set it); asking joins no group."""
    return not is_sharded() or int(os.environ.get("RANK", "0")) == 0


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """The batches (lists of row indices) a one-process generator makes: rows sorted by length,
    stably, cut into `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def forward_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches for single forward passes (teacher forcing, judges): rows sorted by length, at most
    `batch_size` rows, and at most `batch_size` times the batch's shortest row in padded tokens.

    A forward costs its padded tokens, so a long row starts a smaller batch of long rows instead of
    padding short ones to its length (stage 02's finding prompts mix 40-token requests with 300-token
    jailbreaks: in batches of 32, teacher forcing took 107 s per M2 against 66 s in batches of 16).
    Generation keeps `length_batches`: a decode step costs about the same for 16 rows as for 32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        batch = batches[-1] if batches else None
        if batch is None or len(batch) == batch_size or (len(batch) + 1) * lengths[i] > batch_size * max(lengths[batch[0]], 1):
            batches.append([i])
        else:
            batch.append(i)
    return batches


def dealt_batches(batches: list[list[int]], n_processes: int) -> list[list[int]]:
    """The batches reordered so that cutting the list into `n_processes` contiguous runs, as
    accelerate's split_between_processes does (the first runs one longer when it does not divide),
    gives process p the batches p, p + n, p + 2n, ..., in increasing length."""
    return [b for p in range(n_processes) for b in batches[p::n_processes]]


def sharded_generate(generate: Callable[[list[list[int]]], list[T]], prompt_ids: list[list[int]],
                     batch_size: int | str) -> list[T]:
    """`generate(prompt_ids)`, each process generating its share of whole batches; every process
    returns all results in the callers' order. Without a distributed launch: `generate(prompt_ids)`.

    With batch_size "auto" each process sizes its batches from its own free GPU memory, so batch-mates
    can differ from a one-process run (results equal up to float noise, not bit for bit): the prompts are
    then dealt one by one in length order, which still gives every process an even share."""
    if not is_sharded():
        return generate(prompt_ids)
    from accelerate.utils import gather_object

    state = _state()
    dealt = 1 if batch_size == "auto" else int(batch_size)
    batches = dealt_batches(length_batches([len(p) for p in prompt_ids], dealt), state.num_processes)
    with state.split_between_processes(batches) as mine:
        rows = [r for batch in mine for r in batch]
    produced = generate([prompt_ids[r] for r in rows]) if rows else []
    if len(produced) != len(rows):
        raise RuntimeError(f"the generator returned {len(produced)} results for {len(rows)} prompts")
    results: list[Any] = [None] * len(prompt_ids)
    for shard_rows, shard_out in gather_object([(rows, produced)]):
        for r, out in zip(shard_rows, shard_out):
            results[r] = out
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"prompts {missing[:5]} came back from no process")
    return results


def main_decides(decide: Callable[[], T]) -> T:
    """`decide()` on the main process, its answer given to every process (so that all of them take
    the same branch, e.g. whether an arm is already stored: one that regenerated alone would wait
    forever for the others). Without a distributed launch: `decide()`."""
    if not is_sharded():
        return decide()
    from accelerate.utils import broadcast_object_list

    box = [decide() if _state().is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def done_by_main(do: Callable[[], Any]) -> None:
    """`do()` on the main process alone (a write the others must not race); every process returns once
    it is done. Without a distributed launch: `do()`."""
    if is_main_process():
        do()
    wait_for_everyone()


def wait_for_everyone() -> None:
    if is_sharded():
        _state().wait_for_everyone()
