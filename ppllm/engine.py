"""The engine: runs all live particles' `step()` together, batching their LM requests.

Each particle's step is a coroutine. The engine advances every coroutine until it awaits
a `Request`, groups the round's requests by backend, answers identical ones once (the
backends of one round concurrently, each in its own thread), sends each answer back, and
repeats until every step has returned. Particles are visited in
slot order and draws come from per-particle streams, so results are independent of the
batch size (`max_batch`) and of which other particles share a round.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .program import Program, ProgramError, WeightError, run_step
from .request import Request
from .rng import Rng

__all__ = ["Engine", "EngineStats"]


@dataclass
class EngineStats:
    """What the engine asked of its backends: rounds, backend calls and requests."""

    rounds: int = 0
    lm_calls: int = 0  # backend calls (one batched call answers many requests)
    requests: int = 0
    unique_requests: int = 0
    tokens: int = 0  # token positions the backends evaluated (Request.tokens_cost)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Engine:
    """Batches requests across particles. `max_batch` caps requests per backend call."""

    def __init__(self, max_batch: int | None = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.stats = EngineStats()

    def step(self, programs: Sequence[Program], rngs: Sequence[Rng], t: int | None = None) -> np.ndarray:
        """Run one `step()` of each program; return their log-weight increments (float64)."""
        coros = {i: run_step(p, rng) for i, (p, rng) in enumerate(zip(programs, rngs, strict=True))}
        try:
            return self.drive(coros, t)
        finally:
            for c in coros.values():
                c.close()  # no-op for finished ones; silences never-started ones after an error

    def drive(self, coros: dict[int, Any], t: int | None = None) -> np.ndarray:
        """Advance coroutines keyed by slot to completion, answering requests in batches."""
        out = np.zeros(len(coros), dtype=np.float64)
        slots = sorted(coros)
        index = {s: j for j, s in enumerate(slots)}
        answers: dict[int, Any] = dict.fromkeys(slots)
        live = list(slots)
        while live:
            waiting: list[tuple[int, Request]] = []
            for s in live:
                try:
                    req = coros[s].send(answers[s])
                except StopIteration as done:
                    out[index[s]] = done.value
                    continue
                except WeightError as e:
                    raise WeightError(f"particle {s}{_at(t)}: {e}") from e
                except Exception as e:
                    raise ProgramError(
                        f"particle {s}{_at(t)} raised {type(e).__name__}: {e}"
                    ) from e
                if not isinstance(req, Request):
                    coros[s].close()
                    raise ProgramError(
                        f"particle {s}{_at(t)} awaited {req!r}; a step may only await ppllm "
                        "primitives (sample, observe, LM and reward requests)"
                    )
                waiting.append((s, req))
            live = [s for s, _ in waiting]
            if waiting:
                self._answer(waiting, answers)
        return out

    def _answer(self, waiting: list[tuple[int, Request]], answers: dict[int, Any]) -> None:
        self.stats.rounds += 1
        self.stats.requests += len(waiting)
        by_backend: dict[int, tuple[Any, dict[Any, list[int]], list[Request]]] = {}
        for s, req in waiting:
            backend, slots_by_key, unique = by_backend.setdefault(id(req.backend), (req.backend, {}, []))
            k = req.key()
            if k not in slots_by_key:
                slots_by_key[k] = []
                unique.append(req)
            slots_by_key[k].append(s)
        groups = list(by_backend.values())
        for _, _, unique in groups:
            self.stats.unique_requests += len(unique)
            self.stats.tokens += sum(getattr(r, "tokens_cost", 0) for r in unique)
        if len(groups) == 1:
            results = [self._ask(groups[0][0], groups[0][2])]
        else:  # several backends (a served LM and a PRM, say): answer them concurrently
            with ThreadPoolExecutor(max_workers=len(groups)) as pool:
                results = list(pool.map(lambda g: self._ask(g[0], g[2]), groups))
        for (_, slots_by_key, unique), (got, calls) in zip(groups, results, strict=True):
            self.stats.lm_calls += calls
            for req, res in zip(unique, got, strict=True):
                for s in slots_by_key[req.key()]:
                    answers[s] = res

    def _ask(self, backend: Any, unique: list[Request]) -> tuple[list[Any], int]:
        """One backend's answers to its unique requests, in batches of at most `max_batch`."""
        size = self.max_batch or len(unique)
        results: list[Any] = []
        calls = 0
        for lo in range(0, len(unique), size):
            batch = unique[lo : lo + size]
            got = backend.evaluate(batch)
            if len(got) != len(batch):
                raise RuntimeError(
                    f"{type(backend).__name__}.evaluate returned {len(got)} answers for {len(batch)} requests"
                )
            results.extend(got)
            calls += 1
        return results, calls


def _at(t: int | None) -> str:
    return "" if t is None else f" at step {t}"
