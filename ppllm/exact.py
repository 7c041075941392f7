"""The exact oracle: enumerate a program, or a kernel's own randomness, on a toy LM.

Two questions, both answered by brute force (docs/validation.md):

- `enumerate_program(program)`: every trace of a bounded program → the exact normalised
  posterior and log Z. Each trace is drawn with probability q(trace) and carries weight
  γ(trace)/q(trace), so Σ q·w = Σ γ = Z whatever proposals the program uses.
- `enumerate_kernel(fn)`: every execution path of a randomised computation `fn(rng)` —
  token draws, resampling draws, the final collapse — with its probability. From it,
  `output_measure` gives E[Ẑ · 1{output = x}] and E[Ẑ], exactly.

Enumeration re-runs `fn` once per path with an `EnumeratingRng` that follows a forced
prefix of choice indices and takes the first option after it (an odometer), so `fn`
must be deterministic given its draws — which every ppllm kernel is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .program import Program
from .rng import Rng

__all__ = [
    "EnumeratingRng",
    "enumerate_paths",
    "enumerate_program",
    "enumerate_kernel",
    "output_measure",
    "ExactPosterior",
    "trace_key",
]

_MIN_CELL = 1e-14  # uniform cells narrower than this are rounding artefacts


class _Path:
    """Choices made along one execution path: (number of options, index taken, probability)."""

    __slots__ = ("forced", "records", "prob")

    def __init__(self, forced: list[int]) -> None:
        self.forced = forced
        self.records: list[tuple[int, int]] = []
        self.prob = 1.0

    def choose(self, probs: Sequence[float]) -> int:
        k = len(self.records)
        i = self.forced[k] if k < len(self.forced) else 0
        self.records.append((len(probs), i))
        self.prob *= probs[i]
        return i

    def successor(self) -> list[int] | None:
        """The forced prefix of the next path in odometer order (None when done)."""
        k = len(self.records) - 1
        while k >= 0 and self.records[k][1] == self.records[k][0] - 1:
            k -= 1
        if k < 0:
            return None
        return [i for _, i in self.records[:k]] + [self.records[k][1] + 1]


class EnumeratingRng:
    """An `Rng` that branches on every draw instead of sampling (see module docstring)."""

    def __init__(self, path: _Path) -> None:
        self._path = path

    def child(self, *key: object) -> EnumeratingRng:
        return self  # one odometer for the whole computation; draw order is deterministic

    def categorical(self, probs: np.ndarray) -> int:
        p = np.asarray(probs, dtype=np.float64)
        total = p.sum()
        if not np.isfinite(total) or total <= 0:
            raise ValueError("categorical: probabilities must be finite with a positive sum")
        support = np.flatnonzero(p > 0)
        return int(support[self._path.choose(p[support] / total)])

    def uniform(self, size: int, cuts: Sequence[np.ndarray] | None = None) -> np.ndarray:
        if cuts is None or len(cuts) != size:
            raise TypeError(
                "the exact oracle can only enumerate uniforms whose consumer states its cut "
                "points (rng.uniform(size, cuts)); continuous draws cannot be enumerated"
            )
        out = np.empty(size)
        for j, c in enumerate(cuts):
            edges = np.unique(np.concatenate([[0.0], np.sort(np.asarray(c, dtype=float)), [1.0]]))
            widths = np.diff(edges)
            cells = np.flatnonzero(widths > _MIN_CELL)
            w = widths[cells]
            k = cells[self._path.choose(w / w.sum())]
            out[j] = 0.5 * (edges[k] + edges[k + 1])
        return out


def enumerate_paths(fn: Callable[[Rng], Any], max_paths: int = 2_000_000) -> Iterator[tuple[float, Any]]:
    """Yield (probability, fn's result) for every execution path of fn (probabilities sum to 1)."""
    forced: list[int] | None = []
    count = 0
    while forced is not None:
        path = _Path(forced)
        result = fn(EnumeratingRng(path))
        yield path.prob, result  # read the probability only after fn has finished
        count += 1
        if count > max_paths:
            raise RuntimeError(f"more than {max_paths} execution paths: make the problem smaller")
        forced = path.successor()


def trace_key(program: Program) -> tuple:
    """Default identity of a particle: its sampled values, in order."""
    return tuple(c.value for c in program.trace if c.kind == "sample")


@dataclass
class ExactPosterior:
    """The exact normalised posterior over keys, and log Z."""

    log_Z: float
    probs: dict[Hashable, float]
    n_traces: int

    @property
    def Z(self) -> float:
        return math.exp(self.log_Z)


def enumerate_program(
    program: Program,
    key: Callable[[Program], Hashable] = trace_key,
    max_steps: int = 64,
) -> ExactPosterior:
    """Every trace of `program` → its exact posterior over `key` and log Z."""

    from .kernels.importance import run_to_end

    def one(rng: Rng) -> tuple[Hashable, float]:
        p = program.clone()
        logw = run_to_end(p, rng, max_steps)
        return key(p), logw

    mass: dict[Hashable, float] = {}
    n = 0
    for q, (k, logw) in enumerate_paths(one):
        n += 1
        if logw > -math.inf:
            mass[k] = mass.get(k, 0.0) + q * math.exp(logw)
    Z = sum(mass.values())
    if Z <= 0:
        return ExactPosterior(-math.inf, {}, n)
    return ExactPosterior(math.log(Z), {k: v / Z for k, v in mass.items() if v > 0}, n)


@dataclass
class KernelMeasure:
    """E[Ẑ] and E[Ẑ · 1{output = x}] of a randomised kernel, computed exactly."""

    expected_Z: float
    measure: dict[Hashable, float]
    n_paths: int
    total_prob: float

    def normalised(self) -> dict[Hashable, float]:
        return {k: v / self.expected_Z for k, v in self.measure.items()}


def enumerate_kernel(
    fn: Callable[[Rng], tuple[Program | None, float]],
    key: Callable[[Program], Hashable] = trace_key,
    max_paths: int = 2_000_000,
) -> KernelMeasure:
    """`fn(rng)` returns a collapsed output (particle or None, log Ẑ); enumerate its randomness."""
    measure: dict[Hashable, float] = {}
    EZ = 0.0
    total = 0.0
    n = 0
    for q, (prog, log_Z) in enumerate_paths(fn, max_paths):
        n += 1
        total += q
        if prog is None or log_Z == -math.inf:
            continue
        z = q * math.exp(log_Z)
        EZ += z
        k = key(prog)
        measure[k] = measure.get(k, 0.0) + z
    return KernelMeasure(EZ, measure, n, total)


def output_measure(km: KernelMeasure) -> dict[Hashable, float]:
    """E[Ẑ · 1{output = x}] for each output x (compare with Z · π(x))."""
    return dict(km.measure)
