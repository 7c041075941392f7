"""How per-step PRM scores become one score r̂ of a prefix (reference/algorithms.md §1.2).

- `prod`: ∏_j r̂_j — the probability that every step is accepted if steps are judged
  independently; with the `bernoulli` converter it is the paper's state-space likelihood.
- `min`: the weakest step.
- `last`: the score of the latest step (the published particle-filter code's choice).
- `model`: ask the PRM about the whole prefix joined as ONE step and take that single score
  (the PRM used as an outcome model on prefixes; its_hub's benchmark default).

A prefix with no steps has score 1.0 under every aggregation: no evidence yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import PRM

__all__ = ["AGGREGATIONS", "aggregate", "join_steps", "score_prefix", "score_prefix_now"]

AGGREGATIONS = ("prod", "min", "last", "model")


def aggregate(scores: Sequence[float] | np.ndarray, how: str) -> float:
    """One prefix score from per-step scores. For `model`, `scores` must be the single score."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    if arr.size == 0:
        return 1.0
    if how == "prod":
        return float(np.prod(arr))
    if how == "min":
        return float(np.min(arr))
    if how == "last":
        return float(arr[-1])
    if arr.size != 1:
        raise ValueError(
            f"'model' aggregation takes the PRM's single score of the joined prefix, got "
            f"{arr.size} scores; use score_prefix(prm, prompt, steps, 'model')"
        )
    return float(arr[0])


def join_steps(steps: Sequence[str], sep: str = "\n") -> str:
    """The prefix as one step, for `model` aggregation (steps stripped of trailing whitespace)."""
    return sep.join(s.rstrip() for s in steps)


async def score_prefix(
    prm: PRM, prompt: str, steps: Sequence[str], how: str = "last", sep: str = "\n"
) -> float:
    """r̂ of a prefix under aggregation `how`; await it inside a program's `step()`.

    `sep` joins the steps into one for `model` aggregation ("\\n" for line-per-step tasks
    such as tiny-arith, "\\n\\n" for chat models).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    if not steps:
        return 1.0
    if how == "model":
        return aggregate(await prm.score(prompt, (join_steps(steps, sep),)), "model")
    return aggregate(await prm.score(prompt, steps), how)


def score_prefix_now(
    prm: PRM, prompt: str, steps: Sequence[str], how: str = "last", sep: str = "\n"
) -> float:
    """Synchronous `score_prefix` for scripts and baselines."""
    from ..request import answer_now

    return answer_now(score_prefix(prm, prompt, steps, how, sep))
