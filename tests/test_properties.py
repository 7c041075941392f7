"""Property-based tests: weights, resampling and the evidence over log-weights from −inf to
±1e300, and the recipe checker over malformed recipes (never anything but a RecipeError).

Examples come from a fixed seed (tests/conftest.py: derandomize, no database), so CI is
deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ppllm.population import DegenerateWeights, Population, ess, logmeanexp, normalise
from ppllm.recipes import RecipeError
from ppllm.recipes.validate import validate
from ppllm.resampling import RESAMPLERS, get_resampler
from ppllm.rng import SeededRng
from ppllm.testing.toys import NoRepeat

finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
log_weight = st.one_of(finite, st.just(-math.inf), st.floats(min_value=-50, max_value=50))
log_weights = st.lists(log_weight, min_size=1, max_size=40).map(lambda v: np.array(v, dtype=np.float64))


def reference_logmeanexp(v: np.ndarray) -> float:
    """log mean exp with exact summation (math.fsum) after shifting by the maximum."""
    m = max(v)
    if m == -math.inf:
        return -math.inf
    return m + math.log(math.fsum(math.exp(x - m) for x in v) / len(v))


@given(log_weights)
def test_weights_ess_and_evidence_never_nan(v) -> None:
    if np.max(v) == -math.inf:
        assert logmeanexp(v) == -math.inf and ess(v) == 0.0
        try:
            normalise(v)
        except DegenerateWeights:
            return
        raise AssertionError("normalise accepted all-zero weights")
    W = normalise(v)
    assert not np.isnan(W).any() and abs(W.sum() - 1.0) < 1e-12 and (W >= 0).all()
    assert (W[v == -math.inf] == 0).all()
    e = ess(v)
    assert 1.0 - 1e-9 <= e <= len(v) + 1e-9
    lz, ref = logmeanexp(v), reference_logmeanexp(v)
    assert math.isfinite(lz) and abs(lz - ref) <= 1e-12 * max(1.0, abs(ref))


@given(log_weights, st.sampled_from(sorted(RESAMPLERS)), st.integers(0, 2**32))
def test_resamplers_return_valid_counts(v, name, seed) -> None:
    if np.max(v) == -math.inf:
        return
    W = normalise(v)
    A = np.asarray(get_resampler(name)(SeededRng(seed), W, len(v)))
    assert A.shape == (len(v),) and A.dtype.kind in "iu"
    assert A.min() >= 0 and A.max() < len(v)
    assert (W[A] > 0).all(), "a particle of weight zero was drawn"
    if name in ("systematic", "stratified", "residual"):  # low-variance schemes: counts near N·W
        counts = np.bincount(A, minlength=len(v))
        assert (np.abs(counts - len(v) * W) < 2.0 + 1e-9).all()


@given(log_weights, st.integers(0, 2**32))
def test_population_summary_matches_its_parts_and_resampling_keeps_the_evidence(v, seed) -> None:
    pop = Population.spawn(NoRepeat(), len(v))
    pop.log_w = v.copy()
    lz, e = pop.summary()
    if np.max(v) == -math.inf:
        assert lz == -math.inf and e == 0.0
        return
    assert abs(lz - logmeanexp(v)) <= 1e-12 * max(1.0, abs(lz))
    assert abs(e - ess(v)) <= 1e-9 * e
    before = pop.log_Z
    A = pop.resample(SeededRng(seed), "systematic")
    assert len(A) == len(v) and (pop.log_w == 0).all()
    assert abs(pop.log_Z - before) <= 1e-12 * max(1.0, abs(before))  # the evidence moves, unchanged


# ---------------------------------------------------------------------- recipes
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-2, 5), max_size=3))
keys = st.sampled_from(["lm", "vocab", "order", "seed", "path", "args", "name", "n_particles", "budget",
                        "items", "file", "chat", "repeats", "variables", "window", "plots", "served",
                        "resampler", "ess_threshold", "prompt_arg", "x", "", "answer_fn"])
table = st.dictionaries(keys, st.one_of(scalar, st.dictionaries(keys, scalar, max_size=3)), max_size=6)
sections = st.sampled_from(["model", "program", "kernel", "prompts", "run", "reward", "nonsense"])
recipes = st.dictionaries(sections, st.one_of(table, scalar), max_size=6)

GOOD = {
    "model": {"lm": "toy", "vocab": ["a", "b", "<eos>"], "order": 2, "seed": 1},
    "program": {"path": "ppllm_models.toy_text:ToyText", "args": {"max_tokens": 2}},
    "kernel": {"name": "smc", "n_particles": 2},
    "prompts": {"items": ["a"]},
}


@given(recipes)
def test_random_recipes_give_a_recipe_error_or_a_recipe(data) -> None:
    try:
        validate(data)
    except RecipeError as e:
        assert str(e) and ": " in str(e)


@given(st.sampled_from(sorted(GOOD)), keys, scalar)
def test_one_bad_field_in_a_good_recipe_is_a_recipe_error(section, key, value) -> None:
    data = {k: dict(v) for k, v in GOOD.items()}
    data[section][key] = value
    try:
        validate(data)
    except RecipeError as e:
        assert str(e).split(":")[0].startswith((section, "recipe")) or "." in str(e).split(":")[0], str(e)


@given(st.text(max_size=200))
def test_random_text_as_a_recipe_file_is_a_recipe_error(tmp_path_factory, text) -> None:
    from ppllm.recipes import load_recipe

    path = tmp_path_factory.mktemp("r") / "r.toml"
    path.write_text(text)
    try:
        load_recipe(path)
    except RecipeError:
        pass
