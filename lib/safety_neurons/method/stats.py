"""Statistics of patching results: causal effect, its bootstrap interval, paired tests.

All inputs are per-prompt safety scores (higher = safer) of the *same* prompts under different
models or patches, so resampling and permutation keep prompts paired.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_EXACT_MAX_PAIRS = 16  # up to 2**16 sign patterns are enumerated exactly


def causal_effect(f_patched: float, f_m1: float, f_m2: float) -> float:
    """C = (F(patched) - F(M1)) / (F(M2) - F(M1)); an error when F(M2) == F(M1) (C is undefined)."""
    f_patched, f_m1, f_m2 = float(f_patched), float(f_m1), float(f_m2)
    if not all(math.isfinite(v) for v in (f_patched, f_m1, f_m2)):
        raise ValueError(f"scores must be finite, got F(patched)={f_patched}, F(M1)={f_m1}, F(M2)={f_m2}")
    if f_m2 == f_m1:
        raise ValueError(
            f"F(M2) == F(M1) == {f_m1}: M2 is no safer than M1 on these prompts, so the causal effect "
            "(F(patched) - F(M1)) / (F(M2) - F(M1)) is undefined"
        )
    return (f_patched - f_m1) / (f_m2 - f_m1)


@dataclass(frozen=True)
class BootstrapResult:
    """The causal effect on all prompts and a percentile bootstrap interval over prompts.
    Unpacks as (c, lo, hi)."""

    c: float
    lo: float
    hi: float
    n_boot: int  # resamples drawn
    n_skipped: int  # resamples where F(M2) == F(M1), left out of the interval
    alpha: float

    def __iter__(self):
        return iter((self.c, self.lo, self.hi))


def _paired_arrays(*arrays: ArrayLike, names: tuple[str, ...]) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    n = {len(a) for a in out}
    if len(n) != 1:
        sizes = ", ".join(f"{name}={len(a)}" for name, a in zip(names, out))
        raise ValueError(f"paired scores must have one value per prompt for every arm; got {sizes}")
    if out[0].size == 0:
        raise ValueError("no scores: the prompt set is empty")
    for name, a in zip(names, out):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} holds non-finite scores")
    return out


def bootstrap_causal_effect(
    s_patched: ArrayLike,
    s_m1: ArrayLike,
    s_m2: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """C on all prompts and a (1 - alpha) percentile interval from resampling prompts jointly.

    The three arrays are per-prompt scores of the same prompts; each resample draws prompt indices
    with replacement and recomputes C from the three means. Resamples with F(M2) == F(M1) are skipped
    and counted in `n_skipped`.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p, m1, m2 = _paired_arrays(s_patched, s_m1, s_m2, names=("s_patched", "s_m1", "s_m2"))
    c = causal_effect(p.mean(), m1.mean(), m2.mean())
    rng = np.random.default_rng(seed)
    n = p.size
    effects: list[np.ndarray] = []
    skipped = 0
    chunk = max(1, min(n_boot, 2_000_000 // n))
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        fp, f1, f2 = p[idx].mean(1), m1[idx].mean(1), m2[idx].mean(1)
        denom = f2 - f1
        ok = denom != 0
        skipped += int((~ok).sum())
        effects.append((fp[ok] - f1[ok]) / denom[ok])
    valid = np.concatenate(effects)
    if valid.size == 0:
        raise ValueError(f"every one of the {n_boot} resamples has F(M2) == F(M1): no interval can be formed")
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(c, float(lo), float(hi), int(n_boot), skipped, float(alpha))


def paired_test(s_a: ArrayLike, s_b: ArrayLike, seed: int = 0, n_perm: int = 10000) -> float:
    """Two-sided paired sign-flip permutation test of mean(s_a - s_b) == 0; returns the p-value.

    Under the null each prompt's difference is as likely to have either sign. The statistic is
    |sum of differences|. Zero differences are dropped (they do not change under a flip). With at most
    16 nonzero differences every sign pattern is enumerated (exact p); otherwise `n_perm` random
    patterns give p = (1 + #{|T*| >= |T|}) / (1 + n_perm).
    """
    a, b = _paired_arrays(s_a, s_b, names=("s_a", "s_b"))
    d = a - b
    d = d[d != 0]
    m = d.size
    if m == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if m <= _EXACT_MAX_PAIRS:
        patterns = np.arange(2**m, dtype=np.int64)[:, None] >> np.arange(m)
        signs = 1.0 - 2.0 * (patterns & 1)
        stats = np.abs(signs @ d)
        return float(np.mean(stats >= observed - tol))
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, min(n_perm, 4_000_000 // m))
    for start in range(0, n_perm, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, n_perm - start), m))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + n_perm)


def mcnemar_exact(s_a: ArrayLike, s_b: ArrayLike) -> float:
    """Exact two-sided McNemar test for paired binary scores (e.g. refused / not); returns the p-value.

    Only discordant prompts count: n10 (a=1, b=0) and n01 (a=0, b=1); under the null n10 ~ Bin(n, 1/2).
    """
    a, b = _paired_arrays(s_a, s_b, names=("s_a", "s_b"))
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("McNemar's test needs binary scores (0 or 1); use paired_test for graded scores")
    n10 = int(np.sum((a == 1) & (b == 0)))
    n01 = int(np.sum((a == 0) & (b == 1)))
    n = n10 + n01
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(n10, n01) + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def bootstrap_mean(scores: ArrayLike, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean of per-prompt scores and its (1 - alpha) percentile interval from resampling prompts."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    (s,) = _paired_arrays(scores, names=("scores",))
    idx = np.random.default_rng(seed).integers(0, s.size, size=(n_boot, s.size))
    lo, hi = np.quantile(s[idx].mean(1), [alpha / 2, 1 - alpha / 2])
    return float(s.mean()), float(lo), float(hi)
