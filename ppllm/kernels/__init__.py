"""Inference kernels, one module each, all in one shape: `init`, `step`, `run` (docs/adding-a-kernel.md).

Every `run` is built on the shared driver (`kernels.driver`). `KERNELS` is the registry
recipes read: a kernel added here (or with `register_kernel`) can be named in a recipe.
"""

from ..registry import Registry

KERNELS = Registry("kernel")
for _name in ("smc", "particle_filter", "particle_gibbs", "importance", "best_of_n",
              "weighted_best_of_n", "majority_vote", "beam_search", "dvts", "mh", "resample_move", "pmmh", "dts", "dts_star", "treepo", "latr"):
    KERNELS.register(_name, f"ppllm.kernels.{_name}:run")

KERNEL_MODULES = list(KERNELS)


def register_kernel(name: str, run: object, *, replace: bool = False) -> None:
    """Make a kernel's `run` (or a "module:function" reference to it) available to recipes."""
    KERNELS.register(name, run, replace=replace)


__all__ = ["KERNELS", "KERNEL_MODULES", "register_kernel"]
