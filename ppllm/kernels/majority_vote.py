"""Majority vote (self-consistency): the most common answer among `budget` samples.

Heuristic (no target claimed); ties are broken by the seeded rng. `extras["counts"]` holds
every answer's count. Budget unit: one sample = one full generation.
"""

from __future__ import annotations

from typing import Any

from ..engine import Engine
from ..program import Program
from ..results.posterior import Posterior, particle_text
from ..rng import Rng
from . import importance
from .best_of_n import sample_and_choose
from .selection import AnswerFn, pick_majority

__all__ = ["init", "step", "run"]

init = importance.init
step = importance.step


def run(program: Program, budget: int, *, seed: int | None = None, rng: Rng | None = None,
        answer_fn: AnswerFn = particle_text, max_steps: int = 10_000,
        engine: Engine | None = None, progress: bool = False) -> Posterior:
    """The most common answer among `budget` samples (see `selection.pick_majority`)."""

    def choose(particles: list[Program], rng: Rng) -> tuple[int, Any, dict[str, Any]]:
        answers = [answer_fn(p) for p in particles]
        best, counts = pick_majority(answers, rng.child("tie"))
        return answers.index(best), best, {"counts": counts}

    return sample_and_choose("majority_vote", program, budget, choose, seed=seed, rng=rng,
                             max_steps=max_steps, engine=engine, progress=progress)
