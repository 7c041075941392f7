"""Programs and primitives: weight formulas with forced draws, twists, traces, replay."""

from __future__ import annotations

import math

import numpy as np
import pytest
from toy_programs import TOKEN_LM, FewAs, LatentTopic, NoRepeat

import ppllm
from ppllm.distributions import Categorical, Distribution, Draw
from ppllm.exact import enumerate_program
from ppllm.kernels.importance import run_to_end
from ppllm.program import Choice, run_step
from ppllm.request import answer_now
from ppllm.rng import SeededRng


class ForcedRng(SeededRng):
    """Always picks the given category: for checking weight formulas exactly."""

    def __init__(self, pick: int):
        super().__init__(0)
        self.pick = pick

    def categorical(self, probs):
        assert probs[self.pick] > 0
        return self.pick

    def child(self, *key):
        return self


def test_sample_with_proposal_adds_log_p_minus_log_q() -> None:
    prog = NoRepeat()
    logw = answer_now(run_step(prog, ForcedRng(1)))
    lp = TOKEN_LM.logprobs([()])[0]
    lq = lp / 1.7 - np.logaddexp.reduce(lp / 1.7)
    assert logw == pytest.approx(lp[1] - lq[1], abs=1e-12)
    c = prog.trace[0]
    assert (c.value, c.log_p, c.log_q) == (1, pytest.approx(lp[1]), pytest.approx(lq[1]))


def test_sample_without_proposal_adds_nothing_and_observe_adds_log_p() -> None:
    class P(ppllm.Program):
        async def step(self):
            await self.sample(Categorical([0.2, 0.8]))
            await self.observe(Categorical([0.1, 0.9]), 0)
            self.finish()

    p = P()
    assert answer_now(run_step(p, ForcedRng(1))) == pytest.approx(math.log(0.1))
    assert [c.kind for c in p.trace] == ["sample", "observe"]


def test_twist_is_undone_at_the_next_step_and_on_finish() -> None:
    class Twisty(ppllm.Program):
        def __init__(self):
            self.t = 0

        async def step(self):
            self.t += 1
            self.twist(float(self.t))
            if self.t == 3:
                self.factor(10.0)
                self.finish()

    p = Twisty()
    incs = [answer_now(run_step(p, ForcedRng(0))) for _ in range(3)]
    # step 1: +1; step 2: −1 + 2; step 3: −2 + 3 + 10, then the final twist (3) is undone.
    assert incs == [1.0, 1.0, 8.0]
    assert sum(incs) == 10.0  # only the factor remains: twists leave the target alone


def test_clone_is_independent_but_shares_the_lm() -> None:
    p = FewAs()
    answer_now(run_step(p, SeededRng(1)))
    q = p.clone()
    answer_now(run_step(q, SeededRng(2)))
    assert q.lm is p.lm
    assert len(q.trace) == 2 and len(p.trace) == 1
    assert p.done == 1 and q.done == 2


@pytest.mark.parametrize("program", [NoRepeat, FewAs, LatentTopic])
def test_score_trace_is_the_target_density(program) -> None:
    """exp(score_trace)/Z equals the exact posterior probability of the trace."""
    exact = enumerate_program(program(), key=str)
    proto = program()
    for seed in range(5):
        p = proto.clone()
        logw = run_to_end(p, SeededRng(seed), 10)
        log_gamma = ppllm.score_trace(proto, p.trace)
        # weight = log γ − Σ log q of the sampled choices
        assert log_gamma == pytest.approx(logw + sum(c.log_q for c in p.trace), abs=1e-12)
        if log_gamma > -math.inf:
            assert math.exp(log_gamma - exact.log_Z) == pytest.approx(exact.probs[str(p)], abs=1e-12)


def test_replay_reproduces_the_recorded_values() -> None:
    p = NoRepeat()
    run_to_end(p, SeededRng(4), 10)
    r = ppllm.replay(NoRepeat(), p.trace)
    run_to_end(r, SeededRng(99), 10)
    assert [c.value for c in r.trace] == [c.value for c in p.trace]
    assert str(r) == str(p)


class NaNDist(Distribution):
    async def sample(self, rng):
        return Draw(0, float("nan"))

    async def log_prob(self, value):
        return float("nan")


def test_nan_log_probability_is_a_clear_error() -> None:
    class P(ppllm.Program):
        async def step(self):
            await self.sample(NaNDist())

    with pytest.raises(ppllm.WeightError, match="NaN log-probability"):
        ppllm.smc(P(), 2, seed=0)

    class Q(ppllm.Program):
        async def step(self):
            await self.observe(NaNDist(), 1)

    with pytest.raises(ppllm.WeightError, match="NaNDist returned a NaN"):
        ppllm.smc(Q(), 2, seed=0)


def test_nan_factor_is_a_clear_error() -> None:
    class P(ppllm.Program):
        async def step(self):
            self.factor(float("nan"))

    with pytest.raises(ppllm.WeightError, match="factor gave a NaN log-weight"):
        ppllm.smc(P(), 2, seed=0)


def test_step_that_raises_names_particle_step_and_cause() -> None:
    class Boom(ppllm.Program):
        async def step(self):
            raise KeyError("missing-thing")

    with pytest.raises(ppllm.ProgramError, match=r"particle 0 at step 0 raised KeyError: 'missing-thing'"):
        ppllm.smc(Boom(), 3, seed=0)


def test_awaiting_something_else_is_a_clear_error() -> None:
    import asyncio

    class Sleepy(ppllm.Program):
        async def step(self):
            await asyncio.sleep(0)

    with pytest.raises(ppllm.ProgramError, match="may only await ppllm primitives"):
        ppllm.smc(Sleepy(), 1, seed=0)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_bad_particle_count_is_a_clear_error(n) -> None:
    with pytest.raises(ValueError, match="n_particles must be a positive integer"):
        ppllm.smc(NoRepeat(), n, seed=0)


def test_prompt_outside_the_vocabulary_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOKEN_LM.context([0, 7])
    with pytest.raises(ValueError, match="not in the toy vocabulary"):
        TOKEN_LM.context("abz")


def test_missing_seed_is_an_error() -> None:
    with pytest.raises(ValueError, match="seed is required"):
        ppllm.smc(NoRepeat(), 2)


def test_pyro_and_numpyro_distributions_draw_through_the_particle_rng() -> None:
    import numpyro.distributions as ndist
    import pyro.distributions as pdist
    import torch

    class Mix(ppllm.Program):
        async def step(self):
            self.a = await self.sample(pdist.Categorical(torch.tensor([0.3, 0.7])))
            self.b = await self.sample(ndist.Bernoulli(probs=0.4))
            self.c = await self.sample(pdist.Normal(0.0, 1.0))
            self.d = await self.sample(ndist.Normal(0.0, 1.0))
            self.finish()

    runs = [ppllm.smc(Mix(), 3, seed=11) for _ in range(2)]
    vals = [[(p.a, p.b, p.c, p.d) for p in r.particles] for r in runs]
    assert vals[0] == vals[1]
    assert all(math.isfinite(float(v)) for row in vals[0] for v in row)


def test_the_fast_sample_record_equals_the_choice_constructor_field_for_field():
    """`_sampled` builds a `Choice` without its frozen `__init__`; it must set every field,
    so a field added to `Choice` cannot be silently missing from the records."""
    import dataclasses

    from ppllm.program import _sampled

    fast = _sampled("3/1", 7, -0.5, -0.25, True)
    want = Choice("3/1", 7, -0.5, -0.25, latent=True)
    assert fast == want and hash(fast) == hash(want) and repr(fast) == repr(want)
    assert set(vars(fast)) == {f.name for f in dataclasses.fields(Choice)}


def test_broken_twin_a_record_missing_a_field_fails_the_field_check():
    import dataclasses

    fast = object.__new__(Choice)
    fast.__dict__.update(address="3/1", value=7, log_p=-0.5, log_q=-0.25, latent=True)  # no kind
    assert set(vars(fast)) != {f.name for f in dataclasses.fields(Choice)}


def test_a_clone_state_keeps_the_particle_and_drops_the_running_step():
    """`_ParticleState.copied` (what `clone` starts from): every field kept but the step's
    weight, stream and policy, with an `extras` of its own."""
    import dataclasses

    from ppllm.program import _ParticleState

    running = _ParticleState(trace=None, n_choices=3, twist=0.5, finished=True, step_logw=2.0, t=4,
                             counter=2, rng=object(), replay={"a": 1}, extras={"x": 1}, policy=object())
    got = running.copied()
    assert got == _ParticleState(trace=None, n_choices=3, twist=0.5, finished=True, t=4, counter=2,
                                 replay={"a": 1}, extras={"x": 1})
    assert got.extras is not running.extras
    assert set(vars(got)) == {f.name for f in dataclasses.fields(_ParticleState)}


class _History(ppllm.Program):
    def __init__(self, alias: bool = False, nested: bool = False):
        self.steps, self.scores = ["a", "b"], [0.5, 1.0]
        self.pick = len  # a function: kept as it is, as deepcopy keeps it
        if alias:
            self.same = self.steps  # two names for one list: the copy must keep that
        if nested:
            self.log = {"steps": self.steps}

    async def step(self):
        self.finish()


@pytest.mark.parametrize("alias,nested", [(False, False), (True, False), (False, True)])
def test_a_clone_of_flat_lists_equals_a_deepcopy_and_keeps_aliasing(alias, nested) -> None:
    p = _History(alias, nested)
    q = p.clone()
    assert q.steps == p.steps and q.scores == p.scores and q.steps is not p.steps and q.pick is len
    q.steps.append("c")
    assert p.steps == ["a", "b"]  # independent
    if alias:
        assert q.same is q.steps
    if nested:
        assert q.log["steps"] is q.steps


def test_broken_twin_a_flat_copy_that_ignores_aliasing_loses_it(monkeypatch) -> None:
    import ppllm.program as program_module

    monkeypatch.setattr(program_module, "_flat_copy",
                        lambda values: {k: list(v) if type(v) is list else v for k, v in values.items()})
    q = _History(alias=True).clone()
    assert q.same is not q.steps  # what the aliasing check above catches
