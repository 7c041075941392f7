"""A weighted particle population and the transformations kernels are built from.

Columnar: float64 log-weights `log_w`, the ancestor indices of the last resampling,
finished flags; `programs[i]` is particle i's state. The meaning of a population is the
unnormalised measure  exp(log_Z) · Σ_i w_i / N · δ_{x_i}  (in the spirit of Ścibior et
al. 2018): `log_Z` holds the evidence already pushed out by resampling, so
`log_evidence = log_Z + log mean(w)` is the running estimate log Ẑ.

Operations (each says what it preserves):
- `spawn`    N copies of a program, weight 1.            Preserves: the program's measure.
- `extend`   one `step()` of every live particle.        Preserves: SIS validity.
- `reweight` add log-weights.                            Changes the target by that factor.
- `resample` draw N ancestors ∝ W, reset weights.        Preserves: the expected measure
                                                          (unbiased counts; total weight kept in log_Z).
- `collapse` one particle drawn ∝ W, carrying Ẑ.         Preserves: the expected measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .program import Program
from .resampling import Resampler, get_resampler
from .rng import Rng

__all__ = ["Population", "DegenerateWeights", "normalise", "ess", "logmeanexp"]


class DegenerateWeights(RuntimeError):
    """Every particle has weight zero (log-weight −inf): there is nothing to resample."""


def logmeanexp(log_w: np.ndarray) -> float:
    """log(mean(exp(log_w))), stable, −inf when every weight is zero."""
    if len(log_w) == 0:
        raise ValueError("empty population")
    m = float(np.max(log_w))
    if m == -math.inf:
        return -math.inf
    return m + math.log(float(np.mean(np.exp(log_w - m))))


def normalise(log_w: np.ndarray) -> np.ndarray:
    """Normalised weights W (sum 1). Raises DegenerateWeights when all are zero."""
    m = float(np.max(log_w))
    if m == -math.inf:
        raise DegenerateWeights("every particle has weight zero")
    w = np.exp(log_w - m)
    return w / w.sum()


def ess(log_w: np.ndarray) -> float:
    """Effective sample size 1 / Σ W_i² (0 when every weight is zero)."""
    if np.max(log_w) == -math.inf:
        return 0.0
    W = normalise(log_w)
    return float(1.0 / np.sum(W * W))


@dataclass
class Population:
    """N weighted particles plus the evidence already accounted for by resampling."""

    programs: list[Program]
    log_w: np.ndarray
    ancestors: np.ndarray
    log_Z: float = 0.0

    @classmethod
    def spawn(cls, program: Program, n: int) -> Population:
        if not isinstance(n, int | np.integer) or n <= 0:
            raise ValueError(f"the number of particles must be a positive integer, got {n!r}")
        if not isinstance(program, Program):
            raise TypeError(f"expected a ppllm.Program, got {type(program).__name__}")
        return cls(
            programs=[program.clone() for _ in range(n)],
            log_w=np.zeros(n, dtype=np.float64),
            ancestors=np.arange(n),
        )

    # ------------------------------------------------------------------ views
    @property
    def n(self) -> int:
        return len(self.programs)

    @property
    def finished(self) -> np.ndarray:
        return np.fromiter((p.finished for p in self.programs), dtype=bool, count=self.n)

    @property
    def all_finished(self) -> bool:
        return all(p.finished for p in self.programs)

    @property
    def W(self) -> np.ndarray:
        return normalise(self.log_w)

    @property
    def ess(self) -> float:
        return ess(self.log_w)

    def summary(self) -> tuple[float, float]:
        """(log Ẑ, ESS) from one pass over the weights (the hot path of every kernel step)."""
        lw = self.log_w
        m = float(lw.max())
        if m == -math.inf:
            return -math.inf, 0.0
        w = np.exp(lw - m)
        s = float(w.sum())
        return self.log_Z + m + math.log(s / len(lw)), s * s / float(np.dot(w, w))

    @property
    def log_evidence(self) -> float:
        """The running log Ẑ: resampled-out evidence plus the log mean current weight."""
        return self.log_Z + logmeanexp(self.log_w)

    # ------------------------------------------------------------------ operations
    def extend(self, engine: Engine, rng: Rng, t: int) -> np.ndarray:
        """Run one step of every live particle (slot i draws from rng.child("step", t, "slot", i)).

        Finished particles are left alone: their incremental weight is 1.
        Returns the log-weight increments (0 for finished particles).
        """
        live = [i for i, p in enumerate(self.programs) if not p.finished]
        inc = np.zeros(self.n, dtype=np.float64)
        if live:
            got = engine.step(
                [self.programs[i] for i in live],
                [rng.child("step", t, "slot", i) for i in live],
                t,
            )
            inc[live] = got
            self.log_w[live] += got
        return inc

    def reweight(self, delta: np.ndarray) -> None:
        """log_w += delta. Multiplies the population's measure by exp(delta) per particle."""
        self.log_w = self.log_w + np.asarray(delta, dtype=np.float64)

    def resample(self, rng: Rng, resampler: str | Resampler = "systematic") -> np.ndarray:
        """Draw N ancestors ∝ W, copy them, and reset the weights to 1.

        Preserves the expected measure: offspring counts are unbiased and the total
        weight moves into log_Z. Copies of finished particles stay finished.
        """
        W = normalise(self.log_w)
        A = np.asarray(get_resampler(resampler)(rng, W, self.n), dtype=np.int64)
        if A.shape != (self.n,) or A.min() < 0 or A.max() >= self.n:
            raise RuntimeError(f"resampler returned invalid ancestors {A}")
        self.log_Z += logmeanexp(self.log_w)
        used: set[int] = set()
        new: list[Program] = []
        for a in A:
            a = int(a)
            new.append(self.programs[a] if a not in used else self.programs[a].clone())
            used.add(a)
        self.programs = new
        self.log_w = np.zeros(self.n, dtype=np.float64)
        self.ancestors = A
        return A

    def collapse(self, rng: Rng) -> tuple[Program | None, float]:
        """One particle drawn ∝ W together with log Ẑ; (None, −inf) if every weight is zero.

        Preserves the expected measure: E[Ẑ · 1{x = ·}] is the population's measure.
        """
        log_Z = self.log_evidence
        if log_Z == -math.inf:
            return None, -math.inf
        i = rng.categorical(normalise(self.log_w))
        return self.programs[i], log_Z
