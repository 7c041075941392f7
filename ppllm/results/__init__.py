"""What inference hands back: `Posterior` (weighted particles), `Chains` (MCMC draws), their
diagnostics, ArviZ export and import, netCDF files, and plots (`ppllm.results.plots`)."""

from .arviz_io import load_arviz, posteriors_from_arviz, save_netcdf, to_arviz
from .chains import Chains
from .diagnostics import StepInfo, Steps, TreeStats, trace_ancestors
from .posterior import ParticleRecord, Posterior, Variables, budget_text, particle_text
from .values import json_float, json_value, variable_array

__all__ = [
    "Chains",
    "ParticleRecord",
    "Posterior",
    "StepInfo",
    "Steps",
    "TreeStats",
    "Variables",
    "budget_text",
    "json_float",
    "json_value",
    "load_arviz",
    "particle_text",
    "posteriors_from_arviz",
    "save_netcdf",
    "to_arviz",
    "trace_ancestors",
    "variable_array",
]
