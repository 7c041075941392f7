"""Resampling schemes, all with one signature: `scheme(rng, W, n) -> ancestor indices`.

`W` are normalised weights (they sum to 1). Every scheme is unbiased: the expected
number of offspring of particle i is n·W_i, so the total weight is preserved and the
evidence estimate stays unbiased. Systematic resampling additionally gives each particle
between ⌊n·W_i⌋ and ⌈n·W_i⌉ offspring; it is the default, having the lowest variance
of the four in practice (Douc & Cappé 2005; Chopin & Papaspiliopoulos, ch. 9).

Each scheme tells the Rng where its uniforms matter (`cuts`), so the exact oracle can
enumerate it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from functools import lru_cache
from itertools import accumulate
from math import comb

import numpy as np

from .rng import Rng, SeededRng

__all__ = ["RESAMPLERS", "get_resampler", "multinomial", "stratified", "systematic", "residual"]

Resampler = Callable[[Rng, np.ndarray, int], np.ndarray]


def _cdf(W: np.ndarray) -> np.ndarray:
    c = np.cumsum(W)
    # Guard against rounding: from the last positive weight on, the cdf is exactly 1, so
    # every u in [0, 1) lands on a particle of positive weight.
    c[np.flatnonzero(W > 0)[-1] :] = 1.0
    return c


def _locate(cdf: np.ndarray, u: np.ndarray, W: np.ndarray) -> np.ndarray:
    # First k with cdf[k] > u: zero-weight particles have empty intervals and are never hit.
    return np.searchsorted(cdf, u, side="right").astype(np.int64)


def multinomial(rng: Rng, W: np.ndarray, n: int) -> np.ndarray:
    """n independent draws from W, returned sorted.

    Drawn as offspring counts, count_i ~ Binomial(n − Σ_{j<i} count_j, W_i / Σ_{j≥i} W_j),
    which is the same multinomial law as n separate draws; it also gives the exact oracle
    C(2n−1, n) count vectors to enumerate instead of nⁿ ordered draws.
    """
    counts = [0] * len(W)
    tail = np.cumsum(W[::-1])[::-1].tolist()  # tail[i] = Σ_{j≥i} W_j
    W = W.tolist()
    # A seeded stream draws each count by the inverse CDF in plain Python: the same floats
    # as `SeededRng.categorical` (a cumulative sum adds in order), without NumPy's per-call
    # cost on a pmf of n + 1 entries.
    seeded = type(rng) is SeededRng
    left = n
    for i in range(len(W)):
        if left == 0:
            break
        if i == len(W) - 1 or tail[i + 1] <= 0:
            counts[i] = left  # nothing with positive weight comes after i
            break
        p = min(W[i] / tail[i], 1.0)
        if not p > 0:
            continue
        if seeded:
            c = _inverse_cdf_list(_binom_pmf_list(left, p), rng.random())
        else:
            c = int(rng.categorical(_binom_pmf(left, p)))
        counts[i] = c
        left -= c
    return np.repeat(np.arange(len(W)), counts)


def _binom_pmf_list(n: int, p: float) -> list[float]:
    q = 1 - p
    return [c * p**j * q ** (n - j) for j, c in enumerate(_binomial_row(n))]


@lru_cache(maxsize=256)
def _binomial_row(n: int) -> tuple[int, ...]:
    """C(n, 0..n), exact integers: the same products as `comb` per entry."""
    return tuple(comb(n, j) for j in range(n + 1))


def _binom_pmf(n: int, p: float) -> np.ndarray:
    return np.array(_binom_pmf_list(n, p))


def _inverse_cdf_list(probs: list[float], u: float) -> int:
    """`categorical_from_uniform(np.array(probs), u)` on a short list."""
    cdf = list(accumulate(probs))
    total = cdf[-1]
    if not math.isfinite(total) or total <= 0:
        raise ValueError("categorical: probabilities must be finite with a positive sum")
    i = min(bisect_right(cdf, u * total), len(probs) - 1)
    while probs[i] <= 0:  # rounding can land on a zero-probability entry: step back
        i -= 1
    return i


def stratified(rng: Rng, W: np.ndarray, n: int) -> np.ndarray:
    """One uniform in each stratum [j/n, (j+1)/n)."""
    cdf = _cdf(W)
    cuts = [_in_unit(n * cdf[:-1] - j) for j in range(n)]
    u = (np.arange(n) + rng.uniform(n, cuts)) / n
    return _locate(cdf, u, W)


def systematic(rng: Rng, W: np.ndarray, n: int) -> np.ndarray:
    """One uniform shared by all strata: points (j + U)/n."""
    cdf = _cdf(W)
    # every stratum's cuts at once: row j is n·cdf − j (the same floats as one row at a time)
    strata = (n * cdf[:-1])[None, :] - np.arange(n, dtype=np.float64)[:, None]
    cuts = [np.unique(_in_unit(strata.reshape(-1)))]
    u = (np.arange(n) + rng.uniform(1, cuts)[0]) / n
    return _locate(cdf, u, W)


def residual(rng: Rng, W: np.ndarray, n: int) -> np.ndarray:
    """⌊n·W_i⌋ copies of each particle, the remaining R by multinomial on the residuals."""
    nW = n * W
    counts = np.floor(nW).astype(np.int64)
    fixed = np.repeat(np.arange(len(W)), counts)
    r = n - int(counts.sum())
    if r == 0:
        return fixed
    res = nW - counts
    extra = multinomial(rng, res / res.sum(), r)
    return np.concatenate([fixed, extra])


def _in_unit(x: np.ndarray) -> np.ndarray:
    return x[(x > 0) & (x < 1)]


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_resampler(name_or_fn: str | Resampler) -> Resampler:
    """Look a scheme up by name (or pass a callable with the same signature through)."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return RESAMPLERS[name_or_fn]
    except KeyError:
        raise ValueError(
            f"unknown resampler {name_or_fn!r}; choose one of {sorted(RESAMPLERS)}"
        ) from None
