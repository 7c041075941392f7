"""Particle marginal Metropolis–Hastings (Andrieu, Doucet & Holenstein 2010): parameters θ of a
program, learned jointly with its text, with SMC's unbiased Ẑ(θ) as the likelihood.

Parameters are program attributes: `run(program, priors={"theta": dist})` runs each
proposal on a copy of `program` whose attribute `theta` is set to the proposed value (a
constructor argument stored under its own name, read by `step()`); a callable that builds a
program from keyword arguments, `model(**theta)`, works too. Priors are distributions from
`pyro.distributions`, `torch.distributions`, `numpyro.distributions` or ppllm, one per
scalar parameter.

One iteration of each chain: propose θ' — a Gaussian random walk θ + scale·N(0, 1) per
parameter (`proposal="random_walk"`) or an independent draw from the priors, or from given
`proposal_dists` (`"independent"`) — run SMC
with N particles on the program at θ', and accept with
    min(1, Ẑ(θ') p(θ') q(θ | θ') / (Ẑ(θ) p(θ) q(θ' | θ))).
A proposal outside the prior's support is rejected without running SMC. The accepted run's
collapsed particle (one drawn ∝ its weight) is kept with θ, so a draw is (θ, x) from the
joint posterior p(θ, x | data) (particle marginal MH).

Exactness class: exact in the MCMC sense — the chain on (θ, x) leaves the joint posterior
invariant for every N ≥ 1 because Ẑ is unbiased; checked statistically against the exact
Kalman posterior of a linear-Gaussian state-space model (tests/test_pmmh.py).
Returns `Chains` whose draws are dicts {θ..., "log_Z": log Ẑ(θ), "particle": x};
`stats["accepted"]` per draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from ..distributions import Distribution, as_distribution
from ..engine import Engine
from ..program import Program
from ..request import answer_now
from ..resampling import Resampler
from ..results.chains import Chains
from ..rng import Rng, as_rng
from . import smc
from .driver import check_count, check_resampler, run_chains

__all__ = ["PMMHInfo", "PMMHState", "init", "run", "step"]

_STD_NORMAL = NormalDist()


@dataclass
class PMMHInfo:
    accepted: np.ndarray


@dataclass(frozen=True)
class _Setup:
    """Everything an iteration needs besides the chains: the model, priors and settings."""

    build: Callable[[dict[str, float]], Program]
    priors: dict[str, Distribution]
    proposal: str
    independent: dict[str, Distribution]  # the independent proposal (default: the priors)
    scale: dict[str, float]
    n_particles: int
    smc_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PMMHState:
    """Each chain's θ, its log Ẑ(θ) and log prior, and the particle kept with it."""

    setup: _Setup
    theta: list[dict[str, float]]
    log_Z: np.ndarray
    log_prior: np.ndarray
    particles: list[Any]
    n_draws: int
    t: int = 0
    failed: str | None = None
    runs: int = 0  # SMC runs made (proposals inside the support)

    @property
    def done(self) -> bool:
        return self.t >= self.n_draws


def _builder(program: Any, names: list[str]) -> Callable[[dict[str, float]], Program]:
    if isinstance(program, Program):
        missing = [n for n in names if not hasattr(program, n)]
        if missing:
            raise ValueError(
                f"{type(program).__name__} has no attribute {missing[0]!r} to set; PMMH sets each "
                "parameter as an attribute of a copy of the program (or pass a factory model(**theta))"
            )

        def build(theta: dict[str, float]) -> Program:
            p = program.clone()
            for k, v in theta.items():
                setattr(p, k, v)
            return p

        return build
    if callable(program):
        return lambda theta: program(**theta)
    raise TypeError(f"expected a ppllm.Program or a factory of programs, got {type(program).__name__}")


def _priors(priors: Mapping[str, Any]) -> dict[str, Distribution]:
    if not isinstance(priors, Mapping) or not priors:
        raise ValueError("priors must be a non-empty mapping of parameter name to distribution")
    out = {}
    for name, d in priors.items():
        try:
            out[name] = as_distribution(d)
        except TypeError as e:
            raise ValueError(f"the prior of {name!r} has no density: {e}") from None
    return out


def _scales(scale: float | Mapping[str, float], names: list[str]) -> dict[str, float]:
    scales = dict(scale) if isinstance(scale, Mapping) else dict.fromkeys(names, scale)
    for n in names:
        s = scales.get(n)
        if not isinstance(s, int | float) or isinstance(s, bool) or not (s > 0 and math.isfinite(s)):
            raise ValueError(f"proposal scale of {n!r} must be > 0, got {s!r}")
    return {n: float(scales[n]) for n in names}


def log_prior(priors: dict[str, Distribution], theta: dict[str, float]) -> float:
    total = 0.0
    for name, d in priors.items():
        try:
            lp = float(answer_now(d.log_prob(theta[name])))
        except NotImplementedError:
            raise ValueError(f"the prior of {name!r} ({type(d).__name__}) has no density") from None
        except ValueError:  # outside the support (torch validates its arguments)
            lp = -math.inf
        if math.isnan(lp):
            raise ValueError(f"the prior of {name!r} gave a NaN log-density at {theta[name]!r}")
        total += lp
    return total


def _evidence(setup: _Setup, theta: dict[str, float], rng: Rng, engine: Engine) -> tuple[float, Any]:
    """log Ẑ(θ) from one SMC run, and one particle drawn ∝ its weight."""
    post = smc.run(setup.build(theta), setup.n_particles, rng=rng.child("smc"), engine=engine, **setup.smc_options)
    particle, log_Z = post.collapse(rng.child("collapse"))
    return float(log_Z), particle


def init(program: Any, priors: Mapping[str, Any], n_chains: int, rng: Rng, engine: Engine,
         n_particles: int = 32, n_draws: int = 1, proposal: str = "random_walk",
         scale: float | Mapping[str, float] = 0.1, smc_options: dict[str, Any] | None = None,
         initial: Mapping[str, float] | None = None,
         proposal_dists: Mapping[str, Any] | None = None) -> PMMHState:
    """Each chain starts at a draw from the priors (or `initial`), with one SMC run there."""
    check_count("n_chains", n_chains)
    check_count("n_particles", n_particles)
    if proposal not in ("random_walk", "independent"):
        raise ValueError(f"proposal must be 'random_walk' or 'independent', got {proposal!r}")
    dists = _priors(priors)
    names = list(dists)
    independent = dists if proposal_dists is None else _priors(proposal_dists)
    if set(independent) != set(names):
        raise ValueError(f"proposal_dists must name the same parameters as the priors ({', '.join(names)})")
    setup = _Setup(_builder(program, names), dists, proposal, independent,
                   _scales(scale, names) if proposal == "random_walk" else dict.fromkeys(names, 1.0),
                   n_particles, dict(smc_options or {}))
    thetas, log_Z, lp, parts = [], [], [], []
    for c in range(n_chains):
        r = rng.child("init", c)
        theta = dict(initial) if initial is not None else _draw(dists, r)
        p = log_prior(dists, theta)
        if p == -math.inf:
            raise ValueError(f"the initial parameters {theta} lie outside the priors' support")
        z, x = _evidence(setup, theta, r, engine)
        thetas.append(theta)
        log_Z.append(z)
        lp.append(p)
        parts.append(x)
    return PMMHState(setup, thetas, np.array(log_Z), np.array(lp), parts, check_count("n_draws", n_draws),
                     runs=n_chains)


def _draw(dists: dict[str, Distribution], rng: Rng) -> dict[str, float]:
    return {n: _number(answer_now(d.sample(rng.child("prior", n))).value) for n, d in dists.items()}


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"PMMH parameters must be scalars, got {v!r}") from None


def step(rng: Rng, state: PMMHState, engine: Engine) -> tuple[PMMHState, PMMHInfo]:
    """One MH iteration of every chain."""
    setup = state.setup
    accepted = np.zeros(len(state.theta), dtype=bool)
    for c, theta in enumerate(state.theta):
        r = rng.child("draw", state.t, "chain", c)
        if setup.proposal == "random_walk":
            new = {n: v + setup.scale[n] * _STD_NORMAL.inv_cdf(_open(r.child("walk", n).uniform(1)[0]))
                   for n, v in theta.items()}
            log_q = 0.0  # symmetric
        else:
            new = _draw(setup.independent, r)
            log_q = proposal_log_ratio(setup, theta, new)
        lp = log_prior(setup.priors, new)
        if lp == -math.inf:
            continue
        z, x = _evidence(setup, new, r, engine)
        state.runs += 1
        current = state.log_Z[c] + state.log_prior[c]
        log_alpha = 0.0 if current == -math.inf else (z + lp) - current + log_q
        if z > -math.inf and _accept(r.child("accept"), log_alpha):
            state.theta[c], state.log_Z[c], state.log_prior[c], state.particles[c] = new, z, lp, x
            accepted[c] = True
    state.t += 1
    return state, PMMHInfo(accepted)


def proposal_log_ratio(setup: _Setup, theta: dict[str, float], new: dict[str, float]) -> float:
    """log q(θ) − log q(θ') of the independent proposal: the Hastings correction."""
    return log_prior(setup.independent, theta) - log_prior(setup.independent, new)


def _open(u: float) -> float:
    return min(max(float(u), 1e-300), 1 - 1e-16)


def _accept(rng: Rng, log_alpha: float) -> bool:
    a = 1.0 if log_alpha >= 0 else math.exp(log_alpha)
    return bool(rng.categorical(np.array([1.0 - a, a])))


def run(
    program: Any,
    priors: Mapping[str, Any],
    n_chains: int = 4,
    n_draws: int = 500,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    n_particles: int = 32,
    proposal: str = "random_walk",
    scale: float | Mapping[str, float] = 0.1,
    resampler: str | Resampler = "systematic",
    ess_threshold: float = 0.5,
    burn_in: int = 0,
    thin: int = 1,
    initial: Mapping[str, float] | None = None,
    proposal_dists: Mapping[str, Any] | None = None,
    engine: Engine | None = None,
    progress: bool = False,
) -> Chains:
    """`n_chains` PMMH chains of `n_draws` draws of (θ, x); see the module docstring."""
    rng = as_rng(rng if rng is not None else seed)
    engine = engine or Engine()
    check_resampler(resampler)
    if burn_in < 0 or thin < 1:
        raise ValueError(f"burn_in must be >= 0 and thin >= 1, got {burn_in} and {thin}")
    total = burn_in + check_count("n_draws", n_draws) * thin
    state = init(program, priors, n_chains, rng, engine, n_particles, total, proposal, scale,
                 {"resampler": resampler, "ess_threshold": ess_threshold}, initial, proposal_dists)
    config = {"n_chains": n_chains, "n_draws": n_draws, "n_particles": n_particles, "proposal": proposal,
              "scale": state.setup.scale, "priors": {k: repr(v) for k, v in priors.items()}, "burn_in": burn_in,
              "thin": thin}

    def draws(s: PMMHState) -> list[dict[str, Any]]:
        return [{**th, "log_Z": float(z), "particle": x}
                for th, z, x in zip(s.theta, s.log_Z, s.particles, strict=True)]

    return run_chains(
        "pmmh", state, lambda s: step(rng, s, engine), draws,
        lambda info: {"accepted": info.accepted.astype(float)},
        engine=engine, burn_in=burn_in, thin=thin, config=config, progress=progress,
        extras=lambda s: {"smc_runs": s.runs},
    )
