"""Beam search (its_hub): `budget` particles; after each step keep the top `beam_width` by
prefix score and duplicate each budget // beam_width times.

Heuristic: a search, not a sampler; no target and no evidence estimate (log Ẑ = NaN). The
result is the final beam with uniform weights; `extras["answer"]` is the best-scoring
particle's answer. Finished particles compete with their final score (their copies cost
nothing). Budget unit: `budget` full generations. `search_output` is shared with DVTS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import Engine
from ..population import Population
from ..program import Program
from ..results.diagnostics import StepInfo
from ..results.posterior import Posterior, particle_text
from ..rng import Rng, as_rng
from .driver import Output, check_count, run_kernel
from .selection import AnswerFn, ScoreFn, recorded_score, scores_of

__all__ = ["SearchState", "init", "step", "run", "check_width", "search_output", "search_step"]


@dataclass
class SearchState:
    """The beam (or the DVTS subtrees' paths) and the step index."""

    population: Population
    t: int = 0
    failed: str | None = None

    @property
    def done(self) -> bool:
        return self.population.all_finished

    @property
    def n_running(self) -> int:
        return int(np.sum(~self.population.finished))


def check_width(budget: int, beam_width: int) -> None:
    check_count("budget", budget)
    if not isinstance(beam_width, int) or beam_width < 1 or budget % beam_width:
        raise ValueError(f"budget ({budget}) must be a positive multiple of beam_width ({beam_width})")


def init(program: Program, budget: int) -> SearchState:
    return SearchState(Population.spawn(program, check_count("budget", budget)))


def live_scores(pop: Population, score_fn: ScoreFn) -> np.ndarray:
    """Every particle's score, −inf for particles a constraint ruled out."""
    return np.where(pop.log_w > -math.inf, scores_of(pop.programs, score_fn), -math.inf)


def search_step(rng: Rng, state: SearchState, engine: Engine, score_fn: ScoreFn,
                survivors: Callable[[np.ndarray], np.ndarray]) -> tuple[SearchState, StepInfo]:
    """Extend every particle, then the population becomes copies of `survivors(scores)`."""
    pop, t = state.population, state.t
    n_live = state.n_running
    pop.extend(engine, rng, t)
    ess = pop.summary()[1]
    A = survivors(live_scores(pop, score_fn))
    pop.select(A, reset_weights=True)
    state.t = t + 1
    return state, StepInfo(t, ess, True, A, math.nan, n_live)


def step(rng: Rng, state: SearchState, engine: Engine, beam_width: int = 4,
         score_fn: ScoreFn = recorded_score) -> tuple[SearchState, StepInfo]:
    """Extend the beam, keep the top `beam_width`, duplicate each to refill it."""
    n = state.population.n

    def top(scores: np.ndarray) -> np.ndarray:
        return np.repeat(np.argsort(-scores, kind="stable")[:beam_width], n // beam_width)

    return search_step(rng, state, engine, score_fn, top)


def search_output(particles: list[Program], i: int, scores: np.ndarray, answer_fn: AnswerFn,
                  kernel: str) -> Output:
    """A search's result: the final particles with uniform weights, no evidence."""
    return Output(
        particles, np.zeros(len(particles)), math.nan,
        extras={"selected": i, "answer": answer_fn(particles[i]), "scores": scores},
        message=f"{kernel} is a search heuristic: no evidence estimate",
    )


def run(program: Program, budget: int, beam_width: int = 4, *, seed: int | None = None,
        rng: Rng | None = None, score_fn: ScoreFn = recorded_score, answer_fn: AnswerFn = particle_text,
        max_steps: int = 10_000, engine: Engine | None = None, progress: bool = False) -> Posterior:
    """Beam search with `budget` particles and `beam_width` survivors per step."""
    check_width(budget, beam_width)
    rng = as_rng(rng if rng is not None else seed)
    engine = engine or Engine()

    def finish(state: SearchState, infos: list) -> Output:
        programs = state.population.programs
        scores = scores_of(programs, score_fn)
        return search_output(programs, int(np.argmax(scores)), scores, answer_fn, "beam_search")

    config: dict[str, Any] = {"budget": budget, "beam_width": beam_width}
    return run_kernel("beam_search", init(program, budget),
                      lambda s: step(rng, s, engine, beam_width, score_fn), finish,
                      engine=engine, max_steps=max_steps, config=config, progress=progress,
                      units={"generations": budget})
