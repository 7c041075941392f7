"""Diverse verifier tree search (Beeching et al. 2024): budget / M independent subtrees.

Every step, each unfinished subtree's path is copied into M candidates (M = `beam_width`,
default 4), each candidate takes one step, and the best-scoring candidate becomes the
subtree's path. The answer is the best-scoring of the budget / M final paths. Heuristic:
no target, no evidence estimate; the result is the subtrees' final paths with uniform
weights. Budget unit: `budget` full generations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import Engine
from ..program import Program
from ..results.diagnostics import StepInfo
from ..results.posterior import Posterior, particle_text
from ..rng import Rng, as_rng
from .beam_search import SearchState, check_width, search_output, search_step
from .beam_search import init as _init
from .driver import Output, run_kernel
from .selection import AnswerFn, ScoreFn, recorded_score, scores_of

__all__ = ["init", "step", "run"]

init = _init  # slots [k·M, (k+1)·M) belong to subtree k


def step(rng: Rng, state: SearchState, engine: Engine, beam_width: int = 4,
         score_fn: ScoreFn = recorded_score) -> tuple[SearchState, StepInfo]:
    """Extend every candidate, keep each subtree's best, copy it into M candidates again."""
    m = beam_width

    def best_per_subtree(scores: np.ndarray) -> np.ndarray:
        best = [k * m + int(np.argmax(scores[k * m : (k + 1) * m])) for k in range(len(scores) // m)]
        return np.repeat(best, m)

    return search_step(rng, state, engine, score_fn, best_per_subtree)


def run(program: Program, budget: int, beam_width: int = 4, *, seed: int | None = None,
        rng: Rng | None = None, score_fn: ScoreFn = recorded_score, answer_fn: AnswerFn = particle_text,
        max_steps: int = 10_000, engine: Engine | None = None, progress: bool = False) -> Posterior:
    """DVTS with budget / beam_width subtrees."""
    check_width(budget, beam_width)
    rng = as_rng(rng if rng is not None else seed)
    engine = engine or Engine()
    m, n_trees = beam_width, budget // beam_width

    def finish(state: SearchState, infos: list) -> Output:
        roots = [state.population.programs[k * m] for k in range(n_trees)]
        finals = scores_of(roots, score_fn)
        out = search_output(roots, int(np.argmax(finals)), finals, answer_fn, "dvts")
        out.ancestry = []  # the population holds M copies per subtree; the result one path each
        return out

    config: dict[str, Any] = {"budget": budget, "beam_width": m, "subtrees": n_trees}
    return run_kernel("dvts", init(program, budget), lambda s: step(rng, s, engine, m, score_fn),
                      finish, engine=engine, max_steps=max_steps, config=config, progress=progress,
                      units={"generations": budget})
