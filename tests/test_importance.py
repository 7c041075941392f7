"""Exact (tier A): importance sampling is properly weighted, checked by enumeration.

For each toy program and N ∈ {1, 2, 3}, the oracle enumerates every draw of every particle
and the final collapse: E[Ẑ] = Z and E[Ẑ · 1{collapse = x}] = γ(x), to 1e-10. The broken
twin reports the geometric mean of the weights as Ẑ and must fail. `score_traces` gives
log γ of recorded traces, batched.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from toy_programs import PROGRAMS, NoRepeat

from ppllm.engine import Engine
from ppllm.exact import enumerate_kernel, enumerate_program
from ppllm.kernels import importance
from ppllm.testing.twins import importance_finish_geometric

TOL = 1e-10
pytestmark = pytest.mark.filterwarnings("ignore:all .* particles have weight zero")


def assert_exact(program, n: int) -> None:
    exact = enumerate_program(program, key=str)
    Z = math.exp(exact.log_Z)
    km = enumerate_kernel(lambda rng: importance.run(program, n, rng=rng).collapse(rng.child("c")), key=str)
    assert abs(km.total_prob - 1.0) < 1e-9
    assert abs(km.expected_Z - Z) < TOL, f"E[Ẑ] = {km.expected_Z!r} but Z = {Z!r}"
    worst = max(abs(km.measure.get(k, 0.0) / Z - exact.probs.get(k, 0.0)) for k in set(km.measure) | set(exact.probs))
    assert worst < TOL, f"collapsed output differs from the posterior by {worst:.3e}"


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_importance_sampling_is_properly_weighted(name: str, n: int) -> None:
    assert_exact(PROGRAMS[name](), n)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_twin_geometric_mean_evidence_fails(monkeypatch, name: str) -> None:
    monkeypatch.setattr(importance, "finish", importance_finish_geometric)
    with pytest.raises(AssertionError, match="E\\[Ẑ\\]"):
        assert_exact(PROGRAMS[name](), 2)


def test_score_traces_batches_and_equals_the_target_density() -> None:
    prog = NoRepeat(max_tokens=3)
    exact = enumerate_program(prog, key=str)
    post = importance.run(prog, 12, seed=1)
    engine = Engine()
    got = importance.score_traces(prog, [p.trace for p in post.particles], engine)
    for p, lg in zip(post.particles, got, strict=True):
        if lg > -math.inf:
            assert math.exp(lg - exact.log_Z) == pytest.approx(exact.probs[str(p)], abs=1e-12)
    # one batched backend call per round, not one per trace
    assert engine.stats.lm_calls <= 3 < engine.stats.requests
    assert np.isfinite(got).any()
