"""MCMC output: draws per chain, per-draw figures, and their way into ArviZ as real chains."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..program import Program
from .posterior import Posterior, Variables, budget_text, particle_text
from .values import pad_rows

if TYPE_CHECKING:
    import arviz

__all__ = ["Chains"]


@dataclass
class Chains:
    """MCMC output: `samples[c][d]` is draw d of chain c (a program, a dict of scalars or a scalar).

    `stats` maps a name to per-draw figures shaped (chain, draw), e.g. `accepted`. Chains go
    to ArviZ as chains, so `az.rhat`, `az.ess` and `az.summary` mean what they usually mean.
    """

    samples: list[list[Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    kernel: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_chains(self) -> int:
        return len(self.samples)

    @property
    def n_draws(self) -> int:
        return max((len(c) for c in self.samples), default=0)

    def flat(self, burn_in: int = 0) -> list[Any]:
        """Every chain's draws after the first `burn_in`, chain after chain."""
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}")
        return [x for chain in self.samples for x in chain[burn_in:]]

    def _flat_or_fail(self, burn_in: int) -> list[Any]:
        vals = self.flat(burn_in)
        if not vals:
            raise ValueError(f"no draws after burn_in={burn_in} ({self.n_draws} draws per chain)")
        return vals

    def expectation(self, fn: Callable[[Any], float], burn_in: int = 0) -> float:
        """The mean of fn over the pooled draws."""
        return float(np.mean([float(fn(x)) for x in self._flat_or_fail(burn_in)]))

    def distribution(self, fn: Callable[[Any], Hashable] = particle_text, burn_in: int = 0) -> dict[Hashable, float]:
        """The frequency of each distinct value of fn over the pooled draws, largest first."""
        vals = [fn(x) for x in self._flat_or_fail(burn_in)]
        return {k: c / len(vals) for k, c in Counter(vals).most_common()}

    def acceptance_rate(self) -> np.ndarray:
        """Each chain's fraction of accepted proposals (from `stats["accepted"]`)."""
        key = next((k for k in ("accepted", "accept", "acceptance") if k in self.stats), None)
        if key is None:
            raise ValueError(f"{self.kernel or 'these chains'} record no acceptance (stats: {sorted(self.stats)})")
        rows = pad_rows([list(map(float, r)) for r in self.stats[key]], self.n_draws)
        return np.nanmean(rows, axis=1)

    def as_posterior(self, burn_in: int = 0) -> Posterior:
        """The pooled draws as equally weighted particles (a draw's "particle" when it has one).

        There is no evidence estimate: log Ẑ is NaN. The chains stay in `extras["chains"]`
        only when the caller puts them there.
        """
        draws = self._flat_or_fail(burn_in)
        particles = [d["particle"] if isinstance(d, Mapping) and "particle" in d else d for d in draws]
        return Posterior(particles=particles, log_weights=np.zeros(len(particles)), log_Z=math.nan,
                         budget=dict(self.budget), kernel=self.kernel, config=dict(self.config),
                         extras=dict(self.extras))

    def to_arviz(self, variables: Variables | None = None) -> arviz.InferenceData:
        """`posterior` (chain, draw) of each variable; `sample_stats` from `stats`; padded.

        Without `variables`: a dict draw gives one variable per key (a program in it as its
        text), a program its `text`, a scalar `x`.
        """
        from .arviz_io import arviz_modules, quiet

        az, xr = arviz_modules()
        first = next((c[0] for c in self.samples if c), 0)
        fns = _default_variables(first, variables)
        D = self.n_draws
        coords = {"chain": np.arange(self.n_chains), "draw": np.arange(D)}
        post = {name: (("chain", "draw"), pad_rows([[fn(x) for x in chain] for chain in self.samples], D))
                for name, fn in fns.items()}
        stats = {k: (("chain", "draw"), pad_rows([list(r) for r in v], D)) for k, v in self.stats.items()}
        attrs = {"kernel": self.kernel, "config": json.dumps(self.config, default=str)}
        groups = {"posterior": xr.Dataset(post, coords=coords, attrs=attrs)}
        if stats:
            groups["sample_stats"] = xr.Dataset(stats, coords=coords, attrs=attrs)
        return quiet(lambda: az.InferenceData(**groups))

    def summary(self) -> str:
        head = f"{self.kernel or 'chains'}: {self.n_chains} chains × {self.n_draws} draws"
        lines = [head]
        if any(k in self.stats for k in ("accepted", "accept", "acceptance")):
            rates = self.acceptance_rate()
            lines.append("  acceptance per chain: " + ", ".join(f"{r:.2f}" for r in rates))
        if self.budget:
            lines.append("  budget: " + budget_text(self.budget))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _default_variables(example: Any, variables: Variables | None) -> dict[str, Callable[[Any], Any]]:
    if variables:
        return dict(variables)
    if isinstance(example, Mapping):
        return {str(k): (lambda x, k=k: _shown(x.get(k) if isinstance(x, Mapping) else None)) for k in example}
    if isinstance(example, Program):
        return {"text": particle_text}
    return {"x": lambda x: x}


def _shown(v: Any) -> Any:
    return particle_text(v) if isinstance(v, Program) else v
