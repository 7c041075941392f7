"""Chunks drawn on the backend's side (`DrawChunk`, `LM.fused_chunks`) are the chunks the
particle draws token by token: the same tokens, log q and log p, the same stream position
afterwards, and the same count of evaluated positions.

Each check runs one SMC program twice, fused and token by token, on the `hf` backend
(tiny-arith, or a random GPT-2) and on a toy table, and compares everything the run returns.
The broken twin draws each token one uniform late and must fail the same comparison.
"""

from __future__ import annotations

import numpy as np
import pytest

import ppllm
import ppllm.lm.base as lm_base
from ppllm.lm import HFLM, ToyLM
from ppllm.lm.requests import DrawChunk
from ppllm.rng import SeededRng

PROMPT = "Q: 37+48+19=\n"


class _Pieces(ppllm.Program):
    """Per step: a chunk from a hot proposal (weighted by log p − log q, so the weights see
    both), a stopped chunk and a token; the factor makes resampling fork and drop particles."""

    def __init__(self, lm, ctx, n, stop):
        self.lm, self.ctx, self.n, self.stop = lm, ctx, n, stop

    async def step(self):
        a = await self.sample(self.lm.chunk(self.ctx, max_tokens=3),
                              proposal=self.lm.chunk(self.ctx, max_tokens=3, temperature=2.0))
        self.ctx = self.ctx + a
        b = await self.sample(self.lm.chunk(self.ctx, stop=self.stop, max_tokens=5, temperature=3.0))
        self.ctx = self.ctx + b
        tok = await self.sample(self.lm.next_token(self.ctx, temperature=2.0))
        self.ctx = self.ctx + tok
        self.factor(-0.5 * (a.tokens[-1] % 3) - 0.25 * len(b.tokens))
        if len(self.ctx) >= self.n:
            self.finish()


def _run(lm, fused: bool, prompt: str, stop: str, seed: int = 4):
    lm.fused_chunks = fused
    getattr(lm, "clear_cache", lambda: None)()  # both runs start from the same cache: the same forwards, the same rounding
    ctx = lm.context(prompt)
    post = ppllm.smc(_Pieces(lm, ctx, len(ctx) + 24, stop), 12, seed=seed, ess_threshold=0.5)
    return ([tuple(p.ctx.tokens) for p in post.particles], post.log_weights.copy(),
            post.budget["tokens"], post.budget["requests"])


def _differences(a, b, atol: float) -> list[str]:
    out = []
    if a[0] != b[0]:
        out.append("tokens")
    if not np.allclose(a[1], b[1], rtol=0, atol=atol):
        out.append("log weights")
    if a[2] != b[2]:
        out.append("evaluated positions")
    return out


def _toy():
    return ToyLM.random(["a", "b", "c", "\n", "<eos>"], order=2, seed=7)


# The toy's tables are float64 and batching cannot change them. The hf backend's rows carry
# the float32 rounding of batched matmuls (~1e-6 per row), and the two paths batch the
# draws of different chunks differently: ~30 positions of ~1e-6 each stay far below 1e-4.
@pytest.fixture(params=["hf", "toy"])
def setting(request, tiny_dir):
    if request.param == "hf":
        return HFLM.load(tiny_dir), PROMPT, "\n", 1e-4
    return _toy(), "ab", "\n", 1e-12


def test_fused_chunks_are_the_chunks_drawn_token_by_token(setting):
    lm, prompt, stop, atol = setting
    fused, token = _run(lm, True, prompt, stop), _run(lm, False, prompt, stop)
    assert _differences(fused, token, atol) == []
    assert len(set(fused[0])) > 3  # the particles really differ
    assert fused[3] < token[3]  # one request per chunk instead of one per token


def test_broken_twin_a_fused_draw_one_uniform_late_fails_the_comparison(setting, monkeypatch):
    lm, prompt, stop, atol = setting
    token = _run(lm, False, prompt, stop)
    real = lm_base.uniforms_list
    monkeypatch.setattr(lm_base, "uniforms_list", lambda states, counters: real(states, [c + 1 for c in counters]))
    assert "tokens" in _differences(_run(lm, True, prompt, stop), token, atol)


def _one_chunk_both_ways(lm):
    """One chunk drawn fused and token by token from the same stream: what each gives, and
    the stream's counter and next uniform after it."""
    ctx = lm.context(PROMPT)
    dist = lm.chunk(ctx, max_tokens=6, temperature=4.0)
    got = {}
    for fused in (True, False):
        lm.fused_chunks = fused
        lm.clear_cache()
        rng = SeededRng(9).child("slot", 2)
        coro = dist.sample(rng)
        answer = None
        while True:  # answer each request as the engine would, one at a time
            try:
                req = coro.send(answer)
            except StopIteration as done:
                draw = done.value
                break
            answer = lm.evaluate([req])[0]
            assert isinstance(req, DrawChunk) == fused
        got[fused] = (draw.value.tokens, draw.log_prob, draw.extras["model_log_prob"], rng.counter, rng.random())
    return got


def _same_draw(got) -> bool:
    return (got[True][0] == got[False][0] and got[True][3:] == got[False][3:]
            and bool(np.allclose(got[True][1:3], got[False][1:3], rtol=0, atol=1e-5)))  # float32 rounding


def test_a_fused_draw_moves_the_stream_on_as_the_token_draws_do(tiny_dir):
    got = _one_chunk_both_ways(HFLM.load(tiny_dir))
    assert _same_draw(got)
    assert got[True][3] == len(got[True][0])  # one uniform per token


def test_broken_twin_a_fused_draw_one_uniform_late_is_not_the_same_draw(tiny_dir, monkeypatch):
    real = lm_base.uniforms_list
    monkeypatch.setattr(lm_base, "uniforms_list", lambda states, counters: real(states, [c + 1 for c in counters]))
    assert not _same_draw(_one_chunk_both_ways(HFLM.load(tiny_dir)))


def test_identical_fused_requests_get_one_answer_and_other_positions_differ(tiny_dir):
    lm = HFLM.load(tiny_dir)
    ctx = lm.context(PROMPT)
    dist = lm.chunk(ctx, max_tokens=8, temperature=8.0)
    rng = SeededRng(3)
    same = [DrawChunk(lm, ctx.key(), dist, rng.state, 0) for _ in range(2)]
    assert same[0].key() == same[1].key()
    a, b = lm.evaluate(same)
    assert a == b
    assert same[0].tokens_cost == len(a.tokens) and same[1].tokens_cost == 0  # shared positions count once
    others = lm.evaluate([DrawChunk(lm, ctx.key(), dist, rng.state, c) for c in range(1, 6)])
    assert len({o.tokens for o in others} | {a.tokens}) > 2
