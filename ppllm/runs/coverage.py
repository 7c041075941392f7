"""Coverage from repeated samples: pass@k, coverage-against-k curves, their power-law fit, and
the accuracy ceiling of resampling against an imperfect verifier.

- `pass_at_k(n, c, k)`: the unbiased estimator 1 − C(n−c, k)/C(n, k) of the probability that
  at least one of k samples is correct, given c correct among n (Chen et al. 2021), computed
  as a product of ratios so that it neither overflows nor loses digits.
- `coverage_curve(counts, ks)`: mean pass@k over problems with a bootstrap interval.
- `fit_power_law(ks, coverage)`: coverage ≈ exp(a · k^b) (Large Language Monkeys' fit of
  log coverage; b < 0), by least squares on log(−log coverage).
- `verifier_ceiling(tpr, fpr, p)`: the accuracy of resampling until the verifier accepts, per
  problem: p·TPR / (p·TPR + (1 − p)·FPR) — an imperfect verifier caps accuracy below 1 however
  many samples are drawn (Inference Scaling fLaws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["coverage_curve", "fit_power_law", "pass_at_k", "verifier_ceiling"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from c correct of n samples: 1 − Π_{i=n−c+1}^{n} (1 − k/i)."""
    for name, v in (("n", n), ("c", c), ("k", k)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n:
        raise ValueError(f"k = {k} is larger than the number of samples n = {n}")
    if c > n:
        raise ValueError(f"c = {c} correct is more than the n = {n} samples")
    if n - c < k:
        return 1.0
    # C(n−c, k)/C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i): each factor in (0, 1]
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def coverage_curve(
    counts: Sequence[tuple[int, int]], ks: Sequence[int], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
    """Mean pass@k over problems (n_i, c_i) for each k, with a bootstrap interval over problems."""
    if not counts:
        raise ValueError("coverage needs at least one problem")
    table = np.array([[pass_at_k(int(n), int(c), int(k)) for k in ks] for n, c in counts])
    gen = np.random.default_rng(seed)
    idx = gen.integers(0, len(counts), size=(n_boot, len(counts)))
    boot = table[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {"k": [int(k) for k in ks], "coverage": table.mean(axis=0).tolist(), "low": lo.tolist(),
            "high": hi.tolist()}


def fit_power_law(ks: Sequence[float], coverage: Sequence[float]) -> tuple[float, float]:
    """(a, b) with coverage ≈ exp(a · k^b), fitted on points with 0 < coverage < 1."""
    k = np.asarray(ks, dtype=np.float64)
    cov = np.asarray(coverage, dtype=np.float64)
    keep = (cov > 0) & (cov < 1) & (k > 0)
    if keep.sum() < 2:
        raise ValueError("the power-law fit needs at least two points with 0 < coverage < 1")
    # log(−log cov) = log(−a) + b log k
    slope, intercept = np.polyfit(np.log(k[keep]), np.log(-np.log(cov[keep])), 1)
    return -math.exp(intercept), float(slope)


def verifier_ceiling(tpr: Sequence[float], fpr: Sequence[float], p: Sequence[float]) -> float:
    """Mean over problems of the accuracy of resampling until the verifier accepts."""
    t, f, q = (np.asarray(x, dtype=np.float64) for x in (tpr, fpr, p))
    if not (t.shape == f.shape == q.shape):
        raise ValueError("tpr, fpr and p need one value per problem")
    for name, x in (("tpr", t), ("fpr", f), ("p", q)):
        if ((x < 0) | (x > 1)).any():
            raise ValueError(f"{name} must lie in [0, 1]")
    accept = q * t + (1 - q) * f
    acc = np.divide(q * t, accept, out=np.zeros_like(q), where=accept > 0)
    return float(acc.mean())
