"""How kernels read particles' scores and pick answers: shared by the particle filter,
particle Gibbs and the baselines.

- `recorded_score(program)`: the score r̂ of the program's current prefix, as the program
  recorded it in its `prefix_score` attribute (the default `score_fn` of PRM-driven kernels).
- `scores_of` / `score_logits`: every particle's score, checked, and its_hub's resampling
  logits logit(clip(s, ε, 1−ε)) / τ (`ppllm.rewards.odds`).
- `select_index`, `pick_best`, `pick_weighted`, `pick_majority`: the selection rules.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from ..population import normalise
from ..program import Program
from ..rewards.factors import odds
from ..rng import Rng

__all__ = [
    "AnswerFn",
    "check_prm_options",
    "ScoreFn",
    "pick_best",
    "pick_majority",
    "pick_weighted",
    "recorded_score",
    "score_logits",
    "scores_of",
    "select_index",
]

ScoreFn = Callable[[Program], float]
AnswerFn = Callable[[Program], Hashable]


def recorded_score(program: Program) -> float:
    """The score r̂ of the program's current prefix, as the program recorded it."""
    s = getattr(program, "prefix_score", None)
    if s is None:
        raise AttributeError(
            f"{type(program).__name__} has no `prefix_score` to rank particles by: record one in "
            "step(), pass score_fn= to read another score, or select by weight (select=\"sample\")"
        )
    return float(s)


def scores_of(programs: Sequence[Program], score_fn: ScoreFn) -> np.ndarray:
    """score_fn of every particle as float64; ValueError naming the first NaN."""
    s = np.array([score_fn(p) for p in programs], dtype=np.float64)
    bad = np.flatnonzero(np.isnan(s))
    if len(bad):
        raise ValueError(f"score_fn returned NaN for particle {bad[0]}")
    return s


def score_logits(programs: Sequence[Program], score_fn: ScoreFn, tau: float = 1.0) -> np.ndarray:
    """logit(clip(s_i, ε, 1−ε)) / τ for each particle: its_hub's resampling logits."""
    s = np.array([score_fn(p) for p in programs], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(s))
    if len(bad):
        raise ValueError(f"score_fn gave {s[bad[0]]} for particle {bad[0]}; scores must be in [0, 1]")
    return np.asarray(odds(s), dtype=np.float64) / tau


def default_select(weighting: str, select: str | None) -> str:
    """`select` when given; else "argmax" for puri (as published) and "sample" for ratio.

    The ratio weighting targets a distribution whose weights are what to select by; its
    particles need not record a score at all, which "argmax" would read.
    """
    if select is not None:
        return select
    return "argmax" if weighting == "puri" else "sample"


def check_prm_options(weighting: str, tau: float, select: str) -> None:
    """The options PRM-driven kernels share (particle filter, particle Gibbs), or ValueError."""
    if weighting not in ("ratio", "puri"):
        raise ValueError(f"weighting must be 'ratio' or 'puri', got {weighting!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if select not in ("argmax", "sample"):
        raise ValueError(f"select must be 'argmax' or 'sample', got {select!r}")


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


def pick_best(scores: np.ndarray) -> int:
    """Best-of-N: the index of the highest score (the first one on ties)."""
    return int(np.argmax(scores))


def pick_weighted(answers: list[Hashable], scores: np.ndarray) -> tuple[Hashable, dict]:
    """Weighted best-of-N: the answer with the largest score sum, and every answer's sum.

    None (no parsable answer) wins only if nothing else was produced; ties go to the
    answer seen first.
    """
    totals: dict[Hashable, float] = {}
    for a, s in zip(answers, scores, strict=True):
        totals[a] = totals.get(a, 0.0) + float(s)
    pool = {a: v for a, v in totals.items() if a is not None} or totals
    return max(pool, key=lambda a: pool[a]), totals  # max keeps the first of equal sums


def pick_majority(answers: list[Hashable], rng: Rng) -> tuple[Hashable, dict]:
    """Self-consistency: the most common answer (None only if nothing else), ties drawn by rng."""
    counts = Counter(a for a in answers if a is not None) or Counter(answers)
    top = max(counts.values())
    tied = [a for a in counts if counts[a] == top]  # in order of first appearance
    best = tied[rng.categorical(np.ones(len(tied)))] if len(tied) > 1 else tied[0]
    return best, dict(counts)
