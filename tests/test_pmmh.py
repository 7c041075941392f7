"""Statistical (tier B): SMC's evidence and PMMH's θ-posterior on a linear-Gaussian model.

The model (tests/lgssm.py) has an exact Kalman likelihood, so the reference θ-posterior is
a fine grid (4001 points) of prior × Kalman likelihood. Thresholds are two-sided z-tests at
a false-failure rate of 1e-4 each (|z| < 3.89), with the standard error of the Monte Carlo
mean (SMC: over independent runs; PMMH: ArviZ's MCSE, which accounts for autocorrelation).
Seeds are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as pdist
import pytest
import torch
from lgssm import AdaptedLinearGaussian, LinearGaussian, kalman_log_evidence, simulate

from ppllm.kernels import pmmh

Z_CRIT = 3.89  # two-sided, false-failure rate 1e-4
YS = simulate(20, 0.5, seed=11)
pytestmark = pytest.mark.slow


def f64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


PRIOR = {"theta": pdist.Uniform(f64(-1.0), f64(1.0))}


def grid_posterior() -> tuple[float, float]:
    grid = np.linspace(-0.9995, 0.9995, 4001)
    lp = np.array([kalman_log_evidence(YS, g) for g in grid])
    w = np.exp(lp - lp.max())
    w /= w.sum()
    mean = float(np.sum(w * grid))
    return mean, math.sqrt(float(np.sum(w * (grid - mean) ** 2)))


@pytest.mark.parametrize("program", [LinearGaussian, AdaptedLinearGaussian])
def test_smc_evidence_is_unbiased_against_kalman(program) -> None:
    """Ẑ/Z over 300 independent runs (N = 16) has mean 1 (tested on Ẑ, not log Ẑ)."""
    import ppllm

    log_Z = kalman_log_evidence(YS, 0.5)
    ratios = np.array([math.exp(ppllm.smc(program(YS, theta=0.5), 16, seed=s).log_Z - log_Z) for s in range(300)])
    se = ratios.std(ddof=1) / math.sqrt(len(ratios))
    assert abs(ratios.mean() - 1.0) < Z_CRIT * se, (ratios.mean(), se)


def test_twin_evidence_from_the_wrong_parameter_fails() -> None:
    """The same check rejects Ẑ computed at a wrong θ (the check can fail)."""
    import ppllm

    log_Z = kalman_log_evidence(YS, 0.5)
    ratios = np.array([math.exp(ppllm.smc(AdaptedLinearGaussian(YS, theta=0.2), 16, seed=s).log_Z - log_Z)
                       for s in range(300)])
    se = ratios.std(ddof=1) / math.sqrt(len(ratios))
    assert abs(ratios.mean() - 1.0) > Z_CRIT * se


def test_pmmh_posterior_matches_the_kalman_grid() -> None:
    import arviz as az

    mean, sd = grid_posterior()
    proposal = {"theta": pdist.Normal(f64(mean), f64(1.5 * sd))}  # from a pilot: a fixed proposal
    chains = pmmh.run(AdaptedLinearGaussian(YS), PRIOR, n_chains=4, n_draws=700, n_particles=12,
                      proposal="independent", proposal_dists=proposal, burn_in=20, seed=0)
    idata = chains.to_arviz()
    got = float(idata.posterior["theta"].mean())
    mcse = float(az.mcse(idata, var_names=["theta"])["theta"])
    assert abs(got - mean) < Z_CRIT * mcse, (got, mean, mcse)
    assert float(az.rhat(idata, var_names=["theta"])["theta"]) < 1.01
    sd_got = float(idata.posterior["theta"].std())
    assert abs(sd_got - sd) < 0.1 * sd  # the spread too, to 10 %
    # every draw keeps the text of its run: a complete particle of the model
    assert all(d["particle"].finished for c in chains.samples for d in c)
    assert {"theta", "log_Z"} <= set(idata.posterior.data_vars) and "accepted" in idata.sample_stats


def test_twin_without_the_hastings_correction_fails(monkeypatch) -> None:
    """Dropping q(θ)/q(θ') makes the chain sample ∝ π(θ)·q(θ): far too narrow here."""
    mean, sd = grid_posterior()
    monkeypatch.setattr(pmmh, "proposal_log_ratio", lambda setup, theta, new: 0.0)
    chains = pmmh.run(AdaptedLinearGaussian(YS), PRIOR, n_chains=4, n_draws=300, n_particles=12,
                      proposal="independent", proposal_dists={"theta": pdist.Normal(f64(mean), f64(sd))},
                      burn_in=20, seed=0)
    draws = np.array([d["theta"] for c in chains.samples for d in c])
    assert draws.std() < 0.85 * sd  # the correct chain is within 10 % of sd (test above)


def test_pmmh_random_walk_agrees() -> None:
    import arviz as az

    mean, sd = grid_posterior()
    chains = pmmh.run(AdaptedLinearGaussian(YS), PRIOR, n_chains=4, n_draws=400, n_particles=12,
                      scale=2.4 * sd, burn_in=50, seed=1)
    idata = chains.to_arviz()
    got = float(idata.posterior["theta"].mean())
    mcse = float(az.mcse(idata, var_names=["theta"])["theta"])
    assert abs(got - mean) < Z_CRIT * mcse, (got, mean, mcse)
    assert 0.1 < float(chains.acceptance_rate().mean()) < 0.9


def test_bad_input_is_named() -> None:
    prog = AdaptedLinearGaussian(YS)
    with pytest.raises(ValueError, match="scale of 'theta' must be > 0"):
        pmmh.run(prog, PRIOR, n_draws=2, seed=0, scale=0.0)
    with pytest.raises(ValueError, match="prior of 'theta' has no density"):
        pmmh.run(prog, {"theta": "uniform"}, n_draws=2, seed=0)
    with pytest.raises(ValueError, match="no attribute 'phi'"):
        pmmh.run(prog, {"phi": pdist.Normal(f64(0.0), f64(1.0))}, n_draws=2, seed=0)
    with pytest.raises(ValueError, match="n_particles must be a positive integer"):
        pmmh.run(prog, PRIOR, n_draws=2, seed=0, n_particles=0)
