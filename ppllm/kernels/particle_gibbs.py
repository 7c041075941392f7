"""Particle Gibbs: iterated conditional SMC (Andrieu, Doucet & Holenstein 2010; Puri et al. Alg. 2).

Target (weighting="ratio"): π(x) ∝ p(x) · Φ_T(x), the program's own final measure, as in
`particle_filter` ratio mode. Exactness class: exact — one conditional SMC sweep is a
Markov kernel K on trajectories with πK = π for every N ≥ 1 (checked by enumeration in
tests/test_particle_gibbs.py). The iterates converge to π as the number of sweeps grows.

One sweep from a reference trajectory x* (its per-step program snapshots and weight
increments): slot 0 replays x* — at step t it takes x*'s step-t snapshot and increment,
with no LM call — and N−1 fresh particles run as in SMC. Resampling is conditional: slot 0
keeps ancestor 0, the other N−1 ancestors are drawn iid ∝ W (multinomial), so the
reference is never resampled away, but its prefix can be forked: copies of slot 0 after
step t continue from x*'s step-t state. When every particle has finished, the new
reference is drawn ∝ the final weights. Finished particles keep their weight (G = 1) and
resampling stops once all have finished (a permutation-symmetric adaptive decision, which
keeps CSMC valid). The first sweep has no reference: it is plain SMC.

The override is `ConditionalPopulation` (extend + resample of slot 0); the sweep itself is
`kernels.smc.step`, or `particle_filter.puri_step` for weighting="puri".

weighting="puri" (Puri et al.'s PG, reproduced): resampling ∝ softmax(logit(s)/τ) of prefix
scores at every step, weights reset, the reference scored on its own prefix, the next
reference drawn ∝ softmax of final logits. Heuristic: it inherits puri PF's implied
target and its stopping rule, and its invariance is not claimed or tested.

Budget unit: particles × iterations full generations (the reference slot costs nothing
in later sweeps, as in its_hub).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import Engine
from ..population import Population, normalise
from ..posterior import Posterior, particle_text
from ..program import Program
from ..resampling import multinomial
from ..rng import Rng, as_rng
from . import smc
from .particle_filter import _loop, budget_of, prefix_score, puri_step, score_logits, select_index

__all__ = ["Reference", "ConditionalPopulation", "sweep", "run", "pinned_multinomial"]


@dataclass(frozen=True)
class Reference:
    """A trajectory to condition on: states[t] is the particle after t steps."""

    states: tuple[Program, ...]
    log_incs: tuple[float, ...]  # the log-weight increment of each step

    @property
    def final(self) -> Program:
        return self.states[-1]

    @classmethod
    def record(cls, program: Program, rng: Rng, engine: Engine | None = None, max_steps: int = 10_000) -> Reference:
        """Run one copy of `program` to the end, keeping every step's snapshot."""
        engine = engine or Engine()
        p = program.clone()
        states, incs = [program], []
        for t in range(max_steps):
            if p.finished:
                return cls(tuple(states), tuple(incs))
            incs.append(float(engine.step([p], [rng.child("step", t, "slot", 0)], t)[0]))
            states.append(p.clone())
        raise RuntimeError(f"program did not finish within max_steps={max_steps}")


@dataclass(frozen=True)
class _Node:
    """Persistent path history: one step's snapshot and increment, and the path before it."""

    state: Program
    log_inc: float
    parent: _Node | None


def pinned_multinomial(rng: Rng, W: np.ndarray, n: int) -> np.ndarray:
    """Conditional resampling: slot 0 keeps ancestor 0; the other n−1 are iid ∝ W."""
    return np.concatenate([[0], multinomial(rng, W, n - 1)]).astype(np.int64)


@dataclass
class ConditionalPopulation(Population):
    """A population whose slot 0 follows `reference` (None: an ordinary population).

    Also keeps each particle's path of snapshots, so any final particle can become the
    next reference.
    """

    reference: Reference | None = None
    paths: list[_Node | None] = field(default_factory=list)

    def extend(self, engine: Engine, rng: Rng, t: int) -> np.ndarray:
        if not self.paths:
            self.paths = [None] * self.n
        was_live = ~self.finished
        ref = self.reference
        first = 0 if ref is None else 1
        live = [i for i in range(first, self.n) if was_live[i]]
        inc = np.zeros(self.n, dtype=np.float64)
        if live:
            got = engine.step(
                [self.programs[i] for i in live], [rng.child("step", t, "slot", i) for i in live], t
            )
            inc[live] = got
        if ref is not None and was_live[0]:
            self.programs[0] = ref.states[t + 1].clone()  # the reference's step-t state
            inc[0] = ref.log_incs[t]
        self.log_w = self.log_w + inc
        for i in np.flatnonzero(was_live):
            state = ref.states[t + 1] if (ref is not None and i == 0) else self.programs[i].clone()
            self.paths[i] = _Node(state, float(inc[i]), self.paths[i])
        return inc

    def resample(self, rng: Rng, resampler: Any = "multinomial") -> np.ndarray:
        scheme = multinomial if self.reference is None else pinned_multinomial
        A = super().resample(rng, scheme)
        self.paths = [self.paths[a] for a in A] if self.paths else self.paths
        return A

    def reference_of(self, i: int, program: Program) -> Reference:
        """Particle i's whole trajectory as a Reference (`program`: its initial state)."""
        states, incs = [], []
        node = self.paths[i] if self.paths else None
        while node is not None:
            states.append(node.state)
            incs.append(node.log_inc)
            node = node.parent
        return Reference((program, *states[::-1]), tuple(incs[::-1]))


def sweep(
    program: Program,
    n_particles: int,
    rng: Rng,
    engine: Engine,
    reference: Reference | None = None,
    weighting: str = "ratio",
    tau: float = 1.0,
    score_fn: Callable[[Program], float] = prefix_score,
    max_steps: int = 10_000,
) -> tuple[ConditionalPopulation, list]:
    """One (conditional) SMC sweep, resampling every step; returns the final population."""
    pop = ConditionalPopulation.spawn(program, n_particles)
    pop.reference = reference
    state = smc.SMCState(pop)
    if weighting == "ratio":
        records = _loop(state, max_steps, lambda s: smc.step(rng, s, engine, "multinomial", 1.0))
    elif weighting == "puri":
        records = _loop(state, max_steps, lambda s: puri_step(rng, s, engine, score_fn, tau, "multinomial"))
    else:
        raise ValueError(f"weighting must be 'ratio' or 'puri', got {weighting!r}")
    if state.failed:
        raise RuntimeError(state.failed)
    return pop, records


def next_reference_weights(pop: Population, weighting: str, score_fn, tau: float) -> np.ndarray:
    """Log-weights the next reference is drawn with: final weights, or puri's final logits."""
    if weighting == "puri":
        return pop.log_w + score_logits(pop.programs, score_fn, tau)
    return pop.log_w.copy()


def run(
    program: Program,
    n_particles: int,
    n_iterations: int = 1,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    weighting: str = "ratio",
    tau: float = 1.0,
    score_fn: Callable[[Program], float] = prefix_score,
    select: str = "argmax",
    answer_fn: Callable[[Program], Hashable] = particle_text,
    max_steps: int = 10_000,
    engine: Engine | None = None,
) -> Posterior:
    """`n_iterations` sweeps of N particles (the first unconditional); budget N × iterations.

    Returns the last sweep's weighted particles. `log_Z` is the first (unconditional)
    sweep's unbiased estimate; conditional sweeps' estimates are not unbiased.
    `select`: "argmax" — highest final score in the last sweep; "sample" — the last
    reference drawn (∝ final weights, or ∝ softmax of final logits for puri).
    """
    rng = as_rng(rng if rng is not None else seed)
    if n_iterations < 1 or n_particles < 1:
        raise ValueError("n_particles and n_iterations must be >= 1")
    engine = engine or Engine()
    start = time.perf_counter()
    ref: Reference | None = None
    refs: list[Hashable] = []
    log_Z = math.nan
    records: list = []
    for it in range(n_iterations):
        r = rng.child("sweep", it)
        pop, records = sweep(program, n_particles, r, engine, ref, weighting, tau, score_fn, max_steps)
        if it == 0:
            log_Z = pop.log_evidence
        k = int(r.child("reference").categorical(normalise(next_reference_weights(pop, weighting, score_fn, tau))))
        ref = pop.reference_of(k, program)
        refs.append(answer_fn(pop.programs[k]))
    if select == "sample":
        i = k
    else:
        scores = np.array([score_fn(p) for p in pop.programs], dtype=np.float64)
        i = select_index(scores, select, rng, pop.log_w)
    return Posterior(
        particles=pop.programs,
        log_weights=pop.log_w.copy(),
        log_Z=log_Z,
        steps=records,
        budget=budget_of(engine, start, generations=n_particles * n_iterations),
        kernel="particle_gibbs",
        config={"n_particles": n_particles, "n_iterations": n_iterations, "weighting": weighting,
                "tau": tau, "select": select},
        extras={"selected": i, "answer": answer_fn(pop.programs[i]), "references": refs},
    )
