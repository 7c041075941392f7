"""ppllm: probabilistic inference over language-model generation.

Write generation as a state-space `Program`, weight it with reward-likelihood factors,
and run inference kernels on it (docs/concepts.md).
"""

from .distributions import Bernoulli, Categorical, Distribution, Draw, as_distribution
from .engine import Engine
from .population import DegenerateWeights, Population
from .posterior import Posterior
from .program import Choice, Program, ProgramError, Shared, WeightError, replay, score_trace
from .rng import Rng, SeededRng

__version__ = "0.1.0"


def smc(program: Program, n_particles: int, **kwargs) -> Posterior:
    """Sequential Monte Carlo; see `ppllm.kernels.smc.run` for the options."""
    from .kernels.smc import run

    return run(program, n_particles, **kwargs)


__all__ = [
    "Bernoulli",
    "Categorical",
    "Choice",
    "DegenerateWeights",
    "Distribution",
    "Draw",
    "Engine",
    "Population",
    "Posterior",
    "Program",
    "ProgramError",
    "Rng",
    "SeededRng",
    "Shared",
    "WeightError",
    "as_distribution",
    "replay",
    "score_trace",
    "smc",
]
