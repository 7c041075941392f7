"""The LM interface shared by every backend, and the LM distributions programs sample from.

A backend answers batched requests. The in-process backends implement one question,
`logprobs(contexts)`: the next-token log-probabilities (float64) after each token sequence;
everything else — temperature, masks, top-p, chunks until a stop string — is built on it
here, identically for every backend, and draws use the particle's own `Rng`, so batching
cannot change a result.

A backend that samples on its side (a served LM: `chunk_requests = True`) is asked
instead to *sample* a chunk: `SampleChunk` carries a seed drawn from the particle's own
stream, so its answer is a deterministic function of the request, whatever else shares the
batch. Every backend can answer it — the base implementation samples with that seed on the
particle side of the backend, one batched `logprobs` call per position for all requests —
and `ScoreTokens` asks for the log-probabilities of given tokens (for `observe` and replay).

- `lm.next_token(ctx, temperature=, mask=, top_p=)` → a distribution over token ids
- `lm.chunk(ctx, stop=, max_tokens=, ...)` → a distribution over `Chunk`s (token runs)

At temperature T ≠ 1 the draw also carries the untempered model's log-probability, so
`sample(lm.next_token(ctx), proposal=lm.next_token(ctx, temperature=0.7))` corrects for
the proposal at no extra cost, while `sample(lm.next_token(ctx, temperature=0.7))`
explicitly targets the tempered model.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..distributions import Distribution, Draw
from ..program import Shared
from ..request import Request
from ..rng import Rng, SeededRng, uniforms_list
from .context import Chunk, Context, ContextKey
from .requests import (
    ChunkDraw,
    ChunkSample,
    ContinuationLogprobs,
    DrawChunk,
    NextTokenLogprobs,
    SampleChunk,
    SampleToken,
    ScoreTokens,
    TokenDraw,
    draw_from_rows,
)

__all__ = [
    "check_token_ids",
    "LM",
    "Context",
    "Chunk",
    "NextToken",
    "ChunkDistribution",
    "NextTokenLogprobs",
    "ContinuationLogprobs",
    "ChunkDraw",
    "ChunkSample",
    "DrawChunk",
    "SampleChunk",
    "SampleToken",
    "ScoreTokens",
    "TokenDraw",
    "draw_from_rows",
    "transform_logprobs",
    "draw_by_token",
]


def transform_logprobs(
    logprobs: np.ndarray,
    temperature: float = 1.0,
    mask: np.ndarray | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """The normalised log-probabilities actually sampled from: tempered, masked, truncated."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if temperature != 1.0:
        lp = lp / temperature
    if mask is not None:
        lp = np.where(mask, lp, -np.inf)
    lp = lp - _logsumexp(lp)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-lp, kind="stable")
        cum = np.cumsum(np.exp(lp[order]))
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = int(np.searchsorted(cum, top_p, side="left")) + 1
        dropped = order[keep:]
        lp = lp.copy()
        lp[dropped] = -np.inf
        lp = lp - _logsumexp(lp)
    return lp


def check_token_ids(tokens: Any, vocab_size: int, lm_name: str) -> None:
    """ValueError naming the first id outside [0, vocab_size): an LM must never index past
    its vocabulary (torch would fail deep inside an embedding, a table would read garbage)."""
    if type(tokens) in (list, tuple) and len(tokens) < 64:  # short Python lists: no array needed
        if all(type(t) is int and 0 <= t < vocab_size for t in tokens):
            return
    arr = np.asarray(tokens)
    if arr.size == 0:
        return
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got {arr.dtype} ({list(arr.reshape(-1)[:5])!r})")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if len(bad):
        raise ValueError(f"token id {int(arr.reshape(-1)[bad[0]])} is outside the vocabulary of {lm_name} "
                         f"(ids 0..{vocab_size - 1})")


def _logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    if m == -np.inf:
        raise ValueError("every token is masked out: the distribution is empty")
    return float(m + np.log(np.sum(np.exp(x - m))))


class LM(Shared):
    """Base class of LM backends. Subclasses implement `logprobs` and the tokenizer bits."""

    vocab_size: int
    eos_token_id: int | None = None
    # Every token id that ends a generation (EOS plus end-of-turn tokens); None: {eos_token_id}.
    eos_token_ids: frozenset[int] | None = None
    name: str = "lm"
    # True: chunks are sampled by the backend (`SampleChunk`), not token by token by the
    # particle. Served LMs must; in-process ones may (one round per chunk instead of per token).
    chunk_requests: bool = False
    # True: a chunk drawn from a particle's `SeededRng` is one request (`DrawChunk`) whose
    # token loop runs here, at the particle's own uniforms: the chunk it would draw token by
    # token (same numbers), with one engine round per chunk instead of one per token.
    fused_chunks: bool = False

    def is_eos(self, token: int) -> bool:
        """True if `token` ends a generation (any of `eos_token_ids`)."""
        ids = self.eos_token_ids
        return token == self.eos_token_id if ids is None else token in ids

    # ---------------------------------------------------------- backend interface
    def logprobs(self, contexts: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Next-token log-probabilities (float64, length vocab_size) after each context."""
        raise NotImplementedError

    def continuation_logprobs(
        self, pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]
    ) -> list[np.ndarray]:
        """For each (context, continuation): log-prob vectors at each continuation position.

        Default: one next-token query per position; backends override it with one forward.
        """
        flat = [ctx + cont[:i] for ctx, cont in pairs for i in range(len(cont))]
        rows = self.logprobs(flat) if flat else []
        out, k = [], 0
        for _, cont in pairs:
            out.append(np.stack(rows[k : k + len(cont)]) if cont else np.zeros((0, self.vocab_size)))
            k += len(cont)
        return out

    def evaluate(self, requests: Sequence[Request]) -> list[Any]:
        """Answer a round of requests: each kind in one batched call."""
        out: list[Any] = [None] * len(requests)
        kinds: dict[type, list[tuple[int, Request]]] = {}
        for i, r in enumerate(requests):
            kinds.setdefault(type(r), []).append((i, r))
        for kind, items in kinds.items():
            reqs = [r for _, r in items]
            if kind is NextTokenLogprobs:
                got: list[Any] = self.logprobs([r.tokens for r in reqs])  # type: ignore[attr-defined]
            elif kind is ContinuationLogprobs:
                got = self.continuation_logprobs([(r.tokens, r.continuation) for r in reqs])  # type: ignore[attr-defined]
            elif kind is SampleToken:
                got = self.sample_tokens(reqs)  # type: ignore[arg-type]
            elif kind is SampleChunk:
                got = self.sample_chunks(reqs)  # type: ignore[arg-type]
            elif kind is DrawChunk:
                got = self.draw_chunks(reqs)  # type: ignore[arg-type]
            elif kind is ScoreTokens:
                got = self.score_tokens([(r.tokens, r.continuation) for r in reqs])  # type: ignore[attr-defined]
            else:
                raise TypeError(f"{type(self).__name__} cannot answer {kind.__name__}")
            for (i, _), answer in zip(items, got, strict=True):
                out[i] = answer
        return out

    def score_tokens(self, pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[np.ndarray]:
        """For each (context, continuation): the model's log-probability of each token."""
        rows = self.continuation_logprobs(pairs)
        return [np.array([row[t] for row, t in zip(r, cont, strict=True)], dtype=np.float64)
                for r, (_, cont) in zip(rows, pairs, strict=True)]

    def sample_tokens(self, requests: Sequence[SampleToken]) -> list[TokenDraw]:
        """Each request's token, drawn at its own uniform from its context's row (one row per
        distinct context)."""
        where: dict[tuple[int, ...], int] = {}
        for r in requests:
            where.setdefault(r.tokens, len(where))
        rows = self.logprobs(list(where))
        return draw_from_rows(requests, [rows[where[r.tokens]] for r in requests])

    def sample_chunks(self, requests: Sequence[SampleChunk]) -> list[ChunkSample]:
        """Sample each requested chunk with its own seed: one batched `logprobs` call per
        position for every request still running (the particle-side draw, moved here)."""
        from ..rng import SeededRng

        rngs = [SeededRng(r.seed) for r in requests]
        tokens: list[tuple[int, ...]] = [() for _ in requests]
        log_q = [0.0] * len(requests)
        log_p = [0.0] * len(requests)
        live = list(range(len(requests)))
        while live:
            rows = self.logprobs([requests[i].tokens + tokens[i] for i in live])
            still = []
            for i, base in zip(live, rows, strict=True):
                d = requests[i].dist
                lq = d.transform(base)
                tok = rngs[i].categorical(np.exp(lq))
                log_q[i] += float(lq[tok])
                log_p[i] += float(base[tok])
                tokens[i] += (tok,)
                if not d._stops_after(tokens[i]):
                    still.append(i)
            live = still
        return [ChunkSample(t, self.decode(t), q, p) for t, q, p in zip(tokens, log_q, log_p, strict=True)]

    def draw_tokens_at(self, contexts: Sequence[ContextKey], dists: Sequence[_Sampling],
                       uniforms: Sequence[float]) -> tuple[list[int], list[float], list[float]]:
        """(tokens, log q, log p) of the draws `SampleToken(context, dist, u)` would give, one
        per (context, dist, u): what `draw_chunks` asks per position. Backends may answer it
        without building the requests."""
        got = self.sample_tokens([SampleToken(self, k.tokens, d, u, k)
                                  for k, d, u in zip(contexts, dists, uniforms, strict=True)])
        return [g.token for g in got], [g.log_q for g in got], [g.log_p for g in got]

    def draw_chunks(self, requests: Sequence[DrawChunk]) -> list[ChunkDraw]:
        """Each request's chunk, token by token for all at once: per position, one
        `sample_tokens` call for every chunk still running, each at its own stream's next
        uniform. The draws are those of the token-by-token path, so the chunks are too.

        Requests that have drawn the same tokens after the same context (particles that
        share a context mostly do) share one path: its key, tokens and stop check are made
        once, and its key is one object, so every dict finds it by identity."""
        n = len(requests)
        # a path: [context key, chunk tokens so far, distribution, finished]
        paths: list[list] = []
        start: dict[tuple, int] = {}
        at: list[int] = []
        for r in requests:
            d = r.dist
            # a path's draws are alike (the same settings), so the path's own distribution
            # stands for each of them: rounds mostly hold one distribution object, one group
            j = start.setdefault((r.context, d.stop, d.max_tokens, d.temperature, d.top_p, id(d.mask)), len(paths))
            if j == len(paths):
                paths.append([r.context, (), d, False])
            at.append(j)
        log_q = [0.0] * n
        log_p = [0.0] * n
        states = [r.state for r in requests]
        counters = [r.counter for r in requests]
        live = list(range(n))
        step = 0
        while live:
            step += 1
            u = uniforms_list([states[i] for i in live], [counters[i] + step for i in live])
            keys = [paths[at[i]][0] for i in live]
            seen: set[int] = set()
            for i, k in zip(live, keys, strict=True):  # positions evaluated: one per distinct context
                if id(k) not in seen:
                    seen.add(id(k))
                    requests[i].tokens_cost += 1
            toks, lqs, lps = self.draw_tokens_at(keys, [paths[at[i]][2] for i in live], u)
            nxt: dict[tuple[int, int], int] = {}
            still = []
            for i, tok, lq, lp in zip(live, toks, lqs, lps, strict=True):
                log_q[i] += lq
                log_p[i] += lp
                j = nxt.get((at[i], tok))
                if j is None:  # the first request on this path to draw this token
                    key, tokens, d, _ = paths[at[i]]
                    tokens += (tok,)
                    done = d._stops_after(tokens)
                    nkey = key if done else ContextKey(key.tokens + (tok,), key)
                    j = nxt[(at[i], tok)] = len(paths)
                    paths.append([nkey, tokens, d, done])
                at[i] = j
                if not paths[j][3]:
                    still.append(i)
            live = still
        texts: dict[tuple[int, ...], str] = {}
        out = []
        for i in range(n):
            key, tokens, _, _ = paths[at[i]]
            text = texts.get(tokens)
            if text is None:
                text = texts[tokens] = self.decode(tokens)
            out.append(ChunkDraw(tokens, text, log_q[i], log_p[i], key))
        return out

    # ---------------------------------------------------------- tokenizer interface
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, tokens: Sequence[int]) -> str:
        raise NotImplementedError

    def vocab_strings(self) -> list[str]:
        """The text of each token id on its own (e.g. to build a mask of tokens without an "e")."""
        return [self.decode([i]) for i in range(self.vocab_size)]

    def context(self, prompt: str | Sequence[int] = "") -> Context:
        """A context from text or token ids; token ids are checked against the vocabulary."""
        tokens = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(
                f"prompt has token ids outside the vocabulary of {self.name} "
                f"(size {self.vocab_size}): {bad[:5]}"
            )
        return Context(tuple(tokens))

    # ---------------------------------------------------------- distributions
    def next_token(
        self,
        ctx: Context,
        temperature: float = 1.0,
        mask: Sequence[int] | np.ndarray | None = None,
        top_p: float | None = None,
    ) -> NextToken:
        return NextToken(self, ctx, temperature, mask, top_p)

    def chunk(
        self,
        ctx: Context,
        stop: str | Sequence[str] | None = None,
        max_tokens: int = 32,
        temperature: float = 1.0,
        mask: Sequence[int] | np.ndarray | None = None,
        top_p: float | None = None,
    ) -> ChunkDistribution:
        return ChunkDistribution(self, ctx, stop, max_tokens, temperature, mask, top_p)

    def mask_of(self, mask: Sequence[int] | np.ndarray | None) -> np.ndarray | None:
        """A boolean vocabulary mask from token ids or a boolean array."""
        if mask is None:
            return None
        m = np.asarray(mask)
        if m.dtype == bool:
            if m.shape != (self.vocab_size,):
                raise ValueError(f"boolean mask must have shape ({self.vocab_size},)")
            return m
        out = np.zeros(self.vocab_size, dtype=bool)
        out[m.astype(int)] = True
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class _Sampling:
    """Settings shared by LM distributions: how raw log-probabilities become a proposal."""

    is_lm = True

    def __init__(self, lm: LM, ctx: Context, temperature: float, mask, top_p: float | None):
        if not isinstance(ctx, Context):
            raise TypeError(f"expected a Context (lm.context(prompt)), got {type(ctx).__name__}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.lm, self.ctx, self.temperature, self.top_p = lm, ctx, float(temperature), top_p
        self.mask = lm.mask_of(mask)

    @property
    def is_plain(self) -> bool:
        """True when this is the model itself (no temperature, mask or truncation)."""
        return self.temperature == 1.0 and self.mask is None and (self.top_p in (None, 1.0))

    def transform(self, lp: np.ndarray) -> np.ndarray:
        if self.is_plain:
            return lp
        return transform_logprobs(lp, self.temperature, self.mask, self.top_p)


class NextToken(_Sampling, Distribution):
    """The next token's distribution under the LM (optionally tempered / masked / top-p)."""

    async def sample(self, rng: Rng) -> Draw:
        if isinstance(rng, SeededRng):  # the backend draws at this particle's uniform
            ctx = self.ctx
            got: TokenDraw = await SampleToken(self.lm, ctx.tokens, self, rng.random(), ctx.key())
            return Draw(got.token, got.log_q, {"model_log_prob": got.log_p, "source": self._src()})
        base = await NextTokenLogprobs(self.lm, self.ctx.tokens)  # e.g. the exact oracle's Rng
        lq = self.transform(base)
        tok = rng.categorical(np.exp(lq))
        return Draw(tok, float(lq[tok]), {"model_log_prob": float(base[tok]), "source": self._src()})

    async def log_prob(self, value: int) -> float:
        base = await NextTokenLogprobs(self.lm, self.ctx.tokens)
        if not 0 <= int(value) < len(base):
            return -math.inf
        return float(self.transform(base)[int(value)])

    def _src(self) -> tuple:
        return (id(self.lm), self.ctx.tokens)

    def log_prob_from_draw(self, draw: Draw) -> float | None:
        if self.is_plain and draw.extras.get("source") == self._src():
            return draw.extras.get("model_log_prob")
        return None


class ChunkDistribution(_Sampling, Distribution):
    """Tokens until a stop string, EOS or `max_tokens`, as one value (a `Chunk`).

    log p(chunk) is the sum of its tokens' log-probabilities; a chunk that could not have
    been produced (a stop string before its end, EOS inside it, too long) has log p = −inf.
    """

    def __init__(self, lm, ctx, stop, max_tokens, temperature, mask, top_p):
        super().__init__(lm, ctx, temperature, mask, top_p)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        self.max_tokens = int(max_tokens)

    def _stops_after(self, tokens: tuple[int, ...]) -> bool:
        if self.lm.is_eos(tokens[-1]) or len(tokens) >= self.max_tokens:
            return True
        if not self.stop:
            return False
        text = self.lm.decode(tokens)
        return any(s in text for s in self.stop)

    async def sample(self, rng: Rng) -> Draw:
        if self.lm.chunk_requests:
            seeder = getattr(rng, "integer_seed", None)
            if seeder is None:
                raise TypeError(
                    f"{self.lm.name} samples chunks on its side (from a seed), which the exact oracle "
                    "cannot enumerate; set chunk_requests = False to enumerate token by token"
                )
            got: ChunkSample = await SampleChunk(self.lm, self.ctx.tokens, self, seeder())
            extras = {"model_log_prob": got.log_p, "source": self._src()} if got.log_p is not None else {}
            return Draw(Chunk(got.tokens, got.text), got.log_q, extras)
        seeded = isinstance(rng, SeededRng)
        if seeded and self.lm.fused_chunks and type(rng) is SeededRng:  # the token loop on the backend's side
            fused: ChunkDraw = await DrawChunk(self.lm, self.ctx.key(), self, rng.state, rng.counter)
            rng.counter += len(fused.tokens)  # one uniform per token, as drawn below
            chunk = Chunk(fused.tokens, fused.text)
            chunk.__dict__["_last_key"] = weakref.ref(fused.last)
            return Draw(chunk, fused.log_q, {"model_log_prob": fused.log_p, "source": self._src()})
        tokens: tuple[int, ...] = ()
        log_q = log_p = 0.0
        key = self.ctx.key() if seeded else None
        while True:
            if seeded:  # drawn by the backend at this particle's uniform
                if tokens:  # each draw's key knows the last one's: the backend's lookup is O(1)
                    key = ContextKey(self.ctx.tokens + tokens, key)
                got: TokenDraw = await SampleToken(self.lm, key.tokens, self, rng.random(), key)
                tok, lq_tok, lp_tok = got.token, got.log_q, got.log_p
            else:
                base = await NextTokenLogprobs(self.lm, self.ctx.tokens + tokens)
                lq = self.transform(base)
                tok = rng.categorical(np.exp(lq))
                lq_tok, lp_tok = float(lq[tok]), float(base[tok])
            log_q += lq_tok
            log_p += lp_tok
            tokens += (tok,)
            if self._stops_after(tokens):
                break
        chunk = Chunk(tokens, self.lm.decode(tokens))
        if key is not None:
            # `ctx + chunk` extends this draw's context. A weak reference: the trie's leaf
            # holds the key while it is cached, and a chunk kept in a trace holds nothing.
            chunk.__dict__["_last_key"] = weakref.ref(key)
        return Draw(chunk, log_q, {"model_log_prob": log_p, "source": self._src()})

    async def log_prob(self, value: Chunk) -> float:
        tokens = tuple(value.tokens)
        if not tokens or not self._stops_after(tokens):
            return -math.inf
        if any(self._stops_after(tokens[:i]) for i in range(1, len(tokens))):
            return -math.inf
        if self.is_plain:  # the model's own probabilities: no full rows needed
            return float(sum(await ScoreTokens(self.lm, self.ctx.tokens, tokens)))
        rows = await ContinuationLogprobs(self.lm, self.ctx.tokens, tokens)
        return float(sum(self.transform(row)[tok] for row, tok in zip(rows, tokens, strict=True)))

    def _src(self) -> tuple:
        return (id(self.lm), self.ctx.tokens, self.stop, self.max_tokens)

    def log_prob_from_draw(self, draw: Draw) -> float | None:
        if self.is_plain and draw.extras.get("source") == self._src():
            return draw.extras.get("model_log_prob")
        return None


async def draw_by_token(dist: NextToken | ChunkDistribution, pick: Any) -> Draw:
    """A value of `dist` (a token, or a chunk up to its stop) whose every token is chosen by
    `await pick(tokens_so_far) -> (token, log q)`: how a kernel's policy steers an LM draw
    while the distribution still decides where the draw ends."""
    tokens: tuple[int, ...] = ()
    log_q = 0.0
    single = isinstance(dist, NextToken)
    while True:
        tok, lq = await pick(tokens)
        tokens += (int(tok),)
        log_q += float(lq)
        if single or dist._stops_after(tokens):
            break
    if single:
        return Draw(tokens[0], log_q, {})
    return Draw(Chunk(tokens, dist.lm.decode(tokens)), log_q, {})
