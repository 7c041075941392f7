"""Inference kernels, each a composition of population operations (docs/kernels/)."""

from . import smc

__all__ = ["smc"]
