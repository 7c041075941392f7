"""Weighted best-of-N: group `budget` samples by answer, sum their scores, pick the largest sum.

Heuristic (Puri et al.'s WBoN baseline; no target claimed). `extras["totals"]` holds every
answer's score sum. Budget unit: one sample = one full generation.
"""

from __future__ import annotations

from typing import Any

from ..engine import Engine
from ..program import Program
from ..results.posterior import Posterior, particle_text
from ..rng import Rng
from . import importance
from .best_of_n import sample_and_choose
from .selection import AnswerFn, ScoreFn, pick_weighted, recorded_score, scores_of

__all__ = ["init", "step", "run"]

init = importance.init
step = importance.step


def run(program: Program, budget: int, *, seed: int | None = None, rng: Rng | None = None,
        score_fn: ScoreFn = recorded_score, answer_fn: AnswerFn = particle_text,
        max_steps: int = 10_000, engine: Engine | None = None, progress: bool = False) -> Posterior:
    """The answer whose samples' scores sum highest (see `selection.pick_weighted`)."""

    def choose(particles: list[Program], rng: Rng) -> tuple[int, Any, dict[str, Any]]:
        scores = scores_of(particles, score_fn)
        answers = [answer_fn(p) for p in particles]
        best, totals = pick_weighted(answers, scores)
        return answers.index(best), best, {"scores": scores, "totals": totals}

    return sample_and_choose("weighted_best_of_n", program, budget, choose, seed=seed, rng=rng,
                             max_steps=max_steps, engine=engine, progress=progress)
