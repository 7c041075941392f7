"""Explicit, keyed randomness: every draw in ppllm goes through an `Rng`.

A run takes one seed. Each particle draws from its own stream keyed by
(seed, step, slot), so results never depend on how the engine batched work, and
nothing touches NumPy's, torch's or Python's global random state.

The exact oracle (`ppllm.exact`) passes in an `Rng` that enumerates every outcome
instead of drawing one, which is why draws are limited to two shapes:

- `categorical(probs)`: a finite choice;
- `uniform(size, cuts)`: uniforms on [0, 1) whose consumer only depends on which
  cell between the given cut points each uniform falls in (resamplers know their cuts).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Rng", "SeededRng", "as_rng", "key_to_ints"]


@runtime_checkable
class Rng(Protocol):
    """The interface every kernel and distribution draws through."""

    def categorical(self, probs: np.ndarray) -> int:
        """Index i with probability probs[i] / sum(probs)."""
        ...

    def uniform(self, size: int, cuts: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """`size` iid Uniform[0, 1) draws.

        `cuts[j]` (optional) lists the points in (0, 1) where the caller's use of draw j
        can change; an enumerating Rng branches over the cells between them.
        """
        ...

    def child(self, *key: object) -> Rng:
        """An independent stream for a sub-computation named by `key`."""
        ...


def key_to_ints(key: Sequence[object]) -> tuple[int, ...]:
    """Map a key of ints and strings to non-negative ints, stably across runs."""
    out: list[int] = []
    for part in key:
        if isinstance(part, bool | np.bool_):
            out.append(int(part))
        elif isinstance(part, int | np.integer):
            if part < 0:
                raise ValueError(f"rng key parts must be non-negative, got {part}")
            out.append(int(part))
        elif isinstance(part, str):
            out.append(zlib.crc32(part.encode()))
        else:
            raise TypeError(f"rng key parts must be int or str, got {type(part).__name__}")
    return tuple(out)


class SeededRng:
    """A reproducible stream derived from (seed, *key) with NumPy's SeedSequence.

    >>> a = SeededRng(0).child("step", 3, "slot", 1)
    >>> b = SeededRng(0).child("step", 3, "slot", 1)
    >>> a.uniform(2).tolist() == b.uniform(2).tolist()
    True
    """

    __slots__ = ("seed", "key", "_gen")

    def __init__(self, seed: int, key: tuple[int, ...] = ()) -> None:
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.key = key
        self._gen: np.random.Generator | None = None

    @property
    def generator(self) -> np.random.Generator:
        # Created lazily: many child streams are keyed but never drawn from.
        if self._gen is None:
            ss = np.random.SeedSequence(self.seed, spawn_key=self.key)
            self._gen = np.random.Generator(np.random.Philox(ss))
        return self._gen

    def child(self, *key: object) -> SeededRng:
        return SeededRng(self.seed, self.key + key_to_ints(key))

    def categorical(self, probs: np.ndarray) -> int:
        p = np.asarray(probs, dtype=np.float64)
        cdf = np.cumsum(p)
        total = cdf[-1]
        if not np.isfinite(total) or total <= 0:
            raise ValueError("categorical: probabilities must be finite with a positive sum")
        u = self.generator.random() * total
        i = int(np.searchsorted(cdf, u, side="right"))
        i = min(i, len(p) - 1)
        # Rounding can land on a zero-probability entry; step back to a positive one.
        while p[i] <= 0:
            i -= 1
        return i

    def uniform(self, size: int, cuts: Sequence[np.ndarray] | None = None) -> np.ndarray:
        return self.generator.random(size)

    def integer_seed(self) -> int:
        """A 63-bit integer from this stream, for libraries that take a plain seed."""
        return int(self.generator.integers(0, 2**63 - 1))

    def __repr__(self) -> str:
        return f"SeededRng(seed={self.seed}, key={self.key})"


def as_rng(seed_or_rng: int | Rng | None) -> Rng:
    """Accept a seed or an Rng. A missing seed is an error: results must be reproducible."""
    if seed_or_rng is None:
        raise ValueError("a seed is required (pass seed=<int> or rng=<Rng>)")
    if isinstance(seed_or_rng, int | np.integer) and not isinstance(seed_or_rng, bool):
        return SeededRng(int(seed_or_rng))
    if hasattr(seed_or_rng, "categorical") and hasattr(seed_or_rng, "child"):
        return seed_or_rng  # type: ignore[return-value]
    raise TypeError(f"expected an int seed or an Rng, got {type(seed_or_rng).__name__}")
