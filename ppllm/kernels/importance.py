"""Importance sampling: N independent runs of the program, weighted by γ/q (docs/adding-a-kernel.md).

Target: the program's own measure γ(x) (its samples' log p − log q, factors and twists,
which cancel by the end). Exact in expectation: E[Ẑ] = Z with Ẑ = mean_i w_i, and the
collapsed output (one particle ∝ w, carrying Ẑ) has E[Ẑ·1{x}] = γ(x), for every N ≥ 1.
Consistent as N → ∞ for the self-normalised weighted particles.

It is SMC without resampling, and the smallest kernel in ppllm's shape:

    init(program, n)              N copies of the program, weight 1
    step(rng, state, engine)      `extend` every live particle once
    run(program, n, seed=...)     the shared driver until every particle has finished

The best-of-N family samples with it. `score_traces` runs it on replayed traces (every
sample forced to its recorded value), which gives log γ of each trace, batched through the
engine; `run_to_end` runs a single particle (the exact oracle enumerates with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import Engine
from ..population import Population
from ..program import Choice, Program, replay
from ..results.diagnostics import StepInfo
from ..results.posterior import Posterior
from ..rng import Rng, SeededRng, as_rng
from .driver import check_count, loop, population_output, run_kernel

__all__ = ["ISState", "init", "step", "run", "run_to_end", "score_trace", "score_traces"]


@dataclass
class ISState:
    """The population and the step index; `done` when every particle has finished."""

    population: Population
    t: int = 0
    failed: str | None = None
    log_Z: float = 0.0
    stop_when_dead: bool = True  # end the run once every weight is zero

    @property
    def done(self) -> bool:
        return self.failed is not None or self.population.all_finished

    @property
    def n_running(self) -> int:
        return int(np.sum(~self.population.finished))


def init(program: Program, n_particles: int) -> ISState:
    """N copies of `program` with weight 1."""
    return ISState(Population.spawn(program, check_count("n_particles", n_particles)))


def step(rng: Rng, state: ISState, engine: Engine) -> tuple[ISState, StepInfo]:
    """One step of every live particle; weights accumulate, nothing is resampled."""
    pop, t = state.population, state.t
    n_live = state.n_running
    pop.extend(engine, rng, t)
    before, (after, ess) = state.log_Z, pop.summary()
    if after == -np.inf and state.stop_when_dead:
        state.failed = (
            f"all {pop.n} particles have weight zero after step {t}: the constraints ruled out "
            "every particle (log Ẑ = −inf)"
        )
    state.t, state.log_Z = t + 1, after
    return state, StepInfo(t, ess, False, np.arange(pop.n), after - before, n_live)


finish = population_output


def run(
    program: Program,
    n_particles: int,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """N independent weighted runs of `program`; log Ẑ = log mean w."""
    rng = as_rng(rng if rng is not None else seed)
    engine = engine or Engine()
    return run_kernel(
        "importance",
        init(program, n_particles),
        lambda s: step(rng, s, engine),
        finish,
        engine=engine,
        max_steps=max_steps,
        config={"n_particles": n_particles},
        progress=progress,
    )


def run_to_end(program: Program, rng: Rng, max_steps: int, engine: Engine | None = None) -> float:
    """Run `program` itself (no copy) until it finishes; return its total log-weight."""
    engine = engine or Engine()
    pop = Population([program], np.zeros(1), np.zeros(1, dtype=np.int64))
    try:
        state, _ = loop(ISState(pop, stop_when_dead=False), lambda s: step(rng, s, engine), max_steps)
    except RuntimeError:
        raise RuntimeError(f"program did not finish within max_steps={max_steps}: it must be bounded") from None
    return float(state.population.log_w[0])


def score_traces(
    program: Program,
    traces: Sequence[Sequence[Choice] | dict[str, Any]],
    engine: Engine | None = None,
    max_steps: int = 10_000,
) -> np.ndarray:
    """log γ(trace) of each trace: Σ log p of its choices plus factors, twists cancelled.

    Every trace is replayed on a fresh copy of `program` (samples forced to their recorded
    values) and all of them run together, so their LM scoring is batched by the engine.
    """
    engine = engine or Engine()
    programs = [replay(program, list(t) if not isinstance(t, dict) else t) for t in traces]
    if not programs:
        return np.zeros(0)
    pop = Population(programs, np.zeros(len(programs)), np.arange(len(programs)))
    rng = SeededRng(0).child("replay")  # only for choices the traces do not record
    try:
        state, _ = loop(ISState(pop, stop_when_dead=False), lambda s: step(rng, s, engine), max_steps)
    except RuntimeError:
        raise RuntimeError(f"program did not finish within {max_steps} steps while replaying") from None
    return state.population.log_w.copy()


def score_trace(program: Program, trace: Sequence[Choice] | dict[str, Any], engine: Engine | None = None,
                max_steps: int = 10_000) -> float:
    """log γ(trace) of one trace (see `score_traces`)."""
    return float(score_traces(program, [trace], engine, max_steps)[0])
