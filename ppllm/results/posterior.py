"""Results of inference: weighted particles, evidence, genealogy, diagnostics, estimators.

Every particle kernel returns a `Posterior`; MCMC kernels return `Chains` (`results.chains`).
Weighted estimators live here because ArviZ has no weighted samples (arviz issue #2035):
`to_arviz()` (`results.arviz_io`) hands ArviZ an unweighted resample in `posterior`, the
log-weights in `sample_stats` and the kernel's diagnostics in a group of their own
(docs/results-and-arviz.md).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..population import DegenerateWeights, ess, normalise
from ..program import Program
from ..resampling import get_resampler
from ..rng import Rng, SeededRng
from .diagnostics import StepInfo, Steps, trace_ancestors
from .values import json_float, json_value

if TYPE_CHECKING:  # arviz is imported lazily: it is slow to import
    import arviz

__all__ = ["ParticleRecord", "Posterior", "Variables", "particle_text"]

Variables = Mapping[str, Callable[[Any], Any]]


@dataclass(frozen=True)
class ParticleRecord:
    """A particle read back from a results file: its text and recorded variables.

    Attribute access reads the variables, so `lambda p: p.answer` works on programs and
    on records alike; `str()` is the text.
    """

    text: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __str__(self) -> str:
        return self.text


def particle_text(p: Any) -> str:
    """What to show for a particle: `str(program)` if the class defines it, else its trace."""
    if not isinstance(p, Program):
        return str(p)  # a ParticleRecord or a plain value
    if type(p).__str__ is not object.__str__:
        return str(p)
    return " ".join(repr(c.value) for c in p.trace)


@dataclass
class Posterior:
    """Weighted particles with log Ẑ, their genealogy, the budget used and diagnostics.

    `particles` are programs (or plain values); `log_weights` their unnormalised
    log-weights; `log_Z` the estimate log Ẑ of the evidence (NaN for kernels that have
    none, such as beam search); `ancestry[k]` the ancestor indices of generation k+1;
    `budget` what the run used (lm_calls, tokens, seconds, ...); `diagnostics` the
    kernel family's own figures (`Steps` for population kernels); `extras` kernel-specific
    results such as the selected answer.
    """

    particles: list[Any]
    log_weights: np.ndarray
    log_Z: float
    ancestry: list[np.ndarray] = field(default_factory=list)
    budget: dict[str, float] = field(default_factory=dict)
    kernel: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    diagnostics: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_weights = np.asarray(self.log_weights, dtype=np.float64)
        if self.log_weights.shape != (len(self.particles),):
            raise ValueError(
                f"log_weights has shape {self.log_weights.shape} for {len(self.particles)} particles"
            )
        if np.isnan(self.log_weights).any():
            raise ValueError("log_weights contains NaN")

    # ------------------------------------------------------------------ weights
    @property
    def n(self) -> int:
        return len(self.particles)

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights; raises DegenerateWeights (with the reason) if all are zero."""
        if self.n == 0:
            raise DegenerateWeights(self.message or "the posterior has no particles")
        try:
            return normalise(self.log_weights)
        except DegenerateWeights:
            raise DegenerateWeights(self.message or "every particle has weight zero") from None

    @property
    def ess(self) -> float:
        return ess(self.log_weights) if self.n else 0.0

    @property
    def ok(self) -> bool:
        """Some particle has positive weight. (log Ẑ may be NaN: search kernels have none.)"""
        return self.n > 0 and self.log_Z != -math.inf and bool(np.max(self.log_weights) > -math.inf)

    def collapse(self, rng: Rng) -> tuple[Any | None, float]:
        """One particle drawn ∝ weight, with log Ẑ (unbiased: E[Ẑ·1{x}] = γ(x))."""
        if not self.ok:
            return None, -math.inf
        return self.particles[rng.categorical(self.weights)], self.log_Z

    def resample(self, n: int | None = None, seed: int = 0, scheme: str = "systematic") -> np.ndarray:
        """Indices of an unweighted resample of size n (default N), drawn ∝ weight."""
        n = self.n if n is None else n
        return np.asarray(get_resampler(scheme)(SeededRng(seed), self.weights, n), dtype=np.int64)

    # ------------------------------------------------------------------ per-step figures
    @property
    def steps(self) -> list[StepInfo]:
        """Per-step records of a population kernel ([] for other kernels)."""
        return self.diagnostics.steps if isinstance(self.diagnostics, Steps) else []

    @property
    def ess_history(self) -> np.ndarray:
        return np.array([s.ess for s in self.steps], dtype=np.float64)

    @property
    def resampled(self) -> np.ndarray:
        return np.array([s.resampled for s in self.steps], dtype=bool)

    @property
    def log_Z_increments(self) -> np.ndarray:
        return np.array([s.log_Z_increment for s in self.steps], dtype=np.float64)

    @property
    def n_live(self) -> np.ndarray:
        return np.array([s.n_live for s in self.steps], dtype=np.int64)

    def genealogy(self) -> np.ndarray:
        """Each final particle's lineage: shape (generations+1, N); see `trace_ancestors`."""
        return trace_ancestors(self.ancestry, self.n)

    def n_lineages(self) -> np.ndarray:
        """Distinct ancestors of the final particles in each generation (path degeneracy)."""
        return np.array([len(np.unique(row)) for row in self.genealogy()], dtype=np.int64)

    # ------------------------------------------------------------------ estimators
    def values(self, fn: Callable[[Any], Any] = particle_text) -> list[Any]:
        return [fn(p) for p in self.particles]

    def texts(self) -> list[str]:
        return self.values(particle_text)

    def expectation(self, fn: Callable[[Any], float]) -> float:
        """Σ_i W_i f(x_i), the self-normalised estimate of E_π[f]."""
        vals = np.array([float(fn(p)) for p in self.particles])
        W = self.weights
        keep = W > 0  # f may be undefined (NaN) on particles ruled out by a constraint
        return float(np.sum(W[keep] * vals[keep]))

    def distribution(self, fn: Callable[[Any], Hashable] = particle_text) -> dict[Hashable, float]:
        """Posterior mass of each distinct value of fn, largest first (ties: first seen)."""
        mass: dict[Hashable, float] = {}
        for p, w in zip(self.particles, self.weights, strict=True):
            if w > 0:
                k = fn(p)
                mass[k] = mass.get(k, 0.0) + float(w)
        return dict(sorted(mass.items(), key=lambda kv: -kv[1]))

    answer_distribution = distribution

    def map_value(self, fn: Callable[[Any], Hashable] = particle_text) -> Hashable:
        """The value with the largest posterior mass (weighted majority vote)."""
        return next(iter(self.distribution(fn)))

    def majority_vote(
        self, fn: Callable[[Any], Hashable] = particle_text, weighted: bool = False
    ) -> Hashable:
        """The most common value among particles (self-consistency); `weighted=True` uses W."""
        if weighted:
            return self.map_value(fn)
        counts = Counter(fn(p) for p in self.particles)
        return counts.most_common(1)[0][0]

    def mbr(
        self, loss: Callable[[Hashable, Hashable], float], fn: Callable[[Any], Hashable] = particle_text
    ) -> Hashable:
        """Minimum Bayes risk: the candidate minimising Σ_j W_j loss(candidate, x_j)."""
        dist = self.distribution(fn)
        return min(dist, key=lambda c: sum(w * loss(c, x) for x, w in dist.items()))

    # ------------------------------------------------------------------ export
    def to_arviz(self, variables: Variables | None = None, *, seed: int = 0) -> arviz.InferenceData:
        """This run as one chain of an `arviz.InferenceData`; see `ppllm.results.to_arviz`."""
        from .arviz_io import to_arviz

        return to_arviz([self], variables, seed=seed)

    def records(self, variables: Variables | None = None) -> list[dict[str, Any]]:
        """One JSON-ready dict per particle: index, text, log-weight, weight, variables."""
        W = self.weights if self.ok else np.zeros(self.n)
        rows = []
        for i, p in enumerate(self.particles):
            row: dict[str, Any] = {
                "index": i,
                "text": particle_text(p),
                "log_weight": json_float(self.log_weights[i]),
                "weight": float(W[i]),
            }
            for name, fn in (variables or {}).items():
                row[name] = json_value(fn(p))
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ display
    def summary(self, top: int = 10, fn: Callable[[Any], Hashable] = particle_text) -> str:
        head = f"{self.kernel or 'posterior'}: {self.n} particles, log Ẑ = {self.log_Z:.4f}"
        lines = [head]
        if self.message:
            lines.append(f"  note: {self.message}")
        if not self.ok:
            return "\n".join(lines)
        lines[0] += f", ESS = {self.ess:.2f}"
        if self.steps:
            n_res = int(self.resampled.sum())
            lines.append(
                f"  {len(self.steps)} steps, resampled {n_res} times, "
                f"min ESS {self.ess_history.min():.2f}, {self.n_lineages()[0]} surviving lineages"
            )
        dist = self.distribution(fn)
        for value, w in list(dist.items())[:top]:
            lines.append(f"  {w:7.4f}  {value!r}")
        if len(dist) > top:
            lines.append(f"  ... {len(dist) - top} more distinct values")
        if self.budget:
            lines.append("  budget: " + budget_text(self.budget))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()




def budget_text(budget: Mapping[str, Any]) -> str:
    """`key=value, ...` with floats to 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in budget.items())
