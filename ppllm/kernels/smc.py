"""Sequential Monte Carlo over a program's steps (docs/kernels/smc.md).

Target: the program's own final measure γ(x) = ∏_t p(choices_t) · factors_t, normalised
by Z. Exact in expectation: E[Ẑ] = Z for every N ≥ 1 and every unbiased resampler, and
the collapsed output (one particle ∝ W, carrying Ẑ) has E[Ẑ · 1{x}] = γ(x). Consistent
as N → ∞ for the weighted particles themselves.

Feynman–Kac decomposition, per step t:
  M_t  `extend`   run one `step()` of each live particle (its proposal: sample/proposal=)
  G_t  the log-weight the step produced (log p − log q + factors + twist changes)
  R_t  `resample` when ESS < ess_threshold · N (0 = never, ≥ 1 = every step), with any
       unbiased scheme (`resampler`: a name or a function `(rng, W, n) -> ancestors`)
Finished particles keep their weight (G = 1) and stay in the pool, so particles of
different lengths are weighted correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engine import Engine
from ..population import Population
from ..program import Program
from ..resampling import Resampler
from ..results.diagnostics import StepInfo
from ..results.posterior import Posterior
from ..rng import Rng, as_rng
from .driver import check_count, check_resampler, population_output, resampler_name, run_kernel

__all__ = ["SMCState", "init", "step", "run", "resample_if", "should_resample"]


@dataclass
class SMCState:
    """What the next step needs: the population, the step index and the running log Ẑ."""

    population: Population
    t: int = 0
    failed: str | None = None
    log_Z: float = 0.0  # log Ẑ after the last step

    @property
    def done(self) -> bool:
        return self.failed is not None or self.population.all_finished

    @property
    def n_running(self) -> int:
        return int(np.sum(~self.population.finished))


def init(program: Program, n_particles: int, store_history: bool = False) -> SMCState:
    """N copies of `program` with weight 1."""
    return SMCState(Population.spawn(program, check_count("n_particles", n_particles), store_history))


def should_resample(ess: float, n: int, ess_threshold: float, all_finished: bool) -> bool:
    if ess_threshold <= 0 or all_finished:
        return False
    return ess_threshold >= 1 or ess < ess_threshold * n


def resample_if(
    rng: Rng, state: SMCState, n_live: int, before: float,
    resampler: str | Resampler, ess_threshold: float,
) -> StepInfo:
    """The tail of every SMC-like step after its particles were extended and weighted:
    record log Ẑ and ESS, stop if every weight is zero, resample when the ESS rule says so."""
    pop, t = state.population, state.t
    after, ess = pop.summary()
    resampled = False
    A = np.arange(pop.n)
    if after == -math.inf:
        state.failed = (
            f"all {pop.n} particles have weight zero after step {t}: the constraints ruled out "
            "every particle (log Ẑ = −inf)"
        )
    elif should_resample(ess, pop.n, ess_threshold, pop.all_finished):
        A = pop.resample(rng.child("resample", t), resampler)
        resampled = True
    state.t = t + 1
    state.log_Z = after
    return StepInfo(t, ess, resampled, A, after - before, n_live)


def step(
    rng: Rng,
    state: SMCState,
    engine: Engine,
    resampler: str | Resampler = "systematic",
    ess_threshold: float = 0.5,
) -> tuple[SMCState, StepInfo]:
    """Extend every live particle by one step, then resample if the ESS is low."""
    n_live = state.n_running
    before = state.log_Z
    state.population.extend(engine, rng, state.t)  # G_t: w_i *= γ_t(x_i) / (γ_{t-1}(x_i) q_t(x_i))
    return state, resample_if(rng, state, n_live, before, resampler, ess_threshold)


finish = population_output


def run(
    program: Program,
    n_particles: int,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    resampler: str | Resampler = "systematic",
    ess_threshold: float = 0.5,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """Run SMC until every particle has finished; return the weighted posterior.

    `ess_threshold`: resample when ESS < threshold·N; 0 never resamples, 1 always does.
    """
    rng = as_rng(rng if rng is not None else seed)
    if not 0 <= ess_threshold:
        raise ValueError(f"ess_threshold must be >= 0, got {ess_threshold}")
    check_resampler(resampler)
    engine = engine or Engine()
    config = {"n_particles": n_particles, "resampler": resampler_name(resampler), "ess_threshold": ess_threshold}
    return run_kernel(
        "smc",
        init(program, n_particles),
        lambda s: step(rng, s, engine, resampler, ess_threshold),
        finish,
        engine=engine,
        max_steps=max_steps,
        config=config,
        progress=progress,
    )
