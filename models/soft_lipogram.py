"""A sentence in chunks, with a soft ban on a letter: a chunk-level program (served LMs, trees).

State
    `ctx`       the prompt plus the chunks so far
    `n_banned`  occurrences of the banned letter generated so far

Step t
    a chunk of up to `chunk_tokens` tokens from the LM, stopping at "." (or EOS); each
    occurrence of `banned` costs a factor exp(`penalty`). The particle finishes after the
    sentence's full stop, on EOS, or after `max_chunks` chunks.

Target
    π(x) ∝ p_LM(x) · exp(penalty · #banned(x)). The chunks are drawn from the LM itself
    (temperature 1), so this runs unchanged on a served LM. `prefix_score` =
    exp(penalty · #banned so far) ∈ (0, 1] is what PRM-driven kernels read; `answer` the text.
"""

from __future__ import annotations

import math

import ppllm
from ppllm.lm import LM

__all__ = ["SoftLipogram"]


class SoftLipogram(ppllm.Program):
    def __init__(self, lm: LM, prompt: str, banned: str = "e", penalty: float = -1.0,
                 chunk_tokens: int = 8, max_chunks: int = 4):
        self.lm = lm
        self.ctx = lm.context(prompt)
        self.start = len(self.ctx)
        self.banned, self.penalty = banned, float(penalty)
        self.chunk_tokens, self.max_chunks = int(chunk_tokens), int(max_chunks)
        self.n_chunks = self.n_banned = 0

    async def step(self) -> None:
        chunk = await self.sample(self.lm.chunk(self.ctx, stop=".", max_tokens=self.chunk_tokens))
        self.ctx = self.ctx + chunk
        self.n_chunks += 1
        hits = chunk.text.lower().count(self.banned.lower())
        self.n_banned += hits
        if hits:
            self.factor(self.penalty * hits)
        if self.lm.is_eos(chunk.tokens[-1]) or "." in chunk.text or self.n_chunks >= self.max_chunks:
            self.finish()

    @property
    def answer(self) -> str:
        return self.lm.decode(self.ctx.tokens[self.start :]).strip()

    @property
    def prefix_score(self) -> float:
        return math.exp(self.penalty * self.n_banned)

    def __str__(self) -> str:
        return self.answer
