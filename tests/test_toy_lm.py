"""The toy LM and the LM distributions built on every backend's `logprobs`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from toy_programs import CHUNK_LM, TOKEN_LM

import ppllm
from ppllm.exact import enumerate_paths
from ppllm.lm import Chunk, ToyLM, transform_logprobs
from ppllm.request import answer_now


def test_tables_and_backoff() -> None:
    lm = ToyLM(
        ["x", "y", "<eos>"],
        {(): [0.2, 0.3, 0.5], ("<bos>",): [1.0, 0.0, 0.0], ("x",): [0.0, 0.5, 0.5]},
        eos="<eos>",
    )
    first, after_x, after_y = lm.logprobs([(), (0,), (0, 1)])
    assert np.exp(first).tolist() == [1.0, 0.0, 0.0]  # BOS row picks the first token
    assert np.allclose(np.exp(after_x), [0.0, 0.5, 0.5])
    assert np.allclose(np.exp(after_y), [0.2, 0.3, 0.5])  # backs off to ()


def test_bad_tables_are_rejected() -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        ToyLM(["a", "<eos>"], {(): [0.5, 0.6]})
    with pytest.raises(ValueError, match="duplicate"):
        ToyLM(["a", "a"], {(): [0.5, 0.5]}, eos=None)


def test_encode_decode_round_trip() -> None:
    assert TOKEN_LM.decode(TOKEN_LM.encode("abba")) == "abba"
    assert CHUNK_LM.decode(CHUNK_LM.encode("a\na")) == "a\na"


def test_transform_temperature_mask_top_p() -> None:
    lp = np.log(np.array([0.5, 0.3, 0.2]))
    hot = transform_logprobs(lp, temperature=2.0)
    assert np.allclose(np.exp(hot), np.sqrt([0.5, 0.3, 0.2]) / np.sqrt([0.5, 0.3, 0.2]).sum())
    masked = transform_logprobs(lp, mask=np.array([True, False, True]))
    assert np.allclose(np.exp(masked), [0.5 / 0.7, 0.0, 0.2 / 0.7])
    top = transform_logprobs(lp, top_p=0.7)
    assert np.allclose(np.exp(top), [0.5 / 0.8, 0.3 / 0.8, 0.0])
    with pytest.raises(ValueError, match="every token is masked"):
        transform_logprobs(lp, mask=np.zeros(3, bool))


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.6}, {"top_p": 0.8}, {"mask": [0, 1]}])
def test_chunk_distribution_sums_to_one_and_scores_its_draws(kwargs) -> None:
    """Enumerate every chunk: the draw probabilities sum to 1 and equal exp(log_prob)."""
    lm = TOKEN_LM
    dist = lm.chunk(lm.context("a"), stop="b", max_tokens=3, **kwargs)
    total = 0.0
    for prob, draw in enumerate_paths(lambda rng: answer_now(dist.sample(rng))):
        total += prob
        assert math.exp(draw.log_prob) == pytest.approx(prob, abs=1e-12)
        assert answer_now(dist.log_prob(draw.value)) == pytest.approx(draw.log_prob, abs=1e-12)
    assert total == pytest.approx(1.0, abs=1e-12)


def test_chunk_log_prob_of_impossible_chunks_is_minus_inf() -> None:
    dist = TOKEN_LM.chunk(TOKEN_LM.context(""), stop="b", max_tokens=3)
    b = TOKEN_LM.index["b"]
    a = TOKEN_LM.index["a"]
    assert answer_now(dist.log_prob(Chunk((b, a), "ba"))) == -math.inf  # stop string before the end
    assert answer_now(dist.log_prob(Chunk((a,), "a"))) == -math.inf  # stopped too early
    assert answer_now(dist.log_prob(Chunk((a, a, a, a), "aaaa"))) == -math.inf  # too long


def test_tempered_draw_carries_the_model_log_prob() -> None:
    ctx = TOKEN_LM.context("a")
    hot = TOKEN_LM.next_token(ctx, temperature=0.5)
    for _, draw in enumerate_paths(lambda rng: answer_now(hot.sample(rng))):
        plain = TOKEN_LM.next_token(ctx)
        assert plain.log_prob_from_draw(draw) == pytest.approx(answer_now(plain.log_prob(draw.value)))
        assert hot.log_prob_from_draw(draw) is None  # not the plain model: must not reuse it


def test_masked_proposal_weights_equal_the_lost_mass() -> None:
    """Locally constrained decoding: sample(p, proposal=p masked) adds log p(allowed)."""

    class Masked(ppllm.Program):
        def __init__(self):
            self.lm, self.ctx = TOKEN_LM, TOKEN_LM.context("")

        async def step(self):
            self.tok = await self.sample(
                self.lm.next_token(self.ctx), proposal=self.lm.next_token(self.ctx, mask=[0, 2])
            )
            self.finish()

    post = ppllm.smc(Masked(), 8, seed=0)
    p = np.exp(TOKEN_LM.logprobs([()])[0])
    assert np.allclose(post.log_weights, math.log(p[0] + p[2]))
    assert post.log_Z == pytest.approx(math.log(p[0] + p[2]))


def test_random_toy_lm_is_reproducible() -> None:
    a = ToyLM.random(["a", "b", "<eos>"], order=3, seed=9)
    b = ToyLM.random(["a", "b", "<eos>"], order=3, seed=9)
    ctxs = [(), (0,), (0, 1), (1, 1, 0)]
    assert all(np.array_equal(x, y) for x, y in zip(a.logprobs(ctxs), b.logprobs(ctxs), strict=True))
