"""DTS and DTS*: exact identities (tier A), convergence and search (tier B), anytime behaviour.

Exact: the soft backup is the multiplicity-weighted log-mean-exp of the children; and a
complete tree of a toy program whose step probabilities are quarters — every child present,
its multiplicity n_c = 4·q(c | u), values computed by the tree's own backup from the exact
terminal weights — samples the program's posterior exactly (enumerated over the sampler's
randomness, to 1e-12). Twins that must fail it: the backup unweighted over merged children,
and selection without multiplicity.

Statistical (fixed seeds; one-sided z-tests at a false-failure rate of 1e-4, z > 3.72):
the exact TV distance between a built tree's sampling distribution and the target falls as
iterations grow, on two programs; DTS* finds the highest-reward completion of a toy problem
more often than best-of-N with the same number of rollouts (binomial tail < 1e-4).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom
from toy_programs import FewAs, NoRepeat

import ppllm
from ppllm.engine import Engine
from ppllm.exact import enumerate_paths, enumerate_program, trace_key
from ppllm.kernels import dts, dts_star, mh
from ppllm.lm import ToyLM
from ppllm.population import Population
from ppllm.testing.twins import TreeChoosingWithoutMultiplicity, backup_value_unweighted
from ppllm.tree import Node, SearchTree, backup_value

Z_CRIT = 3.72  # one-sided, false-failure rate 1e-4

# step probabilities in quarters, so that a complete tree can hold n_c = 4·q(c | u) exactly
QUARTER_LM = ToyLM(
    ["a", "b", "<eos>"],
    {(): [0.25, 0.5, 0.25], ("<bos>",): [0.75, 0.25, 0.0], ("a",): [0.25, 0.5, 0.25], ("b",): [0.5, 0.25, 0.25]},
    eos="<eos>", order=2,
)


class Rewarded(ppllm.Program):
    """Up to 3 tokens; each "b" multiplies the weight by e^0.8, "ab" by e^-1.5."""

    def __init__(self, lm=QUARTER_LM, max_tokens=3):
        self.lm, self.ctx, self.max_tokens = lm, lm.context(""), max_tokens

    async def step(self):
        tok = await self.sample(self.lm.next_token(self.ctx))
        if tok == 1:
            self.factor(0.8)
        if self.ctx.tokens[-1:] == (0,) and tok == 1:
            self.factor(-1.5)
        self.ctx = self.ctx + tok
        if tok == self.lm.eos_token_id or len(self.ctx) >= self.max_tokens:
            self.finish()


def complete_tree(program, tree_cls=SearchTree, backup=backup_value, weighting="multiplicity") -> SearchTree:
    tree = tree_cls(program, weighting=weighting)

    def path(rng):
        pop = Population.spawn(program, 1, store_history=True)
        got = mh.rollout(pop.programs, [rng], [None], Engine(), 10)
        pop.programs, pop.history = got.programs, got.paths
        return pop.trajectory(0)

    for _, traj in enumerate_paths(path):
        node = tree.root
        for k in range(traj.n_steps):
            before = traj.states[k]._pp.n_choices
            child = tree.add(node, traj.states[k + 1].clone(), traj.log_incs[k], before)
            node = child
    for node in sorted(tree.nodes(), key=lambda n: -n.depth):  # multiplicities, then values bottom-up
        for c in node.children.values():
            c.count = round(4 * math.exp(c.log_q))
        node.draws = sum(c.count for c in node.children.values())
        if node.children:
            node.value = backup(list(node.children.values()), "soft", weighting)
    return tree


def sampling_law(tree: SearchTree) -> dict:
    law: dict = {}
    for q, leaf in enumerate_paths(lambda rng: trace_key(tree.sample(rng).state)):
        law[leaf] = law.get(leaf, 0.0) + q
    return law


def tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


# ---------------------------------------------------------------------- exact
def test_backup_is_the_multiplicity_weighted_log_mean_exp() -> None:
    kids = []
    for value, count in ((0.3, 3), (-1.2, 1), (2.0, 5)):
        n = Node(None, None, (value,), 0.0, 0.0, ())
        n.value, n.count = value, count
        kids.append(n)
    expected = math.log((3 * math.exp(0.3) + 1 * math.exp(-1.2) + 5 * math.exp(2.0)) / 9)
    assert abs(backup_value(kids) - expected) < 1e-15
    assert backup_value(kids, "max") == 2.0


# multiplicities n_c = 4·q need steps in quarters (Rewarded); probability weighting needs none
@pytest.mark.parametrize("make,weighting", [(Rewarded, "multiplicity"), (Rewarded, "probability"),
                                            (lambda: NoRepeat(max_tokens=2), "probability")])
def test_complete_tree_with_exact_values_samples_the_target(make, weighting) -> None:
    program = make()
    tree = complete_tree(program, weighting=weighting)
    exact = enumerate_program(program, key=trace_key)
    assert abs(tree.root.value - exact.log_Z) < 1e-12  # the root's value is log Z
    assert tv(sampling_law(tree), exact.probs) < 1e-12


def test_twin_unweighted_backup_fails() -> None:
    tree = complete_tree(Rewarded(), backup=backup_value_unweighted)
    assert tv(sampling_law(tree), enumerate_program(Rewarded(), key=trace_key).probs) > 1e-3


def test_twin_selection_without_multiplicity_fails() -> None:
    tree = complete_tree(Rewarded(), tree_cls=TreeChoosingWithoutMultiplicity)
    assert tv(sampling_law(tree), enumerate_program(Rewarded(), key=trace_key).probs) > 1e-3


# ---------------------------------------------------------------------- convergence
@pytest.mark.slow
@pytest.mark.parametrize("make", [Rewarded, lambda: FewAs(n_chunks=2)], ids=["rewarded", "few_as"])
def test_tv_to_the_target_shrinks_as_iterations_grow(make) -> None:
    program = make()
    target = enumerate_program(program, key=trace_key).probs
    levels = {}
    for m in (10, 80, 640):
        tvs = [tv(sampling_law(dts.run(program, m, seed=s, rollouts=1, n_samples=1).extras["state"].tree), target)
               for s in range(16)]
        levels[m] = np.array(tvs)
    for lo, hi in ((10, 80), (80, 640)):
        a, b = levels[lo], levels[hi]
        z = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert z > Z_CRIT, f"TV at {lo} iterations {a.mean():.4f}, at {hi} {b.mean():.4f}: z = {z:.2f}"


# ---------------------------------------------------------------------- search
SEARCH_LM = ToyLM(["a", "b", "c", "<eos>"], {(): [0.35, 0.3, 0.35, 0.0]}, eos="<eos>", order=1)


class SixTokens(ppllm.Program):
    """Six tokens from SEARCH_LM; the reward is the fraction of b's (best: "bbbbbb", q = 0.3⁶)."""

    def __init__(self):
        self.lm, self.ctx = SEARCH_LM, SEARCH_LM.context("")

    async def step(self):
        self.ctx = self.ctx + await self.sample(self.lm.next_token(self.ctx))
        if len(self.ctx) == 6:
            self.finish()

    @property
    def reward(self) -> float:
        return self.ctx.tokens.count(1) / 6


@pytest.mark.slow
def test_dts_star_finds_the_best_completion_where_best_of_n_usually_does_not() -> None:
    """256 rollouts: best-of-N finds "bbbbbb" with probability 1 − (1 − 0.3⁶)²⁵⁶ ≈ 0.17; DTS*
    (C = 2, α = 0.7, c_uct = 0.1, λ = 10 so v̂ ≈ R) must find it in most of 30 seeded runs, and
    more often than best-of-N could by chance (binomial tail < 1e-4)."""
    budget = 256
    p_bon = 1 - (1 - 0.3**6) ** budget
    trials = 30
    found = sum(
        dts_star.run(SixTokens(), budget, seed=s, lam=10.0, reward_fn=lambda p: p.reward, rollouts=1,
                     c_uct=0.1).extras["best_value"] == pytest.approx(1.0)
        for s in range(trials)
    )
    assert found > trials / 2 and binom.sf(found - 1, trials, p_bon) < 1e-4, (found, p_bon)


# ---------------------------------------------------------------------- anytime and reusable
def _shape(state) -> list:
    return sorted((n.depth, n.key, n.count, n.visits, round(n.value, 12)) for n in state.tree.nodes())


def test_resumed_tree_equals_one_built_in_one_go(tmp_path) -> None:
    whole = dts.run(Rewarded(), 40, seed=3, n_samples=8)
    half = dts.run(Rewarded(), 20, seed=3, n_samples=8)
    more = dts.run(Rewarded(), 20, seed=3, n_samples=8, resume=half.extras["state"])
    assert _shape(more.extras["state"]) == _shape(whole.extras["state"])
    assert [trace_key(p) for p in more.particles] == [trace_key(p) for p in whole.particles]
    # through a file: states are dropped and rebuilt by replay
    half = dts.run(Rewarded(), 20, seed=3, n_samples=8)
    half.extras["state"].save(tmp_path / "tree.pkl")
    loaded = dts.load(tmp_path / "tree.pkl", Rewarded())
    again = dts.run(Rewarded(), 20, seed=3, n_samples=8, resume=loaded)
    assert _shape(again.extras["state"]) == _shape(whole.extras["state"])
    assert [trace_key(p) for p in again.particles] == [trace_key(p) for p in whole.particles]


def test_sampling_a_built_tree_makes_no_lm_calls() -> None:
    post = dts.run(Rewarded(), 30, seed=0, n_samples=4)
    tree = post.extras["state"].tree
    calls = QUARTER_LM._cache.copy()
    leaves = [tree.sample(ppllm.SeededRng(7).child(i)) for i in range(200)]
    assert all(leaf.terminal for leaf in leaves) and QUARTER_LM._cache == calls
    assert post.diagnostics.n_nodes == tree.n_nodes and post.diagnostics.iterations == 30


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="lam .* must be > 0"):
        dts.run(Rewarded(), 5, seed=0, lam=0.0)
    with pytest.raises(ValueError, match="C .* must be > 0"):
        dts.run(Rewarded(), 5, seed=0, C=0.0)
    with pytest.raises(ValueError, match="alpha .* in \\(0, 1\\]"):
        dts.run(Rewarded(), 5, seed=0, alpha=1.5)
    with pytest.raises(ValueError, match="n_iterations must be a positive integer"):
        dts.run(Rewarded(), 0, seed=0)
    with pytest.raises(ValueError, match="reward returned NaN"):
        dts.run(Rewarded(), 5, seed=0, reward_fn=lambda p: float("nan"))
