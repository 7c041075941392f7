"""Best-of-N: `budget` independent samples, the one with the highest final score.

Heuristic: it picks, it does not sample, so no target is claimed. The samples themselves
are importance samples (`kernels.importance`), returned with their weights and the
program's unbiased log Ẑ; `extras["answer"]` is the selection (`answer_fn` of the chosen
particle), `extras["selected"]` its index, `extras["scores"]` every sample's score.
Budget unit: one sample = one full generation. `sample_and_choose` is the shared body of
best-of-N, weighted best-of-N and majority voting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine import Engine
from ..program import Program
from ..results.posterior import Posterior, particle_text
from ..rng import Rng, as_rng
from . import importance
from .driver import Output, check_count, run_kernel
from .selection import AnswerFn, ScoreFn, pick_best, recorded_score, scores_of

__all__ = ["init", "step", "run", "sample_and_choose"]

init = importance.init
step = importance.step

# (particles, rng) -> (selected index, answer, extras)
Chooser = Callable[[list[Program], Rng], tuple[int, Any, dict[str, Any]]]


def sample_and_choose(
    name: str, program: Program, budget: int, choose: Chooser, *, seed: int | None, rng: Rng | None,
    max_steps: int, engine: Engine | None, progress: bool,
) -> Posterior:
    """`budget` importance samples, then `choose` picks one; the result keeps every sample."""
    rng = as_rng(rng if rng is not None else seed)
    check_count("budget", budget)
    engine = engine or Engine()

    def finish(state: importance.ISState, infos: list) -> Output:
        pop = state.population
        out = Output(pop.programs, pop.log_w, pop.log_Z)
        if not state.failed:
            i, answer, extras = choose(pop.programs, rng)
            out.extras = {"selected": i, "answer": answer, **extras}
        return out

    return run_kernel(
        name, init(program, budget), lambda s: step(rng, s, engine), finish,
        engine=engine, max_steps=max_steps, config={"budget": budget}, progress=progress,
        units={"generations": budget},
    )


def run(program: Program, budget: int, *, seed: int | None = None, rng: Rng | None = None,
        score_fn: ScoreFn = recorded_score, answer_fn: AnswerFn = particle_text,
        max_steps: int = 10_000, engine: Engine | None = None, progress: bool = False) -> Posterior:
    """The highest-scoring of `budget` samples (first one on ties)."""

    def choose(particles: list[Program], rng: Rng) -> tuple[int, Any, dict[str, Any]]:
        scores = scores_of(particles, score_fn)
        i = pick_best(scores)
        return i, answer_fn(particles[i]), {"scores": scores}

    return sample_and_choose("best_of_n", program, budget, choose, seed=seed, rng=rng,
                             max_steps=max_steps, engine=engine, progress=progress)
