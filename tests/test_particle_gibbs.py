"""Exact (tier A): one conditional SMC sweep leaves p·Φ_T invariant, checked by enumeration.

For a ratio-weighted toy program, π(x) ∝ p(x)·Φ_T(x) over complete trajectories. For each
reference x, the oracle enumerates the sweep's randomness (fresh particles' draws, the
pinned multinomial resampling) and the final draw of the new reference ∝ W in closed
form, which gives the Markov kernel K(x, y). The test checks Σ_x π(x) K(x, y) = π(y) to
1e-10 for N ∈ {2, 3}, with particles of equal and of varying length (the reference may
finish before or after the fresh particles). Twins that must fail the same assertion:
the reference's ancestor not pinned (it can be resampled away), and the reference slot
carrying no weight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scored_toys import AB_LM, ABE_LM, Scored, tokens_of

from ppllm.engine import Engine
from ppllm.exact import enumerate_paths, enumerate_program
from ppllm.kernels import particle_gibbs as pg
from ppllm.population import Trajectory
from ppllm.rng import as_rng
from ppllm.testing.twins import csmc_step_unpinned

TOL = 1e-10
LMS = {"fixed": AB_LM, "varying": ABE_LM}


def references(prog) -> dict:
    """Every complete trajectory as a reference, with its probability under π."""
    refs, mass = {}, {}
    for q, ref in enumerate_paths(lambda rng: pg.record_trajectory(prog, rng)):
        x = tokens_of(ref.final)
        refs[x] = ref
        mass[x] = mass.get(x, 0.0) + q * math.exp(sum(ref.log_incs))
    Z = sum(mass.values())
    return {x: (refs[x], m / Z) for x, m in mass.items()}


def kernel_row(prog, ref, n: int) -> dict:
    """K(ref, ·): the law of the new reference after one conditional sweep."""
    row: dict = {}
    for q, (pop, _) in enumerate_paths(lambda rng: pg.sweep(prog, n, rng, Engine(), reference=ref)):
        for p, w in zip(pop.programs, pop.W, strict=True):
            row[tokens_of(p)] = row.get(tokens_of(p), 0.0) + q * float(w)
    return row


def assert_invariant(lm, n: int, weigh_reference: bool = True) -> None:
    prog = Scored(lm, mode="ratio")
    pi = references(prog)
    exact = enumerate_program(prog, key=tokens_of).probs
    assert max(abs(pi[x][1] - exact[x]) for x in exact) < TOL  # the recorded references are π
    pushed: dict = {}
    for ref, px in pi.values():
        if not weigh_reference:
            ref = Trajectory(ref.states, tuple(0.0 for _ in ref.log_incs))
        for y, k in kernel_row(prog, ref, n).items():
            pushed[y] = pushed.get(y, 0.0) + px * k
    gap = max(abs(pushed.get(y, 0.0) - exact.get(y, 0.0)) for y in set(pushed) | set(exact))
    assert gap < TOL, f"πK differs from π by {gap:.3e}"


@pytest.mark.parametrize("lm,n", [("fixed", 2), ("fixed", 3), ("varying", 2), ("varying", 3)])
def test_conditional_sweep_leaves_target_invariant(lm: str, n: int) -> None:
    assert_invariant(LMS[lm], n)


@pytest.mark.parametrize("lm", ["fixed", "varying"])
def test_twin_reference_not_pinned_fails(monkeypatch, lm: str) -> None:
    monkeypatch.setattr(pg, "csmc_step", csmc_step_unpinned)
    with pytest.raises(AssertionError, match="πK differs"):
        assert_invariant(LMS[lm], 2)


@pytest.mark.parametrize("lm", ["fixed", "varying"])
def test_twin_reference_unweighted_fails(lm: str) -> None:
    with pytest.raises(AssertionError, match="πK differs"):
        assert_invariant(LMS[lm], 2, weigh_reference=False)


# ---------------------------------------------------------------------- behaviour
def test_reference_survives_and_forks_continue_from_its_prefix() -> None:
    prog = Scored(ABE_LM, max_len=3, mode="ratio")
    for seed in range(50):  # a reference that runs all three steps
        first, _ = pg.sweep(prog, 4, as_rng(seed), Engine())
        ref = first.trajectory(0)
        if len(ref.states) == 4:
            break
    assert tokens_of(ref.final) == tokens_of(first.programs[0])
    assert len(ref.states) == len(ref.log_incs) + 1 == len(tokens_of(ref.final)) + 1
    forks = 0
    for weighting in ("ratio", "puri"):
        for seed in range(8):
            pop, records = pg.sweep(prog, 4, as_rng(seed), Engine(), ref, weighting)
            assert tokens_of(pop.programs[0]) == tokens_of(ref.final)  # pinned to slot 0
            assert all(r.ancestors[0] == 0 for r in records if r.resampled)
            for j in range(1, 4):  # descendants of slot 0's step-0 state share its first token
                a = j
                for r in reversed(records):
                    a = int(r.ancestors[a]) if r.resampled else a
                if a == 0:
                    assert tokens_of(pop.programs[j])[0] == tokens_of(ref.final)[0]
                    forks += 1
    assert forks > 0


def test_run_budget_and_selection() -> None:
    prog = Scored(ABE_LM, max_len=3, mode="ratio")
    post = pg.run(prog, 4, 3, seed=2, select="argmax")
    assert post.kernel == "particle_gibbs" and len(post.extras["references"]) == 3
    assert post.budget["generations"] == 12
    assert math.isfinite(post.log_Z)
    scores = np.array([p.prefix_score for p in post.particles])
    assert post.extras["selected"] == int(np.argmax(scores))
    # The reference slot makes no LM requests: with fixed-length particles (2 steps, one
    # request each) a conditional sweep of 3 asks 2·2, an unconditional one 3·2.
    fixed = Scored(AB_LM, mode="ratio")
    free, cond = Engine(), Engine()
    pop, _ = pg.sweep(fixed, 3, as_rng(0), free)
    pg.sweep(fixed, 3, as_rng(1), cond, pop.trajectory(1))
    assert (free.stats.requests, cond.stats.requests) == (6, 4)
    puri = pg.run(Scored(ABE_LM, max_len=3), 4, 2, seed=2, weighting="puri", select="sample")
    assert puri.extras["answer"] == puri.extras["references"][-1]
    # ratio weighting selects by weight by default: the answer is the last reference drawn
    default = pg.run(prog, 4, 3, seed=2)
    assert default.config["select"] == "sample" and default.extras["answer"] == default.extras["references"][-1]
