"""safety-neurons: find the safety neurons of a language model and prove what they do.

The notebooks in notebooks/ tell the story; this package does the work. Start with
`load_config(profile)` and `load_model(cfg.model)`.
"""
from .config import PROFILES, RunConfig, claim_run_dir, load_config, notebook_config
from .io import write_metrics

__all__ = ["PROFILES", "RunConfig", "load_config", "notebook_config", "write_metrics", "load_model", "stage_metrics"]
__version__ = "0.1.0"


def load_model(*args, **kwargs):
    """See `safety_neurons.models.load_model` (imported lazily: torch is slow to import)."""
    from .lm.models import load_model as _load

    return _load(*args, **kwargs)


def stage_metrics(cfg: RunConfig, stage: str, metrics: dict) -> dict:
    """Write a notebook's metrics to runs/<name>/metrics/<stage>.json, recording the config's fingerprint,
    and return them flattened (under a distributed launch the main process writes; every process gets
    them back). The run directory must be this config's (see `claim_run_dir`)."""
    from .io import flatten_metrics
    from .lm.sharding import is_main_process

    if not is_main_process():
        return flatten_metrics(metrics)
    claim_run_dir(cfg)
    return write_metrics(cfg.metrics_path(stage), metrics, fingerprint=cfg.fingerprint())
