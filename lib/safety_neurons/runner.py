"""Run the numbered notebooks through papermill, skipping stages whose inputs are unchanged.

Each stage's key hashes its notebook's code cells, the resolved config, the library's source and
the previous stage's key; a stage is done when its recorded key matches and its metrics file parses.
Executed notebooks, metrics and state are written atomically, so a killed run resumes at the
first unfinished stage and loses nothing finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from .config import PROJECT_ROOT, RunConfig, load_config
from .io import atomic_path, read_json, read_metrics, write_json_atomic
from .study.environment import package_versions

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
_STAGE_FILE = re.compile(r"^(\d{2})_[a-z0-9_]+\.ipynb$")


class StageError(RuntimeError):
    """A stage could not run or failed; the message says which and where to look."""


@dataclass(frozen=True)
class Stage:
    number: int
    stem: str
    path: Path


@dataclass(frozen=True)
class StageResult:
    stem: str
    status: str  # ran | skipped
    seconds: float
    metrics: dict[str, Any]


def discover_stages(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Stage]:
    stages = []
    for path in sorted(notebooks_dir.glob("*.ipynb")):
        match = _STAGE_FILE.match(path.name)
        if match:
            stages.append(Stage(int(match[1]), path.stem, path))
    if not stages:
        raise StageError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    numbers = [s.number for s in stages]
    if len(set(numbers)) != len(numbers):
        raise StageError(f"two notebooks share a stage number in {notebooks_dir}: {[s.stem for s in stages]}")
    return stages


def notebook_code_sha(path: Path) -> str:
    """Hash of the code cells only, so saving outputs or editing prose does not invalidate a stage."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = "\n# ---\n".join("".join(c["source"]) for c in cells if c.get("cell_type") == "code")
    return hashlib.sha256(code.encode()).hexdigest()


LIBRARY_DIR = Path(__file__).resolve().parent


def library_files() -> list[Path]:
    """Every source file of the package, in every sub-package: an edit anywhere re-runs the stages."""
    return sorted(LIBRARY_DIR.rglob("*.py"))


def library_sha() -> str:
    """Hash of the library source and the project data checksums: code is an input too."""
    digest = hashlib.sha256()
    for path in library_files():
        digest.update(path.relative_to(LIBRARY_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    sums = PROJECT_ROOT / "data" / "SHA256SUMS"
    if sums.exists():
        digest.update(sums.read_bytes())
    return digest.hexdigest()


def stage_keys(stages: list[Stage], cfg: RunConfig) -> dict[str, str]:
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("run_root", "run_name")}
    lib = library_sha()
    keys: dict[str, str] = {}
    upstream = ""
    for stage in stages:
        blob = json.dumps({"upstream": upstream, "notebook": notebook_code_sha(stage.path), "config": config, "lib": lib}, sort_keys=True)
        upstream = keys[stage.stem] = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return keys


def state_path(cfg: RunConfig, stem: str) -> Path:
    return cfg.run_dir / "stages" / f"{stem}.json"


def is_done(cfg: RunConfig, stem: str, key: str) -> bool:
    path = state_path(cfg, stem)
    if not path.exists() or not cfg.metrics_path(stem).exists():
        return False
    try:
        read_metrics(cfg.metrics_path(stem))
        return read_json(path).get("key") == key
    except (ValueError, OSError):
        return False


def select_stages(stages: list[Stage], only: int | None, from_: int | None) -> list[Stage]:
    if only is not None and from_ is not None:
        raise StageError("use --only or --from, not both")
    numbers = [s.number for s in stages]
    for flag, n in (("--only", only), ("--from", from_)):
        if n is not None and n not in numbers:
            raise StageError(f"{flag} {n}: no such stage; stages are {', '.join(s.stem for s in stages)}")
    if only is not None:
        return [s for s in stages if s.number == only]
    if from_ is not None:
        return [s for s in stages if s.number >= from_]
    return stages


def run(
    profile: str,
    *,
    only: int | None = None,
    from_: int | None = None,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> list[StageResult]:
    """Execute the selected stages for a profile; return what ran and what was skipped.

    Under torchrun or accelerate launch (N processes) every process executes each selected notebook,
    so that the library's sharded generation (`safety_neurons.lm.sharding`) splits the sweeps between
    them and stage 01 trains data-parallel; each stage's kernels join a process group of their own.
    The main process decides what to skip and alone writes the executed notebooks, metrics and state."""
    group = _RunnerGroup.join()
    overrides = dict(overrides or {})
    cfg = load_config(profile, overrides)
    stages = discover_stages(notebooks_dir)
    keys = stage_keys(stages, cfg)
    selected = select_stages(stages, only, from_)
    first = selected[0].number

    def plan() -> tuple[list[str], dict[str, bool]]:
        missing = [s.stem for s in stages if s.number < first and not is_done(cfg, s.stem, keys[s.stem])]
        return missing, {s.stem: not force and is_done(cfg, s.stem, keys[s.stem]) for s in selected}

    missing, skip = group.main_decides(plan)  # decided before any process writes anything
    if missing:
        raise StageError(
            f"stage {selected[0].stem} needs {', '.join(missing)} finished for this config first; "
            f"run `python -m safety_neurons run --profile {profile}` without --only/--from (finished stages are skipped)"
        )
    results = []
    bar = tqdm(selected, desc=f"{profile} stages", unit="stage", disable=not progress or not group.is_main)
    for stage in bar:
        bar.set_postfix_str(stage.stem)
        if skip[stage.stem]:
            results.append(StageResult(stage.stem, "skipped", 0.0, read_metrics(cfg.metrics_path(stage.stem))))
            continue
        seconds = execute_stage(stage, cfg, overrides, progress=progress and group.is_main, group=group)
        if group.is_main:
            write_json_atomic(state_path(cfg, stage.stem), {"key": keys[stage.stem], "seconds": round(seconds, 2),
                                                             "finished": _now(), "processes": group.size})
            write_manifest(cfg, keys)
        group.barrier()  # the others read the metrics the main process's kernel wrote
        results.append(StageResult(stage.stem, "ran", seconds, read_metrics(cfg.metrics_path(stage.stem))))
    if group.is_main:
        write_manifest(cfg, keys)
    return results


class _RunnerGroup:
    """The runners' own process group under a distributed launch (gloo: a few small messages between
    stages); one process alone when there is none. The notebooks' kernels are other processes: each
    stage gives them a fresh rendezvous port, chosen by the main process."""

    def __init__(self, size: int, rank: int):
        self.size, self.rank = size, rank
        self.is_main = rank == 0

    @classmethod
    def join(cls) -> "_RunnerGroup":
        from .lm.sharding import world_size

        if world_size() == 1:
            return cls(1, 0)
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_world_size(), dist.get_rank())

    def main_decides(self, decide):
        if self.size == 1:
            return decide()
        import torch.distributed as dist

        box = [decide() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def kernel_env(self) -> dict[str, str]:
        """Environment for this stage's kernels: a rendezvous of their own on a port free on the main
        process's host (torchrun's agent store serves one group per process, and every kernel is new)."""
        if self.size == 1:
            return {}
        port = self.main_decides(_free_port)
        return {"MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "False"}


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def execute_stage(stage: Stage, cfg: RunConfig, overrides: Mapping[str, Any], *, progress: bool = True,
                  group: _RunnerGroup | None = None) -> float:
    """Run one notebook into runs/<name>/notebooks/; the executed copy appears only on success.
    Under a distributed launch the other processes' copies go to notebooks/.rank<r>/."""
    import papermill as pm

    group = group or _RunnerGroup(1, 0)
    out_dir = cfg.run_dir / "notebooks" / ("" if group.is_main else f".rank{group.rank}")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{stage.stem}.ipynb"
    failed = out_dir / f"{stage.stem}.failed.ipynb"
    metrics = cfg.metrics_path(stage.stem)
    if group.is_main and metrics.exists():
        metrics.unlink()  # a stale metrics file must not pass for this run's
    group.barrier()  # no kernel starts before the stale metrics are gone
    env = group.kernel_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # papermill's kernel inherits this process's environment
    start = time.time()
    try:
        with atomic_path(final, suffix=".ipynb") as tmp:
            try:
                pm.execute_notebook(
                    str(stage.path),
                    str(tmp),
                    parameters={"profile": cfg.profile, "overrides": dict(overrides)},
                    cwd=str(stage.path.parent),
                    progress_bar=progress,
                    kernel_name="python3",
                    request_save_on_cell_execute=False,
                )
            except pm.PapermillExecutionError as exc:
                os.replace(tmp, failed)
                raise StageError(f"stage {stage.stem} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                                 f"the executed notebook is at {failed}") from None
            if group.is_main and not metrics.exists():
                os.replace(tmp, failed)
                raise StageError(f"stage {stage.stem} finished but wrote no metrics file {metrics}; see {failed}")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if failed.exists():
        failed.unlink()
    return time.time() - start


def write_manifest(cfg: RunConfig, keys: Mapping[str, str]) -> Path:
    """What produced this run directory: versions, seeds, device, git commit, stage states."""
    from .lm.models import resolve_device

    stages = {}
    for stem, key in keys.items():
        path = state_path(cfg, stem)
        state = read_json(path) if path.exists() else {}
        stages[stem] = {**state, "current": state.get("key") == key}
    device = resolve_device(cfg.device)
    manifest = {
        "profile": cfg.profile,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(),
        "seeds": {"seed": cfg.seed, "split_seed": cfg.split_seed, "train_seeds": list(cfg.train_seeds)},
        "device": {"requested": cfg.device, "resolved": str(device), "name": _device_name(device)},
        "git": _git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "stages": stages,
        "updated": _now(),
    }
    return write_json_atomic(cfg.run_dir / "manifest.json", manifest)


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
