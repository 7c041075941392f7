"""Resample-move SMC (Gilks & Berzuini 2001): SMC whose particles are rejuvenated by MH moves.

After every resampling (the ESS rule of `smc`; `move_when="step"`: after every step), each
particle gets `n_moves` MH moves (`kernels.mh`; default: suffix regeneration from a
uniformly chosen step) that leave the current target π_t invariant. The moves undo path
degeneracy: resampling duplicates a few ancestors, moves give the copies new suffixes.

Exactness class: exact — E[Ẑ] = Z and E[Ẑ·1{collapse = x}] = γ(x) for every N
(tests/test_mh.py) — when the schedule of moves does not depend on the particles:
`move_when="step"`, or resampling every step (`ess_threshold=1`, moves then follow every
step, the last one included). With an adaptive ESS threshold the moves happen when the
weights say so, a decision that depends on the particles; the run is then consistent
(N → ∞) but E[Ẑ] = Z no longer holds exactly (the exact test shows the gap). Each step records, in `StepInfo.extra`, the moves' acceptance rate and the
number of distinct particles (different sampled paths) before and after them.
"""

from __future__ import annotations

from typing import Any

from ..engine import Engine
from ..program import Program
from ..resampling import Resampler
from ..results.diagnostics import StepInfo
from ..results.posterior import Posterior
from ..rng import Rng, as_rng
from . import smc
from .driver import check_count, check_resampler, population_output, resampler_name, run_kernel
from .mh import SuffixMH, as_move, distinct_particles

__all__ = ["init", "step", "run"]


def init(program: Program, n_particles: int) -> smc.SMCState:
    """N copies of `program` that keep their paths (moves regenerate from them)."""
    return smc.init(program, n_particles, store_history=True)


def step(
    rng: Rng, state: smc.SMCState, engine: Engine, resampler: str | Resampler = "systematic",
    ess_threshold: float = 0.5, move: Any = None, n_moves: int = 1, move_when: str = "resample",
) -> tuple[smc.SMCState, StepInfo]:
    """An SMC step, then `n_moves` moves of every particle (after resampling, or every step)."""
    state, info = smc.step(rng, state, engine, resampler, ess_threshold)
    # The schedule of moves must not depend on the particles for E[Ẑ] = Z to hold exactly:
    # "step" moves after every step; "resample" after each resampling, which with
    # ess_threshold >= 1 means after every step too, the last one included.
    scheduled = move_when == "step" or ess_threshold >= 1
    if state.failed or not (info.resampled or scheduled):
        return state, info
    move = move if move is not None else SuffixMH()
    pop = state.population
    before = distinct_particles(pop)
    rates = []
    for j in range(n_moves):
        moved = pop.move(move, engine, rng.child("move", info.t, j), info.t, horizon=state.t)
        if moved.moved:  # finished particles are not moved: no acceptance to report
            rates.append(moved.rate)
    if rates:
        info.extra["acceptance"] = float(sum(rates) / len(rates))
    info.extra.update(distinct_before=float(before), distinct_after=float(distinct_particles(pop)))
    return state, info


def run(
    program: Program,
    n_particles: int,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    n_moves: int = 1,
    move: Any = "suffix",
    rule: str = "uniform",
    move_when: str = "resample",
    resampler: str | Resampler = "systematic",
    ess_threshold: float = 0.5,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """Resample-move SMC; `move` is "suffix" (with `rule`), "independent", "site" or a move."""
    rng = as_rng(rng if rng is not None else seed)
    check_count("n_moves", n_moves)
    if move_when not in ("resample", "step"):
        raise ValueError(f"move_when must be 'resample' or 'step', got {move_when!r}")
    if not 0 <= ess_threshold:
        raise ValueError(f"ess_threshold must be >= 0, got {ess_threshold}")
    check_resampler(resampler)
    kernel = as_move(move, rule=rule, max_steps=max_steps) if move == "suffix" else as_move(move)
    engine = engine or Engine()
    config = {"n_particles": n_particles, "n_moves": n_moves, "move": move if isinstance(move, str) else type(move).__name__,
              "rule": rule, "move_when": move_when, "resampler": resampler_name(resampler),
              "ess_threshold": ess_threshold}
    return run_kernel(
        "resample_move", init(program, n_particles),
        lambda s: step(rng, s, engine, resampler, ess_threshold, kernel, n_moves, move_when),
        population_output, engine=engine, max_steps=max_steps, config=config, progress=progress,
    )
