"""Particle filtering with a process reward model (Puri et al. 2025), two weightings.

`weighting="ratio"` (default) — consistent. The program supplies the potential Φ_t of
each prefix itself: it `twist`s log Φ_t on non-final steps (undone at its next step) and
`factor`s log Φ_T on the final one, so the incremental weight is Φ_t / Φ_{t−1}. This is
`kernels.smc` with resampling at every step (`ess_threshold=1`). Target:
    π(x) ∝ p(x) · Φ_T(x)
Exact in expectation for every N ≥ 1 (E[Ẑ·1{collapse = x}] = p(x)Φ_T(x)); consistent.

`weighting="puri"` — the published procedure (its_hub), reproduced: after each step every
particle gets G_t = odds(clip(s))^{1/τ} = exp(logit(clip(s, ε, 1−ε)) / τ) from the score s
of its current prefix (`score_fn`, default `program.prefix_score`); the population is
resampled ∝ G_t (multinomial, every step, also after the last one) and the weights are
reset, i.e. not carried. Finished particles stay in the pool with their final score, so
they are re-weighted by G_final at every later step. Implied target (algorithms.md §1.4):
    π_puri(x) ∝ p(x) · ∏_{t ≤ T(x)} G_t(x_{1:t}) · G_final(x)^{K − T(x)}
where K is the number of rounds the run took (the step at which its longest particle
finished; → the longest possible length as N → ∞). This is *not* the posterior
p(x | all steps accepted) unless each score is a per-step acceptance probability; prefix
scores are counted again at every step. Exact statement checked by the tests: with
uniform collapse from the final population and Ẑ = ∏_k mean_i G_k,
    E[Ẑ · G_final(out)^{L−K} · 1{out = x}] = p(x) ∏_{t≤T(x)} G_t · G_final(x)^{L − T(x)}
for any bound L on the length (optional stopping; see tests/test_particle_filter.py).
The program's own weight increments (zero for a program that samples from the LM and only
records scores) multiply G_t.

Answer selection (`select`): "argmax" — the particle with the highest final score
(its_hub's default); "sample" — one particle ∝ softmax(final logits) in puri mode, ∝ its
weight in ratio mode. Budget unit: one particle = one full generation.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from ..engine import Engine
from ..population import Population, logmeanexp, normalise
from ..posterior import Posterior, StepRecord, particle_text
from ..program import Program
from ..resampling import Resampler, get_resampler
from ..rng import Rng, as_rng
from . import smc

__all__ = [
    "run",
    "puri_step",
    "prefix_score",
    "score_logits",
    "select_index",
    "budget_of",
    "EPS",
]

EPS = 1e-7  # its_hub's clip of PRM scores before the logit
ScoreFn = Callable[[Program], float]


def prefix_score(program: Program) -> float:
    """The score r̂ of the program's current prefix, as the program recorded it."""
    s = getattr(program, "prefix_score", None)
    if s is None:
        raise AttributeError(
            f"{type(program).__name__} has no `prefix_score`; pass score_fn= to read its score"
        )
    return float(s)


def score_logits(programs: list[Program], score_fn: ScoreFn, tau: float = 1.0) -> np.ndarray:
    """logit(clip(s_i, ε, 1−ε)) / τ for each particle: its_hub's resampling logits."""
    s = np.array([score_fn(p) for p in programs], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(s))
    if len(bad):
        raise ValueError(f"score_fn gave {s[bad[0]]} for particle {bad[0]}; scores must be in [0, 1]")
    s = np.clip(s, EPS, 1.0 - EPS)
    return (np.log(s) - np.log1p(-s)) / tau


def select_index(values: np.ndarray, how: str, rng: Rng, log_w: np.ndarray | None = None) -> int:
    """"argmax": the first index of the largest value; "sample": one index ∝ exp(log_w)."""
    if how == "argmax":
        v = np.asarray(values, dtype=np.float64)
        if log_w is not None:
            v = np.where(log_w > -math.inf, v, -math.inf)  # never pick a ruled-out particle
        return int(np.argmax(v))
    if how == "sample":
        return int(rng.categorical(normalise(np.asarray(log_w, dtype=np.float64))))
    raise ValueError(f"select must be 'argmax' or 'sample', got {how!r}")


def budget_of(engine: Engine, start: float, **units: float) -> dict[str, float]:
    """Engine stats (rounds, LM calls, requests, tokens) plus seconds and the budget units."""
    return {**engine.stats.as_dict(), "seconds": time.perf_counter() - start, **units}


def puri_step(
    rng: Rng,
    state: smc.SMCState,
    engine: Engine,
    score_fn: ScoreFn = prefix_score,
    tau: float = 1.0,
    resampler: str | Resampler = "multinomial",
) -> tuple[smc.SMCState, smc.SMCInfo]:
    """One round of the published procedure: extend, weight every particle by G_t, resample.

    Weights were reset by the previous resampling, so log_w is this round's log G_t (plus
    the program's own increment); finished particles get their final score's G again.
    """
    pop, t = state.population, state.t
    n_live = int(np.sum(~pop.finished))
    before = pop.log_evidence
    pop.extend(engine, rng, t)
    pop.reweight(score_logits(pop.programs, score_fn, tau))
    after = pop.log_evidence
    ess = pop.ess
    A = np.arange(pop.n)
    if after == -math.inf:
        state.failed = f"all {pop.n} particles have weight zero after step {t}"
    else:
        A = pop.resample(rng.child("resample", t), resampler)
    state.t = t + 1
    return state, smc.SMCInfo(t, ess, after > -math.inf, A, after - before, n_live)


def run(
    program: Program,
    n_particles: int,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    weighting: str = "ratio",
    tau: float = 1.0,
    score_fn: ScoreFn = prefix_score,
    resampler: str | Resampler | None = None,
    ess_threshold: float = 1.0,
    select: str = "argmax",
    answer_fn: Callable[[Program], Hashable] = particle_text,
    max_steps: int = 10_000,
    engine: Engine | None = None,
) -> Posterior:
    """Particle filtering; see the module docstring for the two weightings and their targets.

    `resampler` defaults to "multinomial" for puri (as published) and "systematic" for ratio.
    `ess_threshold` applies to ratio mode only (1 = resample every step, as published).
    """
    rng = as_rng(rng if rng is not None else seed)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if select not in ("argmax", "sample"):
        raise ValueError(f"select must be 'argmax' or 'sample', got {select!r}")
    engine = engine or Engine()
    start = time.perf_counter()
    config: dict[str, Any] = {"n_particles": n_particles, "weighting": weighting, "tau": tau, "select": select}
    if weighting == "ratio":
        post = smc.run(
            program, n_particles, rng=rng, resampler=resampler or "systematic",
            ess_threshold=ess_threshold, max_steps=max_steps, engine=engine,
        )
        post.kernel = "particle_filter"
        post.config.update(config)
        if post.ok:
            scores = _final_scores(post.particles, score_fn, select)
            i = select_index(scores, select, rng.child("select"), post.log_weights)
            post.extras.update(selected=i, answer=answer_fn(post.particles[i]), final_scores=scores)
        post.budget = budget_of(engine, start, generations=n_particles)
        return post
    if weighting != "puri":
        raise ValueError(f"weighting must be 'ratio' or 'puri', got {weighting!r}")
    resampler = resampler or "multinomial"
    get_resampler(resampler)
    state = smc.init(program, n_particles)
    records = _loop(state, max_steps, lambda s: puri_step(rng, s, engine, score_fn, tau, resampler))
    pop = state.population
    if state.failed:
        warnings.warn(state.failed, RuntimeWarning, stacklevel=2)
    return _puri_posterior(pop, records, state.failed, score_fn, tau, select, rng, answer_fn,
                           budget_of(engine, start, generations=n_particles), config)


def _loop(state: smc.SMCState, max_steps: int, step: Callable) -> list[StepRecord]:
    """Step until every particle has finished (or the weights died); per-step records."""
    records: list[StepRecord] = []
    while not state.population.all_finished and state.failed is None:
        if state.t >= max_steps:
            raise RuntimeError(
                f"{int(np.sum(~state.population.finished))} particles still running after "
                f"max_steps={max_steps}; raise max_steps or make the program finish"
            )
        state, info = step(state)
        records.append(StepRecord.from_info(info))
    return records


def _final_scores(programs: list[Program], score_fn: ScoreFn, select: str) -> np.ndarray:
    if select != "argmax":
        return np.array([_try_score(score_fn, p) for p in programs])
    return np.array([score_fn(p) for p in programs], dtype=np.float64)


def _try_score(score_fn: ScoreFn, p: Program) -> float:
    try:
        return float(score_fn(p))
    except AttributeError:
        return math.nan  # no score needed when selecting by weight


def _puri_posterior(
    pop: Population, records, failed, score_fn, tau, select, rng, answer_fn, budget, config
) -> Posterior:
    """The final (resampled, equally weighted) population, the selected particle in extras."""
    extras: dict[str, Any] = {}
    if not failed:
        logits = score_logits(pop.programs, score_fn, tau)
        scores = np.array([score_fn(p) for p in pop.programs], dtype=np.float64)
        i = select_index(scores, select, rng.child("select"), logits)
        extras = {
            "selected": i,
            "answer": answer_fn(pop.programs[i]),
            "final_scores": scores,
            "final_logits": logits,
            "rounds": len(records),
            # log Ẑ times mean G_final: the evidence that goes with select="sample".
            "log_Z_select": pop.log_evidence + logmeanexp(logits),
        }
    return Posterior(
        particles=pop.programs,
        log_weights=pop.log_w.copy(),
        log_Z=pop.log_evidence,
        steps=records,
        budget=budget,
        kernel="particle_filter",
        config=config,
        message=failed,
        extras=extras,
    )
