"""Small programs on the toy LM for the exact tests and `python -m ppllm.testing.validation`.

Each is tiny enough for the exact oracle to enumerate (ppllm.exact), so kernels can be
checked against the true posterior. (The toy recipes run `ppllm_models.toy_text.ToyText`,
a program on the user's side.)
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from .. import program as _program
from ..lm import ToyLM

# a, b and EOS; bigram tables fixed by seed so every test sees the same model.
TOKEN_LM = ToyLM.random(["a", "b", "<eos>"], order=2, seed=3)
# a and newline (no EOS): chunks end at "\n" or after 2 tokens.
CHUNK_LM = ToyLM.random(["a", "\n"], order=2, seed=5, eos=None)


@cache
def _latent_dists() -> tuple[Any, list[Any]]:
    """Built once, and only when needed: importing pyro is slow and most uses never need it."""
    import pyro.distributions as pdist
    import torch

    prior = pdist.Categorical(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    parity = [pdist.Bernoulli(torch.tensor(0.2 + 0.3 * z, dtype=torch.float64)) for z in range(3)]
    return prior, parity


def __getattr__(name: str) -> Any:
    if name == "TOPIC_PRIOR":
        return _latent_dists()[0]
    if name == "PARITY":
        return _latent_dists()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class NoRepeat(_program.Program):
    """Token level, hard constraint: no token may repeat its predecessor (factor −inf).

    Draws from a tempered proposal (T = 1.7) and corrects with log p − log q.
    """

    def __init__(self, lm: ToyLM = TOKEN_LM, max_tokens: int = 2, proposal_temperature: float = 1.7):
        self.lm = lm
        self.ctx = lm.context("")
        self.max_tokens = max_tokens
        self.temp = proposal_temperature

    async def step(self) -> None:
        dist = self.lm.next_token(self.ctx)
        tok = await self.sample(dist, proposal=self.lm.next_token(self.ctx, temperature=self.temp))
        if tok != self.lm.eos_token_id and self.ctx.tokens[-1:] == (tok,):
            self.factor(-math.inf)
        self.ctx = self.ctx + tok
        if tok == self.lm.eos_token_id or len(self.ctx) >= self.max_tokens:
            self.finish()

    def __str__(self) -> str:
        return self.lm.decode(self.ctx.tokens)


class FewAs(_program.Program):
    """Chunk level, soft reward: chunks until "\\n"; each "a" costs a factor exp(−0.7).

    A twist of the running reward guides intermediate steps without changing the target.
    """

    def __init__(self, lm: ToyLM = CHUNK_LM, n_chunks: int = 2):
        self.lm = lm
        self.ctx = lm.context("")
        self.n_chunks = n_chunks
        self.done = 0

    async def step(self) -> None:
        chunk = await self.sample(self.lm.chunk(self.ctx, stop="\n", max_tokens=2))
        self.ctx = self.ctx + chunk
        self.done += 1
        penalty = -0.7 * chunk.text.count("a")
        self.factor(penalty)
        self.twist(0.3 * chunk.text.count("\n"))
        if self.done >= self.n_chunks:
            self.finish()

    def __str__(self) -> str:
        return self.lm.decode(self.ctx.tokens)


class LatentTopic(_program.Program):
    """A discrete latent from pyro.distributions, then text that depends on it.

    z ~ Categorical([0.5, 0.3, 0.2]); the token is drawn at temperature 0.5 + z/2 and must
    not be EOS when z = 2 (hard constraint); observing the token's parity adds evidence.
    """

    def __init__(self, lm: ToyLM = TOKEN_LM):
        self.lm = lm
        self.ctx = lm.context("")
        self.z: int | None = None

    async def step(self) -> None:
        if self.z is None:
            self.z = int(await self.sample(_latent_dists()[0]))
            return
        tok = await self.sample(self.lm.next_token(self.ctx, temperature=0.5 + self.z / 2))
        if self.z == 2 and tok == self.lm.eos_token_id:
            self.factor(-math.inf)
        await self.observe(_latent_dists()[1][self.z], float(tok % 2))
        self.ctx = self.ctx + tok
        self.finish()

    def __str__(self) -> str:
        return f"z={self.z} {self.lm.decode(self.ctx.tokens)!r}"


PROGRAMS = {"token_constraint": NoRepeat, "chunk_reward": FewAs, "latent_mix": LatentTopic}
