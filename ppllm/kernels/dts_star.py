"""DTS*: Diffusion Tree Search (Jain et al. 2025) — the DTS tree searched for high reward.

The tree of `kernels.dts`, built with UCT selection, argmax v̂_c + c_uct·sqrt(log N(u) / N(c))
with v̂ = ℓ/λ in reward units (c_uct = 1 by default: the paper does not state its value), and
the max-backup of the paper's text experiments, ℓ(u) = max_c ℓ_c (`backup="soft"` keeps the
soft one, which makes DTS* a marginal-MAP search over subtrees). The answer is the terminal
reached by following the highest-valued child from the root, with no exploration bonus.

Exactness class: heuristic — a search; no target is claimed and there is no evidence
estimate (log Ẑ = NaN). The result's particles are every distinct completed path in the tree
with uniform weights; `extras["best"]` is the selected one, `extras["best_value"]` its value
v̂ = ℓ/λ (its log-weight / λ plus its reward). Use it to find the highest-reward completion
with fewer rollouts than best-of-N; use DTS to sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from ..engine import Engine
from ..program import Program
from ..results.posterior import Posterior, particle_text
from ..rng import Rng, as_rng
from .driver import Output, check_count, run_kernel
from .dts import DTSState, check_tree_options, tree_stats
from .dts import init as _init
from .dts import step as _step
from .selection import AnswerFn

__all__ = ["init", "step", "run"]


def init(program: Program, *, lam: float = 1.0, reward: Callable[[Program], float] | None = None,
         backup: str = "max") -> DTSState:
    return _init(program, lam=lam, reward=reward, rule=backup)


def step(rng: Rng, state: DTSState, engine: Engine, **options) -> tuple[DTSState, object]:
    """One DTS iteration with UCT selection (see `kernels.dts.step` for the options)."""
    return _step(rng, state, engine, select="uct", **options)


def run(
    program: Program,
    n_iterations: int,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    lam: float = 1.0,
    reward_fn: Callable[[Program], float] | None = None,
    C: float = 2.0,
    alpha: float = 0.7,
    c_uct: float = 1.0,
    backup: str = "max",
    branch_at: Iterable[int] | None = None,
    rollouts: int = 4,
    answer_fn: AnswerFn = particle_text,
    resume: DTSState | None = None,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """Search for the completion of highest value v̂ = (log w + λR)/λ."""
    rng = as_rng(rng if rng is not None else seed)
    check_tree_options(lam, C, alpha)
    check_count("n_iterations", n_iterations)
    if not c_uct >= 0:
        raise ValueError(f"c_uct must be >= 0, got {c_uct!r}")
    engine = engine or Engine()
    state = resume if resume is not None else init(program, lam=lam, reward=reward_fn, backup=backup)
    state.n_iterations = state.t + n_iterations
    depths = None if branch_at is None else set(branch_at)
    config = {"n_iterations": state.n_iterations, "lam": lam, "C": C, "alpha": alpha, "c_uct": c_uct,
              "backup": backup, "rollouts": rollouts}

    def finish(s: DTSState, infos: list) -> Output:
        tree = s.tree
        best = tree.best()
        leaves = sorted(tree.terminals(), key=lambda n: -n.value)
        if not best.terminal or best.value == -math.inf:
            return Output([], np.zeros(0), -math.inf, diagnostics=tree_stats(s), ancestry=[],
                          extras={"state": s}, message="no completed path with positive weight was found")
        particles = [tree.state_of(leaf, engine, rng.child("replay"), max_steps) for leaf in leaves]
        program_best = tree.state_of(best, engine, rng.child("replay"), max_steps)
        i = next(k for k, leaf in enumerate(leaves) if leaf is best)
        return Output(particles, np.zeros(len(particles)), math.nan, diagnostics=tree_stats(s), ancestry=[],
                      message="DTS* is a search: no evidence estimate",
                      extras={"state": s, "selected": i, "answer": answer_fn(program_best),
                              "best_value": best.value / tree.lam,
                              "values": np.array([leaf.value / tree.lam for leaf in leaves])})

    return run_kernel(
        "dts_star", state,
        lambda s: step(rng, s, engine, c=C, alpha=alpha, branch_at=depths, rollouts=rollouts,
                       c_uct=c_uct, max_steps=max_steps),
        finish, engine=engine, max_steps=state.n_iterations, config=config, progress=progress,
        units={"rollouts": n_iterations * rollouts},
    )
