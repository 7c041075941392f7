"""Sequential Monte Carlo over a program's steps (docs/kernels/smc.md).

Target: the program's own final measure γ(x) = ∏_t p(choices_t) · factors_t, normalised
by Z. Exact in expectation: E[Ẑ] = Z for every N ≥ 1 and every unbiased resampler, and
the collapsed output (one particle ∝ W, carrying Ẑ) has E[Ẑ · 1{x}] = γ(x). Consistent
as N → ∞ for the weighted particles themselves.

Feynman–Kac decomposition, per step t:
  M_t  `extend`   run one `step()` of each live particle (its proposal: sample/proposal=)
  G_t  the log-weight the step produced (log p − log q + factors + twist changes)
  R_t  `resample` when ESS < ess_threshold · N (0 = never, ≥ 1 = every step)
Finished particles keep their weight (G = 1) and stay in the pool, so particles of
different lengths are weighted correctly.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..engine import Engine
from ..population import Population
from ..posterior import Posterior, StepRecord
from ..program import Program
from ..resampling import Resampler, get_resampler
from ..rng import Rng, as_rng

__all__ = ["SMCState", "SMCInfo", "init", "step", "run"]


@dataclass
class SMCState:
    """What the next step needs: the population and the step index."""

    population: Population
    t: int = 0
    failed: str | None = None
    log_evidence: float = 0.0  # log Ẑ after the last step


@dataclass
class SMCInfo:
    """Diagnostics of one step (not carried forward)."""

    t: int
    ess: float
    resampled: bool
    ancestors: np.ndarray
    log_Z_increment: float
    n_live: int


@dataclass
class SMCConfig:
    n_particles: int
    resampler: str | Resampler = "systematic"
    ess_threshold: float = 0.5
    max_steps: int = 10_000
    extra: dict = field(default_factory=dict)


def init(program: Program, n_particles: int) -> SMCState:
    """N copies of `program` with weight 1."""
    return SMCState(Population.spawn(program, n_particles))


def should_resample(ess: float, n: int, ess_threshold: float, all_finished: bool) -> bool:
    if ess_threshold <= 0 or all_finished:
        return False
    return ess_threshold >= 1 or ess < ess_threshold * n


def step(
    rng: Rng,
    state: SMCState,
    engine: Engine,
    resampler: str | Resampler = "systematic",
    ess_threshold: float = 0.5,
) -> tuple[SMCState, SMCInfo]:
    """Extend every live particle by one step, then resample if the ESS is low."""
    pop, t = state.population, state.t
    n_live = sum(not p.finished for p in pop.programs)
    before = state.log_evidence
    pop.extend(engine, rng, t)  # G_t: w_i *= γ_t(x_i) / (γ_{t-1}(x_i) q_t(x_i))
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
    state.log_evidence = after
    info = SMCInfo(t, ess, resampled, A, after - before, n_live)
    return state, info


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
    get_resampler(resampler)  # fail early on an unknown name
    engine = engine or Engine()
    start = time.perf_counter()
    state = init(program, n_particles)
    records: list[StepRecord] = []
    bar = _progress(progress, n_particles)
    while not state.population.all_finished and state.failed is None:
        if state.t >= max_steps:
            raise RuntimeError(
                f"{sum(~state.population.finished)} particles still running after "
                f"max_steps={max_steps}; raise max_steps or make the program finish"
            )
        state, info = step(rng, state, engine, resampler, ess_threshold)
        records.append(StepRecord.from_info(info))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ess=f"{info.ess:.1f}", live=info.n_live)
    if bar is not None:
        bar.close()
    if state.failed:
        warnings.warn(state.failed, RuntimeWarning, stacklevel=2)
    pop = state.population
    return Posterior(
        particles=pop.programs,
        log_weights=pop.log_w.copy(),
        log_Z=pop.log_evidence,
        steps=records,
        budget={**engine.stats.as_dict(), "seconds": time.perf_counter() - start},
        kernel="smc",
        config={
            "n_particles": n_particles,
            "resampler": resampler if isinstance(resampler, str) else resampler.__name__,
            "ess_threshold": ess_threshold,
        },
        message=state.failed,
    )


def _progress(enabled: bool, n: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=f"SMC ({n} particles)", unit="step", leave=False)
