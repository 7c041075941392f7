"""The PRM protocol: (prompt, steps) → one probability per step, asked like an LM request.

A process reward model (PRM) says, for each step of a partial solution, how likely that step
is correct given the prompt and the steps before it. ppllm treats it as a backend: a program
awaits `prm.score(prompt, steps)`, the engine gathers every particle's `PRMScore` request of a
round and answers them with one `score_batch` call, so a PRM forward pass is batched across
particles exactly like an LM forward pass.

Outputs are validated: a NaN, an infinity or a value outside [0, 1] raises `RewardError`
naming the PRM, the request's index in the batch, the step and the value. A bad score never
becomes a silent NaN (or a silently clipped) weight.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from ..program import Shared
from ..request import Request, answer_now

__all__ = ["PRM", "PRMScore", "RewardError", "StepwisePRM", "Item"]

# One question to a PRM: the prompt and the steps so far.
Item = tuple[str, tuple[str, ...]]


class RewardError(ValueError):
    """A reward model returned something that is not a probability (NaN, ±inf, outside [0, 1])."""


class PRMScore(Request):
    """"Per-step probabilities of `steps` after `prompt`": answered by `PRM.evaluate`."""

    __slots__ = ("backend", "prompt", "steps")

    def __init__(self, prm: PRM, prompt: str, steps: Sequence[str]) -> None:
        self.backend = prm
        self.prompt = str(prompt)
        self.steps = tuple(str(s) for s in steps)

    def key(self) -> Hashable:
        return ("prm", self.prompt, self.steps)

    def __repr__(self) -> str:
        return f"PRMScore({self.backend.name!r}, {len(self.steps)} steps)"


class PRM(Shared):
    """Base class of reward models. Subclasses implement `score_batch`.

    Shared between particles (never deep-copied), like an LM.
    """

    name: str = "prm"

    # ---------------------------------------------------------- subclass interface
    def score_batch(self, items: list[Item]) -> list[np.ndarray]:
        """For each (prompt, steps): a vector of len(steps) probabilities in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} must define score_batch")

    # ---------------------------------------------------------- backend interface
    def evaluate(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Answer a round of `PRMScore` requests with one validated `score_batch` call."""
        bad = [r for r in requests if not isinstance(r, PRMScore)]
        if bad:
            raise TypeError(f"{type(self).__name__} cannot answer {type(bad[0]).__name__}")
        items = [(r.prompt, r.steps) for r in requests]  # type: ignore[union-attr]
        if not items:
            return []
        out = self.score_batch(items)
        if len(out) != len(items):
            raise RewardError(
                f"PRM {self.name!r} returned {len(out)} score vectors for {len(items)} requests"
            )
        return [self.check(i, item, scores) for i, (item, scores) in enumerate(zip(items, out, strict=True))]

    def check(self, index: int, item: Item, scores: object) -> np.ndarray:
        """The scores as a float64 vector; RewardError if any is not a probability."""
        prompt, steps = item
        arr = np.asarray(scores, dtype=np.float64).reshape(-1)
        if arr.shape != (len(steps),):
            raise RewardError(
                f"PRM {self.name!r} returned {arr.size} scores for request {index} of the batch "
                f"(prompt {_short(prompt)}), which has {len(steps)} steps"
            )
        ok = np.isfinite(arr) & (arr >= 0.0) & (arr <= 1.0)
        if not ok.all():
            j = int(np.flatnonzero(~ok)[0])
            raise RewardError(
                f"PRM {self.name!r} returned {float(arr[j])!r} for step {j} of request {index} of the "
                f"batch (prompt {_short(prompt)}); scores must be probabilities in [0, 1]"
            )
        arr.setflags(write=False)  # answers are shared by every particle that asked
        return arr

    # ---------------------------------------------------------- asking
    def request(self, prompt: str, steps: Sequence[str]) -> PRMScore:
        return PRMScore(self, prompt, steps)

    async def score(self, prompt: str, steps: Sequence[str]) -> np.ndarray:
        """Per-step probabilities; await it inside a program's `step()` to get batching."""
        return await PRMScore(self, prompt, steps)

    def score_now(self, prompt: str, steps: Sequence[str]) -> np.ndarray:
        """Synchronous `score`, for scripts and baselines outside the engine."""
        return answer_now(self.score(prompt, steps))

    def score_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """Synchronous batch: one validated `score_batch` call for all items."""
        return self.evaluate([PRMScore(self, p, s) for p, s in items])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class StepwisePRM(PRM):
    """A PRM whose score of step j depends only on the prompt and steps[: j + 1].

    Subclasses implement `score_last` (the probability that the *last* step of each item is
    correct). A program asks about the same prefix again at every step, so step scores are
    cached by prefix (LRU, `cache_size` entries) and each round only computes new steps.
    """

    cache_size: int = 100_000

    def __init__(self) -> None:
        self._cache: OrderedDict[Item, float] = OrderedDict()

    def score_last(self, items: list[Item]) -> np.ndarray:
        """For each (prompt, steps) with at least one step: P(last step is correct)."""
        raise NotImplementedError(f"{type(self).__name__} must define score_last")

    def score_batch(self, items: list[Item]) -> list[np.ndarray]:
        cache = self.__dict__.setdefault("_cache", OrderedDict())
        todo: dict[Item, None] = {}
        for prompt, steps in items:
            for j in range(len(steps)):
                key = (prompt, steps[: j + 1])
                if key in cache:
                    cache.move_to_end(key)
                else:
                    todo[key] = None
        if todo:
            keys = list(todo)
            got = np.asarray(self.score_last(keys), dtype=np.float64).reshape(-1)
            if got.shape != (len(keys),):
                raise RewardError(
                    f"PRM {self.name!r}: score_last returned {got.size} scores for {len(keys)} prefixes"
                )
            for key, value in zip(keys, got, strict=True):
                cache[key] = float(value)
        out = [
            np.array([cache[(prompt, steps[: j + 1])] for j in range(len(steps))], dtype=np.float64)
            for prompt, steps in items
        ]
        while len(cache) > self.cache_size:  # evict only after this batch is answered
            cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        self.__dict__.get("_cache", OrderedDict()).clear()


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")
