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
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


from .config import PROJECT_ROOT, RunConfig, claim_run_dir, load_config
from .io import RECOMPUTE_ENV, atomic_path, metrics_fingerprint, read_json, read_metrics, write_json_atomic
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
    # From the notebook's metadata {"safety_neurons": {"optional": true, "needs": [0, 1, 2]}}: an optional stage
    # (a study outside `make all`) runs only when named with --only, and needs only the stages it lists (None:
    # every earlier non-optional stage); nothing depends on it.
    optional: bool = False
    needs: tuple[int, ...] | None = None


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
            meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("safety_neurons", {})
            needs = meta.get("needs")
            stages.append(Stage(int(match[1]), path.stem, path, bool(meta.get("optional", False)),
                                None if needs is None else tuple(int(n) for n in needs)))
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


def prompt_files(cfg: RunConfig) -> dict[str, dict]:
    """The user's own prompt files (`file:` sets) of a config: path, format, sha256, size."""
    from .data.registry import prompt_set_manifest

    return prompt_set_manifest([*cfg.harmful_sets, *cfg.benign_sets, *cfg.train_harmful_sets, cfg.text_corpus])


def stage_keys(stages: list[Stage], cfg: RunConfig) -> dict[str, str]:
    config = cfg.identity()
    lib = library_sha()
    # A `file:` prompt set edited in place changes its hash, and so every stage's key (runs without one keep theirs).
    files = {name: entry["sha256"] for name, entry in prompt_files(cfg).items()}
    keys: dict[str, str] = {}
    by_number: dict[int, str] = {}
    chain = ""  # the last non-optional stage's key: an optional stage is upstream of nothing
    for stage in stages:
        upstream = chain if stage.needs is None else "+".join(by_number[n] for n in stage.needs if n in by_number)
        inputs = {"upstream": upstream, "notebook": notebook_code_sha(stage.path), "config": config, "lib": lib}
        blob = json.dumps(inputs | ({"files": files} if files else {}), sort_keys=True)
        keys[stage.stem] = by_number[stage.number] = hashlib.sha256(blob.encode()).hexdigest()[:24]
        if not stage.optional:
            chain = keys[stage.stem]
    return keys


def upstream_stages(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stages that must be finished before `stage` runs: those it needs, or every earlier non-optional one."""
    if stage.needs is not None:
        return [s for s in stages if s.number in stage.needs]
    return [s for s in stages if s.number < stage.number and not s.optional]


def state_path(cfg: RunConfig, stem: str) -> Path:
    return cfg.run_dir / "stages" / f"{stem}.json"


def read_state(cfg: RunConfig, stem: str) -> dict[str, Any]:
    """A stage's state file; {} when absent or damaged (a damaged state means "not finished", never a blocker)."""
    try:
        state = read_json(state_path(cfg, stem))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def is_done(cfg: RunConfig, stem: str, key: str) -> bool:
    """Finished for this config: the recorded key matches, the metrics parse and came from this config,
    and every file the stage wrote is still there, at the size it had (a truncated file is caught)."""
    return not unfinished_because(cfg, stem, key)


def unfinished_because(cfg: RunConfig, stem: str, key: str) -> str:
    """Why a stage is not finished for this config ("" when it is)."""
    state = read_state(cfg, stem)
    metrics = cfg.metrics_path(stem)
    if state.get("key") != key:
        return "not run with these inputs: its notebook, the config, the library or an earlier stage changed since"
    try:
        read_metrics(metrics)
    except (OSError, ValueError):
        return f"its metrics file {metrics} is missing or damaged"
    if metrics_fingerprint(metrics) != cfg.fingerprint():
        return f"its metrics file {metrics} came from another config"
    for rel, size in state.get("files", {}).items():
        path = cfg.run_dir / rel
        if not path.is_file() or path.stat().st_size != size:
            return f"its artifact {path} is missing or damaged"
    return ""


def stage_files(cfg: RunConfig, stem: str) -> dict[str, int]:
    """{path relative to the run directory: size} of what a finished stage leaves: its artifact folder
    (temporary and hidden files aside) and its executed notebook."""
    files = {}
    folder = cfg.artifact_dir(stem)
    candidates = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    candidates.append(cfg.run_dir / "notebooks" / f"{stem}.ipynb")
    for path in candidates:
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(cfg.run_dir).parts):
            files[path.relative_to(cfg.run_dir).as_posix()] = path.stat().st_size
    return files


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
        return [s for s in stages if s.number >= from_ and not s.optional]
    return [s for s in stages if not s.optional]


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
    if group.is_main:
        claim_run_dir(cfg)  # refuses a directory that holds another config's results, before anything runs
    # The notebooks get the resolved values (absolute paths, the run directory's name), so a kernel
    # started in notebooks/ loads exactly this config.
    resolved = cfg.to_dict()
    notebook_overrides = {k: resolved[k] for k in overrides} | ({"run_name": cfg.run_name} if cfg.run_name else {})
    stages = discover_stages(notebooks_dir)
    keys = stage_keys(stages, cfg)
    optional = frozenset(s.stem for s in stages if s.optional)
    selected = select_stages(stages, only, from_)
    if not selected:
        raise StageError(f"--from {from_}: no stage of `make all` from there on (optional studies run with --only)")
    chosen = {s.stem for s in selected}

    def plan() -> tuple[list[str], dict[str, bool]]:
        missing = [s.stem for s in upstream_stages(stages, selected[0])
                   if s.stem not in chosen and not is_done(cfg, s.stem, keys[s.stem])]
        return missing, {s.stem: not force and is_done(cfg, s.stem, keys[s.stem]) for s in selected}

    missing, skip = group.main_decides(plan)  # decided before any process writes anything
    if missing:
        why = unfinished_because(cfg, missing[0], keys[missing[0]])
        flags = "".join(" -p " + shlex.quote(f"{k}={v if isinstance(v, str) else json.dumps(v)}") for k, v in overrides.items())
        raise StageError(
            f"stage {selected[0].stem} needs {', '.join(missing)} finished for this config first ({missing[0]}: {why}); "
            f"run `python -m safety_neurons run --profile {profile}{flags}` without --only/--from (finished stages are skipped)"
        )
    results = []
    # One line per stage, also with progress bars off (a log reads them too); the main process speaks.
    say = print if group.is_main else (lambda *a, **k: None)
    say(f"{profile}: {len(selected)} stage(s) -> {cfg.run_dir}", flush=True)
    for stage in selected:
        if skip[stage.stem]:
            say(f"  {stage.stem:26s} skipped (finished, inputs unchanged)", flush=True)
            results.append(StageResult(stage.stem, "skipped", 0.0, read_metrics(cfg.metrics_path(stage.stem))))
            continue
        previous = read_state(cfg, stage.stem).get("seconds")
        say(f"  {stage.stem:26s} running" + (f" (last run took {previous:.0f} s)" if previous else ""), flush=True)
        seconds = execute_stage(stage, cfg, notebook_overrides, progress=False, group=group, force=force)
        say(f"  {stage.stem:26s} done in {seconds:.0f} s", flush=True)
        if group.is_main:
            _report_figures(cfg, stage.stem)
        if group.is_main:
            write_json_atomic(state_path(cfg, stage.stem), {"key": keys[stage.stem], "seconds": round(seconds, 2),
                                                             "finished": _now(), "processes": group.size,
                                                             "files": stage_files(cfg, stage.stem)})
            write_manifest(cfg, keys, optional)
        group.barrier()  # the others read the metrics the main process's kernel wrote
        results.append(StageResult(stage.stem, "ran", seconds, read_metrics(cfg.metrics_path(stage.stem))))
    if group.is_main:
        write_manifest(cfg, keys, optional)
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
                  group: _RunnerGroup | None = None, force: bool = False) -> float:
    """Run one notebook into runs/<name>/notebooks/; the executed copy appears only on success, and the
    previous metrics file comes back if the stage fails (a failed --force loses nothing finished).
    `force`: the stage's keyed caches are recomputed, not read. Under a distributed launch the other
    processes' copies go to notebooks/.rank<r>/."""
    import papermill as pm

    group = group or _RunnerGroup(1, 0)
    out_dir = cfg.run_dir / "notebooks" / ("" if group.is_main else f".rank{group.rank}")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{stage.stem}.ipynb"
    failed = out_dir / f"{stage.stem}.failed.ipynb"
    metrics = cfg.metrics_path(stage.stem)
    previous = metrics.with_name(f".{metrics.name}.previous")
    if group.is_main and metrics.exists():
        os.replace(metrics, previous)  # a stale metrics file must not pass for this run's; restored on failure
    group.barrier()  # no kernel starts before the stale metrics are gone
    env = group.kernel_env() | ({RECOMPUTE_ENV: "1"} if force else {})
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
                    config=kernel_config(),
                )
            except pm.PapermillExecutionError as exc:
                os.replace(tmp, failed)
                raise StageError(f"stage {stage.stem} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                                 f"the executed notebook is at {failed}") from None
            if group.is_main and not metrics.exists():
                os.replace(tmp, failed)
                raise StageError(f"stage {stage.stem} finished but wrote no metrics file {metrics}; see {failed}")
    except BaseException:
        if group.is_main and previous.exists() and not metrics.exists():
            os.replace(previous, metrics)
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if failed.exists():
        failed.unlink()
    if previous.exists():
        previous.unlink()
    return time.time() - start


def _report_figures(cfg: RunConfig, stem: str) -> None:
    """Say in the terminal (not only inside the executed notebook) which of a stage's figures lack a format."""
    from .study.figures import figure_problems

    for problem in figure_problems(cfg.run_dir, prefix=f"{stem[:2]}_"):  # figures are named after their notebook
        print(f"  figure: {problem}", file=sys.stderr, flush=True)


def kernel_config():
    """The project's Jupyter settings (configs/jupyter, as `make lab` uses them): encrypted kernel channels,
    so no kernel warns that it runs over TCP without encryption."""
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("jupyter_server_config.py", path=str(PROJECT_ROOT / "configs" / "jupyter")).load_config()


def write_manifest(cfg: RunConfig, keys: Mapping[str, str], optional: frozenset[str] = frozenset()) -> Path:
    """What produced this run directory: versions, seeds, device, git commit, stage states (an optional
    study's only once it has run: one never asked for is not an unfinished part of the run)."""
    from .data.embedded import model_licence
    from .lm.models import resolve_device

    stages = {}
    for stem, key in keys.items():
        state = read_state(cfg, stem)
        if stem in optional and not state:
            continue
        stages[stem] = {k: v for k, v in state.items() if k != "files"} | {"current": is_done(cfg, stem, key)}
    device = resolve_device(cfg.device)
    manifest = {
        "profile": cfg.profile,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(),
        # An embedded model's licence and source travel with the results (Gemma's terms ask for it);
        # a folder or hub id has its own card, so only its name is recorded.
        "model": {"name": cfg.model, **(model_licence(cfg.model) or {})},
        "seeds": {"seed": cfg.seed, "split_seed": cfg.split_seed, "train_seeds": list(cfg.train_seeds)},
        "device": {"requested": cfg.device, "resolved": str(device), "name": _device_name(device)},
        "git": _git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "prompt_files": prompt_files(cfg),
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
