"""Result objects: estimators with known answers, genealogy, the ArviZ layout and netCDF."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr

import ppllm
from ppllm.population import DegenerateWeights
from ppllm.results import (
    Chains,
    ParticleRecord,
    Posterior,
    StepInfo,
    Steps,
    load_arviz,
    posteriors_from_arviz,
    save_netcdf,
    to_arviz,
    variable_array,
)
from ppllm.testing.toys import TOKEN_LM, NoRepeat
from ppllm_models.toy_text import ToyText


def hand_built(values, weights, **kw) -> Posterior:
    with np.errstate(divide="ignore"):
        return Posterior(particles=list(values), log_weights=np.log(np.asarray(weights, float)) + 3.0, log_Z=-1.5, **kw)


def ident(x):
    return x


# ---------------------------------------------------------------------- estimators
def test_weights_are_normalised_and_ess_is_inverse_sum_of_squares() -> None:
    post = hand_built([1, 2, 2, 3], [0.1, 0.2, 0.3, 0.4])
    assert np.allclose(post.weights, [0.1, 0.2, 0.3, 0.4])
    assert post.ess == pytest.approx(1 / (0.01 + 0.04 + 0.09 + 0.16))


def test_expectation_distribution_and_votes_on_known_answers() -> None:
    post = hand_built([1, 2, 2, 3], [0.1, 0.2, 0.3, 0.4])
    assert post.expectation(float) == pytest.approx(0.1 + 0.4 + 0.6 + 1.2)
    assert post.distribution(ident) == pytest.approx({2: 0.5, 3: 0.4, 1: 0.1})
    assert list(post.distribution(ident)) == [2, 3, 1]  # largest mass first
    assert post.map_value(ident) == 2
    # unweighted majority ignores weights: three particles of 4 say 5
    post2 = hand_built([5, 5, 5, 7], [0.1, 0.1, 0.1, 0.7])
    assert post2.majority_vote(ident) == 5
    assert post2.majority_vote(ident, weighted=True) == 7


def test_mbr_minimises_expected_loss_and_differs_from_map() -> None:
    post = hand_built([0, 10, 11], [0.45, 0.3, 0.25])
    # risks under |a − b|: 0 → 5.75, 10 → 4.75, 11 → 5.25
    assert post.mbr(lambda a, b: abs(a - b), ident) == 10
    assert post.map_value(ident) == 0
    assert post.mbr(lambda a, b: float(a != b), ident) == 0  # 0-1 loss gives the MAP


def test_expectation_ignores_undefined_values_of_ruled_out_particles() -> None:
    post = hand_built([1.0, math.nan, 3.0], [0.5, 0.0, 0.5])
    assert post.expectation(float) == pytest.approx(2.0)
    assert math.nan not in post.distribution(ident)


def test_degenerate_posterior_explains_itself() -> None:
    post = Posterior(["x", "y"], np.array([-np.inf, -np.inf]), -math.inf, message="constraint killed all")
    assert not post.ok
    with pytest.raises(DegenerateWeights, match="constraint killed all"):
        _ = post.weights
    assert "constraint killed all" in post.summary()
    assert post.collapse(ppllm.SeededRng(0)) == (None, -math.inf)


def test_search_posterior_without_evidence_is_still_usable() -> None:
    post = Posterior(["a", "b"], np.zeros(2), math.nan, kernel="beam_search")
    assert post.ok and post.distribution() == {"a": 0.5, "b": 0.5}


def test_nan_log_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Posterior(["a"], np.array([math.nan]), 0.0)


def test_summary_is_readable() -> None:
    post = ppllm.smc(NoRepeat(max_tokens=3), 8, seed=1, ess_threshold=1.0)
    text = str(post)
    assert text.startswith("smc: 8 particles, log Ẑ = ")
    assert "resampled" in text and "surviving lineages" in text and "budget: " in text
    top_value = next(iter(post.distribution()))
    assert repr(top_value) in text


# ---------------------------------------------------------------------- genealogy
def steps_of(*ancestor_rows) -> dict:
    steps = [
        StepInfo(t, 1.0, not np.array_equal(a, np.arange(len(a))), np.array(a), 0.0, len(a))
        for t, a in enumerate(ancestor_rows)
    ]
    return {"diagnostics": Steps(steps), "ancestry": [s.ancestors for s in steps]}


def test_genealogy_traces_each_final_particle_back() -> None:
    post = hand_built("abcd", np.ones(4), **steps_of([0, 1, 2, 3], [0, 0, 2, 2], [1, 1, 3, 3]))
    G = post.genealogy()
    assert G.tolist() == [[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 3, 3], [0, 1, 2, 3]]
    assert post.n_lineages().tolist() == [2, 2, 2, 4]


def test_genealogy_composes_backwards_not_forwards() -> None:
    # Broken twin: composing the ancestor maps forwards gives a different (wrong) lineage here.
    A1, A2 = np.array([1, 2, 2, 0]), np.array([3, 3, 0, 1])
    post = hand_built("abcd", np.ones(4), **steps_of(A1, A2))
    right = post.genealogy()[0]
    assert right.tolist() == A1[A2].tolist() == [0, 0, 1, 2]
    assert A2[A1].tolist() != right.tolist()


def test_genealogy_of_a_real_run_matches_its_resampling_record() -> None:
    post = ppllm.smc(NoRepeat(max_tokens=3), 6, seed=4, ess_threshold=1.0)
    G = post.genealogy()
    assert G.shape == (len(post.steps) + 1, 6)
    for k, s in enumerate(post.steps, start=1):
        assert np.array_equal(G[k - 1], np.asarray(s.ancestors)[G[k]])
    assert post.resampled[:-1].all()  # every step but possibly the last (once all have finished)
    assert post.n_lineages()[-1] == 6 and post.n_lineages()[0] <= 6


# ---------------------------------------------------------------------- to_arviz
def three_runs():
    return [ppllm.smc(ToyText(TOKEN_LM, prompt="b", max_tokens=4), n, seed=s) for s, n in [(0, 6), (1, 6), (2, 4)]]


VARS = {"answer": lambda p: p.answer, "length": lambda p: len(p.answer), "banned": lambda p: p.n_banned}


def test_to_arviz_layout() -> None:
    runs = three_runs()
    idata = to_arviz(runs, VARS, seed=5)
    assert set(idata.groups()) == {"posterior", "sample_stats", "particles", "smc_stats"}
    post = idata["posterior"]
    assert dict(post.sizes) == {"chain": 3, "draw": 6}
    assert post["answer"].dtype.kind == "U" and post["length"].dtype == np.int64
    assert np.allclose(post.attrs["log_marginal_likelihood"], [r.log_Z for r in runs])
    ss = idata["sample_stats"]
    assert np.allclose(ss["log_weight"].values[0], runs[0].log_weights)
    assert np.isnan(ss["log_weight"].values[2, 4:]).all()  # 4 particles, padded to 6
    assert (post["particle"].values[2, 4:] == -1).all()
    chosen = post["particle"].values[0]
    assert list(post["answer"].values[0]) == [runs[0].particles[i].answer for i in chosen]
    st = idata["smc_stats"]
    T = max(len(r.steps) for r in runs)
    assert dict(st.sizes) == {"chain": 3, "step": T, "draw": 6}
    for c, r in enumerate(runs):
        assert np.allclose(st["ess"].values[c, : len(r.steps)], r.ess_history)
        assert np.isnan(st["ess"].values[c, len(r.steps) :]).all()
        assert st["log_marginal_likelihood"].values[c] == pytest.approx(r.log_Z)
        assert st["budget_lm_calls"].values[c] == r.budget["lm_calls"]
    assert list(idata["particles"]["text"].values[0]) == runs[0].texts()


def test_posterior_group_is_an_unweighted_resample_of_the_weights() -> None:
    # Systematic resampling gives particle i between ⌊N·W_i⌋ and ⌈N·W_i⌉ copies.
    W = np.array([0.02, 0.31, 0.05, 0.17, 0.0, 0.08, 0.22, 0.03, 0.07, 0.05])
    names = list("abcdefghij")

    def within(counts: dict[str, int]) -> bool:
        return all(math.floor(10 * w) <= counts[v] <= math.ceil(10 * w) for v, w in zip(names, W, strict=True))

    for seed in range(5):
        assert within(_counts(hand_built(names, W), seed))
    # Broken twin: a resample that ignores the weights fails the same check.
    assert not within(_counts(hand_built(names, np.ones(10)), 0))


def _counts(post: Posterior, seed: int) -> dict[str, int]:
    vals = list(post.to_arviz({"v": str}, seed=seed)["posterior"]["v"].values[0])
    return {v: vals.count(v) for v in map(str, post.particles)}


def test_netcdf_round_trip_matches(tmp_path) -> None:
    runs = three_runs()
    idata = to_arviz(runs, VARS)
    path = tmp_path / "posterior.nc"
    save_netcdf(idata, path)
    back = load_arviz(str(path))
    assert set(back.groups()) == set(idata.groups())
    for g in idata.groups():
        xr.testing.assert_identical(idata[g], back[g])
    rebuilt = posteriors_from_arviz(back)
    for r, b in zip(runs, rebuilt, strict=True):
        assert b.log_Z == pytest.approx(r.log_Z)
        assert np.array_equal(b.genealogy(), r.genealogy())
        assert b.distribution(lambda p: p.answer) == pytest.approx(r.distribution(lambda p: p.answer))
        assert b.summary().splitlines()[0] == r.summary().splitlines()[0]
        assert isinstance(b.particles[0], ParticleRecord)


def test_missing_values_and_integers_survive_the_round_trip(tmp_path) -> None:
    post = hand_built(["x", "y", "z"], [0.2, 0.3, 0.5])
    answers = {"x": 104, "y": None, "z": 7}
    idata = post.to_arviz({"answer": lambda p: answers[p]})
    save_netcdf(idata, tmp_path / "p.nc")
    back = posteriors_from_arviz(load_arviz(str(tmp_path / "p.nc")))[0]
    assert [p.answer for p in back.particles] == [104, None, 7]
    assert back.distribution(lambda p: p.answer) == pytest.approx({7: 0.5, None: 0.3, 104: 0.2})


def test_variable_array_types() -> None:
    assert variable_array([1, 2]).dtype == np.int64
    assert variable_array([1, None]).dtype == np.float64
    assert variable_array([True, False]).dtype == bool
    assert variable_array(["a", None]).tolist() == ["a", ""]


def test_reserved_variable_names_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        to_arviz(three_runs()[:1], {"text": str})


def test_records_are_json_ready() -> None:
    post = hand_built(["x", "y"], [1.0, 0.0])
    rows = post.records({"n": len})
    assert json.loads(json.dumps(rows)) == [
        {"index": 0, "text": "x", "log_weight": 3.0, "weight": 1.0, "n": 1},
        {"index": 1, "text": "y", "log_weight": "-inf", "weight": 0.0, "n": 1},
    ]


# ---------------------------------------------------------------------- chains
def test_chains_go_to_arviz_as_chains_and_rhat_detects_disagreement() -> None:
    import arviz as az

    gen = np.random.default_rng(0)
    good = Chains([list(gen.normal(size=500)) for _ in range(4)], stats={"accept": np.ones((4, 500))})
    idata = good.to_arviz()
    assert dict(idata["posterior"].sizes) == {"chain": 4, "draw": 500}
    assert "accept" in idata["sample_stats"]
    assert float(az.rhat(idata)["x"]) < 1.02
    assert float(az.ess(idata)["x"]) > 1000
    assert "x" in az.summary(idata).index
    # Broken twin: chains stuck in different places must show R-hat well above 1.
    bad = Chains([list(gen.normal(loc=3 * c, size=500)) for c in range(4)])
    assert float(az.rhat(bad.to_arviz())["x"]) > 1.5


def test_chains_of_dicts_and_programs() -> None:
    ch = Chains([[{"a": 1, "b": "u"}, {"a": 2, "b": "v"}], [{"a": 3, "b": "w"}]])
    post = ch.to_arviz()["posterior"]
    assert post["a"].values[0].tolist() == [1, 2] and post["a"].values[1, 0] == 3
    assert post["a"].values[1, 1] == -1  # integers are padded with −1
    assert post["b"].values.tolist() == [["u", "v"], ["w", ""]]
    assert ch.expectation(lambda d: d["a"]) == pytest.approx(2.0)
    assert ch.distribution(lambda d: d["b"]) == pytest.approx({"u": 1 / 3, "v": 1 / 3, "w": 1 / 3})
    runs = three_runs()
    ch2 = Chains([r.particles for r in runs[:2]])
    assert list(ch2.to_arviz({"answer": lambda p: p.answer})["posterior"].data_vars) == ["answer"]


def test_degenerate_and_stepless_runs_round_trip(tmp_path) -> None:
    dead = Posterior(["x", "y"], np.full(2, -np.inf), -math.inf, message="dead at step 3")
    bare = Posterior(["u", "v", "w"], np.zeros(3), 0.0, kernel="best_of_n")
    idata = to_arviz([dead, bare], {"n": len})
    assert (idata["posterior"]["particle"].values[0] == -1).all()  # nothing to resample
    save_netcdf(idata, tmp_path / "d.nc")
    back = posteriors_from_arviz(load_arviz(str(tmp_path / "d.nc")))
    assert not back[0].ok and back[0].message == "dead at step 3" and back[0].log_Z == -math.inf
    assert back[1].ok and back[1].steps == [] and back[1].distribution() == pytest.approx({"u": 1 / 3, "v": 1 / 3, "w": 1 / 3})
