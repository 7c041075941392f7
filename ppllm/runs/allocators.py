"""Allocating rollouts across prompts: which prompts get the next group of rollouts.

One interface, three calls, and a state that is plain JSON (so a run's record can hold it
and a resumed run continues with exactly the same decisions):

    state = allocator.init(n_prompts)                      # the prior of every prompt
    picked = allocator.allocate(state, k, rng)             # k distinct prompt indices
    state = allocator.update(state, {i: rewards_i, ...})   # group outcomes in [0, 1]

Allocators here:
- `Uniform`: k prompts drawn uniformly without replacement (the baseline).
- `ClosestToHalf` (MoPPS-style): the k prompts whose Thompson-sampled success probability
  is closest to 1/2 (`top_k`), or every prompt within `threshold` of 1/2 (`threshold`).
- `BetaThompson` (VADE-style, as read in docs/allocation.md): a Beta(α, β) posterior of each
  prompt's success probability, updated by group outcomes (fractional rewards count as
  fractional successes), decayed on two scales toward the prior to track a changing policy,
  and a Thompson draw per prompt scored by a pluggable information score; the k best scores
  win.

Every draw comes from the run's keyed `Rng` (`rng.child("allocate", round)`), so decisions are
a function of (seed, round, state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..rng import Rng

__all__ = [
    "ALLOCATORS",
    "Allocator",
    "BetaThompson",
    "ClosestToHalf",
    "Uniform",
    "beta_update",
    "check_rewards",
    "decay",
    "information",
    "make_allocator",
]

State = dict[str, Any]


class Allocator(Protocol):
    """What the data-set runner asks of an allocator (see the module docstring)."""

    name: str

    def init(self, n_prompts: int) -> State: ...

    def allocate(self, state: State, k: int, rng: Rng) -> list[int]: ...

    def update(self, state: State, outcomes: Mapping[int, Sequence[float]]) -> State: ...


# ---------------------------------------------------------------------- Beta posteriors
def check_rewards(rewards: Sequence[float], where: str = "rewards") -> np.ndarray:
    """Rewards as floats in [0, 1], or a ValueError naming the first one outside."""
    r = np.asarray(list(rewards), dtype=np.float64)
    bad = np.flatnonzero(~((r >= 0) & (r <= 1)))
    if len(bad):
        raise ValueError(f"{where} must lie in [0, 1], got {float(r[bad[0]])!r} at position {int(bad[0])}")
    return r


def beta_update(alpha: float, beta: float, rewards: Sequence[float]) -> tuple[float, float]:
    """The Beta posterior after a group of outcomes: α + Σ r, β + Σ (1 − r).

    A reward in (0, 1) is a fractional success (the Beta–Bernoulli update extended by its
    sufficient statistics), so a batch update equals the single-observation updates in turn.
    """
    r = check_rewards(rewards)
    return alpha + float(r.sum()), beta + float((1.0 - r).sum())


def decay(alpha: float, beta: float, alpha0: float, beta0: float, rho: float) -> tuple[float, float]:
    """Shrink a posterior toward its prior by ρ: (α₀ + ρ(α − α₀), β₀ + ρ(β − β₀)).

    ρ = 1 keeps everything (plain Beta–Bernoulli); with no data the counts return to the
    prior geometrically, at rate ρ per application.
    """
    return alpha0 + rho * (alpha - alpha0), beta0 + rho * (beta - beta0)


def information(score: str, p: np.ndarray, alpha: np.ndarray, beta: np.ndarray, group: int) -> np.ndarray:
    """How much a group of `group` rollouts of each prompt is expected to teach.

    - "variance": p(1 − p), the Bernoulli variance at the Thompson draw p;
    - "nondegenerate": 1 − p^G − (1 − p)^G, the probability that a group of G rollouts is not
      all-equal (a GRPO group with non-zero advantage);
    - "eig": the expected reduction in the posterior variance of the prompt's success
      probability from G more Bernoulli outcomes, Var[θ] · G / (α + β + G). It depends on
      α + β, so a well-known prompt at p = 1/2 scores less than an unknown one.
    """
    if score == "variance":
        return p * (1.0 - p)
    if score == "nondegenerate":
        return 1.0 - p**group - (1.0 - p) ** group
    if score == "eig":
        n = alpha + beta
        var = alpha * beta / (n * n * (n + 1.0))
        return var * group / (n + group)
    raise ValueError(f"unknown information score {score!r} (known: variance, nondegenerate, eig)")


def _check_prior(alpha0: float, beta0: float) -> None:
    if not (alpha0 > 0 and beta0 > 0 and math.isfinite(alpha0) and math.isfinite(beta0)):
        raise ValueError(f"the Beta prior needs α > 0 and β > 0, got α={alpha0!r}, β={beta0!r}")


def _check_rho(name: str, rho: float) -> None:
    if not 0 < rho <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {rho!r}")


def _check_k(k: int, n: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ValueError(f"prompts per round must be a positive integer, got {k!r}")
    return min(int(k), n)


# ---------------------------------------------------------------------- allocators
@dataclass(frozen=True)
class Uniform:
    """k distinct prompts uniformly at random each round."""

    name: str = "uniform"

    def init(self, n_prompts: int) -> State:
        return {"n": int(n_prompts), "rounds": 0}

    def allocate(self, state: State, k: int, rng: Rng) -> list[int]:
        k = _check_k(k, state["n"])
        u = rng.child("allocate", state["rounds"]).uniform(state["n"])
        return sorted(int(i) for i in np.argsort(u, kind="stable")[:k])

    def update(self, state: State, outcomes: Mapping[int, Sequence[float]]) -> State:
        for rewards in outcomes.values():
            check_rewards(rewards)
        return {**state, "rounds": state["rounds"] + 1}


@dataclass(frozen=True)
class BetaThompson:
    """Beta posteriors, Thompson draws, an information score, two-scale decay.

    `rho_fast` decays every prompt's counts toward the prior each round (the policy moves
    under all prompts); `rho_slow` additionally decays a prompt's counts each time it gets a
    new group (its old outcomes were produced by an older policy). ρ = 1 on both is plain
    Beta–Bernoulli.
    """

    alpha0: float = 1.0
    beta0: float = 1.0
    rho_fast: float = 1.0
    rho_slow: float = 1.0
    score: str = "nondegenerate"
    group_size: int = 8
    name: str = "beta_thompson"

    def __post_init__(self) -> None:
        _check_prior(self.alpha0, self.beta0)
        _check_rho("rho_fast", self.rho_fast)
        _check_rho("rho_slow", self.rho_slow)
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")
        information(self.score, np.array([0.5]), np.array([1.0]), np.array([1.0]), 1)  # a known score

    def init(self, n_prompts: int) -> State:
        n = int(n_prompts)
        return {"alpha": [self.alpha0] * n, "beta": [self.beta0] * n, "rounds": 0}

    def allocate(self, state: State, k: int, rng: Rng) -> list[int]:
        a, b = np.asarray(state["alpha"]), np.asarray(state["beta"])
        k = _check_k(k, len(a))
        p = self.thompson(state, rng)
        info = information(self.score, p, a, b, self.group_size)
        order = np.lexsort((np.arange(len(a)), -info))  # largest first, ties by index
        return sorted(int(i) for i in order[:k])

    def thompson(self, state: State, rng: Rng) -> np.ndarray:
        """One draw of every prompt's success probability from its posterior."""
        a, b = np.asarray(state["alpha"]), np.asarray(state["beta"])
        gen = np.random.default_rng(rng.child("allocate", state["rounds"]).integer_seed())
        return gen.beta(a, b)

    def update(self, state: State, outcomes: Mapping[int, Sequence[float]]) -> State:
        a, b = list(state["alpha"]), list(state["beta"])
        for i in range(len(a)):
            a[i], b[i] = decay(a[i], b[i], self.alpha0, self.beta0, self.rho_fast)
        for i, rewards in sorted(outcomes.items()):
            ai, bi = decay(a[i], b[i], self.alpha0, self.beta0, self.rho_slow)
            a[i], b[i] = beta_update(ai, bi, rewards)
        return {"alpha": a, "beta": b, "rounds": state["rounds"] + 1}


@dataclass(frozen=True)
class ClosestToHalf(BetaThompson):
    """MoPPS-style: prompts whose sampled success probability is closest to 1/2.

    `mode="top_k"` takes the k closest; `mode="threshold"` every prompt with |p − 1/2| ≤
    `threshold` (at most k, closest first; at least one).
    """

    mode: str = "top_k"
    threshold: float = 0.3
    name: str = "closest_to_half"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("top_k", "threshold"):
            raise ValueError(f"mode must be 'top_k' or 'threshold', got {self.mode!r}")
        if not 0 < self.threshold <= 0.5:
            raise ValueError(f"threshold must be in (0, 0.5], got {self.threshold!r}")

    def allocate(self, state: State, k: int, rng: Rng) -> list[int]:
        n = len(state["alpha"])
        k = _check_k(k, n)
        dist = np.abs(self.thompson(state, rng) - 0.5)
        order = np.lexsort((np.arange(n), dist))
        if self.mode == "threshold":
            close = [int(i) for i in order if dist[i] <= self.threshold][:k]
            return sorted(close or [int(order[0])])
        return sorted(int(i) for i in order[:k])


ALLOCATORS: dict[str, type] = {"uniform": Uniform, "beta_thompson": BetaThompson, "closest_to_half": ClosestToHalf}


def make_allocator(name: str, **options: Any) -> Any:
    """An allocator by name with its options, or a ValueError naming what is wrong."""
    cls = ALLOCATORS.get(name)
    if cls is None:
        raise ValueError(f"unknown allocator {name!r} (known: {', '.join(ALLOCATORS)})")
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None
