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
from pathlib import Path

import numpy as np

__all__ = ["coverage_curve", "coverage_of_run", "fit_power_law", "pass_at_k", "plot_coverage", "verifier_ceiling"]


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


def coverage_of_run(out: str | Path) -> dict | None:
    """pass@k against k from a results directory's particles.jsonl (its `correct` column):
    every particle of every round of a prompt is one sample. None without a `correct` column."""
    import json

    path = Path(out) / "particles.jsonl"
    if not path.is_file():
        return None
    counts: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("correct") is None:
            continue
        n_c = counts.setdefault(int(row["prompt"]), [0, 0])
        n_c[0] += 1
        n_c[1] += bool(row["correct"])
    if not counts:
        return None
    n_min = min(n for n, _ in counts.values())
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n_min} | {n_min})
    curve = coverage_curve([tuple(v) for v in counts.values()], ks)
    try:
        curve["power_law"] = list(fit_power_law(curve["k"], curve["coverage"]))
    except ValueError:
        curve["power_law"] = None
    curve["problems"] = len(counts)
    return curve


def plot_coverage(curve: dict, path: str | Path) -> Path:
    """Coverage (pass@k) against k on a log axis, its interval, and the power-law fit."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    k = np.asarray(curve["k"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.fill_between(k, curve["low"], curve["high"], color="C0", alpha=0.2, label="95 % bootstrap interval")
    ax.plot(k, curve["coverage"], marker="o", color="C0", label="pass@k (unbiased)")
    if curve.get("power_law"):
        a, b = curve["power_law"]
        grid = np.geomspace(k.min(), k.max(), 50)
        ax.plot(grid, np.exp(a * grid**b), ls="--", color="0.4", label=f"exp({a:.2f}·k^{b:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("coverage")
    ax.set_title(f"coverage over {curve['problems']} problems")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
