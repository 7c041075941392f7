"""The per-kernel-family figures a run records: steps of population kernels, tree statistics.

`Posterior.diagnostics` holds one of these: `Steps` (one `StepInfo` per step) for the
population kernels, `TreeStats` for the tree kernels. Both go to ArviZ in groups of their
own (`smc_stats`, `tree_stats`; see `results.arviz_io`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StepInfo", "Steps", "TreeStats", "trace_ancestors"]


@dataclass
class StepInfo:
    """One step of a population kernel.

    `ess` is the ESS of the weights before any resampling; `ancestors[i]` the index, in the
    previous generation, of particle i's parent after this step (the identity when the step
    did not resample); `log_Z_increment` the step's contribution to log Ẑ; `n_live` the
    particles still running after it. `extra` holds a kernel's own per-step figures (e.g.
    the acceptance rate of resample-move's MH moves), numbers keyed by name.
    """

    t: int
    ess: float
    resampled: bool
    ancestors: np.ndarray
    log_Z_increment: float
    n_live: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Steps:
    """The diagnostics of a population kernel: its `StepInfo`s in order."""

    steps: list[StepInfo]

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class TreeStats:
    """The shape of a search tree after a tree kernel's iterations.

    `per_depth[d]` counts the nodes at depth d; `root_value[m]` is the root's backed-up
    value after iteration m and `new_nodes[m]` the nodes that iteration added.
    """

    iterations: int
    n_nodes: int
    n_terminal: int
    depth: int
    per_depth: list[int]
    root_visits: int
    root_value: list[float]
    new_nodes: list[int]


def trace_ancestors(ancestry: Sequence[Any], n: int) -> np.ndarray:
    """Lineages of the n final particles: row k holds each one's ancestor in generation k.

    `ancestry[k]` maps generation k+1 to its parents in generation k, so row k =
    ancestry[k][row k+1], composed backwards from the final generation (row −1 = 0..n−1).
    Shape (len(ancestry)+1, n). An empty map (a step that changed nothing) is the identity.
    """
    out = np.empty((len(ancestry) + 1, n), dtype=np.int64)
    out[-1] = np.arange(n)
    for k in range(len(ancestry), 0, -1):
        A = np.asarray(ancestry[k - 1], dtype=np.int64)
        out[k - 1] = A[out[k]] if len(A) else out[k]
    return out
