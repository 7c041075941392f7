"""Distributions a program can `sample` from or `observe`: LM ones and ordinary ones.

`Distribution` is ppllm's one interface: `await d.sample(rng) -> Draw` and
`await d.log_prob(value) -> float`. LM distributions live in `ppllm.lm`; distributions
from `pyro.distributions`, `torch.distributions` and `numpyro.distributions` go through
one adapter, `as_distribution`, which draws through ppllm's `Rng` so that runs are
reproducible and the exact oracle can enumerate discrete choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from .rng import Rng

__all__ = [
    "Distribution",
    "Draw",
    "Categorical",
    "Bernoulli",
    "Normal",
    "TorchDistribution",
    "NumpyroDistribution",
    "as_distribution",
]


@dataclass(frozen=True)
class Draw:
    """A sampled value, its log-probability under the distribution that drew it, and extras.

    `extras` can carry what came for free with the draw, e.g. an LM proposal at
    temperature T also knows the value's log-probability under the untempered model.
    """

    value: Any
    log_prob: float
    extras: dict[str, Any] = field(default_factory=dict, compare=False)


class Distribution:
    """Base class: subclasses implement `sample` and `log_prob` (both awaitable)."""

    is_lm: bool = False  # LM distributions (tokens, chunks) say True; the rest are latents

    async def sample(self, rng: Rng) -> Draw:
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled")

    async def log_prob(self, value: Any) -> float:
        raise NotImplementedError(f"{type(self).__name__} cannot score values")

    def log_prob_from_draw(self, draw: Draw) -> float | None:
        """This distribution's log-probability of a draw made by another one, if known for free."""
        return None


class Categorical(Distribution):
    """A finite distribution over `values` (default 0..K-1) with the given probabilities."""

    def __init__(self, probs: Any, values: list[Any] | None = None) -> None:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 1 or len(p) == 0:
            raise ValueError("Categorical needs a non-empty 1-d vector of probabilities")
        if np.any(~np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"Categorical probabilities must be finite, >= 0, sum > 0: {p}")
        self.probs = p / p.sum()
        self.values = list(range(len(p))) if values is None else list(values)
        if len(self.values) != len(p):
            raise ValueError("Categorical: values and probs differ in length")

    async def sample(self, rng: Rng) -> Draw:
        i = rng.categorical(self.probs)
        return Draw(self.values[i], math.log(self.probs[i]))

    async def log_prob(self, value: Any) -> float:
        total = sum(p for v, p in zip(self.values, self.probs, strict=True) if v == value)
        return math.log(total) if total > 0 else -math.inf


class Bernoulli(Categorical):
    """True with probability p."""

    def __init__(self, p: float) -> None:
        super().__init__([1.0 - p, p], values=[False, True])


_STD_NORMAL = NormalDist()


class Normal(Distribution):
    """A univariate Gaussian, drawn by inverse CDF from the particle's uniform (no torch)."""

    def __init__(self, loc: float, scale: float) -> None:
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"Normal scale must be finite and > 0, got {scale}")
        self.loc, self.scale = float(loc), float(scale)

    async def sample(self, rng: Rng) -> Draw:
        draw = getattr(rng, "random", None)
        u = draw() if draw is not None else float(rng.uniform(1)[0])
        x = self.loc + self.scale * _STD_NORMAL.inv_cdf(min(max(u, 1e-300), 1 - 1e-16))
        return Draw(x, self._log_prob(x))

    def _log_prob(self, x: float) -> float:
        z = (x - self.loc) / self.scale
        return -0.5 * z * z - math.log(self.scale) - 0.5 * math.log(2 * math.pi)

    async def log_prob(self, value: Any) -> float:
        return self._log_prob(float(value))


def _scalar(x: Any) -> Any:
    """Turn 0-d arrays/tensors into Python numbers so values are hashable and printable."""
    if hasattr(x, "ndim") and x.ndim == 0:
        v = x.item()
        return int(v) if float(v).is_integer() and not isinstance(v, float) else v
    return x


# id(dist) -> (dist, table); holding the dist keeps the id from being reused while cached.
_FINITE_TABLES: dict[int, tuple[Any, tuple[list[Any], np.ndarray]]] = {}
_MAX_TABLES = 4096


class TorchDistribution(Distribution):
    """Adapter for `torch.distributions` / `pyro.distributions` objects.

    Finite discrete distributions are drawn with `rng.categorical` over their support
    (so the exact oracle can enumerate them); continuous ones by inverse CDF where
    available, otherwise under a forked, seeded torch RNG that leaves the global state
    untouched.
    """

    def __init__(self, dist: Any) -> None:
        self.dist = dist

    def _table(self) -> tuple[list[Any], np.ndarray] | None:
        """(support values, their log-probs) for finite distributions, computed once per object.

        Distributions are immutable by convention, so the table is cached on the object;
        it spares torch's argument validation on every draw of a particle.
        """
        d = self.dist
        table = _FINITE_TABLES.get(id(d))
        if table is not None and table[0] is d:
            return table[1]
        if not (getattr(d, "has_enumerate_support", False) and d.batch_shape == ()):
            return None
        support = d.enumerate_support(expand=False).reshape(-1)
        entry = ([_scalar(v) for v in support], d.log_prob(support).double().numpy())
        if len(_FINITE_TABLES) >= _MAX_TABLES:
            del _FINITE_TABLES[next(iter(_FINITE_TABLES))]  # oldest first: bounded memory
        _FINITE_TABLES[id(d)] = (d, entry)
        return entry

    async def sample(self, rng: Rng) -> Draw:
        import torch

        table = self._table()
        if table is not None:
            values, logp = table
            i = rng.categorical(np.exp(logp))
            return Draw(values[i], float(logp[i]))
        try:
            u = torch.as_tensor(rng.uniform(1)[0], dtype=torch.float64)
            value = self.dist.icdf(u.to(self.dist.mean.dtype))
        except (NotImplementedError, AttributeError):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed_from(rng))
                value = self.dist.sample()
        return Draw(_scalar(value), float(self.dist.log_prob(value).sum()))

    async def log_prob(self, value: Any) -> float:
        import torch

        table = self._table()
        if table is not None and not isinstance(value, torch.Tensor):
            values, logp = table
            hits = [i for i, v in enumerate(values) if v == value]
            return float(logp[hits[0]]) if hits else -math.inf
        v = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=_dtype_of(self.dist))
        if v.dtype == torch.float64 and hasattr(self.dist, "mean"):
            v = v.to(self.dist.mean.dtype)
        try:
            return float(self.dist.log_prob(v).sum())
        except ValueError:  # outside the support (torch validates arguments)
            return -math.inf


class NumpyroDistribution(Distribution):
    """Adapter for `numpyro.distributions` objects (drawn with a key from ppllm's Rng)."""

    def __init__(self, dist: Any) -> None:
        self.dist = dist

    async def sample(self, rng: Rng) -> Draw:
        import jax

        d = self.dist
        if getattr(d, "has_enumerate_support", False) and d.batch_shape == ():
            support = np.asarray(d.enumerate_support(expand=False)).reshape(-1)
            logp = np.asarray(d.log_prob(support), dtype=np.float64)
            i = rng.categorical(np.exp(logp))
            return Draw(_scalar(support[i]), float(logp[i]))
        value = d.sample(jax.random.PRNGKey(_seed_from(rng) % (2**32)))
        return Draw(_scalar(np.asarray(value)), float(np.sum(d.log_prob(value))))

    async def log_prob(self, value: Any) -> float:
        return float(np.sum(np.asarray(self.dist.log_prob(value), dtype=np.float64)))


def _dtype_of(dist: Any) -> Any:
    """The floating dtype a torch distribution computes in (a Python float value is read at
    it, not at torch's float32 default), or None for integer-valued ones."""
    import torch

    try:
        mean = dist.mean
    except (NotImplementedError, AttributeError):
        return None
    if not isinstance(mean, torch.Tensor) or not mean.is_floating_point():
        return None
    if getattr(dist, "support", None) is not None and getattr(dist.support, "is_discrete", False):
        return None
    return mean.dtype


def _seed_from(rng: Rng) -> int:
    seeder = getattr(rng, "integer_seed", None)
    if seeder is None:
        raise TypeError(
            "this distribution has no finite support or inverse CDF, so it cannot be drawn "
            "by an enumerating Rng; the exact oracle only handles discrete choices"
        )
    return int(seeder())


def as_distribution(dist: Any) -> Distribution:
    """Wrap torch/pyro/numpyro distributions; pass ppllm distributions through."""
    if isinstance(dist, Distribution):
        return dist
    module = type(dist).__module__
    if module.startswith("numpyro"):
        return NumpyroDistribution(dist)
    if module.startswith(("torch.distributions", "pyro.distributions")):
        return TorchDistribution(dist)
    raise TypeError(
        f"cannot sample from {type(dist).__name__}: expected a ppllm Distribution, an LM "
        "distribution, or a torch/pyro/numpyro distribution"
    )
