"""Allocators and coverage: exact Beta updates and decay, pass@k against brute force, Thompson
selection frequencies against P(i ∈ top-B) by Monte Carlo, and one-line errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm

from ppllm.rng import SeededRng
from ppllm.runs.allocators import (
    BetaThompson,
    ClosestToHalf,
    Uniform,
    beta_update,
    decay,
    information,
    make_allocator,
)
from ppllm.runs.coverage import coverage_curve, fit_power_law, pass_at_k, verifier_ceiling


# ---------------------------------------------------------------------- Beta posteriors
def test_a_batch_update_equals_sequential_single_updates() -> None:
    rewards = [1.0, 0.0, 0.25, 1.0, 0.5]
    a, b = beta_update(2.0, 3.0, rewards)
    sa, sb = 2.0, 3.0
    for r in rewards:
        sa, sb = beta_update(sa, sb, [r])
    assert (a, b) == (sa, sb) == (2.0 + 2.75, 3.0 + 2.25)


def test_the_allocator_update_is_the_beta_update_without_decay() -> None:
    alloc = BetaThompson(alpha0=1.0, beta0=2.0)
    state = alloc.update(alloc.init(3), {1: [1, 1, 0], 2: [0.5]})
    assert state["alpha"] == [1.0, 3.0, 1.5] and state["beta"] == [2.0, 3.0, 2.5]
    # broken twin: an update that counts a fractional reward as a full success differs
    assert beta_update(1.0, 2.0, [0.5]) != (2.0, 2.0)


def test_decay_without_data_returns_to_the_prior_geometrically() -> None:
    a0, b0, rho = 1.0, 1.0, 0.8
    alloc = BetaThompson(alpha0=a0, beta0=b0, rho_fast=rho)
    state = {"alpha": [11.0], "beta": [5.0], "rounds": 0}
    for m in range(1, 6):
        state = alloc.update(state, {})
        assert state["alpha"][0] == pytest.approx(a0 + 10.0 * rho**m, abs=1e-12)
        assert state["beta"][0] == pytest.approx(b0 + 4.0 * rho**m, abs=1e-12)
    assert decay(1.0, 1.0, 1.0, 1.0, 0.5) == (1.0, 1.0)  # the prior is the fixed point
    assert decay(7.0, 3.0, 1.0, 1.0, 1.0) == (7.0, 3.0)  # ρ = 1: plain Beta–Bernoulli


def test_eig_depends_on_the_count_not_only_on_the_mean() -> None:
    p = np.array([0.5, 0.5])
    a, b = np.array([1.0, 50.0]), np.array([1.0, 50.0])
    eig = information("eig", p, a, b, 8)
    assert eig[0] > 10 * eig[1]  # the unknown prompt teaches far more than the well-known one
    var = information("variance", p, a, b, 8)
    assert var[0] == var[1]  # closest-to-1/2 scores cannot tell them apart
    nd = information("nondegenerate", np.array([0.5, 0.99]), a, b, 4)
    assert nd[0] == pytest.approx(1 - 2 * 0.5**4) and nd[1] == pytest.approx(1 - 0.99**4 - 0.01**4)


def test_thompson_selection_matches_the_top_b_probability() -> None:
    """Selection frequency of each prompt = P(i ∈ top-B of Beta draws) (by an independent
    Monte Carlo), within 4.42 binomial standard errors: a two-sided false-failure rate of
    1e-5 per prompt, 5e-5 for the 5 prompts."""
    alloc = BetaThompson(score="variance")  # p(1−p): top-B = the B draws closest to 1/2
    state = {"alpha": [1.0, 2.0, 5.0, 9.0, 3.0], "beta": [1.0, 8.0, 5.0, 1.0, 3.0], "rounds": 0}
    B, runs = 2, 4000
    counts = np.zeros(5)
    for s in range(runs):
        for i in alloc.allocate(state, B, SeededRng(s)):
            counts[i] += 1
    gen = np.random.default_rng(12345)
    draws = gen.beta(np.array(state["alpha"]), np.array(state["beta"]), size=(200_000, 5))
    score = draws * (1 - draws)
    top = np.argsort(-score, axis=1, kind="stable")[:, :B]
    expected = np.array([(top == i).any(axis=1).mean() for i in range(5)])
    z = norm.ppf(1 - 1e-5 / 2)
    se = np.sqrt(expected * (1 - expected) / runs)
    assert (np.abs(counts / runs - expected) < z * se + 2e-3).all(), (counts / runs, expected)
    # broken twin: picking by the posterior mean instead of a draw is deterministic, and misses
    means = np.array(state["alpha"]) / (np.array(state["alpha"]) + np.array(state["beta"]))
    greedy = set(np.argsort(-(means * (1 - means)), kind="stable")[:B])
    assert not np.allclose([float(i in greedy) for i in range(5)], expected, atol=0.05)


def test_allocators_are_functions_of_seed_round_and_state() -> None:
    for alloc in (Uniform(), BetaThompson(), ClosestToHalf(mode="threshold")):
        state = alloc.init(20)
        picks = [alloc.allocate(state, 5, SeededRng(7)) for _ in range(2)]
        assert picks[0] == picks[1] and len(set(picks[0])) == len(picks[0]) >= 1
        assert all(0 <= i < 20 for i in picks[0])


# ---------------------------------------------------------------------- pass@k
def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (c correct) that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force(n) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_at_large_n() -> None:
    from fractions import Fraction

    got = pass_at_k(2_000, 3, 1_000)
    exact = 1 - Fraction(math.comb(1_997, 1_000), math.comb(2_000, 1_000))
    assert got == pytest.approx(float(exact), rel=1e-12)
    # broken twin: the naive ratio of binomials in floating point cannot even be formed
    with pytest.raises(OverflowError):
        float(math.comb(1_997, 1_000)) / float(math.comb(2_000, 1_000))


def test_coverage_curve_and_power_law_fit() -> None:
    a, b = -2.0, -0.5
    ks = [1, 2, 4, 8, 16, 32]
    cov = [math.exp(a * k**b) for k in ks]
    fa, fb = fit_power_law(ks, cov)
    assert fa == pytest.approx(a) and fb == pytest.approx(b)
    curve = coverage_curve([(10, 1), (10, 5), (10, 0)], [1, 5, 10])
    assert curve["coverage"][0] == pytest.approx((0.1 + 0.5 + 0) / 3)
    assert curve["coverage"][-1] == pytest.approx(2 / 3)
    assert all(lo <= m <= hi for lo, m, hi in zip(curve["low"], curve["coverage"], curve["high"], strict=True))


def test_verifier_ceiling() -> None:
    # a perfect verifier: accuracy 1 whenever p > 0; FPR > 0 caps it
    assert verifier_ceiling([1.0], [0.0], [0.2]) == 1.0
    assert verifier_ceiling([0.9], [0.1], [0.2]) == pytest.approx(0.18 / (0.18 + 0.08))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: BetaThompson(group_size=0), "group_size must be a positive integer, got 0"),
        (lambda: BetaThompson(alpha0=0.0), "the Beta prior needs α > 0 and β > 0"),
        (lambda: BetaThompson(rho_fast=1.5), r"rho_fast must be in \(0, 1\], got 1.5"),
        (lambda: BetaThompson(rho_slow=0.0), r"rho_slow must be in \(0, 1\], got 0.0"),
        (lambda: BetaThompson(score="bogus"), "unknown information score 'bogus'"),
        (lambda: beta_update(1.0, 1.0, [0.5, 1.2]), r"rewards must lie in \[0, 1\], got 1.2 at position 1"),
        (lambda: pass_at_k(5, 2, 6), "k = 6 is larger than the number of samples n = 5"),
        (lambda: pass_at_k(5, 7, 2), "c = 7 correct is more than the n = 5 samples"),
        (lambda: make_allocator("nonesuch"), "unknown allocator 'nonesuch'"),
        (lambda: ClosestToHalf(mode="middle"), "mode must be 'top_k' or 'threshold'"),
        (lambda: Uniform().allocate(Uniform().init(3), 0, SeededRng(0)), "prompts per round must be a positive integer"),
    ],
)
def test_bad_allocation_input_is_named(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------- self-consistency
def test_okg_step_on_a_case_computed_by_hand() -> None:
    """Two questions with two answers each. Q0 α = (1, 1): h = 1/2, and one more vote for
    either answer gives Beta(2, 1) with P(θ > 1/2) = 3/4: gain 1/4. Q1 α = (3, 1): h = 7/8;
    a vote for the leader gives (4, 1): 15/16, gain 1/16; for the other, (3, 2): P = 11/16,
    h = 11/16, a loss. OKG takes the larger optimistic gain: Q0."""
    from ppllm.runs.self_consistency import argmax_probability, okg_gain, okg_pick

    assert argmax_probability([2, 1])[0] == pytest.approx(3 / 4, abs=1e-12)
    assert argmax_probability([3, 2])[0] == pytest.approx(11 / 16, abs=1e-12)
    assert okg_gain([1, 1]) == pytest.approx(1 / 4, abs=1e-12)
    assert okg_gain([3, 1]) == pytest.approx(1 / 16, abs=1e-12)
    assert okg_pick([[3, 1], [1, 1]]) == 1
    # three options go through the Monte Carlo estimate: symmetric counts give 1/3 each
    mc = argmax_probability([2.0, 2.0, 2.0], n_samples=60_000)
    assert np.abs(mc - 1 / 3).max() < 4.42 * math.sqrt((1 / 3) * (2 / 3) / 60_000)  # 1e-5 per option


def test_beta_early_stopping() -> None:
    from ppllm.runs.self_consistency import beta_should_stop

    assert not beta_should_stop([1])  # one vote settles nothing at 95 %
    assert beta_should_stop([5])  # Beta(6, 1): P(θ > 1/2) = 1 − 2⁻⁶
    assert not beta_should_stop([5, 4, 1])
    assert beta_should_stop([12, 2, 1])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        beta_should_stop([1], confidence=1.0)


def test_online_budgets_go_where_the_curve_still_rises() -> None:
    from ppllm.runs.self_consistency import fit_sc_curve, online_budgets

    a, b = fit_sc_curve([1, 4, 9, 16], [norm.cdf(0.5 * math.sqrt(k) - 0.2) for k in [1, 4, 9, 16]])
    assert (a, b) == pytest.approx((0.5, -0.2), abs=1e-9)
    easy, hard = (3.0, 1.0), (0.4, -0.5)  # settled at once / still rising at 64
    budgets = online_budgets([easy, hard], [1.0, 1.0], average=20)
    assert budgets[0] == 4 and budgets[1] == 36  # the easy bucket keeps the minimum
    with pytest.raises(ValueError, match="average budget must be in"):
        online_budgets([easy], [1.0], average=100)


def test_coverage_of_a_results_directory(tmp_path) -> None:
    import json

    from ppllm.runs.coverage import coverage_of_run, plot_coverage

    rows = [{"prompt": 0, "correct": c} for c in (True, False, False, False)]
    rows += [{"prompt": 1, "correct": c} for c in (False, False, True, True)]
    (tmp_path / "particles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curve = coverage_of_run(tmp_path)
    assert curve["k"] == [1, 2, 4] and curve["problems"] == 2
    assert curve["coverage"] == pytest.approx([(pass_at_k(4, 1, k) + pass_at_k(4, 2, k)) / 2 for k in (1, 2, 4)])
    assert plot_coverage(curve, tmp_path / "c.png").stat().st_size > 0
    (tmp_path / "particles.jsonl").write_text(json.dumps({"prompt": 0, "text": "x"}) + "\n")
    assert coverage_of_run(tmp_path) is None  # no `correct` column: nothing to say
