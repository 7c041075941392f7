"""Spending self-consistency samples where the majority is not yet settled.

- `beta_should_stop(counts)`: Beta early stopping (as in its_hub's Beta self-consistency):
  with the two most frequent answers seen a and b times, stop once
  P(θ > 1/2) ≥ `confidence` under Beta(a + prior, b + prior), i.e. once the leader is
  probably the majority of infinitely many samples.
- PETS offline (Liu et al. 2026, optimistic knowledge gradient): each question keeps
  Dirichlet counts α over its answers; `argmax_probability(α)` = P(argmax θ = m) for
  θ ~ Dir(α) (exact for two options, Monte Carlo with Gamma draws otherwise);
  h(α) = max_m P(argmax θ = m); the optimistic gain of a question is
  max_m [h(α + e_m) − h(α)]; `okg_pick` gives the next sample to the question with the
  largest gain (ties: the first).
- PETS online: `fit_sc_curve` fits A(k) = Φ(a·√k + b) to a question's agreement-with-majority
  curve, and `online_budgets` gives each difficulty bucket a budget by greedy marginal gain
  A(k+1) − A(k) under an average budget (min 4, max 64 by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import betainc, log_ndtr
from scipy.stats import norm

__all__ = ["argmax_probability", "beta_should_stop", "fit_sc_curve", "h_value", "okg_gain", "okg_pick",
           "online_budgets"]


def beta_should_stop(counts: Sequence[int], confidence: float = 0.95, prior: float = 1.0) -> bool:
    """True once the most frequent answer is the majority with probability ≥ `confidence`."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not prior > 0:
        raise ValueError(f"prior must be > 0, got {prior!r}")
    c = sorted((int(x) for x in counts), reverse=True)
    if not c or c[0] == 0:
        return False
    a, b = c[0], c[1] if len(c) > 1 else 0
    return float(1.0 - betainc(a + prior, b + prior, 0.5)) >= confidence


def argmax_probability(alpha: Sequence[float], n_samples: int = 4000, seed: int = 0) -> np.ndarray:
    """P(argmax θ = m) for θ ~ Dirichlet(α): exact for two options, else Monte Carlo."""
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0 or (a <= 0).any():
        raise ValueError(f"Dirichlet counts must be positive, got {list(a)}")
    if len(a) == 1:
        return np.ones(1)
    if len(a) == 2:
        p1 = 1.0 - float(betainc(a[0], a[1], 0.5))  # P(θ₁ > 1/2) with θ₁ ~ Beta(α₁, α₂)
        return np.array([p1, 1.0 - p1])
    gen = np.random.default_rng(seed)
    g = gen.gamma(a, size=(n_samples, len(a)))  # Dirichlet draws up to normalisation
    return np.bincount(np.argmax(g, axis=1), minlength=len(a)) / n_samples


def h_value(alpha: Sequence[float], **kw: int) -> float:
    return float(argmax_probability(alpha, **kw).max())


def okg_gain(alpha: Sequence[float], **kw: int) -> float:
    """max_m [h(α + e_m) − h(α)]: the optimistic value of one more sample of this question."""
    a = np.asarray(alpha, dtype=np.float64)
    base = h_value(a, **kw)
    return max(h_value(a + np.eye(len(a))[m], **kw) - base for m in range(len(a)))


def okg_pick(alphas: Sequence[Sequence[float]], **kw: int) -> int:
    """The question that gets the next sample: the largest optimistic gain (first on ties)."""
    gains = [okg_gain(a, **kw) for a in alphas]
    return int(np.argmax(gains))


def fit_sc_curve(ks: Sequence[float], agreement: Sequence[float]) -> tuple[float, float]:
    """(a, b) of A(k) = Φ(a·√k + b), by least squares on probit(A) (A clipped to [0.01, 0.99])."""
    k = np.asarray(ks, dtype=np.float64)
    A = np.clip(np.asarray(agreement, dtype=np.float64), 0.01, 0.99)
    if len(k) < 2:
        raise ValueError("the curve fit needs at least two budgets")
    a, b = np.polyfit(np.sqrt(k), norm.ppf(A), 1)
    return float(a), float(b)


def online_budgets(curves: Sequence[tuple[float, float]], weights: Sequence[float], average: float,
                   min_budget: int = 4, max_budget: int = 64) -> list[int]:
    """Per-bucket budgets B_t maximising Σ w_t A_t(B_t) under Σ w_t B_t ≤ average · Σ w_t,
    greedily by marginal gain per sample (gains from log-survival, stable in the tails)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(curves) != len(w) or (w <= 0).any():
        raise ValueError("one positive weight per bucket")
    if not min_budget <= average <= max_budget:
        raise ValueError(f"average budget must be in [{min_budget}, {max_budget}], got {average!r}")
    budgets = [min_budget] * len(curves)
    spare = average * w.sum() - min_budget * w.sum()

    def gain(t: int) -> float:
        a, b = curves[t]
        k = budgets[t]
        # A(k+1) − A(k) = S(−x_k) − S(−x_{k+1}) with S the normal survival function
        lo, hi = log_ndtr(-(a * math.sqrt(k) + b)), log_ndtr(-(a * math.sqrt(k + 1) + b))
        return float(math.exp(lo) - math.exp(hi))

    while True:
        options = [(gain(t) / 1.0, t) for t in range(len(curves)) if budgets[t] < max_budget and w[t] <= spare + 1e-12]
        if not options:
            return budgets
        g, t = max(options)
        if g <= 0:
            return budgets
        budgets[t] += 1
        spare -= w[t]
