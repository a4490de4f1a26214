"""Figures: interactive in JupyterLab, saved beside the metrics for write-ups.

Every figure is written as HTML (always) and as PNG when a Chromium is available for kaleido
(Debian's `chromium`, or the path in $BROWSER_PATH). Without one the PNG is skipped and the
function says so in its return value and a printed note: never silently.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..config import RunConfig
from ..io import atomic_path


def chromium_path() -> str | None:
    for candidate in (os.environ.get("BROWSER_PATH"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def save_figure(fig, cfg: RunConfig, name: str, *, png: bool = True) -> dict[str, str]:
    """Write runs/<name>/figures/<name>.html (and .png); return the paths written."""
    out_dir = cfg.run_dir / "figures"
    paths = {}
    with atomic_path(out_dir / f"{name}.html", suffix=".html") as tmp:
        fig.write_html(str(tmp), include_plotlyjs="cdn")
    paths["html"] = str(out_dir / f"{name}.html")
    if png:
        browser = chromium_path()
        if browser is None:
            print(f"note: {name}.png not written: no Chromium for kaleido (install Debian's chromium or set BROWSER_PATH)")
        else:
            os.environ.setdefault("BROWSER_PATH", browser)
            with atomic_path(out_dir / f"{name}.png", suffix=".png") as tmp:
                fig.write_image(str(tmp), width=900, height=500, scale=2)
            paths["png"] = str(out_dir / f"{name}.png")
    return paths
