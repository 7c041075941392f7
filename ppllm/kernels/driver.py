"""The one driver every kernel runs on: the loop, step limits, progress, records, budget, result.

A kernel is a module with three functions (the BlackJAX shape):

    init(...)                      -> State
    step(rng, state, engine, ...)  -> (State, Info)
    run(...)                       -> Posterior (or Chains), built with `run_kernel`

A State says when it is `done`, how many steps it took (`t`) and, if the run failed (every
weight zero), why (`failed`). Info is a step's diagnostics, never carried forward. `loop`
is the only place in ppllm that repeats a step until a state is done; `run_kernel` wraps it
with a progress bar, the budget (engine counts and seconds) and the `Posterior`, built from
what the kernel's `finish(state, infos)` returns. Kernels never edit each other's results:
a kernel that reuses another's `step` composes it and builds its own result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from .._gc import fewer_collections
from .._warn import warn
from ..engine import Engine
from ..results.chains import Chains
from ..results.diagnostics import StepInfo, Steps
from ..results.posterior import Posterior

__all__ = [
    "KernelState", "Output", "budget_of", "check_count", "loop", "population_output", "run_chains", "run_kernel",
]

S = TypeVar("S", bound="KernelState")


class KernelState(Protocol):
    """What the driver needs to know about any kernel's state."""

    t: int
    failed: str | None

    @property
    def done(self) -> bool: ...


@dataclass
class Output:
    """What a kernel's `finish` hands the driver to build its `Posterior` from."""

    particles: list[Any]
    log_weights: np.ndarray
    log_Z: float
    extras: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    diagnostics: Any = None  # default: the per-step StepInfos the loop collected
    ancestry: list[np.ndarray] | None = None  # default: each StepInfo's ancestors


def population_output(state: Any, infos: list[Any]) -> Output:
    """The result of a population kernel: its particles, their weights and the running log Ẑ."""
    pop = state.population
    return Output(pop.programs, pop.log_w, pop.log_Z)


def loop(
    state: S,
    step: Callable[[S], tuple[S, Any]],
    max_steps: int,
    on_step: Callable[[Any], None] | None = None,
) -> tuple[S, list[Any]]:
    """Step until the state is done; return it with every step's Info.

    Raises RuntimeError naming what is still running after `max_steps` steps.
    """
    infos: list[Any] = []
    with fewer_collections():
        return _loop(state, step, max_steps, on_step, infos)


def _loop(state: S, step: Callable[[S], tuple[S, Any]], max_steps: int,
          on_step: Callable[[Any], None] | None, infos: list[Any]) -> tuple[S, list[Any]]:
    while not state.done:
        if state.t >= max_steps:
            running = getattr(state, "n_running", None)
            what = f"{running} particles still running" if running is not None else "still running"
            raise RuntimeError(
                f"{what} after max_steps={max_steps}; raise max_steps or make the program finish"
            )
        state, info = step(state)
        infos.append(info)
        if on_step is not None:
            on_step(info)
    return state, infos


def budget_of(engine: Engine, start: float, **units: float) -> dict[str, float]:
    """Engine counts (rounds, LM calls, requests, tokens) plus seconds and the budget units."""
    return {**engine.stats.as_dict(), "seconds": time.perf_counter() - start, **units}


def run_kernel(
    name: str,
    state: S,
    step: Callable[[S], tuple[S, Any]],
    finish: Callable[[S, list[Any]], Output],
    *,
    engine: Engine,
    max_steps: int,
    config: dict[str, Any],
    progress: bool = False,
    units: dict[str, float] | None = None,
    start: float | None = None,
) -> Posterior:
    """Run a kernel from `state` to the end and build its `Posterior`.

    A failed run (every weight zero) ends early with a warning that says why, and a
    Posterior with `ok == False` whose `message` carries the reason; never a NaN.
    """
    start = time.perf_counter() if start is None else start
    bar = _progress(progress, name, config)
    try:
        state, infos = loop(state, step, max_steps, None if bar is None else _updater(bar))
    finally:
        if bar is not None:
            bar.close()
    out = finish(state, infos)
    if state.failed:
        warn(state.failed)
    steps = [i for i in infos if isinstance(i, StepInfo)]
    diagnostics = out.diagnostics if out.diagnostics is not None else (Steps(steps) if steps else None)
    ancestry = out.ancestry if out.ancestry is not None else [np.asarray(s.ancestors) for s in steps]
    return Posterior(
        particles=out.particles,
        log_weights=np.asarray(out.log_weights, dtype=np.float64).copy(),
        log_Z=out.log_Z,
        ancestry=ancestry,
        budget=budget_of(engine, start, **(units or {})),
        kernel=name,
        config=config,
        message=state.failed or out.message,
        diagnostics=diagnostics,
        extras=out.extras,
    )


def run_chains(
    name: str,
    state: Any,
    step: Callable[[Any], tuple[Any, Any]],
    draws: Callable[[Any], list[Any]],
    stats: Callable[[Any], dict[str, np.ndarray]],
    *,
    engine: Engine,
    burn_in: int,
    thin: int,
    config: dict[str, Any],
    progress: bool = False,
    extras: Callable[[Any], dict[str, Any]] | None = None,
) -> Chains:
    """Run an MCMC state (every chain at once) for `state.n_draws` iterations; collect `Chains`.

    `draws(state)` gives each chain's current draw, `stats(info)` each chain's per-draw
    figures; the first `burn_in` iterations are dropped and every `thin`-th one is kept.
    """
    start = time.perf_counter()
    kept: list[tuple[list[Any], dict[str, np.ndarray]]] = []
    bar = _progress(progress, name, config)

    def stepped(s: Any) -> tuple[Any, Any]:
        s, info = step(s)
        if s.t > burn_in and (s.t - burn_in) % thin == 0:
            kept.append((draws(s), stats(info)))
        if bar is not None:
            bar.update(1)
        return s, info

    try:
        state, _ = loop(state, stepped, state.n_draws)
    finally:
        if bar is not None:
            bar.close()
    n_chains = len(kept[0][0]) if kept else 0
    samples = [[d[c] for d, _ in kept] for c in range(n_chains)]
    names = kept[0][1].keys() if kept else []
    table = {k: [[float(st[k][c]) for _, st in kept] for c in range(n_chains)] for k in names}
    return Chains(samples=samples, stats=table, kernel=name, config=config,
                  budget=budget_of(engine, start), extras=extras(state) if extras else {})


def check_count(name: str, value: Any) -> int:
    """A positive integer option (particles, budget, iterations), or a ValueError naming it."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_resampler(resampler: Any) -> str | Callable:
    from ..resampling import get_resampler

    get_resampler(resampler)  # fails early on an unknown name
    return resampler


def resampler_name(resampler: Any) -> str:
    return resampler if isinstance(resampler, str) else getattr(resampler, "__name__", str(resampler))


def _progress(enabled: bool, name: str, config: dict[str, Any]) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    n = config.get("n_particles") or config.get("budget")
    desc = f"{name} ({n} particles)" if n else name
    return tqdm(desc=desc, unit="step", leave=False)


def _updater(bar: Any) -> Callable[[Any], None]:
    def update(info: Any) -> None:
        bar.update(1)
        if isinstance(info, StepInfo):
            bar.set_postfix(ess=f"{info.ess:.1f}", live=info.n_live)

    return update
