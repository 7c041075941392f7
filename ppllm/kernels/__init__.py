"""Inference kernels, each a composition of population operations (docs/kernels/)."""

from . import baselines, particle_filter, particle_gibbs, smc

__all__ = ["baselines", "particle_filter", "particle_gibbs", "smc"]
