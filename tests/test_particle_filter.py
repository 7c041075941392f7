"""Exact (tier A): what particle filtering targets, in both weightings, by enumeration.

weighting="ratio": the collapsed output (one particle ∝ W, carrying Ẑ) satisfies
    E[Ẑ · 1{out = x}] = p(x) · Φ_T(x)   and   E[Ẑ] = Z        (to 1e-10, N ∈ {1, 2, 3})
Twin: the previous step's twist not undone (intermediate potentials pile up) must fail.

weighting="puri" (the published procedure). Derivation of the identity tested here. Let
G_t(x) = odds(s(x_{1:min(t, T(x))}))^{1/τ}: a finished particle keeps its final score, so
G_final(x) = G_{T(x)}(x) applies again at every later round. Let L bound every length.
(1) Fixed horizon L: run L rounds of "extend live particles, weight every particle by G_t,
    multinomial resampling, reset weights". This is a bootstrap particle filter for the
    Feynman–Kac model with potentials G_1..G_L (finished states are absorbing), so with
    Ẑ_L = ∏_k mean_i G_k(x^i) and a uniform pick `out` from the final population,
    E[Ẑ_L · 1{out = x}] = p(x) ∏_{t≤T(x)} G_t(x) · G_final(x)^{L − T(x)}  =: γ_L(x).
(2) The procedure stops after round K, when every particle has finished. Once all are
    finished a round only multiplies Ẑ by mean_i G_final(x^i) and resamples ∝ G_final, so
    E[Ẑ_{k+1} h(out_{k+1}) | rounds ≤ k] = E[Ẑ_k G_final(out_k) h(out_k) | rounds ≤ k].
    Hence M_k = Ẑ_k · G_final(out_k)^{L−k} · 1{out_k = x} is a martingale from round K
    on, and optional stopping at the bounded time K gives
    E[Ẑ_K · G_final(out)^{L−K} · 1{out = x}] = γ_L(x).
(3) select="sample" draws one more time ∝ G_final: carrying Ẑ_K · mean_i G_final(x^i)
    (extras["log_Z_select"]) it is one more round, so the same expectation equals γ_{L+1}.
With equal lengths K = L = T and (2) is the plain statement E[Ẑ 1{out = x}] = p ∏_t G_t.
The puri output differs from p·Φ_T and, with varying lengths, from p ∏_{t≤T} G_t (the
finished re-weighting matters); both differences are asserted. Twin: weights carried
across resampling must fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scored_toys import AB_LM, ABE_LM, Scored, score_of, tokens_of

import ppllm.program as program_mod
from ppllm.exact import enumerate_kernel, enumerate_paths, enumerate_program
from ppllm.kernels import particle_filter as pf
from ppllm.kernels.selection import recorded_score, score_logits
from ppllm.population import Population, logmeanexp
from ppllm.resampling import get_resampler
from ppllm.rewards import EPS

TOL = 1e-10
LMS = {"fixed": AB_LM, "varying": ABE_LM}


def worst_gap(measure: dict, target: dict) -> float:
    return max(abs(measure.get(k, 0.0) - target.get(k, 0.0)) for k in set(measure) | set(target))


# ---------------------------------------------------------------------- ratio
def assert_ratio_exact(lm, n: int, resampler: str, exact=None) -> None:
    prog = Scored(lm, mode="ratio")
    exact = exact or enumerate_program(prog, key=tokens_of)
    Z = math.exp(exact.log_Z)

    def collapsed(rng):
        post = pf.run(prog, n, rng=rng, weighting="ratio", resampler=resampler)
        return post.collapse(rng.child("collapse"))

    km = enumerate_kernel(collapsed, key=tokens_of)
    assert abs(km.total_prob - 1.0) < 1e-9
    assert abs(km.expected_Z - Z) < TOL, f"E[Ẑ] = {km.expected_Z!r}, Z = {Z!r}"
    gap = worst_gap({k: v / Z for k, v in km.measure.items()}, exact.probs)
    assert gap < TOL, f"collapsed output differs from p·Φ_T by {gap:.3e}"


@pytest.mark.parametrize(
    "lm,n,resampler",
    [("fixed", 1, "multinomial"), ("fixed", 2, "systematic"), ("fixed", 3, "multinomial"),
     ("varying", 1, "systematic"), ("varying", 2, "multinomial")],
)
def test_ratio_weighting_targets_p_times_final_potential(lm: str, n: int, resampler: str) -> None:
    assert_ratio_exact(LMS[lm], n, resampler)


def _run_step_keeping_twist(program, rng):
    """BROKEN: the previous step's twist is never taken out, so potentials multiply up."""
    pp = program._pp
    pp.rng, pp.counter, pp.step_logw = rng, 0, 0.0
    await_ = program.step()
    return _finish_step(program, await_)


async def _finish_step(program, coro):
    await coro
    pp = program._pp
    pp.twist = 0.0  # forgotten, never subtracted
    pp.t += 1
    pp.rng = None
    return pp.step_logw


@pytest.mark.parametrize("lm,n", [("fixed", 2), ("varying", 2)])
def test_twin_twist_not_undone_fails(monkeypatch, lm: str, n: int) -> None:
    import ppllm.engine

    exact = enumerate_program(Scored(LMS[lm], mode="ratio"), key=tokens_of)  # the correct target
    monkeypatch.setattr(ppllm.engine, "run_step", _run_step_keeping_twist)
    with pytest.raises(AssertionError):
        assert_ratio_exact(LMS[lm], n, "multinomial", exact)
    monkeypatch.setattr(ppllm.engine, "run_step", program_mod.run_step)
    assert_ratio_exact(LMS[lm], n, "multinomial", exact)  # the same harness passes when fixed


# ---------------------------------------------------------------------- puri
def log_G(tokens: tuple[int, ...], t: int, tau: float) -> float:
    s = min(max(score_of(tokens[: min(t, len(tokens))]), EPS), 1 - EPS)
    return (math.log(s) - math.log1p(-s)) / tau


def puri_target(lm, horizon: int, tau: float, finished_reweighting: bool = True) -> dict:
    """γ_L(x) = p(x) ∏_{t≤T} G_t(x) · G_final(x)^{L−T} (or without the last factor)."""
    p = enumerate_program(Scored(lm, mode="none"), key=tokens_of).probs  # Z = 1: p itself
    out = {}
    for x, px in p.items():
        rounds = horizon if finished_reweighting else len(x)
        out[x] = px * math.exp(sum(log_G(x, t, tau) for t in range(1, rounds + 1)))
    return out


def puri_measure(lm, n: int, tau: float, select: str | None) -> dict:
    """E[Ẑ_K · G_final(out)^{L−K} · 1{out = x}]: uniform collapse (select=None) or the selection."""
    prog, L = Scored(lm, mode="none"), 2
    measure: dict = {}
    for q, post in enumerate_paths(lambda rng: pf.run(
            prog, n, rng=rng, weighting="puri", tau=tau, select=select or "argmax")):
        K = post.extras["rounds"]
        if select == "sample":
            chosen = [(post.particles[post.extras["selected"]], 1.0)]
            log_Z = post.extras["log_Z_select"]
        else:
            chosen = [(x, 1.0 / n) for x in post.particles]  # the uniform collapse, in expectation
            log_Z = post.log_Z
        for x, w in chosen:
            key = tokens_of(x)
            extra = (L - K) * log_G(key, len(key), tau)
            measure[key] = measure.get(key, 0.0) + q * w * math.exp(log_Z + extra)
    return measure


@pytest.mark.parametrize(
    "lm,n,tau", [("fixed", 1, 1.0), ("fixed", 2, 0.5), ("fixed", 3, 1.0), ("varying", 1, 1.0),
                 ("varying", 2, 1.0), ("varying", 2, 0.7)]
)
def test_puri_equals_its_implied_target(lm: str, n: int, tau: float) -> None:
    gap = worst_gap(puri_measure(LMS[lm], n, tau, None), puri_target(LMS[lm], 2, tau))
    assert gap < TOL, f"puri output differs from p·∏G_t·G_final^(L−T) by {gap:.3e}"


@pytest.mark.parametrize("lm,n", [("fixed", 2), ("varying", 2)])
def test_puri_sample_selection_is_one_more_round(lm: str, n: int) -> None:
    gap = worst_gap(puri_measure(LMS[lm], n, 1.0, "sample"), puri_target(LMS[lm], 3, 1.0))
    assert gap < TOL, f"select='sample' differs from γ_(L+1) by {gap:.3e}"


def test_puri_is_not_the_ratio_target_nor_the_plain_product() -> None:
    """Documented bias: the puri measure is neither p·Φ_T nor p ∏_{t≤T} G_t (lengths vary)."""
    got = puri_measure(ABE_LM, 2, 1.0, None)
    norm = sum(got.values())
    plain = puri_target(ABE_LM, 2, 1.0, finished_reweighting=False)
    ratio = enumerate_program(Scored(ABE_LM, mode="ratio"), key=tokens_of).probs
    assert worst_gap(got, plain) > 1e-3
    assert worst_gap({k: v / norm for k, v in got.items()}, ratio) > 1e-3


def _resample_carrying_weights(self, rng, resampler="multinomial"):
    """BROKEN: copies ancestors and keeps their weights instead of resetting them."""
    W = np.exp(self.log_w - np.max(self.log_w))
    A = get_resampler(resampler)(rng, W / W.sum(), self.n)
    self.log_Z_resampled += logmeanexp(self.log_w)
    self.programs = [self.programs[a].clone() for a in A]
    self.log_w = self.log_w[A]  # bug: puri resets the weights
    self.ancestors = A
    return A


@pytest.mark.parametrize("lm", ["fixed", "varying"])
def test_twin_puri_carrying_weights_fails(monkeypatch, lm: str) -> None:
    monkeypatch.setattr(Population, "resample", _resample_carrying_weights)
    with pytest.raises(AssertionError):
        test_puri_equals_its_implied_target(lm, 2, 1.0)


# ---------------------------------------------------------------------- behaviour
def test_puri_keeps_finished_particles_and_selects_the_best_final_score() -> None:
    post = pf.run(Scored(ABE_LM, max_len=3), 6, seed=4, weighting="puri")
    assert all(p.finished for p in post.particles)
    scores = post.extras["final_scores"]
    assert post.extras["selected"] == int(np.argmax(scores))
    assert post.extras["answer"] == str(post.particles[post.extras["selected"]])
    assert post.budget["generations"] == 6 and post.budget["lm_calls"] > 0
    assert all(s.resampled for s in post.steps) and len(post.steps) == post.extras["rounds"]


def test_same_seed_same_result_and_bad_arguments() -> None:
    a = pf.run(Scored(ABE_LM, max_len=3), 5, seed=11, weighting="puri")
    b = pf.run(Scored(ABE_LM, max_len=3), 5, seed=11, weighting="puri")
    assert [str(p) for p in a.particles] == [str(p) for p in b.particles]
    with pytest.raises(ValueError, match="weighting"):
        pf.run(Scored(), 2, seed=0, weighting="cumulative")
    with pytest.raises(ValueError, match="tau"):
        pf.run(Scored(), 2, seed=0, weighting="puri", tau=0.0)
    with pytest.raises(AttributeError, match="prefix_score"):
        score_logits([object()], recorded_score)  # type: ignore[list-item]
