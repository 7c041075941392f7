"""The device sampler equals the host sampler: transform and inverse-CDF draw, row by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppllm.lm import sampling_torch, transform_logprobs
from ppllm.lm.sampling_torch import inverse_cdf, transform_logprobs_torch
from ppllm.rng import categorical_from_uniform


@pytest.fixture(params=[True, False], ids=["numpy", "torch"], autouse=True)
def _both_draw_paths(request, monkeypatch):
    """Every check runs on the CPU's NumPy inverse CDF and on the torch one accelerators use."""
    monkeypatch.setattr(sampling_torch, "NUMPY_ON_CPU", request.param)


def _rows(seed: int, b: int = 16, v: int = 50) -> np.ndarray:
    gen = np.random.default_rng(seed)
    x = gen.normal(scale=3.0, size=(b, v))
    x[:, gen.choice(v, size=7, replace=False)] = -np.inf  # zero-probability tokens
    return x - np.log(np.exp(x).sum(1, keepdims=True))


@pytest.mark.parametrize("temperature,masked,top_p", [(1.0, False, None), (0.5, False, None),
                                                      (1.0, True, None), (1.0, False, 0.7),
                                                      (2.0, True, 0.9)])
def test_transform_and_draw_match_the_host(temperature, masked, top_p) -> None:
    lp = _rows(0)
    mask = np.random.default_rng(1).random(lp.shape[1]) < 0.6 if masked else None
    us = np.random.default_rng(2).random(len(lp))
    lq = transform_logprobs_torch(torch.from_numpy(lp), temperature,
                                  None if mask is None else torch.from_numpy(mask), top_p)
    got = inverse_cdf(lq, torch.from_numpy(us)).tolist()
    for b in range(len(lp)):
        want_lq = transform_logprobs(lp[b], temperature, mask, top_p)
        np.testing.assert_allclose(lq[b].numpy(), want_lq, atol=1e-12)
        assert got[b] == categorical_from_uniform(np.exp(want_lq), us[b])


def test_draws_never_land_on_a_zero_probability_token() -> None:
    lp = _rows(3, b=64)
    us = np.linspace(0, 1, 64, endpoint=False)
    got = inverse_cdf(torch.from_numpy(lp), torch.from_numpy(us))
    assert np.isfinite(lp[np.arange(64), got.numpy()]).all()


def test_an_empty_mask_is_an_error() -> None:
    with pytest.raises(ValueError, match="every token is masked out"):
        transform_logprobs_torch(torch.zeros(2, 5, dtype=torch.float64), mask=torch.zeros(5, dtype=torch.bool))
