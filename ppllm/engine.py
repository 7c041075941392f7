"""The engine: runs all live particles' `step()` together, batching their LM requests.

Each particle's step is a coroutine. The engine advances every coroutine until it awaits
a `Request`, groups the round's requests by backend, answers identical ones once (the
backends of one round concurrently, each in its own thread), sends each answer back, and
repeats until every step has returned. Particles are visited in
slot order and draws come from per-particle streams, so results are independent of the
batch size (`max_batch`) and of which other particles share a round.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .program import Program, ProgramError, WeightError, run_step
from .request import Request
from .rng import Rng

__all__ = ["Aborted", "Engine", "EngineStats", "SharedRounds", "answer_groups"]


@dataclass
class EngineStats:
    """What the engine asked of its backends: rounds, backend calls and requests."""

    rounds: int = 0
    lm_calls: int = 0  # backend calls (one batched call answers many requests)
    requests: int = 0
    unique_requests: int = 0  # distinct evaluations (requests with one cost key count once)
    tokens: int = 0  # token positions the backends evaluated (Request.tokens_cost)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Engine:
    """Batches requests across particles. `max_batch` caps requests per backend call."""

    def __init__(self, max_batch: int | None = None, shared: SharedRounds | None = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.shared = shared  # rounds shared with other engines (one batched call serves all)
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
                        f"particle {s}{_at(t)} raised {type(e).__name__}: {e}{_hint(e)}"
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
        # Per backend: its unique requests and, beside each, the slots that asked it (each
        # request's key is hashed once: keys hold whole contexts).
        by_backend: dict[int, tuple[Any, dict[Any, list[int]], list[Request], list[list[int]]]] = {}
        for s, req in waiting:
            group = by_backend.get(id(req.backend))
            if group is None:
                group = by_backend[id(req.backend)] = (req.backend, {}, [], [])
            slots_by_key = group[1]
            k = req.key()
            asked = slots_by_key.get(k)
            if asked is None:
                slots_by_key[k] = asked = [s]
                group[2].append(req)
                group[3].append(asked)
            else:
                asked.append(s)
        groups = list(by_backend.values())
        if self.shared is not None:
            results = self.shared.answer([(g[0], g[2]) for g in groups])
        else:
            results = answer_groups([(g[0], g[2]) for g in groups], self.max_batch)
        for _, _, unique, _ in groups:
            # What the backends evaluated: draws after one context share its forward. Counted
            # after answering: a chunk drawn on the backend's side learns its cost there.
            costs = {r.cost_key(): r.tokens_cost for r in unique}
            self.stats.unique_requests += len(costs)
            self.stats.tokens += sum(costs.values())
        for (_, _, _, askers), (got, calls) in zip(groups, results, strict=True):
            self.stats.lm_calls += calls
            for asked, res in zip(askers, got, strict=True):
                for s in asked:
                    answers[s] = res



def ask(backend: Any, unique: list[Request], max_batch: int | None = None) -> tuple[list[Any], int]:
    """One backend's answers to its unique requests, in batches of at most `max_batch`."""
    size = max_batch or len(unique)
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


def answer_groups(groups: list[tuple[Any, list[Request]]], max_batch: int | None = None) -> list[tuple[list[Any], int]]:
    """Each (backend, requests) group's answers; several backends answered concurrently."""
    if len(groups) == 1:
        return [ask(groups[0][0], groups[0][1], max_batch)]
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:  # e.g. a served LM and a PRM
        return list(pool.map(lambda g: ask(g[0], g[1], max_batch), groups))


class Aborted(RuntimeError):
    """The shared rounds were abandoned (Ctrl-C, or another run failed)."""


class SharedRounds:
    """Lets several engines, each driving one kernel run in its own thread, share backend calls.

    A run that needs answers hands its round's requests over and waits; once every run still
    going is waiting, the requests of all of them go to each backend as one batch (identical
    requests answered once) and every run gets its own answers back. Answers are a function of
    each request alone, so every run's result is what it would be alone (up to the float
    rounding of a backend's batched arithmetic).
    """

    def __init__(self, max_batch: int | None = None) -> None:
        self.max_batch = max_batch
        # One lock; the serving thread waits on `_cv`, each run on its own event, so a round
        # wakes every thread once (a shared condition would wake all runs at every hand-over).
        self._cv = threading.Condition()
        self._active = 0
        self._pending: dict[int, list[tuple[Any, list[Request]]]] = {}
        self._events: dict[int, threading.Event] = {}
        self._results: dict[int, Any] = {}
        self._aborted = False
        self.calls = 0  # batched backend calls made
        self.rows = 0  # unique requests they answered

    def answer(self, groups: list[tuple[Any, list[Request]]]) -> list[tuple[list[Any], int]]:
        me = threading.get_ident()
        with self._cv:
            if self._aborted:
                raise Aborted("the shared rounds were abandoned")
            ready = self._events.setdefault(me, threading.Event())
            ready.clear()
            self._pending[me] = groups
            if len(self._pending) == self._active:
                self._cv.notify()
        ready.wait()
        with self._cv:
            if me not in self._results:
                raise Aborted("the shared rounds were abandoned")
            got = self._results.pop(me)
        if isinstance(got, BaseException):
            raise got
        return got

    def run(self, jobs: Sequence[Any], on_done: Any = None) -> list[Any]:
        """Run `jobs` (callables) in threads sharing rounds; return their results in order.

        `on_done(index, result)` is called in this thread as each job finishes. An exception in
        a job is returned as its result (the others go on).
        """
        results: list[Any] = [None] * len(jobs)
        finished: list[int] = []

        def work(k: int, job: Any) -> None:
            try:
                results[k] = job()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                results[k] = e
            with self._cv:
                self._active -= 1
                finished.append(k)
                self._cv.notify()

        with self._cv:
            self._active = len(jobs)
        threads = [threading.Thread(target=work, args=(k, job), daemon=True) for k, job in enumerate(jobs)]
        for t in threads:
            t.start()
        try:
            while True:
                with self._cv:
                    while not finished and self._active and len(self._pending) < self._active:
                        self._cv.wait()
                    done, finished[:] = list(finished), []
                    batch: dict[int, list[tuple[Any, list[Request]]]] = {}
                    if self._active and len(self._pending) == self._active:  # every live run waits
                        batch, self._pending = self._pending, {}
                    over = self._active == 0 and not done
                if on_done is not None:
                    for k in sorted(done):
                        on_done(k, results[k])
                if batch:
                    self._serve(batch)
                if over:
                    break
        except BaseException:
            with self._cv:
                self._aborted = True
                for ev in self._events.values():
                    ev.set()
            for t in threads:
                t.join(timeout=5)
            raise
        for t in threads:
            t.join()
        return results

    def _serve(self, batch: dict[int, list[tuple[Any, list[Request]]]]) -> None:
        """One call per backend for every waiting run's requests; answers handed back."""
        merged: dict[int, tuple[Any, dict[Any, int], list[Request]]] = {}
        for groups in batch.values():
            for backend, reqs in groups:
                _, index, unique = merged.setdefault(id(backend), (backend, {}, []))
                for r in reqs:
                    if r.key() not in index:
                        index[r.key()] = len(unique)
                        unique.append(r)
        order = list(merged.values())
        try:
            answers = answer_groups([(b, u) for b, _, u in order], self.max_batch)
        except BaseException as e:  # noqa: BLE001 - every waiting run gets the error
            with self._cv:
                for me in batch:
                    self._results[me] = e
                    self._events[me].set()
            return
        by_backend = {id(b): (idx, got, calls) for (b, idx, _), (got, calls) in zip(order, answers, strict=True)}
        self.calls += sum(calls for _, calls in answers)
        self.rows += sum(len(u) for _, _, u in order)
        with self._cv:
            for me, groups in batch.items():
                out = []
                for backend, reqs in groups:
                    idx, got, calls = by_backend[id(backend)]
                    out.append(([got[idx[r.key()]] for r in reqs], calls))
                self._results[me] = out
                self._events[me].set()


def _hint(e: Exception) -> str:
    """What a coroutine in an error message usually means in a step."""
    if "'coroutine'" in str(e):  # the type name in Python's own messages
        return " (a primitive used without `await`? write `x = await self.sample(...)`)"
    return ""


def _at(t: int | None) -> str:
    return "" if t is None else f" at step {t}"
