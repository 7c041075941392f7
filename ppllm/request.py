"""Awaitable requests: how a program asks a backend for work without knowing about batching.

A program awaits a `Request`; the await suspends the program's coroutine and hands the
request to the engine (`ppllm.engine`), which gathers the requests of every live particle,
answers identical ones once, and resumes each program with its answer. Requests are
pure questions (e.g. "next-token log-probabilities after these tokens"), never draws, so
the answer does not depend on what else was in the batch.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Backend", "Request", "answer_now"]


@runtime_checkable
class Backend(Protocol):
    """Anything that answers a batch of requests in one call (an LM, a reward model)."""

    def evaluate(self, requests: Sequence[Request]) -> list[Any]:
        """Answer each request, in order. Must be deterministic per request."""
        ...


class Request:
    """Base class of everything a program can await. Subclasses set `backend` and `key`."""

    backend: Backend
    tokens_cost: int = 0  # token positions this request makes a backend evaluate (for budgets)

    def key(self) -> Hashable:
        """Identical keys are answered once per round (e.g. two particles with one context)."""
        raise NotImplementedError(f"{type(self).__name__} must define key()")

    def cost_key(self) -> Hashable:
        """Requests with one cost key cost the backend one evaluation (budgets count it once)."""
        return self.key()

    def __await__(self) -> Generator[Request, Any, Any]:
        answer = yield self
        return answer


def answer_now(coro: Any) -> Any:
    """Run a coroutine that awaits requests to completion, answering each one alone.

    Useful outside the engine (e.g. scoring one trace in a test or a script).
    """
    value: Any = None
    try:
        while True:
            req = coro.send(value)
            if not isinstance(req, Request):
                raise TypeError(
                    f"a program awaited {req!r}; only ppllm primitives and requests can be awaited"
                )
            value = req.backend.evaluate([req])[0]
    except StopIteration as stop:
        return stop.value
