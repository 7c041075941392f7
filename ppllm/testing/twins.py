"""Deliberately broken twins: one bug each, to show that the exact checks can fail.

A check that cannot fail proves nothing; each twin here breaks one thing a kernel must get
right and the exact tests assert that it is caught.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..kernels.mh import SuffixMH
from ..kernels.particle_gibbs import csmc_step as _csmc_step  # unpatched, for the twin below
from ..kernels.selection import recorded_score
from ..population import Population, logmeanexp, normalise
from ..resampling import get_resampler, multinomial
from ..tree import SearchTree
from .toys import NoRepeat

__all__ = [
    "NoRepeatWithoutCorrection",
    "SuffixMHIgnoringLength",
    "SuffixMHWithoutCorrection",
    "SuffixMHWithoutFactors",
    "TreeChoosingWithoutMultiplicity",
    "backup_value_unweighted",
    "csmc_step_unpinned",
    "importance_finish_geometric",
    "patched",
    "resample_unnormalised",
    "resample_without_reset",
]


def resample_without_reset(self: Population, rng, resampler="systematic"):
    """BROKEN: copies the ancestors but keeps their weights instead of resetting them."""
    A = np.asarray(get_resampler(resampler)(rng, normalise(self.log_w), self.n), dtype=np.int64)
    self.log_Z_resampled += logmeanexp(self.log_w)
    self.programs = [self.programs[a].clone() for a in A]
    self.log_w = self.log_w[A]  # bug: should be zeros
    self.ancestors = A
    return A


def resample_unnormalised(self: Population, rng, resampler="systematic"):
    """BROKEN: hands the resampler exp(log w) without normalising it."""
    A = np.asarray(get_resampler(resampler)(rng, np.exp(self.log_w), self.n), dtype=np.int64)
    A = np.minimum(A, self.n - 1)
    self.log_Z_resampled += logmeanexp(self.log_w)
    self.programs = [self.programs[a].clone() for a in A]
    self.log_w = np.zeros(self.n)
    self.ancestors = A
    return A


class NoRepeatWithoutCorrection(NoRepeat):
    """BROKEN: samples from the proposal but weights as if it were the model (log q left out)."""

    async def sample(self, dist, proposal=None, *, address=None):
        value = await super().sample(dist, proposal, address=address)
        self.factor(self.trace[-1].log_q)  # cancels the −log q the primitive applied
        return value


@contextmanager
def patched(obj: object, name: str, value: object) -> Iterator[None]:
    """Temporarily replace `obj.name` (for scripts; tests use pytest's monkeypatch)."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)



def csmc_step_unpinned(rng, state, engine, weighting="ratio", tau=1.0, score_fn=recorded_score, scheme=None):
    """BROKEN: the reference slot is resampled like any other (all N ancestors iid ∝ W), so
    the reference can be resampled away; slot 0 then goes on as an ordinary particle."""
    had_reference = state.reference is not None
    state, info = _csmc_step(rng, state, engine, weighting, tau, score_fn, scheme=multinomial)
    if had_reference and info.resampled and info.ancestors[0] != 0:
        state.reference = None
    return state, info


def importance_finish_geometric(state, infos):
    """BROKEN: reports the geometric mean of the weights as Ẑ (log Ẑ = mean log w), which
    Jensen's inequality biases low: E[Ẑ] < Z whenever the weights vary."""
    from ..kernels.driver import Output

    pop = state.population
    log_Z = float(np.mean(pop.log_w)) if np.all(np.isfinite(pop.log_w)) else float(np.max(pop.log_w))
    return Output(pop.programs, pop.log_w, log_Z)


class SuffixMHIgnoringLength(SuffixMH):
    """BROKEN: suffix regeneration without the correction for the change of length."""

    def selection_log_ratio(self, k: int, length: int, new_length: int) -> float:
        return 0.0


class SuffixMHWithoutFactors(SuffixMH):
    """BROKEN: weighs the regenerated suffix by its choices' log p − log q alone, forgetting
    the factors and the twists the steps applied."""

    def suffix_weight(self, log_incs, program, n_prefix: int) -> float:
        return math.fsum(c.log_p - c.log_q for c in program.trace[n_prefix:] if c.kind == "sample")


class SuffixMHWithoutCorrection(SuffixMH):
    """BROKEN: weighs the regenerated suffix by γ instead of γ/q: the proposal correction is left out."""

    def suffix_weight(self, log_incs, program, n_prefix: int) -> float:
        return math.fsum(log_incs) + math.fsum(c.log_q for c in program.trace[n_prefix:])


def backup_value_unweighted(children, rule="soft", weighting="multiplicity"):
    """BROKEN: the soft backup as a plain mean over the distinct children, ignoring how often
    each was drawn (their multiplicity), as if every merged child had been drawn once."""
    values = np.array([c.value for c in children], dtype=np.float64)
    if rule == "max":
        return float(values.max())
    top = float(values.max())
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.mean(np.exp(values - top))))


class TreeChoosingWithoutMultiplicity(SearchTree):
    """BROKEN: samples children ∝ exp(ℓ_c), leaving out their multiplicity n_c."""

    def choose(self, node, rng):
        children = list(node.children.values())
        logits = np.array([c.value for c in children])
        return children[int(rng.categorical(np.exp(logits - logits.max())))]
