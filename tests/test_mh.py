"""Exact (tier A): every MH move leaves its target invariant, πK = π, built by enumeration.

For a toy program, the states are its paths (complete traces, or paths of at most H steps
for SMC's intermediate target π_H, twists pending). π comes from enumerating the program;
K(x, ·) from enumerating the move's own randomness (the step it picks, the regenerated
suffix, the acceptance) applied to x. Checked to 1e-10 for suffix regeneration (uniform,
last-step and last-m rules), independent MH and single-site moves, on a token-level program
with a hard constraint and a tempered proposal (NoRepeat), a chunk-level program with a
soft reward and twists (FewAs), and one with a discrete pyro latent (LatentTopic). Twins
that must fail: the proposal correction left out, the length change ignored, the factor /
twist bookkeeping forgotten. Resample-move SMC keeps E[Ẑ] = Z and the collapsed target.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from toy_programs import FewAs, LatentTopic, NoRepeat

import ppllm
from ppllm.engine import Engine
from ppllm.exact import enumerate_kernel, enumerate_paths, enumerate_program, trace_key
from ppllm.kernels import mh, resample_move
from ppllm.population import Population
from ppllm.testing.twins import (
    SuffixMHIgnoringLength,
    SuffixMHWithoutCorrection,
    SuffixMHWithoutFactors,
)

TOL = 1e-10
pytestmark = pytest.mark.filterwarnings("ignore:all .* particles have weight zero")


def paths(prog, horizon: int = 10_000) -> dict:
    """Every path of the program (up to `horizon` steps) with its probability under π_H."""
    out, mass = {}, {}

    def one(rng):
        pop = Population.spawn(prog, 1, store_history=True)
        got = mh.rollout(pop.programs, [rng], [None], Engine(), horizon)
        pop.programs, pop.history = got.programs, got.paths
        return pop.trajectory(0)

    for q, traj in enumerate_paths(one):
        x = trace_key(traj.final)
        out[x] = traj
        mass[x] = mass.get(x, 0.0) + q * math.exp(traj.log_weight)
    Z = sum(mass.values())
    return {x: (out[x], m / Z) for x, m in mass.items() if m > 0}


def kernel_row(prog, traj, move, horizon: int | None) -> dict:
    row: dict = {}

    def moved(rng):
        pop = Population.from_paths(prog, [traj])
        pop.move(move, Engine(), rng, 0, horizon)
        return trace_key(pop.programs[0])

    for q, y in enumerate_paths(moved):
        row[y] = row.get(y, 0.0) + q
    return row


def pushforward(prog, move, horizon: int | None = None) -> tuple[dict, dict, dict]:
    pi = paths(prog, horizon or 10_000)
    pushed: dict = {}
    rows = {}
    for x, (traj, px) in pi.items():
        rows[x] = kernel_row(prog, traj, move, horizon)
        for y, k in rows[x].items():
            pushed[y] = pushed.get(y, 0.0) + px * k
    return {x: p for x, (_, p) in pi.items()}, pushed, rows


def assert_invariant(prog, move, horizon: int | None = None) -> dict:
    pi, pushed, rows = pushforward(prog, move, horizon)
    if horizon is None:  # complete traces: π is the program's posterior
        exact = enumerate_program(prog, key=trace_key).probs
        assert max(abs(pi.get(x, 0.0) - exact.get(x, 0.0)) for x in set(pi) | set(exact)) < TOL
    gap = max(abs(pushed.get(y, 0.0) - pi.get(y, 0.0)) for y in set(pushed) | set(pi))
    assert gap < TOL, f"πK differs from π by {gap:.3e}"
    return rows


PROGRAMS = {
    "token_constraint": lambda: NoRepeat(max_tokens=3),
    "chunk_reward": lambda: FewAs(n_chunks=2),
    "latent_mix": LatentTopic,
}
SMC_PROGRAMS = {"token_constraint": NoRepeat, "chunk_reward": lambda: FewAs(n_chunks=2), "latent_mix": LatentTopic}
MOVES = {
    "suffix_uniform": lambda: mh.SuffixMH(),
    "suffix_last": lambda: mh.SuffixMH(rule="last"),
    "suffix_last_2": lambda: mh.SuffixMH(suffix_steps=2),
    "independent": lambda: mh.IndependentMH(),
}


@pytest.mark.parametrize("move", sorted(MOVES))
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_moves_leave_the_posterior_invariant(name: str, move: str) -> None:
    assert_invariant(PROGRAMS[name](), MOVES[move]())


@pytest.mark.parametrize("move", ["suffix_uniform", "independent"])
def test_moves_leave_the_intermediate_target_invariant(move: str) -> None:
    """π_H after H = 2 of 3 chunks, with the twist of step 2 pending."""
    assert_invariant(FewAs(n_chunks=3), MOVES[move](), horizon=2)


class TemperedProposal(ppllm.Program):
    """A proposal program for NoRepeat: its tokens from the LM at temperature 1.7, no factors."""

    def __init__(self, target: NoRepeat):
        self.lm, self.ctx, self.max_tokens, self.temp = target.lm, target.ctx, target.max_tokens, 1.7

    async def step(self) -> None:
        tok = await self.sample(self.lm.next_token(self.ctx, temperature=self.temp))
        self.ctx = self.ctx + tok
        if tok == self.lm.eos_token_id or len(self.ctx) >= self.max_tokens:
            self.finish()


def test_independent_move_from_a_separate_proposal_program() -> None:
    target = NoRepeat(max_tokens=3)
    assert_invariant(target, mh.IndependentMH(proposal=TemperedProposal(target)))


def test_site_move_on_a_discrete_latent() -> None:
    assert_invariant(LatentTopic(), mh.SiteMH(proposal="prior"))


def test_uniform_suffix_moves_are_irreducible() -> None:
    for make in PROGRAMS.values():
        _, _, rows = pushforward(make(), mh.SuffixMH())
        states = list(rows)
        reach = {x: {y for y, k in rows[x].items() if k > 0} for x in states}
        for x in states:  # transitive closure from x
            seen, todo = {x}, [x]
            while todo:
                for y in reach[todo.pop()]:
                    if y not in seen:
                        seen.add(y)
                        todo.append(y)
            assert seen == set(states)


def test_twin_proposal_correction_left_out_fails() -> None:
    with pytest.raises(AssertionError, match="πK differs"):
        assert_invariant(NoRepeat(max_tokens=3), SuffixMHWithoutCorrection(rule="restart"))


def test_twin_length_change_ignored_fails() -> None:
    with pytest.raises(AssertionError, match="πK differs"):
        assert_invariant(NoRepeat(max_tokens=3), SuffixMHIgnoringLength())


def test_twin_factor_and_twist_bookkeeping_forgotten_fails() -> None:
    with pytest.raises(AssertionError, match="πK differs"):
        assert_invariant(FewAs(n_chunks=2), SuffixMHWithoutFactors())
    with pytest.raises(AssertionError, match="πK differs"):
        assert_invariant(FewAs(n_chunks=3), SuffixMHWithoutFactors(), horizon=2)


# ---------------------------------------------------------------------- resample-move SMC
def assert_smc_exact(program, n: int, **kw) -> None:
    exact = enumerate_program(program, key=str)
    Z = math.exp(exact.log_Z)
    km = enumerate_kernel(lambda rng: resample_move.run(program, n, rng=rng, **kw).collapse(rng.child("c")), key=str)
    assert abs(km.total_prob - 1.0) < 1e-9
    assert abs(km.expected_Z - Z) < TOL, f"E[Ẑ] = {km.expected_Z!r} but Z = {Z!r}"
    worst = max(abs(km.measure.get(k, 0.0) / Z - exact.probs.get(k, 0.0)) for k in set(km.measure) | set(exact.probs))
    assert worst < TOL, f"collapsed output differs from the posterior by {worst:.3e}"


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("name", sorted(SMC_PROGRAMS))
def test_resample_move_smc_keeps_the_evidence_and_the_target(name: str, n: int) -> None:
    """Moves on a schedule that does not depend on the particles: after every step."""
    assert_smc_exact(SMC_PROGRAMS[name](), n, ess_threshold=1.0)
    assert_smc_exact(SMC_PROGRAMS[name](), n, ess_threshold=0.5, move_when="step")


def test_moves_gated_by_an_adaptive_ess_rule_are_not_exact() -> None:
    """Documented gap: moving only when the weights trigger resampling makes the schedule
    depend on the particles, and E[Ẑ] = Z no longer holds exactly (here: ESS < 0.9·N)."""
    with pytest.raises(AssertionError, match="E\\[Ẑ\\]"):
        assert_smc_exact(FewAs(n_chunks=2), 2, ess_threshold=0.9, move_when="resample")


def test_resample_move_twin_fails() -> None:
    with pytest.raises(AssertionError):
        assert_smc_exact(FewAs(n_chunks=2), 2, ess_threshold=1.0, move=SuffixMHWithoutFactors())


# ---------------------------------------------------------------------- behaviour and errors
def test_resample_move_reports_acceptance_and_distinct_particles() -> None:
    post = resample_move.run(NoRepeat(max_tokens=3), 16, seed=0, ess_threshold=1.0, n_moves=2)
    moved = [s for s in post.steps if s.resampled]
    assert moved and all(0.0 <= s.extra["acceptance"] <= 1.0 for s in moved)
    assert all(s.extra["distinct_after"] >= 1 for s in moved)
    assert np.isfinite(post.log_Z)


def test_standalone_chains_and_their_arviz_export() -> None:
    chains = mh.run(NoRepeat(max_tokens=3), n_chains=4, n_draws=30, seed=1)
    assert chains.n_chains == 4 and chains.n_draws == 30
    idata = chains.to_arviz({"length": lambda p: len(str(p))})
    assert dict(idata.posterior.sizes) == {"chain": 4, "draw": 30}
    assert "accepted" in idata.sample_stats
    again = mh.run(NoRepeat(max_tokens=3), n_chains=4, n_draws=30, seed=1)
    assert [[str(p) for p in c] for c in chains.samples] == [[str(p) for p in c] for c in again.samples]


def test_random_walk_site_move_on_a_gaussian_posterior() -> None:
    """x ~ N(0, 1), y = 1.2 observed with N(x, 1) noise: posterior N(0.6, 1/2).

    4 chains × 1500 draws; the mean is within 3.89 MCSE (two-sided, false-failure rate
    1e-4) of 0.6, with MCSE from ArviZ's ESS.
    """
    import arviz as az

    class Gauss(ppllm.Program):
        async def step(self):
            self.x = await self.sample(ppllm.Normal(0.0, 1.0), address="x")
            await self.observe(ppllm.Normal(self.x, 1.0), 1.2)
            self.finish()

    chains = mh.run(Gauss(), n_chains=4, n_draws=1500, seed=3, move="site", rule="random_walk", scale=1.2)
    idata = chains.to_arviz({"x": lambda p: p.x})
    mean = float(idata.posterior["x"].mean())
    mcse = float(az.mcse(idata, var_names=["x"])["x"])
    assert abs(mean - 0.6) < 3.89 * mcse, (mean, mcse)
    assert 0.2 < float(chains.acceptance_rate().mean()) < 0.9


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="n_moves must be a positive integer"):
        resample_move.run(NoRepeat(), 4, seed=0, n_moves=0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        mh.SiteMH(proposal="random_walk", scale=0.0)
    with pytest.raises(ValueError, match="store_history=True"):
        Population.spawn(NoRepeat(), 2).move(mh.SuffixMH(), Engine(), None, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no latent site"):
        mh.run(NoRepeat(), n_chains=2, n_draws=2, seed=0, move="site")
    with pytest.raises(ValueError, match="unknown move"):
        resample_move.run(NoRepeat(), 4, seed=0, move="teleport")
