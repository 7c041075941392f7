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

A sweep is composed from population operations: `extend` skips slot 0, `assign` puts the
reference's step-t state there, and the resampling strategy is `pinned_multinomial`; the
weighting tail is `smc.resample_if` (ratio) or `particle_filter.puri_resample` (puri). The
chain over sweeps runs on the shared driver: `step` is one sweep, the State holds the
reference, and the result is the last sweep's weighted particles with the chain of
references (`extras["chains"]`, a `Chains`). `init(..., reference=traj)` starts from a given
trajectory (a `Trajectory`, e.g. `population.trajectory(i)` of an earlier run) instead of an
unconditional first sweep.

weighting="puri" (Puri et al.'s PG, reproduced): resampling ∝ softmax(logit(s)/τ) of prefix
scores at every step, weights reset, the reference scored on its own prefix, the next
reference drawn ∝ softmax of final logits. Heuristic: it inherits puri PF's implied
target and its stopping rule, and its invariance is not claimed or tested.

Budget unit: particles × iterations full generations (the reference slot costs nothing
in later sweeps, as in its_hub).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..engine import Engine
from ..population import Population, Trajectory, normalise
from ..program import Program
from ..resampling import Resampler, multinomial
from ..results.chains import Chains
from ..results.diagnostics import StepInfo, Steps
from ..results.posterior import Posterior, particle_text
from ..rng import Rng, as_rng
from . import smc
from .driver import Output, check_count, loop, run_kernel
from .particle_filter import puri_resample
from .selection import (
    AnswerFn,
    ScoreFn,
    check_prm_options,
    default_select,
    recorded_score,
    score_logits,
    scores_of,
    select_index,
)

__all__ = [
    "PGState", "SweepInfo", "csmc_step", "init", "pinned_multinomial", "record_trajectory", "run", "step", "sweep",
]


def pinned_multinomial(rng: Rng, W: np.ndarray, n: int) -> np.ndarray:
    """Conditional resampling: slot 0 keeps ancestor 0; the other n−1 are iid ∝ W."""
    return np.concatenate([[0], multinomial(rng, W, n - 1)]).astype(np.int64)


@dataclass
class CSMCState(smc.SMCState):
    """One sweep in progress: an SMC state whose slot 0 follows `reference` (if any)."""

    reference: Trajectory | None = None


def csmc_step(
    rng: Rng, state: CSMCState, engine: Engine, weighting: str = "ratio",
    tau: float = 1.0, score_fn: ScoreFn = recorded_score, scheme: Resampler | None = None,
) -> tuple[CSMCState, StepInfo]:
    """One step of (conditional) SMC, resampling every step: multinomial without a
    reference, `pinned_multinomial` with one (or `scheme`, if given)."""
    pop, t, ref = state.population, state.t, state.reference
    n_live = state.n_running
    before = state.log_Z if weighting == "ratio" else pop.log_Z
    ref_live = ref is not None and not pop.programs[0].finished
    pop.extend(engine, rng, t, skip=(0,) if ref is not None else ())
    if ref_live:
        pop.assign(0, ref.states[t + 1], ref.log_incs[t])  # the reference's step-t state, no LM call
    if scheme is None:
        scheme = multinomial if ref is None else pinned_multinomial
    if weighting == "ratio":
        return state, smc.resample_if(rng, state, n_live, before, scheme, 1.0)
    return state, puri_resample(rng, state, n_live, before, score_fn, tau, scheme)


def sweep(
    program: Program, n_particles: int, rng: Rng, engine: Engine, reference: Trajectory | None = None,
    weighting: str = "ratio", tau: float = 1.0, score_fn: ScoreFn = recorded_score, max_steps: int = 10_000,
) -> tuple[Population, list[StepInfo]]:
    """One (conditional) SMC sweep of N particles; the final population (with paths) and records."""
    state, records = _sweep(program, n_particles, rng, engine, reference, weighting, tau, score_fn, max_steps)
    return state.population, records


def _sweep(program: Program, n_particles: int, rng: Rng, engine: Engine, reference: Trajectory | None,
           weighting: str, tau: float, score_fn: ScoreFn, max_steps: int) -> tuple[CSMCState, list[StepInfo]]:
    state = CSMCState(Population.spawn(program, n_particles, store_history=True), reference=reference)
    return loop(state, lambda s: csmc_step(rng, s, engine, weighting, tau, score_fn), max_steps)


def record_trajectory(program: Program, rng: Rng, engine: Engine | None = None,
                      max_steps: int = 10_000) -> Trajectory:
    """Run one copy of `program` to the end and keep its path (a reference to start from)."""
    pop, _ = sweep(program, 1, rng, engine or Engine(), max_steps=max_steps)
    return pop.trajectory(0)


@dataclass
class SweepInfo:
    """One sweep: the new reference and the sweep's evidence estimate."""

    t: int
    reference_index: int
    reference_answer: object
    log_Z: float
    n_steps: int


@dataclass
class PGState:
    """The chain: the current reference, and the last sweep (its population and records)."""

    program: Program
    n_particles: int
    n_iterations: int
    reference: Trajectory | None = None
    t: int = 0
    failed: str | None = None
    log_Z: float = math.nan  # the first (unconditional) sweep's estimate
    last: CSMCState | None = None
    records: list[StepInfo] = field(default_factory=list)
    reference_index: int = 0

    @property
    def done(self) -> bool:
        return self.failed is not None or self.t >= self.n_iterations


def init(
    program: Program, n_particles: int, n_iterations: int = 1, reference: Trajectory | None = None
) -> PGState:
    """The chain before its first sweep; `reference` makes the first sweep conditional too."""
    check_count("n_particles", n_particles)
    check_count("n_iterations", n_iterations)
    if reference is not None and not isinstance(reference, Trajectory):
        raise TypeError(f"reference must be a ppllm.population.Trajectory, got {type(reference).__name__}")
    return PGState(program, int(n_particles), int(n_iterations), reference)


def next_reference_weights(pop: Population, weighting: str, score_fn: ScoreFn, tau: float) -> np.ndarray:
    """Log-weights the next reference is drawn with: final weights, or puri's final logits."""
    if weighting == "puri":
        return pop.log_w + score_logits(pop.programs, score_fn, tau)
    return pop.log_w.copy()


def step(
    rng: Rng, state: PGState, engine: Engine, weighting: str = "ratio", tau: float = 1.0,
    score_fn: ScoreFn = recorded_score, answer_fn: AnswerFn = particle_text, max_steps: int = 10_000,
) -> tuple[PGState, SweepInfo]:
    """One sweep of conditional SMC from the state's reference; draws the next reference."""
    it = state.t
    r = rng.child("sweep", it)
    run, records = _sweep(state.program, state.n_particles, r, engine, state.reference, weighting, tau,
                          score_fn, max_steps)
    pop = run.population
    state.last, state.records, state.t = run, records, it + 1
    if it == 0:
        state.log_Z = pop.log_Z
    if run.failed:
        state.failed = run.failed
        return state, SweepInfo(it, -1, None, -math.inf, len(records))
    k = int(r.child("reference").categorical(normalise(next_reference_weights(pop, weighting, score_fn, tau))))
    state.reference, state.reference_index = pop.trajectory(k), k
    return state, SweepInfo(it, k, answer_fn(pop.programs[k]), pop.log_Z, len(records))


def run(
    program: Program,
    n_particles: int,
    n_iterations: int = 1,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    weighting: str = "ratio",
    tau: float = 1.0,
    score_fn: ScoreFn = recorded_score,
    select: str | None = None,
    answer_fn: AnswerFn = particle_text,
    reference: Trajectory | None = None,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """`n_iterations` sweeps of N particles (the first unconditional); budget N × iterations.

    Returns the last sweep's weighted particles. `log_Z` is the first (unconditional)
    sweep's unbiased estimate (NaN when the chain starts from a given reference);
    conditional sweeps' estimates are not unbiased. `select`: "argmax" — highest final
    score in the last sweep (the default for puri); "sample" — the last reference drawn (∝
    final weights, or ∝ softmax of final logits for puri; the default for ratio). `extras["chains"]` holds the chain of reference
    answers, one draw per sweep.
    """
    rng = as_rng(rng if rng is not None else seed)
    select = default_select(weighting, select)
    check_prm_options(weighting, tau, select)
    engine = engine or Engine()
    config = {"n_particles": n_particles, "n_iterations": n_iterations, "weighting": weighting,
              "tau": tau, "select": select}

    def finish(state: PGState, infos: list[SweepInfo]) -> Output:
        assert state.last is not None
        pop = state.last.population
        log_Z = state.log_Z if reference is None else math.nan
        out = Output(pop.programs, pop.log_w, log_Z if not state.failed else -math.inf,
                     diagnostics=Steps(state.records),
                     ancestry=[np.asarray(s.ancestors) for s in state.records])
        if state.failed:
            return out
        if select == "sample":
            i = state.reference_index
        else:
            i = select_index(scores_of(pop.programs, score_fn), select, rng, pop.log_w)
        refs = [info.reference_answer for info in infos]
        chains = Chains(
            samples=[[{"reference": a} for a in refs]],
            stats={"reference_index": [[info.reference_index for info in infos]]},
            kernel="particle_gibbs",
            config=config,
        )
        out.extras = {"selected": i, "answer": answer_fn(pop.programs[i]), "references": refs,
                      "chains": chains}
        return out

    return run_kernel(
        "particle_gibbs",
        init(program, n_particles, n_iterations, reference),
        lambda s: step(rng, s, engine, weighting, tau, score_fn, answer_fn, max_steps),
        finish,
        engine=engine,
        max_steps=n_iterations,
        config=config,
        progress=progress,
        units={"generations": n_particles * n_iterations},
    )
