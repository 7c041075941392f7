"""Results of inference: weighted particles, evidence, per-step diagnostics, estimators.

Every kernel returns a `Posterior`. Weighted estimators live here (ArviZ has no weighted
samples); `to_arviz()` hands ArviZ an unweighted resample plus the log-weights.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .population import DegenerateWeights, ess, normalise
from .program import Program
from .rng import Rng

__all__ = ["Posterior", "StepRecord", "particle_text"]


@dataclass
class StepRecord:
    """Per-step figures of a particle kernel."""

    t: int
    ess: float
    resampled: bool
    ancestors: np.ndarray
    log_Z_increment: float
    n_live: int

    @classmethod
    def from_info(cls, info: Any) -> StepRecord:
        return cls(info.t, info.ess, info.resampled, np.asarray(info.ancestors), info.log_Z_increment, info.n_live)


def particle_text(p: Program) -> str:
    """What to show for a particle: `str(program)` if the class defines it, else its trace."""
    if type(p).__str__ is not object.__str__:
        return str(p)
    return " ".join(repr(c.value) for c in p.trace)


@dataclass
class Posterior:
    """Weighted particles with log Ẑ, per-step diagnostics and the budget used."""

    particles: list[Program]
    log_weights: np.ndarray
    log_Z: float
    steps: list[StepRecord] = field(default_factory=list)
    budget: dict[str, float] = field(default_factory=dict)
    kernel: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # kernel-specific results

    # ------------------------------------------------------------------ weights
    @property
    def n(self) -> int:
        return len(self.particles)

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights; raises DegenerateWeights (with the reason) if all are zero."""
        try:
            return normalise(self.log_weights)
        except DegenerateWeights:
            raise DegenerateWeights(self.message or "every particle has weight zero") from None

    @property
    def ess(self) -> float:
        return ess(self.log_weights)

    @property
    def ok(self) -> bool:
        return self.log_Z > -math.inf

    def collapse(self, rng: Rng) -> tuple[Program | None, float]:
        """One particle drawn ∝ weight, with log Ẑ (unbiased: E[Ẑ·1{x}] = γ(x))."""
        if not self.ok:
            return None, -math.inf
        return self.particles[rng.categorical(self.weights)], self.log_Z

    # ------------------------------------------------------------------ estimators
    def values(self, fn: Callable[[Program], Any] = particle_text) -> list[Any]:
        return [fn(p) for p in self.particles]

    def expectation(self, fn: Callable[[Program], float]) -> float:
        """Σ_i W_i f(x_i), the self-normalised estimate of E_π[f]."""
        vals = np.array([float(fn(p)) for p in self.particles])
        W = self.weights
        keep = W > 0  # f may be undefined (NaN) on particles ruled out by a constraint
        return float(np.sum(W[keep] * vals[keep]))

    def distribution(self, fn: Callable[[Program], Hashable] = particle_text) -> dict[Hashable, float]:
        """Posterior mass of each distinct value of fn, largest first."""
        mass: dict[Hashable, float] = {}
        for p, w in zip(self.particles, self.weights, strict=True):
            if w > 0:
                k = fn(p)
                mass[k] = mass.get(k, 0.0) + float(w)
        return dict(sorted(mass.items(), key=lambda kv: -kv[1]))

    def map_value(self, fn: Callable[[Program], Hashable] = particle_text) -> Hashable:
        """The value with the largest posterior mass (weighted majority vote)."""
        return next(iter(self.distribution(fn)))

    def majority_vote(self, fn: Callable[[Program], Hashable] = particle_text) -> Hashable:
        """The most common value among particles, ignoring weights (self-consistency)."""
        counts = Counter(fn(p) for p in self.particles)
        return counts.most_common(1)[0][0]

    def mbr(self, loss: Callable[[Hashable, Hashable], float], fn: Callable[[Program], Hashable] = particle_text) -> Hashable:
        """Minimum Bayes risk: the candidate minimising Σ_j W_j loss(candidate, x_j)."""
        dist = self.distribution(fn)
        cands = list(dist)
        return min(cands, key=lambda c: sum(w * loss(c, x) for x, w in dist.items()))

    # ------------------------------------------------------------------ display
    def summary(self, top: int = 10) -> str:
        lines = [f"{self.kernel or 'posterior'}: {self.n} particles, log Ẑ = {self.log_Z:.4f}"]
        if self.message:
            lines.append(f"  note: {self.message}")
        if not self.ok:
            return "\n".join(lines)
        lines[0] += f", ESS = {self.ess:.2f}"
        if self.steps:
            n_res = sum(s.resampled for s in self.steps)
            lines.append(f"  {len(self.steps)} steps, resampled {n_res} times")
        for value, w in list(self.distribution().items())[:top]:
            lines.append(f"  {w:7.4f}  {value!r}")
        if self.budget:
            parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.budget.items()]
            lines.append("  budget: " + ", ".join(parts))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
