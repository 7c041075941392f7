"""Inference-scaling baselines: best-of-N, weighted best-of-N, majority vote, beam search, DVTS.

All are heuristics: they pick or search, and none preserves a distribution — no target is
claimed and none is tested for one. Tests check that they return the known answer on
small hand-built cases with a deterministic scorer.

One budget unit everywhere: `budget` = the number of full generations (particles); every
kernel's LM work is at most that of `budget` independent samples. Each returns a
`Posterior` whose `extras["answer"]` is the selected answer (`answer_fn` of the chosen
particle, or the winning group for WBoN / majority vote), `extras["selected"]` the chosen
particle's index, and `budget` the engine's figures (rounds, LM calls, requests, tokens)
plus seconds.

- `best_of_n`          `budget` independent samples; the highest final score.
- `weighted_best_of_n` group samples by answer, sum their scores, pick the largest sum.
- `majority_vote`      the most common answer (self-consistency); ties by the seeded rng.
- `beam_search`        its_hub: `budget` particles; after each step keep the top
                       `beam_width` by prefix score and duplicate each budget//beam_width times.
- `dvts`               Beeching et al. 2024: budget/M independent subtrees (M = beam_width,
                       default 4); each step expands a subtree's path into M candidates
                       and keeps the argmax.

Sampling baselines (the first three) return the samples with their importance weights and
the program's unbiased log Ẑ; search baselines return their final beam with uniform weights
and log Ẑ = NaN (no evidence estimate).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Hashable

import numpy as np

from ..engine import Engine
from ..population import Population
from ..posterior import Posterior, particle_text
from ..program import Program
from ..rng import Rng, as_rng
from . import smc
from .particle_filter import budget_of, prefix_score

__all__ = [
    "best_of_n",
    "weighted_best_of_n",
    "majority_vote",
    "beam_search",
    "dvts",
    "pick_best",
    "pick_weighted",
    "pick_majority",
]

ScoreFn = Callable[[Program], float]
AnswerFn = Callable[[Program], Hashable]


def _samples(program: Program, budget: int, rng: Rng, engine: Engine, max_steps: int) -> Posterior:
    """`budget` independent full generations (SMC that never resamples)."""
    _check_budget(budget)
    return smc.run(program, budget, rng=rng, ess_threshold=0.0, max_steps=max_steps, engine=engine)


def _finish(post: Posterior, kernel: str, i: int, answer: Hashable, budget: int, engine: Engine,
            start: float, **extras) -> Posterior:
    post.kernel = kernel
    post.config = {"budget": budget}
    post.extras.update(selected=i, answer=answer, **extras)
    post.budget = budget_of(engine, start, generations=budget)
    return post


def best_of_n(program: Program, budget: int, *, seed: int | None = None, rng: Rng | None = None,
              score_fn: ScoreFn = prefix_score, answer_fn: AnswerFn = particle_text,
              max_steps: int = 10_000, engine: Engine | None = None) -> Posterior:
    """The highest-scoring of `budget` samples (first one on ties)."""
    rng, engine, start = as_rng(rng if rng is not None else seed), engine or Engine(), time.perf_counter()
    post = _samples(program, budget, rng, engine, max_steps)
    scores = _scores(post.particles, score_fn)
    i = pick_best(scores)
    return _finish(post, "best_of_n", i, answer_fn(post.particles[i]), budget, engine, start, scores=scores)


def weighted_best_of_n(program: Program, budget: int, *, seed: int | None = None, rng: Rng | None = None,
                       score_fn: ScoreFn = prefix_score, answer_fn: AnswerFn = particle_text,
                       max_steps: int = 10_000, engine: Engine | None = None) -> Posterior:
    """The answer whose samples' scores sum highest (see `pick_weighted`)."""
    rng, engine, start = as_rng(rng if rng is not None else seed), engine or Engine(), time.perf_counter()
    post = _samples(program, budget, rng, engine, max_steps)
    scores = _scores(post.particles, score_fn)
    answers = [answer_fn(p) for p in post.particles]
    best, totals = pick_weighted(answers, scores)
    return _finish(post, "weighted_best_of_n", answers.index(best), best, budget, engine, start,
                   scores=scores, totals=totals)


def majority_vote(program: Program, budget: int, *, seed: int | None = None, rng: Rng | None = None,
                  answer_fn: AnswerFn = particle_text, max_steps: int = 10_000,
                  engine: Engine | None = None) -> Posterior:
    """The most common answer among `budget` samples (see `pick_majority`)."""
    rng, engine, start = as_rng(rng if rng is not None else seed), engine or Engine(), time.perf_counter()
    post = _samples(program, budget, rng, engine, max_steps)
    answers = [answer_fn(p) for p in post.particles]
    best, counts = pick_majority(answers, rng.child("tie"))
    return _finish(post, "majority_vote", answers.index(best), best, budget, engine, start, counts=counts)


# ---------------------------------------------------------------------- selection rules
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


def beam_search(program: Program, budget: int, beam_width: int = 4, *, seed: int | None = None,
                rng: Rng | None = None, score_fn: ScoreFn = prefix_score, answer_fn: AnswerFn = particle_text,
                max_steps: int = 10_000, engine: Engine | None = None) -> Posterior:
    """its_hub beam search: keep the top `beam_width`, each duplicated budget//beam_width times.

    Finished particles compete with their final score (and their copies cost nothing).
    """
    _check_budget(budget)
    if beam_width < 1 or budget % beam_width:
        raise ValueError(f"budget ({budget}) must be a positive multiple of beam_width ({beam_width})")
    rng, engine, start = as_rng(rng if rng is not None else seed), engine or Engine(), time.perf_counter()
    pop = Population.spawn(program, budget)
    t = 0
    while not pop.all_finished:
        _guard(t, max_steps)
        pop.extend(engine, rng, t)
        scores = _scores(pop.programs, score_fn)
        scores = np.where(pop.log_w > -math.inf, scores, -math.inf)
        keep = np.argsort(-scores, kind="stable")[:beam_width]
        _replace(pop, np.repeat(keep, budget // beam_width))
        t += 1
    scores = _scores(pop.programs, score_fn)
    i = int(np.argmax(scores))
    return _search_posterior(pop, "beam_search", i, answer_fn, scores, budget, engine, start,
                             {"beam_width": beam_width})


def dvts(program: Program, budget: int, beam_width: int = 4, *, seed: int | None = None,
         rng: Rng | None = None, score_fn: ScoreFn = prefix_score, answer_fn: AnswerFn = particle_text,
         max_steps: int = 10_000, engine: Engine | None = None) -> Posterior:
    """Diverse verifier tree search: budget/M subtrees, each a greedy M-way step search.

    Every step, each unfinished subtree's path is copied into M candidates, each candidate
    takes one step, and the best-scoring candidate becomes the subtree's path. The answer is
    the best-scoring of the budget/M final paths.
    """
    _check_budget(budget)
    if beam_width < 1 or budget % beam_width:
        raise ValueError(f"budget ({budget}) must be a positive multiple of beam_width ({beam_width})")
    rng, engine, start = as_rng(rng if rng is not None else seed), engine or Engine(), time.perf_counter()
    m, n_trees = beam_width, budget // beam_width
    pop = Population.spawn(program, budget)  # slots [k·M, (k+1)·M) belong to subtree k
    t = 0
    while not pop.all_finished:
        _guard(t, max_steps)
        pop.extend(engine, rng, t)
        scores = np.where(pop.log_w > -math.inf, _scores(pop.programs, score_fn), -math.inf)
        best = [k * m + int(np.argmax(scores[k * m : (k + 1) * m])) for k in range(n_trees)]
        _replace(pop, np.repeat(best, m))
        t += 1
    finals = np.array([score_fn(pop.programs[k * m]) for k in range(n_trees)], dtype=np.float64)
    k = int(np.argmax(finals))
    roots = [pop.programs[j * m] for j in range(n_trees)]
    pop.programs, pop.log_w = roots, np.zeros(n_trees)
    return _search_posterior(pop, "dvts", k, answer_fn, finals, budget, engine, start,
                             {"beam_width": m, "subtrees": n_trees})


# ---------------------------------------------------------------------- helpers
def _check_budget(budget: int) -> None:
    if not isinstance(budget, int | np.integer) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")


def _guard(t: int, max_steps: int) -> None:
    if t >= max_steps:
        raise RuntimeError(f"particles still running after max_steps={max_steps}")


def _scores(programs: list[Program], score_fn: ScoreFn) -> np.ndarray:
    s = np.array([score_fn(p) for p in programs], dtype=np.float64)
    if np.any(np.isnan(s)):
        raise ValueError("score_fn returned NaN")
    return s


def _replace(pop: Population, keep: np.ndarray) -> None:
    """The population becomes copies of the kept particles (unfinished copies are forks)."""
    used: set[int] = set()
    new: list[Program] = []
    for a in keep:
        a = int(a)
        new.append(pop.programs[a] if a not in used else pop.programs[a].clone())
        used.add(a)
    pop.programs = new
    pop.log_w = np.zeros(len(new))
    pop.ancestors = np.asarray(keep, dtype=np.int64)


def _search_posterior(pop, kernel, i, answer_fn, scores, budget, engine, start, config) -> Posterior:
    return Posterior(
        particles=pop.programs,
        log_weights=np.zeros(pop.n),
        log_Z=math.nan,
        budget=budget_of(engine, start, generations=budget),
        kernel=kernel,
        config={"budget": budget, **config},
        message=f"{kernel} is a search heuristic: no evidence estimate",
        extras={"selected": i, "answer": answer_fn(pop.programs[i]), "scores": scores},
    )
