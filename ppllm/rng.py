"""Explicit, keyed randomness: every draw in ppllm goes through an `Rng`.

A run takes one seed. Each particle draws from its own stream keyed by
(seed, step, slot), so results never depend on how the engine batched work, and
nothing touches NumPy's, torch's or Python's global random state. Streams are
counter-based (SplitMix64 on the stream key plus a counter), so making one costs a few
integer mixes and a round's draws can be vectorised over particles.

The exact oracle (`ppllm.exact`) passes in an `Rng` that enumerates every outcome
instead of drawing one, which is why draws are limited to two shapes:

- `categorical(probs)`: a finite choice;
- `uniform(size, cuts)`: uniforms on [0, 1) whose consumer only depends on which
  cell between the given cut points each uniform falls in (resamplers know their cuts).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Rng", "SeededRng", "as_rng", "categorical_from_uniform", "children_of", "key_to_ints", "mix64", "stream_key",
    "uniforms_at", "uniforms_list", "uniforms_of",
]


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
            out.append(_crc(part))
        else:
            raise TypeError(f"rng key parts must be int or str, got {type(part).__name__}")
    return tuple(out)


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_STREAM = 0xD1B54A32D192ED03  # odd multiplier that spaces a stream's counters
_U53 = 2.0**-53
_ROOT_SALT = 0x243F6A8885A308D3  # digits of π: the root and the key parts are mixed apart
_PART_SALT = 0x13198A2E03707344


def mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijective, well-scrambled map of 64-bit integers."""
    z = (z + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


_MIX = tuple(np.uint64(c) for c in (_GOLDEN, 30, 0xBF58476D1CE4E5B9, 27, 0x94D049BB133111EB, 31))
_U11, _STREAM64 = np.uint64(11), np.uint64(_STREAM)


def mix64_array(z: np.ndarray) -> np.ndarray:
    """`mix64` on a uint64 array (modular arithmetic, as in the scalar version)."""
    golden, s1, m1, s2, m2, s3 = _MIX
    z = z + golden
    z = (z ^ (z >> s1)) * m1
    z = (z ^ (z >> s2)) * m2
    return z ^ (z >> s3)


def stream_key(seed: int, key: Sequence[int] = ()) -> int:
    """The 64-bit key of the stream (seed, *key): each part folded in by `mix64`."""
    state = mix64((seed & _M64) ^ _ROOT_SALT)
    for part in key:
        state = _fold(state, part)
    return state


def _fold(state: int, part: int) -> int:
    return mix64(state ^ mix64((part & _M64) ^ _PART_SALT))


@lru_cache(maxsize=4096)
def _crc(part: str) -> int:
    return zlib.crc32(part.encode())


class SeededRng:
    """A reproducible stream keyed by (seed, *key): counter-based, a few microseconds to make.

    Draw j of a stream is mix64(key + j·C) (SplitMix64 on a counter), so a stream is a pure
    function of its key: creating one costs two integer mixes per key part, and a batch of
    particles' draws can be computed at once from their keys (`uniforms_of`), each particle
    still consuming only its own stream.

    >>> a = SeededRng(0).child("step", 3, "slot", 1)
    >>> b = SeededRng(0).child("step", 3, "slot", 1)
    >>> a.uniform(2).tolist() == b.uniform(2).tolist()
    True
    """

    __slots__ = ("seed", "key", "state", "counter")

    def __init__(self, seed: int, key: tuple[int, ...] = (), state: int | None = None) -> None:
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.key = key
        self.state = stream_key(self.seed, key) if state is None else state
        self.counter = 0

    def child(self, *key: object) -> SeededRng:
        state = self.state
        parts = key_to_ints(key)
        for part in parts:
            state = _fold(state, part)
        return SeededRng(self.seed, self.key + parts, state)

    def children(self, name: str, indices: Sequence[int]) -> list[SeededRng]:
        """`[self.child(name, i) for i in indices]`, with the name folded in once and the
        indices folded in by one vectorised pass (`mix64_array` is `mix64` elementwise)."""
        state = _fold(self.state, _crc(name))
        key = self.key + (_crc(name),)
        idx = [int(i) for i in indices]
        if idx and min(idx) < 0:
            raise ValueError(f"rng key parts must be non-negative, got {min(idx)}")
        if len(idx) < 8 or max(idx) > _M64:  # a few: the scalar fold costs less than arrays
            return [SeededRng(self.seed, key + (i,), _fold(state, i)) for i in idx]
        parts = mix64_array(np.array(idx, dtype=np.uint64) ^ np.uint64(_PART_SALT))
        states = mix64_array(np.uint64(state) ^ parts).tolist()
        new, seed, cls = object.__new__, self.seed, SeededRng
        out = []
        for i, st in zip(idx, states, strict=True):  # the constructor's checks hold by construction
            r = new(cls)
            r.seed, r.key, r.state, r.counter = seed, key + (i,), st, 0
            out.append(r)
        return out

    def next_u64(self) -> int:
        self.counter += 1
        return mix64((self.state + self.counter * _STREAM) & _M64)

    def random(self) -> float:
        """One uniform on [0, 1) (53 bits)."""
        return (self.next_u64() >> 11) * _U53

    def categorical(self, probs: np.ndarray) -> int:
        return categorical_from_uniform(probs, self.random())

    def uniform(self, size: int, cuts: Sequence[np.ndarray] | None = None) -> np.ndarray:
        if size <= 8:
            return np.array([self.random() for _ in range(size)], dtype=np.float64)
        counters = np.arange(self.counter + 1, self.counter + size + 1, dtype=np.uint64)
        self.counter += size
        z = mix64_array(np.uint64(self.state) + counters * _STREAM64)
        return (z >> _U11).astype(np.float64) * _U53

    def integer_seed(self) -> int:
        """A 63-bit integer from this stream, for libraries that take a plain seed."""
        return self.next_u64() >> 1

    def __repr__(self) -> str:
        return f"SeededRng(seed={self.seed}, key={self.key})"


def categorical_from_uniform(probs: np.ndarray, u: float) -> int:
    """The inverse-CDF draw of `SeededRng.categorical` for a given uniform u in [0, 1):
    the first index whose cumulative mass exceeds u · total."""
    p = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(p)
    total = cdf[-1]
    if not np.isfinite(total) or total <= 0:
        raise ValueError("categorical: probabilities must be finite with a positive sum")
    i = int(np.searchsorted(cdf, u * total, side="right"))
    i = min(i, len(p) - 1)
    # Rounding can land on a zero-probability entry; step back to a positive one.
    while p[i] <= 0:
        i -= 1
    return i


def uniforms_of(rngs: Sequence[SeededRng]) -> np.ndarray:
    """The next uniform of each stream, computed in one vectorised pass (same values as
    calling `random()` on each)."""
    states = np.fromiter((r.state for r in rngs), dtype=np.uint64, count=len(rngs))
    counters = np.fromiter((r.counter + 1 for r in rngs), dtype=np.uint64, count=len(rngs))
    for r in rngs:
        r.counter += 1
    return uniforms_at(states, counters)


def uniforms_at(states: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Draw number `counters[i]` of the stream with state `states[i]` (uint64 arrays), as
    uniforms: what `random()` returns when a stream's counter reaches that number."""
    z = mix64_array(states + counters * _STREAM64)
    return (z >> _U11).astype(np.float64) * _U53


def uniforms_list(states: Sequence[int], counters: Sequence[int]) -> list[float]:
    """`uniforms_at` on Python ints, as floats: per value in plain Python for a few streams
    (a handful of array operations cost more there), by arrays for many."""
    if len(states) > 16:
        return uniforms_at(np.array(states, dtype=np.uint64), np.array(counters, dtype=np.uint64)).tolist()
    return [(mix64((s + c * _STREAM) & _M64) >> 11) * _U53 for s, c in zip(states, counters, strict=True)]


def children_of(rng: Rng, name: str, indices: Sequence[int]) -> list[Rng]:
    """`[rng.child(name, i) for i in indices]`, made at once where the stream allows it."""
    fast = getattr(rng, "children", None)
    return fast(name, indices) if fast is not None else [rng.child(name, i) for i in indices]


def as_rng(seed_or_rng: int | Rng | None) -> Rng:
    """Accept a seed or an Rng. A missing seed is an error: results must be reproducible."""
    if seed_or_rng is None:
        raise ValueError("a seed is required (pass seed=<int> or rng=<Rng>)")
    if isinstance(seed_or_rng, int | np.integer) and not isinstance(seed_or_rng, bool):
        return SeededRng(int(seed_or_rng))
    if hasattr(seed_or_rng, "categorical") and hasattr(seed_or_rng, "child"):
        return seed_or_rng  # type: ignore[return-value]
    raise TypeError(f"expected an int seed or an Rng, got {type(seed_or_rng).__name__}")
