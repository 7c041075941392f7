"""ppllm: probabilistic inference over language-model generation.

Write generation as a state-space `Program`, weight it with reward-likelihood factors,
and run inference kernels on it (docs/concepts.md).
"""

from typing import Any

from .distributions import Bernoulli, Categorical, Distribution, Draw, Normal, as_distribution
from .engine import Engine
from .population import DegenerateWeights, Population, Trajectory
from .program import Choice, Program, ProgramError, Shared, WeightError, replay
from .results import Chains, Posterior
from .rng import Rng, SeededRng

__version__ = "0.1.0"


def smc(program: Program, n_particles: int, **kwargs: Any) -> Posterior:
    """Sequential Monte Carlo; see `ppllm.kernels.smc.run` for the options."""
    from .kernels.smc import run

    return run(program, n_particles, **kwargs)


def score_trace(program: Program, trace: Any, **kwargs: Any) -> float:
    """log γ(trace), the program's unnormalised density of a recorded trace.

    See `ppllm.kernels.importance.score_traces` to score many traces in one batch.
    """
    from .kernels.importance import score_trace as _score

    return _score(program, trace, **kwargs)


__all__ = [
    "Bernoulli",
    "Categorical",
    "Chains",
    "Choice",
    "DegenerateWeights",
    "Distribution",
    "Draw",
    "Engine",
    "Normal",
    "Population",
    "Posterior",
    "Program",
    "ProgramError",
    "Rng",
    "SeededRng",
    "Shared",
    "Trajectory",
    "WeightError",
    "as_distribution",
    "replay",
    "score_trace",
    "smc",
]
