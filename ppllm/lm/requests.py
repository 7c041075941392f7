"""What programs ask an LM backend: the requests of `ppllm.lm` and their answers.

Each request is answered by `LM.evaluate` in a batch with the round's others, and every
answer is a function of the request alone, so batching never changes a result:

- `NextTokenLogprobs`, `ContinuationLogprobs`, `ScoreTokens`: log-probabilities;
- `SampleToken`: one token drawn at the particle's uniform (only three scalars come back);
- `DrawChunk`: a chunk up to its stop, token j drawn at uniform j of the particle's own
  stream: the chunk the particle would draw token by token, in one request;
- `SampleChunk`: a chunk sampled from a seed (served LMs, which sample on their side).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..request import Request
from ..rng import categorical_from_uniform
from .context import ContextKey

if TYPE_CHECKING:
    from .base import LM, ChunkDistribution, _Sampling

__all__ = [
    "ChunkDraw",
    "ChunkSample",
    "ContinuationLogprobs",
    "DrawChunk",
    "NextTokenLogprobs",
    "SampleChunk",
    "SampleToken",
    "ScoreTokens",
    "TokenDraw",
    "draw_from_rows",
]


class NextTokenLogprobs(Request):
    """Next-token log-probabilities after `tokens` (a float64 vector over the vocabulary)."""

    __slots__ = ("backend", "tokens")

    tokens_cost = 1

    def __init__(self, lm: LM, tokens: tuple[int, ...]) -> None:
        self.backend = lm
        self.tokens = tokens

    def key(self) -> Hashable:
        return ("next", self.tokens)


class _AfterTokens(Request):
    """A question about given tokens `continuation` after `tokens`; its key starts with `kind`."""

    __slots__ = ("backend", "tokens", "continuation", "tokens_cost")
    kind = ""

    def __init__(self, lm: LM, tokens: tuple[int, ...], continuation: tuple[int, ...]) -> None:
        self.backend = lm
        self.tokens = tokens
        self.continuation = continuation
        self.tokens_cost = len(continuation)

    def key(self) -> Hashable:
        return (self.kind, self.tokens, self.continuation)


class ContinuationLogprobs(_AfterTokens):
    """Log-probability vectors at each position of `continuation` after `tokens`: shape (L, V)."""

    __slots__ = ()
    kind = "cont"


@dataclass(frozen=True)
class ChunkSample:
    """A chunk a backend sampled: its tokens, text, and log-probabilities.

    `log_q`: under the distribution it was drawn from (tempered, truncated, masked);
    `log_p`: under the model itself, when the backend knows it (None otherwise).
    """

    tokens: tuple[int, ...]
    text: str
    log_q: float
    log_p: float | None


class SampleChunk(Request):
    """"Sample a chunk after `tokens` with these settings and this seed": deterministic in its key."""

    __slots__ = ("backend", "tokens", "dist", "seed", "tokens_cost")

    def __init__(self, lm: LM, tokens: tuple[int, ...], dist: ChunkDistribution, seed: int) -> None:
        self.backend = lm
        self.tokens = tokens
        self.dist = dist
        self.seed = int(seed)
        self.tokens_cost = dist.max_tokens

    def key(self) -> Hashable:
        d = self.dist
        mask = None if d.mask is None else hash(d.mask.tobytes())
        return ("sample", self.tokens, d.stop, d.max_tokens, d.temperature, d.top_p, mask, self.seed)


class ScoreTokens(_AfterTokens):
    """Log-probabilities, under the model, of each token of `continuation` after `tokens`."""

    __slots__ = ()
    kind = "score"


class TokenDraw(NamedTuple):
    """A token a backend drew: the token, log q (what it was drawn from), log p (the model)."""

    token: int
    log_q: float
    log_p: float


class SampleToken(Request):
    """"Draw the next token after `tokens` from `dist`'s settings by inverse CDF at `u`".

    The uniform comes from the particle's own stream, so the answer is a function of the
    request alone (whatever else shares the batch), and only three scalars come back: a
    backend can keep the logits where they are (an accelerator) and draw there.
    """

    __slots__ = ("backend", "tokens", "dist", "u", "context")

    tokens_cost = 1

    def __init__(self, lm: LM, tokens: tuple[int, ...], dist: _Sampling, u: float,
                 context: ContextKey | None = None) -> None:
        self.backend = lm
        self.tokens = tokens
        self.dist = dist
        self.u = float(u)
        # hashed once: the engine's keys, the backend's rows and its trie all use it
        self.context = context if context is not None else ContextKey(tokens)

    def key(self) -> Hashable:
        d = self.dist
        mask = None if d.mask is None else id(d.mask)
        return ("draw", self.context, d.temperature, d.top_p, mask, self.u)

    def cost_key(self) -> Hashable:
        return ("next", self.context)  # draws after one context share its forward


def draw_from_rows(requests: Sequence[SampleToken], rows: Sequence[np.ndarray]) -> list[TokenDraw]:
    """Each request's draw from its context's float64 log-probability row (the host path)."""
    out = []
    for r, base in zip(requests, rows, strict=True):
        lq = r.dist.transform(base)
        tok = categorical_from_uniform(np.exp(lq), r.u)
        out.append(TokenDraw(tok, float(lq[tok]), float(base[tok])))
    return out


class ChunkDraw(NamedTuple):
    """A chunk a backend drew for `DrawChunk`: its tokens and text, log q and log p (sums over
    its tokens), and the key of its last draw's context (what the chunk's extension builds on)."""

    tokens: tuple[int, ...]
    text: str
    log_q: float
    log_p: float
    last: ContextKey


class DrawChunk(Request):
    """"Draw the chunk after `context` from `dist`, its j-th token by inverse CDF at the j-th
    next uniform of the stream (`state`, `counter`)" (a `SeededRng`'s position).

    The answer is the chunk `dist` would draw token by token with that stream, in one request:
    the backend runs the token loop for all of a round's chunks together (one batched
    forward per position, each row still at its own particle's uniforms). The particle then
    moves its stream on by the chunk's length. `tokens_cost` is set by the backend: the
    positions it evaluated for this request (a position shared with an earlier request of the
    batch counts once, as shared token draws do).
    """

    __slots__ = ("backend", "context", "dist", "state", "counter", "tokens_cost")

    def __init__(self, lm: LM, context: ContextKey, dist: ChunkDistribution, state: int, counter: int) -> None:
        self.backend = lm
        self.context = context
        self.dist = dist
        self.state = state
        self.counter = counter
        self.tokens_cost = 0

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.context.tokens

    def key(self) -> Hashable:
        d = self.dist
        mask = None if d.mask is None else id(d.mask)
        return ("draw-chunk", self.context, d.stop, d.max_tokens, d.temperature, d.top_p, mask,
                self.state, self.counter)
