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
(its_hub's default, and ppllm's for puri); "sample" — one particle ∝ softmax(final logits)
in puri mode, ∝ its weight in ratio mode (ppllm's default for ratio, whose particles need
not record a score). Budget unit: one particle = one full generation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import Engine
from ..population import logmeanexp
from ..program import Program
from ..resampling import Resampler
from ..results.diagnostics import StepInfo
from ..results.posterior import Posterior, particle_text
from ..rng import Rng, as_rng
from . import smc
from .driver import Output, check_resampler, run_kernel
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

__all__ = ["init", "step", "run", "puri_step", "puri_resample", "WEIGHTINGS"]

WEIGHTINGS = ("ratio", "puri")

init = smc.init


def puri_step(
    rng: Rng,
    state: smc.SMCState,
    engine: Engine,
    score_fn: ScoreFn = recorded_score,
    tau: float = 1.0,
    resampler: str | Resampler = "multinomial",
) -> tuple[smc.SMCState, StepInfo]:
    """One round of the published procedure: extend, weight every particle by G_t, resample.

    Weights were reset by the previous resampling, so log_w is this round's log G_t (plus
    the program's own increment); finished particles get their final score's G again.
    """
    n_live = state.n_running
    before = state.population.log_Z
    state.population.extend(engine, rng, state.t)
    return state, puri_resample(rng, state, n_live, before, score_fn, tau, resampler)


def puri_resample(
    rng: Rng, state: smc.SMCState, n_live: int, before: float,
    score_fn: ScoreFn, tau: float, resampler: str | Resampler,
) -> StepInfo:
    """The tail of a puri round after extending: weight by G_t, resample, reset weights."""
    pop, t = state.population, state.t
    pop.reweight(score_logits(pop.programs, score_fn, tau))
    after = pop.log_Z
    ess = pop.ess
    A = np.arange(pop.n)
    if after == -np.inf:
        state.failed = f"all {pop.n} particles have weight zero after step {t}"
    else:
        A = pop.resample(rng.child("resample", t), resampler)
    state.t = t + 1
    state.log_Z = after
    return StepInfo(t, ess, after > -np.inf, A, after - before, n_live)


def step(
    rng: Rng,
    state: smc.SMCState,
    engine: Engine,
    weighting: str = "ratio",
    tau: float = 1.0,
    score_fn: ScoreFn = recorded_score,
    resampler: str | Resampler | None = None,
    ess_threshold: float = 1.0,
) -> tuple[smc.SMCState, StepInfo]:
    """One step: an SMC step (ratio) or a round of the published procedure (puri)."""
    if weighting == "ratio":
        return smc.step(rng, state, engine, resampler or "systematic", ess_threshold)
    return puri_step(rng, state, engine, score_fn, tau, resampler or "multinomial")


def run(
    program: Program,
    n_particles: int,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    weighting: str = "ratio",
    tau: float = 1.0,
    score_fn: ScoreFn = recorded_score,
    resampler: str | Resampler | None = None,
    ess_threshold: float = 1.0,
    select: str | None = None,
    answer_fn: AnswerFn = particle_text,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """Particle filtering; see the module docstring for the two weightings and their targets.

    `resampler` defaults to "multinomial" for puri (as published) and "systematic" for ratio.
    `ess_threshold` applies to ratio mode only (1 = resample every step, as published).
    """
    rng = as_rng(rng if rng is not None else seed)
    select = default_select(weighting, select)
    check_prm_options(weighting, tau, select)
    if not 0 <= ess_threshold:
        raise ValueError(f"ess_threshold must be >= 0, got {ess_threshold}")
    scheme = resampler or ("systematic" if weighting == "ratio" else "multinomial")
    check_resampler(scheme)
    engine = engine or Engine()
    config: dict[str, Any] = {"n_particles": n_particles, "weighting": weighting, "tau": tau,
                              "select": select, "resampler": scheme if isinstance(scheme, str) else str(scheme)}
    if weighting == "ratio":
        config["ess_threshold"] = ess_threshold

    def finish(state: smc.SMCState, infos: list) -> Output:
        pop = state.population
        out = Output(pop.programs, pop.log_w, pop.log_Z)
        if state.failed:
            return out
        select_rng = rng.child("select")
        if weighting == "ratio":
            scores = _final_scores(pop.programs, score_fn, select)
            i = select_index(scores, select, select_rng, pop.log_w)
            out.extras = {"selected": i, "answer": answer_fn(pop.programs[i]), "final_scores": scores}
            return out
        logits = score_logits(pop.programs, score_fn, tau)
        scores = scores_of(pop.programs, score_fn)
        i = select_index(scores, select, select_rng, logits)
        out.extras = {
            "selected": i,
            "answer": answer_fn(pop.programs[i]),
            "final_scores": scores,
            "final_logits": logits,
            "rounds": len(infos),
            # log Ẑ times mean G_final: the evidence that goes with select="sample".
            "log_Z_select": pop.log_Z + logmeanexp(logits),
        }
        return out

    return run_kernel(
        "particle_filter",
        init(program, n_particles),
        lambda s: step(rng, s, engine, weighting, tau, score_fn, scheme, ess_threshold),
        finish,
        engine=engine,
        max_steps=max_steps,
        config=config,
        progress=progress,
        units={"generations": n_particles},
    )


def _final_scores(programs: list[Program], score_fn: ScoreFn, select: str) -> np.ndarray:
    if select == "argmax":
        return scores_of(programs, score_fn)
    return np.array([_try_score(score_fn, p) for p in programs])


def _try_score(score_fn: ScoreFn, p: Program) -> float:
    try:
        return float(score_fn(p))
    except AttributeError:
        return float("nan")  # no score needed when selecting by weight
