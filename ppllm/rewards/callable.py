"""`CallablePRM`: any Python function (prompt, steps) → per-step probabilities, as a PRM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .base import PRM, Item

__all__ = ["CallablePRM"]


class CallablePRM(PRM):
    """Wraps `fn(prompt, steps) -> sequence of len(steps) floats` (validated like any PRM).

    `fn` is called once per request; the engine still gathers a round's requests into one
    `score_batch` call, so a wrapper may batch internally by overriding `score_batch`.
    """

    def __init__(self, fn: Callable[[str, tuple[str, ...]], Sequence[float]], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def score_batch(self, items: list[Item]) -> list[np.ndarray]:
        return [np.asarray(self.fn(prompt, steps), dtype=np.float64) for prompt, steps in items]
