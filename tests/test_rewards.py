"""Reward-likelihood factors: PRM protocol, validation, aggregations, converters, verifiers,
the learned tiny-arith PRM, the LM judge, batching, and the math program's exact target."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import ppllm
from ppllm.engine import Engine
from ppllm.exact import enumerate_program
from ppllm.lm import ToyLM
from ppllm.rewards import (
    EPS,
    PRM,
    CallablePRM,
    RewardError,
    StepwisePRM,
    aggregate,
    bernoulli,
    get_converter,
    odds,
    score_prefix_now,
    tempered,
)
from ppllm.rng import SeededRng
from ppllm.tasks.arith import ExactArithVerifier, roc_auc
from ppllm.tasks.arith import data as arith_data
from ppllm_models.math_reasoning import (
    MathReasoning,
    arith_answer,
    arith_prompt,
    boxed_answer,
)

Q = "Q: 37+48+19=\n"


# ---------------------------------------------------------------------- aggregations
def test_aggregations_on_known_scores():
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "prod") == pytest.approx(0.36)
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "last") == 0.8
    assert aggregate([0.7], "model") == 0.7
    for how in ("prod", "min", "last", "model"):
        assert aggregate([], how) == 1.0  # no steps, no evidence
    with pytest.raises(ValueError, match="single score"):
        aggregate(s, "model")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(s, "mean")


def test_model_aggregation_asks_for_one_joined_step():
    seen = []

    def fn(prompt, steps):
        seen.append(steps)
        return [0.25 + 0.1 * len([x for x in s.splitlines() if x]) for s in steps]

    prm = CallablePRM(fn)
    assert score_prefix_now(prm, "Q", ["a", "b", "c"], "model", sep="\n\n") == pytest.approx(0.55)
    assert seen[-1] == ("a\n\nb\n\nc",)
    assert score_prefix_now(prm, "Q", ["a", "b"], "last") == pytest.approx(0.35)
    assert seen[-1] == ("a", "b")


# ---------------------------------------------------------------------- converters
def test_converters_on_known_values():
    assert bernoulli(0.5) == pytest.approx(math.log(0.5))
    assert bernoulli(0.0) == -math.inf
    assert odds(0.5) == 0.0
    assert odds(0.9) == pytest.approx(math.log(9.0))
    assert odds(0.0) == pytest.approx(math.log(EPS) - math.log1p(-EPS))
    assert odds(1.0) == pytest.approx(-odds(0.0))
    r = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(odds(r), np.log(r / (1 - r)))
    np.testing.assert_allclose(bernoulli(r), np.log(r))
    np.testing.assert_allclose(tempered(odds, 2.0)(r), np.log(r / (1 - r)) / 2)
    np.testing.assert_allclose(get_converter("bernoulli", tau=0.5)(r), 2 * np.log(r))
    assert isinstance(odds(0.3), float) and odds(r).shape == (3,)
    with pytest.raises(ValueError):
        tempered("odds", 0.0)


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1, float("inf")])
def test_converters_reject_non_probabilities(bad):
    for conv in (bernoulli, odds):
        with pytest.raises(RewardError):
            conv(bad)
        with pytest.raises(RewardError):
            conv(np.array([0.5, bad]))


# ---------------------------------------------------------------------- validation
class Fixed(PRM):
    """Returns given score vectors, request by request."""

    def __init__(self, table, name="fixed"):
        self.table, self.name = table, name

    def score_batch(self, items):
        return [self.table[prompt] for prompt, _ in items]


class Unchecked(PRM):
    """Broken twin: answers with the wrapped PRM's raw scores, skipping validation."""

    def __init__(self, inner):
        self.inner, self.name = inner, "unchecked"

    def evaluate(self, requests):
        return [np.asarray(s, dtype=float) for s in self.inner.score_batch([(r.prompt, r.steps) for r in requests])]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1.5, -0.25])
def test_reward_error_names_prm_request_and_value(bad):
    prm = Fixed({"ok": [0.5, 0.5], "bad": [0.5, bad]}, name="my-prm")
    with pytest.raises(RewardError) as err:
        prm.score_many([("ok", ["s1", "s2"]), ("bad", ["s1", "s2"])])
    msg = str(err.value)
    assert "my-prm" in msg and "request 1" in msg and "step 1" in msg and repr(bad) in msg
    # The broken twin lets the bad value through: the check is what catches it.
    raw = Unchecked(prm).evaluate([prm.request("bad", ["s1", "s2"])])[0]
    assert raw[1] == bad or (math.isnan(bad) and math.isnan(raw[1]))


def test_unchecked_out_of_range_score_would_become_a_silent_weight():
    """Why scores are validated: clipping in `odds` turns 1.5 into a plausible finite weight."""
    prm = Fixed({"p": [1.5]})
    raw = Unchecked(prm).evaluate([prm.request("p", ["s"])])[0]
    assert np.isfinite(np.log(np.clip(raw, EPS, 1 - EPS))).all()
    with pytest.raises(RewardError):
        prm.score_now("p", ["s"])


def test_reward_error_on_wrong_length_and_inside_a_program():
    with pytest.raises(RewardError, match="2 steps"):
        Fixed({"p": [0.5]}).score_now("p", ["a", "b"])

    class Uses(ppllm.Program):
        def __init__(self, prm):
            self.prm = prm

        async def step(self):
            self.factor(bernoulli((await self.prm.score("p", ["a"]))[0]))
            self.finish()

    # Raised by the backend call that answers the round, before any weight is touched.
    with pytest.raises(RewardError, match="'fixed' returned nan"):
        ppllm.smc(Uses(Fixed({"p": [float("nan")]})), 3, seed=0)


# ---------------------------------------------------------------------- exact verifier
def test_exact_verifier_right_and_wrong_steps():
    v = ExactArithVerifier()
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=85\n", "85+19=104\n", "A: 104\n"]), [1, 1, 1])
    # One slip: every later line builds on the wrong total.
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=86", "86+19=105", "A: 105"]), [0, 0, 0])
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=85", "85+91=176"]), [1, 0])  # wrong operand
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=85", "A: 85"]), [1, 0])  # answer too early
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=85", "85+19=104", "A: 104", "1+1=2"]), [1, 1, 1, 0])
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=85", "hello"]), [1, 0])
    # A multi-line step is right iff all its lines are (what `model` aggregation relies on).
    assert v.score_now(Q, ["37+48=85\n85+19=104"])[0] == 1
    assert v.score_now(Q, ["37+48=85\n85+19=105"])[0] == 0
    assert v.score_now(Q, [""])[0] == 0


def test_exact_verifier_arithmetic_mode_and_softening():
    v = ExactArithVerifier(chain=False)
    # Arithmetic only: the answer is checked against the last partial sum written.
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=86", "86+19=105", "A: 105"]), [0, 1, 1])
    np.testing.assert_array_equal(v.score_now(Q, ["37+48=85", "A: 86"]), [1, 0])
    soft = ExactArithVerifier(delta=0.01)
    np.testing.assert_allclose(soft.score_now(Q, ["37+48=85", "85+19=105"]), [0.99, 0.01])
    with pytest.raises(ValueError, match="tiny-arith question"):
        ExactArithVerifier().score_now("no question here", ["1+1=2"])
    # The verifier agrees with arith_data's reference solutions.
    for p in arith_data.training_problems(20, seed=7):
        steps = [*p.steps, f"A: {p.answer}"]
        assert v.labels(p.question_text, steps) == [1] * len(steps)
        assert ExactArithVerifier().labels(p.question_text, steps) == [1] * len(steps)


def test_stepwise_cache_only_scores_new_prefixes():
    asked = []

    class Counting(StepwisePRM):
        def score_last(self, items):
            asked.extend(items)
            return np.full(len(items), 0.5)

    prm = Counting()
    prm.score_now("p", ["a", "b"])
    assert len(asked) == 2
    prm.score_now("p", ["a", "b", "c"])
    assert asked[-1] == ("p", ("a", "b", "c")) and len(asked) == 3


# ---------------------------------------------------------------------- batching
TOY = ToyLM.random(["a", "b", "\n", "<eos>"], order=2, seed=11)


class CountingPRM(CallablePRM):
    def __init__(self, fn):
        super().__init__(fn, name="counting")
        self.calls: list[int] = []

    def score_batch(self, items):
        self.calls.append(len(items))
        return super().score_batch(items)


def step_score(prompt, steps):
    """A deterministic made-up PRM: more a's, more credible."""
    return [0.15 + 0.7 * s.count("a") / (len(s) + 1) for s in steps]


def test_prm_requests_of_one_round_are_one_score_batch_call():
    prm = CountingPRM(step_score)
    # One-token steps: every particle asks the LM once, then the PRM, in the same rounds.
    progs = [MathReasoning(TOY, prm, "", max_step_tokens=1, max_steps=3) for _ in range(32)]
    rng = SeededRng(3)
    engine = Engine()
    engine.step(progs, [rng.child("step", 0, "slot", i) for i in range(32)], 0)
    distinct = {tuple(p.steps) for p in progs}
    assert prm.calls == [len(distinct)] and len(distinct) > 1
    assert all(p.prefix_score == pytest.approx(step_score("", p.steps)[-1]) for p in progs)


# ---------------------------------------------------------------------- math program, exact
def segment(tokens, max_tokens):
    """Steps of a toy token sequence, by hand: a step ends at '\\n', EOS or max_tokens."""
    steps, cur = [], []
    for t in tokens:
        cur.append(t)
        if TOY.vocab[t] in ("\n", "<eos>") or len(cur) >= max_tokens:
            steps.append(cur)
            cur = []
    assert not cur
    return [TOY.decode(s).removesuffix("\n") for s in steps]


def hand_log_p(tokens):
    return sum(float(TOY.logprobs([tuple(tokens[:i])])[0][t]) for i, t in enumerate(tokens))


def toy_program(weighting, aggregation="last", potential="bernoulli", tau=1.0, cls=MathReasoning):
    return cls(
        TOY, CallablePRM(step_score), "", max_step_tokens=2, max_steps=3,
        is_final=lambda s: "b" in s, aggregation=aggregation, weighting=weighting,
        potential=potential, tau=tau,
    )


def tokens_key(p):
    return p.ctx.tokens


@pytest.mark.parametrize(
    "aggregation,potential,tau",
    [("last", "bernoulli", 1.0), ("prod", "bernoulli", 1.0), ("min", "odds", 1.0), ("model", "odds", 2.0)],
)
def test_ratio_weighting_targets_p_times_final_potential(aggregation, potential, tau):
    conv = get_converter(potential, tau)
    prior = enumerate_program(toy_program("none"), key=tokens_key)
    assert prior.log_Z == pytest.approx(0.0, abs=1e-12)  # "none" only records: target p(x)
    target = {}
    for tokens in prior.probs:
        steps = segment(tokens, 2)
        if aggregation == "model":
            r = step_score("", ["\n".join(steps)])[0]
        else:
            r = aggregate(step_score("", steps), aggregation)
        target[tokens] = math.exp(hand_log_p(tokens) + conv(r))
        assert prior.probs[tokens] == pytest.approx(math.exp(hand_log_p(tokens)), rel=1e-10)
    Z = sum(target.values())
    exact = enumerate_program(toy_program("ratio", aggregation, potential, tau), key=tokens_key)
    assert exact.log_Z == pytest.approx(math.log(Z), rel=1e-10)
    assert exact.probs.keys() == target.keys()
    for k, v in target.items():
        assert exact.probs[k] == pytest.approx(v / Z, rel=1e-9)


class FactorEveryStep(MathReasoning):
    """Broken twin: intermediate potentials as factors (never undone), Puri's product target."""

    def twist(self, logw):
        self.factor(logw)


def test_factor_instead_of_twist_changes_the_target():
    good = enumerate_program(toy_program("ratio"), key=tokens_key)
    bad = enumerate_program(toy_program("ratio", cls=FactorEveryStep), key=tokens_key)
    assert abs(bad.log_Z - good.log_Z) > 1e-3
    assert max(abs(bad.probs[k] - good.probs[k]) for k in good.probs) > 1e-3


def test_zero_potential_kills_the_particle_without_nan():
    prm = CallablePRM(lambda prompt, steps: [0.0 if "a" in s else 0.5 for s in steps])
    prog = MathReasoning(TOY, prm, "", max_step_tokens=2, max_steps=3, is_final=lambda s: "b" in s)
    post = ppllm.smc(prog, 32, seed=1, ess_threshold=0.0)
    dead = [i for i, p in enumerate(post.particles) if any("a" in s for s in p.steps)]
    assert dead and all(post.log_weights[i] == -math.inf for i in dead)
    assert not np.isnan(post.log_weights).any()


def test_prompt_and_answer_helpers():
    assert arith_prompt(37, 48, 19) == Q
    assert arith_answer("37+48=85\nA: 85\n") == 85 and arith_answer("37+48=85") is None
    assert boxed_answer(r"so \boxed{\frac{1}{2}} and") == r"\frac{1}{2}"
    assert boxed_answer(r"\boxed{1} then \boxed{2}") == "2" and boxed_answer("none") is None


# ---------------------------------------------------------------------- learned PRM
ARITH_PRM = Path(ppllm.__file__).resolve().parent / "assets" / "arith-prm"


def test_roc_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5


@pytest.mark.slow
def test_learned_prm_scores_and_heldout_auc():
    from ppllm.tasks.arith import LearnedArithPRM
    from ppllm.tasks.arith.train_prm import evaluate_auc, load_heldout

    prm = LearnedArithPRM.load(ARITH_PRM)
    s = prm.score_now(Q, ["37+48=85", "85+19=104", "A: 104"])
    assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()
    # Batched and one-by-one scoring agree (padding does not leak into the scores).
    items = [(Q, ["37+48=85"]), ("Q: 11+22+33+44=\n", ["11+22=33", "33+33=66", "66+44=110", "A: 110"])]
    np.testing.assert_allclose(prm.score_many(items)[1], prm.score_now(*items[1]), atol=1e-6)
    records = load_heldout(ARITH_PRM)
    assert all(arith_data.is_heldout(r["prompt"]) for r in records)
    got = evaluate_auc(prm, records)
    recorded = json.loads((ARITH_PRM / "training.json").read_text())
    assert got["auc"] == pytest.approx(recorded["heldout"]["auc"], abs=1e-4)
    # Useful, yet clearly short of the exact verifier: chance is 0.5 and the AUC's standard
    # error on 1209 steps is about 0.016, so 0.6 is more than six standard errors above chance.
    assert 0.6 < got["auc"] < 0.98
    assert evaluate_auc(ExactArithVerifier(), records)["auc"] == 1.0


# ---------------------------------------------------------------------- LM judge
@pytest.mark.smollm2
def test_lm_judge_gives_probabilities_batched_like_alone():
    from smollm2_fixture import require_smollm2

    require_smollm2()
    from ppllm.zoo import load_judge

    judge = load_judge("smollm2", batch_size=4)
    items = [
        ("What is 2+3?", ["2+3=5", "The answer is \\boxed{5}."]),
        ("What is 2+3?", ["2+3=7"]),
        ("Add 37, 48 and 19.", ["37+48=85", "85+19=104"]),
    ]
    batched = judge.score_many(items)
    for (_, steps), got in zip(items, batched, strict=True):
        assert got.shape == (len(steps),) and ((got >= 0) & (got <= 1)).all()
    judge.clear_cache()
    alone = judge.score_now(*items[2])
    np.testing.assert_allclose(batched[2], alone, atol=1e-5)
    assert "<|im_start|>" in judge.render(*items[1])  # the model's own chat template


def test_tiny_arith_preset_runs_with_the_verifier():
    vocab = [*"0123456789+=AQ: \n", "<eos>"]
    lm = ToyLM.random(vocab, order=1, seed=2)
    verifier = ExactArithVerifier(delta=0.05)
    prog = MathReasoning.tiny_arith(lm, verifier, 37, 48, 19, aggregation="prod")
    assert lm.decode(prog.ctx.tokens) == Q and prog.max_steps == 5
    post = ppllm.smc(prog, 8, seed=0)
    for p in post.particles:
        assert p.finished and 1 <= len(p.steps) <= 5
        expected = aggregate(verifier.score_now(Q, p.steps), "prod")
        assert p.prefix_score == pytest.approx(expected)
        assert len(p.step_scores) == len(p.steps)


def _scalar_and_array_agree(conv) -> bool:
    vals = np.concatenate([np.random.default_rng(0).random(2000), [0.0, 1.0, 1e-9, 1 - 1e-9, 0.5, 1e-300]])
    with np.errstate(divide="ignore"):
        return np.array_equal(conv(vals), np.array([conv(float(v)) for v in vals]))


@pytest.mark.parametrize("name", ["odds", "bernoulli"])
def test_a_converter_gives_a_float_score_the_value_of_its_array_entry(name) -> None:
    from ppllm.rewards.factors import CONVERTERS

    assert _scalar_and_array_agree(CONVERTERS[name])
    for bad in (math.nan, -0.1, 1.5):
        with pytest.raises(RewardError):
            CONVERTERS[name](bad)


def test_broken_twin_a_scalar_odds_without_the_clip_disagrees(monkeypatch) -> None:
    import ppllm.rewards.factors as factors

    def unclipped(r):
        if type(r) is float:
            x = np.float64(r)
            with np.errstate(divide="ignore"):
                return float(np.log(x) - np.log1p(-x))
        return factors.odds(r)

    assert not _scalar_and_array_agree(unclipped)
