"""Engine and randomness: same seed ⇒ identical results, whatever the batch size."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from toy_programs import TOKEN_LM, FewAs, LatentTopic, NoRepeat

import ppllm
from ppllm.engine import Engine
from ppllm.lm.base import NextTokenLogprobs


def snapshot(post: ppllm.Posterior) -> tuple:
    return [str(p) for p in post.particles], [c.value for p in post.particles for c in p.trace], post.log_weights


@pytest.mark.parametrize("program", [NoRepeat, FewAs, LatentTopic])
def test_same_seed_gives_bit_identical_particles_and_weights(program) -> None:
    a = snapshot(ppllm.smc(program(), 16, seed=7, ess_threshold=1.0))
    b = snapshot(ppllm.smc(program(), 16, seed=7, ess_threshold=1.0))
    assert a[0] == b[0] and a[1] == b[1]
    assert np.array_equal(a[2], b[2])  # bit-identical float64


@pytest.mark.parametrize("max_batch", [1, 2, 5])
@pytest.mark.parametrize("program", [NoRepeat, FewAs, LatentTopic])
def test_batch_size_does_not_change_results(program, max_batch: int) -> None:
    ref = snapshot(ppllm.smc(program(), 12, seed=3, ess_threshold=0.7))
    got = snapshot(ppllm.smc(program(), 12, seed=3, ess_threshold=0.7, engine=Engine(max_batch=max_batch)))
    assert ref[0] == got[0] and ref[1] == got[1] and np.array_equal(ref[2], got[2])


def test_different_seeds_give_different_runs() -> None:
    """Sanity check that the determinism tests above could fail."""
    a = snapshot(ppllm.smc(FewAs(), 16, seed=1))
    b = snapshot(ppllm.smc(FewAs(), 16, seed=2))
    assert a[1] != b[1]


class CountingLM(type(TOKEN_LM)):
    """The toy LM, recording the size of every batch it answers."""

    def __init__(self):
        self.__dict__.update(TOKEN_LM.__dict__)
        self.batches: list[int] = []

    def logprobs(self, contexts):
        self.batches.append(len(contexts))
        return super().logprobs(contexts)


def test_identical_contexts_are_answered_once_per_round() -> None:
    lm = CountingLM()
    ppllm.smc(NoRepeat(lm=lm), 10, seed=0, ess_threshold=0.0)
    # Round 1: ten particles, one shared empty context → one row.
    assert lm.batches[0] == 1
    # Round 2: contexts differ only by the first token (3 choices, EOS ones have finished).
    assert lm.batches[1] <= 2


def test_engine_batches_requests_of_all_live_particles() -> None:
    lm = CountingLM()
    engine = Engine()
    post = ppllm.smc(NoRepeat(lm=lm), 6, seed=5, engine=engine)
    assert engine.stats.lm_calls == len(lm.batches)
    assert engine.stats.requests >= engine.stats.unique_requests == sum(lm.batches)
    assert post.budget["lm_calls"] == engine.stats.lm_calls


def test_all_particles_ruled_out_ends_with_minus_inf_and_a_message() -> None:
    class Impossible(ppllm.Program):
        def __init__(self):
            self.lm, self.ctx = TOKEN_LM, TOKEN_LM.context("")

        async def step(self):
            await self.sample(self.lm.next_token(self.ctx))
            self.factor(-math.inf)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = ppllm.smc(Impossible(), 4, seed=0)
    assert post.log_Z == -math.inf and not post.ok
    assert "all 4 particles have weight zero after step 0" in post.message
    assert any("weight zero" in str(w.message) for w in caught)
    assert not np.any(np.isnan(post.log_weights))
    with pytest.raises(ppllm.DegenerateWeights, match="weight zero"):
        _ = post.weights
    assert "weight zero" in post.summary()


def test_request_keys_distinguish_contexts() -> None:
    assert NextTokenLogprobs(TOKEN_LM, (0,)).key() != NextTokenLogprobs(TOKEN_LM, (1,)).key()
    assert NextTokenLogprobs(TOKEN_LM, (0, 1)).key() == NextTokenLogprobs(TOKEN_LM, (0, 1)).key()
