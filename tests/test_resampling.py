"""Resamplers: unbiased offspring counts (exact and statistical) and deterministic properties.

Statistical tests here share one false-failure budget: FALSE_FAILURE_RATE over the whole
module, split evenly (Bonferroni) over every z-test it runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from ppllm.exact import enumerate_paths
from ppllm.resampling import RESAMPLERS, get_resampler, multinomial, systematic
from ppllm.rng import SeededRng

FALSE_FAILURE_RATE = 1e-4
WEIGHTS = {
    "uneven": np.array([0.5, 0.25, 0.15, 0.07, 0.03]),
    "with_zeros": np.array([0.0, 0.6, 0.0, 0.3, 0.1]),
    "near_uniform": np.array([0.21, 0.19, 0.2, 0.2, 0.2]),
    "one_dominant": np.array([0.97, 0.01, 0.01, 0.005, 0.005]),
}
SIZES = [1, 3, 5, 8]


def expected_counts(resampler, W: np.ndarray, n: int) -> np.ndarray:
    """E[offspring counts] computed exactly by enumerating the resampler's randomness."""
    total = np.zeros(len(W))
    for prob, A in enumerate_paths(lambda rng: resampler(rng, W, n)):
        total += prob * np.bincount(A, minlength=len(W))
    return total


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wname", sorted(WEIGHTS))
@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_offspring_counts_unbiased_exactly(scheme: str, wname: str, n: int) -> None:
    W = WEIGHTS[wname]
    np.testing.assert_allclose(expected_counts(RESAMPLERS[scheme], W, n), n * W, atol=1e-12)


def biased_systematic(rng, W, n):
    """BROKEN: systematic resampling with the uniform fixed at 1/2 (deterministic, biased)."""
    cdf = np.cumsum(W)
    return np.searchsorted(cdf, (np.arange(n) + 0.5) / n, side="right")


def test_twin_biased_resampler_fails_exact_count_test() -> None:
    W = WEIGHTS["uneven"]
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(expected_counts(biased_systematic, W, 3), 3 * W, atol=1e-12)


# ------------------------------------------------------------------ statistical
REPS = 4000
N_Z_TESTS = len(RESAMPLERS) * len(WEIGHTS) * 5  # one z-test per particle
Z_THRESHOLD = norm.isf(FALSE_FAILURE_RATE / (2 * N_Z_TESTS))


def count_z_scores(resampler, W: np.ndarray, n: int, seed: int) -> np.ndarray:
    """z = (mean count − n W_i) / (sd / √REPS) per particle, over REPS seeded resamplings."""
    root = SeededRng(seed)
    counts = np.array(
        [np.bincount(resampler(root.child("rep", r), W, n), minlength=len(W)) for r in range(REPS)]
    )
    mean, sd = counts.mean(0), counts.std(0, ddof=1)
    z = np.zeros(len(W))
    fixed = sd == 0  # a count that never varies must equal its expectation exactly
    z[fixed] = np.where(np.abs(mean[fixed] - n * W[fixed]) < 1e-12, 0.0, np.inf)
    z[~fixed] = (mean[~fixed] - n * W[~fixed]) / (sd[~fixed] / math.sqrt(REPS))
    return z


@pytest.mark.parametrize("wname", sorted(WEIGHTS))
@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_offspring_counts_unbiased_statistically(scheme: str, wname: str) -> None:
    z = count_z_scores(RESAMPLERS[scheme], WEIGHTS[wname], 5, seed=20261129)
    assert np.all(np.abs(z) < Z_THRESHOLD), f"z-scores {z} exceed {Z_THRESHOLD:.2f}"


def squared_weight_multinomial(rng, W, n):
    """BROKEN: resamples ∝ W² (over-favours heavy particles)."""
    W2 = W**2 / np.sum(W**2)
    return np.array([rng.categorical(W2) for _ in range(n)])


def test_twin_biased_resampler_fails_statistical_test() -> None:
    z = count_z_scores(squared_weight_multinomial, WEIGHTS["uneven"], 5, seed=20261129)
    assert np.any(np.abs(z) >= Z_THRESHOLD)


# ------------------------------------------------------------------ deterministic properties
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wname", sorted(WEIGHTS))
def test_systematic_counts_within_floor_and_ceil(wname: str, n: int) -> None:
    W = WEIGHTS[wname]
    for _, A in enumerate_paths(lambda rng: systematic(rng, W, n)):
        c = np.bincount(A, minlength=len(W))
        assert np.all(c >= np.floor(n * W - 1e-12)) and np.all(c <= np.ceil(n * W + 1e-12)), c


def test_twin_multinomial_breaks_the_systematic_bound() -> None:
    """Multinomial counts are unbiased but not within floor/ceil: the bound test can fail."""
    W = WEIGHTS["near_uniform"]
    violated = False
    for _, A in enumerate_paths(lambda rng: RESAMPLERS["multinomial"](rng, W, 5)):
        c = np.bincount(A, minlength=len(W))
        violated |= bool(np.any(c > np.ceil(5 * W + 1e-12)))
    assert violated


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_zero_weight_never_chosen_and_one_hot_takes_all(scheme: str) -> None:
    resample = RESAMPLERS[scheme]
    W = WEIGHTS["with_zeros"]
    for _, A in enumerate_paths(lambda rng: resample(rng, W, 6)):
        assert np.all(W[A] > 0)
    one_hot = np.array([0.0, 0.0, 1.0, 0.0])
    for _, A in enumerate_paths(lambda rng: resample(rng, one_hot, 4)):
        assert A.tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_float_rounding_never_picks_a_zero_weight_tail(scheme: str) -> None:
    # cumsum of these ends just below 1; the trailing zero-weight particle must stay unpicked.
    W = np.array([0.1] * 9 + [0.1 - 1e-16, 0.0])
    W = W / W.sum()
    for seed in range(200):
        A = RESAMPLERS[scheme](SeededRng(seed), W, 11)
        assert A.max() < 10


def test_unknown_resampler_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown resampler 'bogus'"):
        get_resampler("bogus")


class _PlainStream(SeededRng):
    """A seeded stream that multinomial does not recognise: it draws through `categorical`."""


def _plain(rng: SeededRng) -> _PlainStream:
    return _PlainStream(rng.seed, rng.key, rng.state)


def _many_weights():
    gen = np.random.default_rng(5)
    for n in (1, 2, 5, 16, 33):
        for _ in range(20):
            W = gen.dirichlet(np.full(n, 0.3))
            W[gen.random(n) < 0.2] = 0.0
            if W.sum() > 0:
                yield W / W.sum()


def test_multinomial_on_a_seeded_stream_draws_what_categorical_draws() -> None:
    """The plain-Python inverse CDF gives the counts `SeededRng.categorical` gives, draw for draw."""
    for k, W in enumerate(_many_weights()):
        for n in (1, 7, 32):
            fast = multinomial(SeededRng(k).child("r", n), W, n)
            plain = multinomial(_plain(SeededRng(k).child("r", n)), W, n)
            assert np.array_equal(fast, plain), (k, n)


def test_broken_twin_a_fast_draw_one_uniform_late_differs(monkeypatch) -> None:
    import ppllm.resampling as resampling

    real = resampling._inverse_cdf_list
    late = {"last": 0.5}

    def one_late(probs, u):
        previous, late["last"] = late["last"], u
        return real(probs, previous)

    monkeypatch.setattr(resampling, "_inverse_cdf_list", one_late)
    assert any(not np.array_equal(multinomial(SeededRng(k).child("r", 32), W, 32),
                                  multinomial(_plain(SeededRng(k).child("r", 32)), W, 32))
               for k, W in enumerate(_many_weights()))
