"""Tiny scored programs on the toy LM for the particle-filter, particle-Gibbs and baseline tests.

`Scored` draws one token per step and records `prefix_score`, a fixed function of the
prefix in (0, 1) standing in for a PRM. In "ratio" mode it twists log Φ_t = log s_t on
non-final steps and factors log Φ_T on the final one (the consistent PF potential); in
"none" mode it only records scores. With an EOS token particles finish at different steps.
"""

from __future__ import annotations

import math

import ppllm
from ppllm.lm import ToyLM

# a and b with state-dependent probabilities (no EOS): every run has exactly max_len steps.
AB_LM = ToyLM(
    ["a", "b"],
    {(): [0.5, 0.5], ("<bos>",): [0.6, 0.4], ("a",): [0.3, 0.7], ("b",): [0.55, 0.45]},
    eos=None,
    order=2,
)
# a, b and EOS: particles finish after one step or two.
ABE_LM = ToyLM(
    ["a", "b", "<eos>"],
    {(): [0.4, 0.35, 0.25], ("<bos>",): [0.45, 0.3, 0.25], ("a",): [0.2, 0.5, 0.3], ("b",): [0.5, 0.3, 0.2]},
    eos="<eos>",
    order=2,
)


def score_of(tokens: tuple[int, ...]) -> float:
    """A fixed prefix score in (0, 1): distinct enough that every weighting differs."""
    h = 1 + sum((3 + 2 * i) * (t + 1) for i, t in enumerate(tokens)) + 5 * len(tokens)
    return (h % 11 + 0.5) / 12.0


class Scored(ppllm.Program):
    """One token per step until EOS or `max_len` tokens; records the prefix score."""

    def __init__(self, lm: ToyLM = AB_LM, max_len: int = 2, mode: str = "none"):
        self.lm = lm
        self.ctx = lm.context("")
        self.max_len = max_len
        self.mode = mode
        self.prefix_score: float | None = None

    async def step(self) -> None:
        tok = await self.sample(self.lm.next_token(self.ctx))
        self.ctx = self.ctx + tok
        self.prefix_score = score_of(self.ctx.tokens)
        if tok == self.lm.eos_token_id or len(self.ctx) >= self.max_len:
            self.finish()
        if self.mode == "ratio":
            log_phi = math.log(self.prefix_score)
            if self.finished:
                self.factor(log_phi)
            else:
                self.twist(log_phi)

    def __str__(self) -> str:
        return "".join(self.lm.vocab[t] for t in self.ctx.tokens)


def tokens_of(program: Scored) -> tuple[int, ...]:
    return tuple(program.ctx.tokens)
