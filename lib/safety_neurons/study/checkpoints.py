"""M1 and M2 of a run: which checkpoint each is, where stage 01 put it, and loading it.

M1 is the configured model (or its SFT checkpoint when the profile has SFT); M2 is M1 with one trained
(IA)^3 adapter, by objective and training seed ("M2" alone: the first harmless seed).
"""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..method.alignment import ADAPTER_DIRNAME, adapter_done
from .paths import ALIGNMENT


def m1_name(cfg: RunConfig) -> str:
    """The unaligned model M1: the configured model, or its SFT'd checkpoint when the profile has SFT."""
    if cfg.sft_dataset is None:
        return cfg.model
    path = m1_sft_dir(cfg)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"M1 (the SFT checkpoint) is missing at {path}: run notebook 01_alignment first")
    return str(path)


def m1_key(cfg: RunConfig) -> str:
    """What cached artifacts of M1 (and of M2s trained on it) are keyed by: the configured model's name, and when
    the profile has SFT, the sha256 of the SFT adapter folded into it. Never M1's folder path (m1_name): a run
    directory that is moved, or read from another checkout, keeps its caches, and a retrained SFT does not."""
    if cfg.sft_dataset is None:
        return cfg.model
    from ..lm.models import adapter_digest

    m1_name(cfg)  # M1 must exist: the same one-line error as loading it
    return f"{cfg.model}+sft:{adapter_digest(sft_dir(cfg) / ADAPTER_DIRNAME)}"


def sft_dir(cfg: RunConfig) -> Path:
    """Stage 01's SFT folder: the SFT adapter (ADAPTER_DIRNAME) and M1 with it folded in (m1_sft_dir)."""
    return cfg.artifact_dir(ALIGNMENT) / "sft"


def m1_sft_dir(cfg: RunConfig) -> Path:
    return sft_dir(cfg) / "m1_merged"


def run_dir_of(cfg: RunConfig, objective: str, seed: int) -> Path:
    return cfg.artifact_dir(ALIGNMENT) / objective / f"seed{seed}"


def m2_adapter(cfg: RunConfig, objective: str = "harmless", seed: int | None = None) -> Path:
    """The adapter of one M2 (default: the first harmless seed, "M2" of every later stage)."""
    seed = cfg.train_seeds[0] if seed is None else seed
    out = run_dir_of(cfg, objective, seed)
    if not adapter_done(out):
        raise FileNotFoundError(f"no trained adapter for objective {objective!r}, seed {seed} at {out}: run notebook 01_alignment first")
    return out / "adapter"


def model_name(objective: str, seed: int) -> str:
    return f"{objective}/seed{seed}"


def load_m1(cfg: RunConfig):
    from ..lm.models import load_model

    return load_model(m1_name(cfg), device=cfg.device, dtype=cfg.dtype)


def load_base(cfg: RunConfig):
    """The configured model itself (before any SFT) on the run's device and dtype."""
    from ..lm.models import load_model

    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


def load_m2(cfg: RunConfig, objective: str = "harmless", seed: int | None = None):
    """M2 of `objective` and `seed` (default: the first harmless seed) as a hooked bridge with its adapter folded in."""
    return load_with_adapter(cfg, m2_adapter(cfg, objective, seed))


def load_with_adapter(cfg: RunConfig, adapter: Path | None):
    """M1 with `adapter` folded in (None: M1 itself) on the run's device and dtype."""
    from ..lm.models import load_model

    return load_model(m1_name(cfg), adapter=adapter, device=cfg.device, dtype=cfg.dtype)
