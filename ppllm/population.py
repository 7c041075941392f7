"""A weighted particle population and the transformations kernels are built from.

Columnar: float64 log-weights `log_w`, the ancestor indices of the last resampling,
finished flags; `programs[i]` is particle i's state. The meaning of a population is the
unnormalised measure  exp(log_Z_resampled) · Σ_i w_i / N · δ_{x_i}  (in the spirit of
Ścibior et al. 2018): `log_Z_resampled` holds the evidence already pushed out by
resampling, so `log_Z = log_Z_resampled + log mean(w)` is the running estimate log Ẑ.

Operations (each says what it preserves):
- `spawn`    N copies of a program, weight 1.            Preserves: the program's measure.
- `extend`   one `step()` of every live particle.        Preserves: SIS validity.
- `assign`   set particle i to a given state and add its increment (conditional SMC's
             reference slot). Preserves: whatever the caller's argument says.
- `reweight` add log-weights.                            Changes the target by that factor.
- `select`   the particles at given indices (copy-on-select). Preserves nothing by itself:
             `resample` is `select` with unbiased indices and the weight reset.
- `resample` draw N ancestors ∝ W, reset weights.        Preserves: the expected measure
                                                          (unbiased counts; total weight kept).
- `move`     an MCMC kernel applied to every particle.   Preserves: the current target, when
             the kernel leaves it invariant (`ppllm.kernels.mh`).
- `collapse` one particle drawn ∝ W, carrying Ẑ.         Preserves: the expected measure.

With `store_history=True` every particle keeps its path (a snapshot of its state after each
step and that step's log-weight increment) as a persistent linked list that follows it
through resampling; `trajectory(i)` reads it. Particle Gibbs, MH moves and trees use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .engine import Engine
from .program import Program
from .resampling import Resampler, get_resampler
from .rng import Rng, children_of

__all__ = [
    "DegenerateWeights",
    "History",
    "Move",
    "Population",
    "Trajectory",
    "ess",
    "logmeanexp",
    "normalise",
    "path_of",
]


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


@dataclass(frozen=True)
class History:
    """One step of a particle's path: its state after the step, the step's log-weight
    increment, and the path before it (shared by every descendant)."""

    state: Program
    log_inc: float
    parent: History | None


@dataclass(frozen=True)
class Trajectory:
    """A particle's whole path: `states[t]` is the particle after t steps."""

    states: tuple[Program, ...]
    log_incs: tuple[float, ...]  # the log-weight increment of each step

    @property
    def final(self) -> Program:
        return self.states[-1]

    @property
    def n_steps(self) -> int:
        return len(self.log_incs)

    @property
    def log_weight(self) -> float:
        """Σ of the increments: log γ_t(x) − log q_t(x) of the path (twists included)."""
        return float(math.fsum(self.log_incs)) if self.log_incs else 0.0


def path_of(node: History | None, initial: Program) -> Trajectory:
    """The Trajectory that ends at history `node`, starting from `initial`."""
    states, incs = [], []
    while node is not None:
        states.append(node.state)
        incs.append(node.log_inc)
        node = node.parent
    return Trajectory((initial, *states[::-1]), tuple(incs[::-1]))


class Move(Protocol):
    """An MCMC kernel on particles: `ppllm.kernels.mh` builds them."""

    def __call__(self, population: Population, engine: Engine, rng: Rng, t: int, horizon: int | None) -> Any: ...


@dataclass
class Population:
    """N weighted particles plus the evidence already accounted for by resampling."""

    programs: list[Program]
    log_w: np.ndarray
    ancestors: np.ndarray
    log_Z_resampled: float = 0.0
    history: list[History | None] | None = None  # None: paths are not kept
    initial: Program | None = None  # the program every particle started from

    @classmethod
    def spawn(cls, program: Program, n: int, store_history: bool = False) -> Population:
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"the number of particles must be a positive integer, got {n!r}")
        if not isinstance(program, Program):
            raise TypeError(f"expected a ppllm.Program, got {type(program).__name__}")
        return cls(
            programs=[program.clone() for _ in range(n)],
            log_w=np.zeros(n, dtype=np.float64),
            ancestors=np.arange(n),
            history=[None] * n if store_history else None,
            initial=program,
        )

    @classmethod
    def from_paths(cls, program: Program, paths: Sequence[Trajectory]) -> Population:
        """A population (with history) whose particle i has followed `paths[i]` from `program`."""
        history: list[History | None] = []
        for path in paths:
            node: History | None = None
            for state, inc in zip(path.states[1:], path.log_incs, strict=True):
                node = History(state, float(inc), node)
            history.append(node)
        n = len(paths)
        return cls(
            programs=[path.final.clone() for path in paths],
            log_w=np.zeros(n, dtype=np.float64),
            ancestors=np.arange(n),
            history=history,
            initial=program,
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
        return self.log_Z_resampled + m + math.log(s / len(lw)), s * s / float(np.dot(w, w))

    @property
    def log_Z(self) -> float:
        """The running log Ẑ: resampled-out evidence plus the log mean current weight."""
        return self.log_Z_resampled + logmeanexp(self.log_w)

    # ------------------------------------------------------------------ operations
    def extend(self, engine: Engine, rng: Rng, t: int, skip: Sequence[int] = ()) -> np.ndarray:
        """Run one step of every live particle (slot i draws from rng.child("step", t, "slot", i)).

        Finished particles (and the slots in `skip`) are left alone: their increment is 0.
        Returns the log-weight increments.
        """
        live = [i for i, p in enumerate(self.programs) if not p.finished and i not in skip]
        inc = np.zeros(self.n, dtype=np.float64)
        if live:
            step_rng = rng.child("step", t)  # = rng.child("step", t, "slot", i) below, keyed once
            got = engine.step([self.programs[i] for i in live], children_of(step_rng, "slot", live), t)
            inc[live] = got
            self.log_w[live] += got
            if self.history is not None:
                for i in live:
                    self.history[i] = History(self.programs[i].clone(), float(inc[i]), self.history[i])
        return inc

    def assign(self, i: int, state: Program, log_inc: float) -> None:
        """Particle i becomes (a copy of) `state`, its weight grows by `log_inc`."""
        self.programs[i] = state.clone()
        self.log_w[i] += log_inc
        if self.history is not None:
            self.history[i] = History(state, float(log_inc), self.history[i])

    def reweight(self, delta: np.ndarray) -> None:
        """log_w += delta. Multiplies the population's measure by exp(delta) per particle."""
        self.log_w = self.log_w + np.asarray(delta, dtype=np.float64)

    def select(self, indices: Sequence[int] | np.ndarray, reset_weights: bool = False) -> None:
        """The population becomes the particles at `indices` (each particle copied once per
        extra use; its history follows). Weights follow too, or are reset to 1."""
        A = np.asarray(indices, dtype=np.int64)
        used: set[int] = set()
        new: list[Program] = []
        for a in A.tolist():
            new.append(self.programs[a] if a not in used else self.programs[a].clone())
            used.add(a)
        self.programs = new
        self.log_w = np.zeros(len(A), dtype=np.float64) if reset_weights else self.log_w[A]
        self.ancestors = A
        if self.history is not None:
            self.history = [self.history[a] for a in A.tolist()]

    def resample(self, rng: Rng, resampler: str | Resampler = "systematic") -> np.ndarray:
        """Draw N ancestors ∝ W, copy them, and reset the weights to 1.

        Preserves the expected measure: offspring counts are unbiased and the total
        weight moves into log_Z_resampled. Copies of finished particles stay finished.
        """
        W = normalise(self.log_w)
        A = np.asarray(get_resampler(resampler)(rng, W, self.n), dtype=np.int64)
        if A.shape != (self.n,) or A.min() < 0 or A.max() >= self.n:
            raise RuntimeError(f"resampler returned invalid ancestors {A}")
        self.log_Z_resampled += logmeanexp(self.log_w)
        self.select(A, reset_weights=True)
        return A

    def move(self, kernel: Move, engine: Engine, rng: Rng, t: int, horizon: int | None = None) -> Any:
        """Apply an MCMC kernel to every particle; its LM work is batched across particles.

        `horizon`: the number of steps the population has run (None: complete traces). The
        kernel targets the population's current target π_t; weights are left as they are.
        Returns the kernel's info (acceptance, ...).
        """
        if self.history is None:
            raise ValueError(
                "moves need each particle's recorded path: spawn the population with "
                "store_history=True"
            )
        return kernel(self, engine, rng, t, horizon)

    def collapse(self, rng: Rng) -> tuple[Program | None, float]:
        """One particle drawn ∝ W together with log Ẑ; (None, −inf) if every weight is zero.

        Preserves the expected measure: E[Ẑ · 1{x = ·}] is the population's measure.
        """
        log_Z = self.log_Z
        if log_Z == -math.inf:
            return None, -math.inf
        i = rng.categorical(normalise(self.log_w))
        return self.programs[i], log_Z

    # ------------------------------------------------------------------ paths
    def trajectory(self, i: int) -> Trajectory:
        """Particle i's path from the initial program (needs `store_history=True`)."""
        if self.history is None:
            raise ValueError("this population does not keep paths (spawn it with store_history=True)")
        return path_of(self.history[i], self.initial if self.initial is not None else self.programs[i])
