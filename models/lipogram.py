"""A lipogram: text that never uses a banned letter (by default "e"), sampled with proper weights.

State
    `ctx`        the LM context: prompt tokens plus every token generated so far
    `generated`  the generated token ids

Step t
    x_t ~ q(· | ctx): the LM's next-token distribution with every token whose text contains a
    banned character masked out and the rest renormalised (locally-constrained decoding).
    The particle finishes on a stop token (EOS, end of turn) or after `max_tokens` tokens.

Target
    `sample(p, proposal=q)` adds log p(x_t) − log q(x_t) = log Σ_{allowed} p(· | ctx): the
    probability mass the mask removed. So the weights correct the greedy-looking proposal and
    the program's target is the LM conditioned on the constraint,

        π(x) ∝ p_LM(x) · 1{no token of x contains a banned character}

    over generations of at most `max_tokens` tokens. Plain masked decoding samples from
    ∏_t q(x_t | x_<t) instead, which over-represents prefixes that had little allowed mass;
    SMC on this program resamples those away and estimates log Z = log P(constraint holds).

Use it with any ppllm LM: `lipogram_mask(lm, "e")` builds the mask once, and
`Lipogram(lm, lm.context(lm.chat("...")), mask)` is the program.
"""

from __future__ import annotations

import numpy as np

import ppllm
from ppllm.lm import LM, Context

__all__ = ["Lipogram", "lipogram_mask"]


def lipogram_mask(lm: LM, banned: str = "e") -> np.ndarray:
    """Boolean vocabulary mask: True for tokens whose text has none of `banned` (any case).

    Stop tokens stay allowed (their text is empty), so a lipogram can always end.
    """
    chars = {c.lower() for c in banned} | {c.upper() for c in banned}
    allowed = np.fromiter(
        (not (chars & set(s)) for s in lm.vocab_strings()), dtype=bool, count=lm.vocab_size
    )
    if not allowed.any():
        raise ValueError(f"every token of {lm.name} contains one of {banned!r}")
    allowed.setflags(write=False)  # a constant: particles share it instead of copying it
    return allowed


class Lipogram(ppllm.Program):
    """Continue `ctx` one token per step without the banned characters (see module docstring)."""

    def __init__(self, lm: LM, ctx: Context, mask: np.ndarray, max_tokens: int = 24) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.lm = lm
        self.ctx = ctx
        self.mask = _SharedMask(mask)
        self.max_tokens = max_tokens
        self.generated: tuple[int, ...] = ()

    async def step(self) -> None:
        model = self.lm.next_token(self.ctx)
        proposal = self.lm.next_token(self.ctx, mask=self.mask.array)
        token = await self.sample(model, proposal=proposal)
        self.ctx = self.ctx + token
        self.generated += (token,)
        if self.lm.is_eos(token) or len(self.generated) >= self.max_tokens:
            self.finish()

    @property
    def text(self) -> str:
        return self.lm.decode(self.generated)

    def __str__(self) -> str:
        return self.text


class _SharedMask(ppllm.Shared):
    """The mask is read-only and the same for every particle: clones share it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.asarray(array, dtype=bool)
