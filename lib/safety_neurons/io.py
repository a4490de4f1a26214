"""Atomic artifact writing and the flat metrics files every notebook produces.

Every artifact goes to a temporary file in the destination folder and is renamed into place,
so a run killed mid-write never leaves a truncated file that a later stage would trust.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates files readable by their owner only; an artifact gets the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, _json_text(obj))


def write_parquet_atomic(path: str | os.PathLike, frame, *, index: bool | None = False) -> Path:
    """A pandas DataFrame as parquet at `path` (folders created), atomically (`index` as pandas takes it)."""
    with atomic_path(path, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=index)
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested dicts into dotted keys, checking every leaf is a finite-or-NaN number.

    Metrics files are flat so that a figure, a README table or a diff between runs can name
    one number by one key (`refusal.m2.harmbench`).
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric keys must be non-empty strings, got {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            nested = flatten_metrics(value, prefix=f"{name}.")
            twice = nested.keys() & flat.keys()
            if twice:
                raise ValueError(f"metric {sorted(twice)[0]!r} given twice")
            flat.update(nested)
            continue
        if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}")
        if name in flat:
            raise ValueError(f"metric {name!r} given twice")
        flat[name] = value
    return flat


FINGERPRINT_KEY = "config_fingerprint"  # the one non-number of a metrics file: the config it came from


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any], *, fingerprint: str | None = None) -> dict[str, float]:
    """Write a flat JSON object of named numbers (NaN and infinities are stored as null), recording the
    fingerprint of the config that produced them."""
    flat = flatten_metrics(metrics)
    if FINGERPRINT_KEY in flat:
        raise ValueError(f"metric name {FINGERPRINT_KEY!r} is reserved for the config fingerprint")
    serialisable: dict[str, Any] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in flat.items()}
    if fingerprint is not None:
        serialisable[FINGERPRINT_KEY] = fingerprint
    write_json_atomic(path, serialisable)
    return flat


def read_metrics(path: str | os.PathLike) -> dict[str, float | None]:
    """Read a metrics file's numbers, failing loudly (naming the file) if it is not a flat object of numbers."""
    try:
        data = read_json(path)
    except ValueError as exc:
        raise ValueError(f"{path}: damaged metrics file ({exc}); re-run its stage with --force") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a metrics file must hold a JSON object, found {type(data).__name__}")
    data.pop(FINGERPRINT_KEY, None)
    for key, value in data.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: metric {key!r} is not a number: {value!r}")
    return data


def metrics_fingerprint(path: str | os.PathLike) -> str | None:
    """The fingerprint of the config a metrics file came from (None: unreadable, or written before it was recorded)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data.get(FINGERPRINT_KEY) if isinstance(data, dict) else None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# keyed caches: an artifact stored with the key of what it was made from, recomputed when the key differs
# ----------------------------------------------------------------------------------------------


RECOMPUTE_ENV = "SAFETY_NEURONS_RECOMPUTE"


def recomputing() -> bool:
    """True while a stage runs under `run --force`: its keyed caches are recomputed, not read (each file is
    replaced only once its new version is complete, so a failed forced run keeps the previous one)."""
    return os.environ.get(RECOMPUTE_ENV) == "1"


def cached(path: str | os.PathLike, key: str, compute: Callable[[], Any], *,
           load: Callable[[Path], tuple[str | None, Any]], save: Callable[[Path, str, Any], None]) -> Any:
    """The artifact at `path` if it was stored under `key`; otherwise `compute()`, saved there under `key`.

    The one cache idiom of the study (a stage that resumes redoes nothing finished; a changed config,
    model or prompt set changes the key and recomputes). `load(path)` returns (stored key, value);
    `save(tmp_path, key, value)` writes to a temporary file that is renamed onto `path` once complete.
    A file that cannot be read is recomputed, with a warning naming it: a cache is never a blocker."""
    final = Path(path)
    if final.exists() and not recomputing():
        try:
            stored_key, value = load(final)
        except Exception as exc:  # noqa: BLE001 - any damage means "not cached"
            _warn_unreadable(final, exc)
        else:
            if stored_key == key:
                return value
    value = compute()
    with atomic_path(final, suffix=final.suffix) as tmp:
        save(tmp, key, value)
    return value


def stored_json(path: str | os.PathLike, key: str) -> dict | None:
    """The JSON object at `path` when it was stored under `key` (see `cached_json`), else None."""
    final = Path(path)
    if not final.exists() or recomputing():
        return None
    try:
        saved = read_json(final)
    except (OSError, ValueError) as exc:
        _warn_unreadable(final, exc)
        return None
    return saved if isinstance(saved, dict) and saved.get("key") == key else None


def store_json(path: str | os.PathLike, key: str, fields: Mapping[str, Any]) -> Path:
    """Write {"key": key, **fields} at `path` atomically: what `stored_json` and `cached_json` read back
    (for a result whose computing and storing a caller splits, as the main process of a sharded run does)."""
    return write_json_atomic(path, {"key": key, **fields})


def _warn_unreadable(path: Path, exc: Exception) -> None:
    warnings.warn(f"{path}: unreadable cached artifact ({type(exc).__name__}: {exc}); recomputing it", stacklevel=3)


def cached_json(path: str | os.PathLike, key: str, compute: Callable[[], Any], *, field: str | None = "value",
                meta: Mapping[str, Any] | None = None) -> Any:
    """`compute()`'s JSON-able result, stored at `path` as {"key": key, **meta, field: value}; with
    `field=None` the result is a dict whose entries sit beside the key ({"key": key, **meta, **value})."""
    meta = dict(meta or {})

    def load(p: Path) -> tuple[str | None, Any]:
        saved = read_json(p)
        if field is not None:
            return saved.get("key"), saved[field]
        return saved.get("key"), {k: v for k, v in saved.items() if k != "key" and k not in meta}

    def save(tmp: Path, k: str, value: Any) -> None:
        tmp.write_text(_json_text({"key": k, **meta, **(value if field is None else {field: value})}), encoding="utf-8")

    return cached(path, key, compute, load=load, save=save)


def cached_array(path: str | os.PathLike, key: str, compute: Callable[[], Any]):
    """`compute()` as a numpy array, stored at `path` (.npz holding the array and its key; no pickle)."""
    import numpy as np

    def load(p: Path):
        with np.load(p, allow_pickle=False) as npz:
            return str(npz["key"]), npz["array"]

    def save(tmp: Path, k: str, array) -> None:
        # A file object, not a name: np.savez would append ".npz" to the temporary name.
        with open(tmp, "wb") as fh:
            np.savez(fh, array=np.asarray(array), key=np.asarray(k))

    return np.asarray(cached(path, key, lambda: np.asarray(compute()), load=load, save=save))


KEY_FILE = ".artifact_key"


def content_key(*parts: Any) -> str:
    """A short hash of everything an artifact was made from (JSON-serialisable parts)."""
    import hashlib

    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def claim_dir(directory: str | os.PathLike, key: str) -> bool:
    """Make `directory` hold the artifacts of `key` only: the keyed cache of a folder that a tool other
    than ours fills (a training run's checkpoints and adapter), where `cached` keys a single file.

    A folder written under another key (the config, the data or the base model changed) is emptied,
    so nothing stale is ever reused; a folder of the same key is kept as it is (that is how an
    interrupted run resumes). Returns True when stale artifacts were removed."""
    import shutil

    folder = Path(directory)
    marker = folder / KEY_FILE
    stale = folder.is_dir() and any(folder.iterdir()) and (not marker.exists() or marker.read_text().strip() != key)
    if stale:
        shutil.rmtree(folder)
    if stale or not marker.exists():
        write_text_atomic(marker, key + "\n")
    return stale
