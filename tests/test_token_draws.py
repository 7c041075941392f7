"""A round's draws from logits (`draw_tokens`) equal the host sampler's, row by row, on both
paths (NumPy on the CPU, torch as accelerators run it), small and blocked vocabularies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppllm.lm import sampling_torch, transform_logprobs
from ppllm.lm import token_draws as td
from ppllm.lm.token_draws import draw_tokens
from ppllm.rng import categorical_from_uniform


def _logits(seed: int, b: int, v: int) -> np.ndarray:
    gen = np.random.default_rng(seed)
    x = gen.normal(scale=4.0, size=(b, v)).astype(np.float32)
    x[:, gen.choice(v, size=v // 7, replace=False)] = -np.inf  # tokens the model rules out
    return x


def _host(x: np.ndarray, u: np.ndarray, temperature: float, mask, top_p):
    """The host sampler on float64 log-probabilities: what every backend must agree with."""
    out = []
    for row, ub in zip(x.astype(np.float64), u, strict=True):
        lp = row - np.logaddexp.reduce(row)
        lq = transform_logprobs(lp, temperature, mask, top_p)
        tok = categorical_from_uniform(np.exp(lq), ub)
        out.append((tok, lq[tok], lp[tok]))
    return out


CASES = [(1.0, False, None), (0.6, False, None), (1.0, True, None), (1.7, True, None), (1.0, False, 0.8)]


@pytest.mark.parametrize("numpy_on_cpu", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("vocab", [25, 5000], ids=["small", "blocked"])
@pytest.mark.parametrize("temperature,masked,top_p", CASES)
def test_draws_equal_the_host_sampler(numpy_on_cpu, vocab, temperature, masked, top_p, monkeypatch) -> None:
    monkeypatch.setattr(sampling_torch, "NUMPY_ON_CPU", numpy_on_cpu)
    x = _logits(0, 48, vocab)
    mask = np.random.default_rng(1).random(vocab) < 0.5 if masked else None
    u = np.random.default_rng(2).random(len(x))
    tok, log_q, log_p = draw_tokens(torch.from_numpy(x), u, temperature,
                                    None if mask is None else torch.from_numpy(mask), top_p)
    want = _host(x, u, temperature, mask, top_p)
    assert tok == [w[0] for w in want]
    assert len(set(tok)) >= min(20, vocab // 3)  # the draws really vary with u
    np.testing.assert_allclose(log_q, [w[1] for w in want], rtol=0, atol=1e-9)
    np.testing.assert_allclose(log_p, [w[2] for w in want], rtol=0, atol=1e-9)


def test_a_mask_whose_tokens_all_underflow_still_draws_from_them() -> None:
    """Allowed tokens 2000 nats below the best one: exp underflows to 0 for all of them, and
    the draw falls back to weights shifted by the allowed maximum (as the host sampler does)."""
    x = np.zeros((3, 40), dtype=np.float32)
    x[:, :5] = 2000.0
    mask = np.arange(40) >= 5
    u = np.array([0.1, 0.5, 0.9])
    tok, log_q, log_p = draw_tokens(torch.from_numpy(x), u, 1.0, torch.from_numpy(mask))
    assert tok == [5 + int(ub * 35) for ub in u]
    np.testing.assert_allclose(log_q, -np.log(35), atol=1e-12)
    assert all(p < -1990 for p in log_p)
    # the check can fail: a draw that lost the mask takes the 2000-nat tokens instead
    assert draw_tokens(torch.from_numpy(x), u, 1.0, None)[0] != [5 + int(ub * 35) for ub in u]


def test_an_empty_mask_and_a_nan_row_are_errors() -> None:
    x = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="every token is masked out"):
        draw_tokens(x, np.array([0.5, 0.5]), 1.0, torch.zeros(10, dtype=torch.bool))
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        draw_tokens(x, np.array([0.5, 0.5]))


@pytest.mark.parametrize("vocab,search", [(25, "python"), (25, "vector"), (5000, "vector")],
                         ids=["small-python", "small-vector", "blocked"])
@pytest.mark.parametrize("u", [0.0, 1.0 - 2**-53])
def test_extreme_uniforms_land_on_possible_tokens(u, vocab, search, monkeypatch) -> None:
    if search == "vector":
        monkeypatch.setattr(td, "_SEARCH_IN_PYTHON", 0)
    x = _logits(3, 16, vocab)
    x[:, -3:] = -np.inf  # the search clamps to the last index at u -> 1: it must step back
    tok, _, _ = draw_tokens(torch.from_numpy(x), np.full(16, u))
    assert np.isfinite(x[np.arange(16), tok]).all()


def test_broken_twin_a_search_that_does_not_step_back_lands_on_an_impossible_token(monkeypatch) -> None:
    def clamps_only(w, threshold):
        return np.minimum((np.cumsum(w, axis=1) <= threshold[:, None]).sum(axis=1), w.shape[1] - 1)

    monkeypatch.setattr(td, "_inverse_cdf", clamps_only)
    monkeypatch.setattr(td, "_SEARCH_IN_PYTHON", 0)
    x = _logits(3, 16, 25)
    x[:, -3:] = -np.inf
    tok, _, _ = draw_tokens(torch.from_numpy(x), np.full(16, 1.0 - 2**-53))
    assert not np.isfinite(x[np.arange(16), tok]).all()


def test_broken_twin_a_python_search_that_does_not_step_back_lands_on_an_impossible_token(monkeypatch) -> None:
    monkeypatch.setattr(td, "_last_possible", lambda w_row: len(w_row) - 1)
    x = _logits(3, 16, 25)
    x[:, -3:] = -np.inf
    tok, _, _ = draw_tokens(torch.from_numpy(x), np.full(16, 1.0 - 2**-53))
    assert not np.isfinite(x[np.arange(16), tok]).all()


def _both_searches(x: np.ndarray, u: np.ndarray, temperature: float, mask, index, monkeypatch):
    """(Python search, vector search) of the same draws."""
    args = (torch.from_numpy(x), u, temperature, None if mask is None else torch.from_numpy(mask), None, index)
    small = draw_tokens(*args)
    with monkeypatch.context() as m:
        m.setattr(td, "_SEARCH_IN_PYTHON", 0)
        vector = draw_tokens(*args)
    return small, vector


@pytest.mark.parametrize("temperature,masked", [(1.0, False), (0.6, False), (1.0, True), (1.7, True)])
@pytest.mark.parametrize("shared", [False, True], ids=["own rows", "shared rows"])
def test_the_python_search_gives_the_vector_search_floats(temperature, masked, shared, monkeypatch) -> None:
    """Bit for bit (tokens, log q, log p), so which search runs never changes a draw."""
    x = _logits(5, 6, 25)
    mask = np.random.default_rng(1).random(25) < 0.5 if masked else None
    index = [5, 0, 0, 3, 1, 2, 4, 5, 5, 0] if shared else None
    u = np.random.default_rng(6).random(len(index) if shared else 6)
    u[:2] = [0.0, 1.0 - 2**-53]
    small, vector = _both_searches(x, u, temperature, mask, index, monkeypatch)
    assert small == vector
    assert len(set(small[0])) >= 3


def test_broken_twin_a_python_search_at_u_instead_of_u_times_the_total_differs(monkeypatch) -> None:
    """The equality can fail: a search that compares u itself with unnormalised weights."""
    x = _logits(5, 6, 25)
    u = np.random.default_rng(6).random(6)
    real = td.bisect_right
    monkeypatch.setattr(td, "bisect_right", lambda cdf, t: real(cdf, t / cdf[-1]))
    small, vector = _both_searches(x, u, 1.0, None, None, monkeypatch)
    assert small != vector


def test_broken_twin_a_block_search_that_forgets_the_earlier_blocks_fails_the_check(monkeypatch) -> None:
    """The equality check can fail: a blocked inverse CDF that searches inside the right
    block without adding the mass of the blocks before it draws other tokens."""

    def forgets_earlier_blocks(w, threshold):
        b, v = w.shape
        blocks = w.reshape(b, v // td._BLOCK, td._BLOCK)
        cum = np.cumsum(blocks.sum(axis=2), axis=1)
        j = np.minimum((cum <= threshold[:, None]).sum(axis=1), cum.shape[1] - 1)
        inner = np.cumsum(blocks[np.arange(b), j], axis=1)  # the bug: no offset
        return j * td._BLOCK + np.minimum((inner <= threshold[:, None]).sum(axis=1), td._BLOCK - 1)

    x = _logits(0, 48, 8 * td._BLOCK)
    u = np.random.default_rng(2).random(len(x))
    want = [w[0] for w in _host(x, u, 1.0, None, None)]
    assert draw_tokens(torch.from_numpy(x), u)[0] == want
    monkeypatch.setattr(td, "_inverse_cdf", forgets_earlier_blocks)
    assert draw_tokens(torch.from_numpy(x), u)[0] != want


@pytest.mark.parametrize("numpy_on_cpu", [True, False], ids=["numpy", "torch"])
def test_draws_that_share_rows_by_index_equal_draws_on_the_repeated_rows(numpy_on_cpu, monkeypatch) -> None:
    monkeypatch.setattr(sampling_torch, "NUMPY_ON_CPU", numpy_on_cpu)
    x = torch.from_numpy(_logits(3, 3, 25))
    index = [2, 0, 0, 1, 2, 2, 0]
    u = np.random.default_rng(4).random(len(index))
    shared = draw_tokens(x, u, 0.8, None, None, index)
    assert shared == draw_tokens(x[index], u, 0.8, None, None)
    assert shared != draw_tokens(x[[0] * len(index)], u, 0.8, None, None)  # the twin: every draw on row 0
