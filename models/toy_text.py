"""Text on a toy n-gram LM with a soft (or hard) ban on one token: the toy recipes' program.

State
    `ctx`       the prompt plus the tokens generated so far
    `n_banned`  how many banned tokens were generated

Step t
    x_t ~ p_LM(· | ctx) at `temperature` (1: the LM itself); a banned token adds the factor
    exp(`penalty`). The particle finishes on EOS or after `max_tokens` new tokens.

Target
    π(x) ∝ p_LM,T(x) · exp(penalty · #banned(x)); with penalty = −inf the LM conditioned on
    never producing the banned token (a toy lipogram). `answer` is the generated text;
    `prefix_score` = exp(penalty · #banned so far) ∈ [0, 1] is the score that PRM-driven
    kernels (particle filter, best-of-N, beam search) read.
"""

from __future__ import annotations

import math

import ppllm
from ppllm.lm import LM, ToyLM

__all__ = ["ToyText"]


class ToyText(ppllm.Program):
    """Continue a prompt token by token; every `banned` token costs a factor exp(penalty)."""

    def __init__(
        self,
        lm: LM,
        prompt: str = "",
        max_tokens: int = 4,
        banned: str = "a",
        penalty: float = -1.0,
        temperature: float = 1.0,
    ):
        self.lm = lm
        self.prompt = prompt
        self.ctx = lm.context(prompt)
        self.start = len(self.ctx)
        self.max_tokens = max_tokens
        self.banned = lm.index.get(banned) if isinstance(lm, ToyLM) else None
        self.penalty = float(penalty)
        self.temperature = float(temperature)  # a parameter PMMH can learn (toy_pmmh.toml)
        self.n_banned = 0

    async def step(self) -> None:
        tok = await self.sample(self.lm.next_token(self.ctx, temperature=self.temperature))
        if tok == self.banned:
            self.n_banned += 1
            self.factor(self.penalty)
        self.ctx = self.ctx + tok
        if tok == self.lm.eos_token_id or len(self.ctx) - self.start >= self.max_tokens:
            self.finish()

    @property
    def answer(self) -> str:
        return self.lm.decode(self.ctx.tokens[self.start :])

    @property
    def prefix_score(self) -> float:
        return math.exp(self.penalty * self.n_banned) if self.n_banned else 1.0

    def __str__(self) -> str:
        return self.lm.decode(self.ctx.tokens)
