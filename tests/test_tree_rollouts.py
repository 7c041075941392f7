"""Tree rollouts (TreePO segment trees, LATR lookahead branching): the rules against hand-computed
cases, each with a broken twin that fails them; the kernels' structure, reproducibility and
batch invariance on toy LMs; bad options."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppllm
from ppllm.engine import Engine
from ppllm.kernels import latr, treepo
from ppllm.kernels.rollout_group import group_advantages, tree_advantages, whiten
from ppllm.lm import ToyLM
from ppllm.testing.toys import CHUNK_LM, TOKEN_LM

# Uncertain where LATR looks: at the start a (.45) vs b (.35), after b a tie of a, b and c;
# after a it is sure of a again.
BRANCHY = ToyLM(["a", "b", "c", "<eos>"], {(): [0.45, 0.35, 0.15, 0.05], ("a",): [0.7, 0.1, 0.1, 0.1],
                                           ("b",): [0.3, 0.3, 0.3, 0.1]}, order=2)


class Letters(ppllm.Program):
    """Token level on the toy LM: up to `n` tokens; reward = the fraction of "a"s."""

    def __init__(self, lm=TOKEN_LM, n: int = 6) -> None:
        self.lm, self.ctx, self.n, self.out = lm, lm.context(""), n, []
        self.prefix_score = 0.0

    async def step(self) -> None:
        tok = await self.sample(self.lm.next_token(self.ctx))
        self.ctx = self.ctx + tok
        self.out.append(tok)
        self.prefix_score = self.out.count(0) / self.n
        if tok == self.lm.eos_token_id or len(self.out) >= self.n:
            self.finish()

    @property
    def answer(self) -> str:
        return self.lm.decode(self.out)


class Lines(ppllm.Program):
    """Chunk level: lines of up to 3 tokens of the "a"/newline toy LM, 4 lines."""

    def __init__(self, lm=CHUNK_LM) -> None:
        self.lm, self.ctx, self.lines, self.prefix_score = lm, lm.context(""), [], 0.0

    async def step(self) -> None:
        chunk = await self.sample(self.lm.chunk(self.ctx, stop="\n", max_tokens=3))
        self.ctx = self.ctx + chunk
        self.lines.append(chunk.text)
        self.prefix_score = float(sum(len(x.strip("\n")) for x in self.lines))
        if len(self.lines) >= 4:
            self.finish()

    @property
    def answer(self) -> str:
        return "|".join(self.lines)


# ---------------------------------------------------------------------- TreePO's advantage
# Four leaves: 0 and 1 below nodes a → c, 2 below a → d, 3 below b. Scores 1, 0, 1, 1.
SCORES = [1.0, 0.0, 1.0, 1.0]
PREFIXES = [["a", "c"], ["a", "c"], ["a", "d"], ["b"]]
# By hand: root mean 3/4 (size 4), a: mean 2/3 (size 3), c: mean 1/2 (size 2); d, b single.
#   leaf 0: (4·1/4 + 3·1/3 + 2·1/2) / 9 = 3/9      leaf 1: (−3 − 2 − 1) / 9 = −6/9
#   leaf 2: (4·1/4 + 3·1/3) / 7 = 2/7              leaf 3: (4·1/4) / 4 = 1/4
EXPECTED = [1 / 3, -2 / 3, 2 / 7, 1 / 4]


def check_advantage(fn) -> None:
    np.testing.assert_allclose(fn(SCORES, PREFIXES), EXPECTED, rtol=0, atol=1e-12)


def test_tree_advantage_by_hand() -> None:
    check_advantage(tree_advantages)


def test_tree_advantage_broken_twin_fails() -> None:
    def equal_weights(scores, prefixes):  # every subgroup weighted 1 instead of its size
        s = np.asarray(scores)
        out = []
        for i, pre in enumerate(prefixes):
            diffs = [s[i] - s.mean()]
            for d, node in enumerate(pre):
                idx = [j for j, p in enumerate(prefixes) if len(p) > d and p[d] == node]
                if len(idx) > 1:
                    diffs.append(s[i] - s[idx].mean())
            out.append(np.mean(diffs))
        return np.array(out)

    with pytest.raises(AssertionError):
        check_advantage(equal_weights)


def test_flat_group_advantage_and_whitening() -> None:
    np.testing.assert_allclose(tree_advantages([1, 0, 0, 1], [[], [], [], []]), group_advantages([1, 0, 0, 1]))
    w = whiten(np.array(EXPECTED))
    assert abs(w.mean()) < 1e-12 and abs(w.std() - 1) < 1e-12
    assert whiten(np.array([0.5, 0.5])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="score of leaf 1 is NaN"):
        tree_advantages([0.0, math.nan], [[], []])


# ---------------------------------------------------------------------- fork budget
FORK_CASES = [
    # (paths at the boundary, places left, step width, control, log p) -> children each
    ((3, 8, 2, "fixed", None), [2, 2, 2]),          # 3 × 2 = 6 ≤ 8
    ((3, 5, 2, "fixed", None), [2, 2, 1]),          # finished leaves took 3 of 8: cap 5, remainder first
    ((3, 3, 2, "fixed", None), [1, 1, 1]),          # full group: every path still gets one
    ((2, 6, 3, "fixed", None), [3, 3]),             # 2 of 4 paths finished: survivors take their budget
    ((2, 6, 3, "logprob_weighted", [0.0, math.log(3)]), [2, 4]),   # extra 4 split 1 : 3
    ((2, 6, 3, "inverse_logprob", [0.0, math.log(3)]), [4, 2]),
    ((3, 6, 2, "logprob_weighted", [0.0, 0.0, math.log(2)]), [2, 2, 2]),  # shares .75 .75 1.5 → largest remainders
    ((2, 4, 2, "inverse_logprob", [-math.inf, -3.0]), [3, 1]),   # a zero-probability path: least likely
    ((2, 4, 2, "logprob_weighted", [-math.inf, -3.0]), [1, 3]),
    ((2, 4, 2, "logprob_weighted", [-math.inf, -math.inf]), [2, 2]),  # nothing to weight by: even
]


def check_forks(fn) -> None:
    for (n, available, width, control, lp), expected in FORK_CASES:
        got = fn(n, available, width, control, lp)
        assert got == expected, (n, available, width, control, got)
        assert sum(got) <= max(available, n) and min(got) >= 1


@pytest.mark.parametrize("case", FORK_CASES, ids=[f"{c[0][3]}-{c[0][0]}-{c[0][1]}" for c in FORK_CASES])
def test_fork_counts_by_hand(case) -> None:
    (n, available, width, control, lp), expected = case
    assert treepo.fork_counts(n, available, width, control, lp) == expected


def test_fork_counts_broken_twin_fails() -> None:
    def no_cap(n, available, width, control, lp):  # ignores the places left in the group
        return treepo.fork_counts(n, n * width, width, control, lp)

    check_forks(treepo.fork_counts)
    with pytest.raises(AssertionError):
        check_forks(no_cap)


def test_fork_counts_refuses_an_overfull_group() -> None:
    with pytest.raises(ValueError, match="3 paths at a boundary but only 2 places left"):
        treepo.fork_counts(3, 2, 2)


# ---------------------------------------------------------------------- LATR's rules
BRANCH_CASES = [
    # (p, tau_abs, tau_rel, max per token) -> candidates
    (([0.5, 0.4, 0.1], 0.15, 0.25, 2), [1]),        # 0.4 > .15 and .5 − .4 < .25
    (([0.7, 0.2, 0.1], 0.15, 0.25, 2), []),         # gap .5 too wide
    (([0.2, 0.13, 0.67], 0.15, 0.25, 2), []),       # second (0.2) passes, but its gap is .47
    (([0.4, 0.3, 0.3], 0.15, 0.25, 3), [1, 2]),     # two candidates when three are considered
    (([0.4, 0.3, 0.3], 0.15, 0.25, 2), [1]),
    (([0.45, 0.1, 0.45], 0.15, 0.25, 2), [2]),      # a tie: the lower id is the top token
    (([0.52, 0.14, 0.34], 0.15, 0.25, 3), [2]),     # 0.14 fails τ_abs, 0.34 passes both
]


def check_branching(fn) -> None:
    for (p, ta, tr, m), expected in BRANCH_CASES:
        assert fn(np.log(np.array(p)), ta, tr, m) == expected, (p, ta, tr, m)


def test_branch_rule_by_hand() -> None:
    check_branching(latr.branch_candidates)


def test_branch_rule_broken_twin_fails() -> None:
    def either(lp, ta, tr, m):  # "or" instead of "and"
        p = np.exp(lp)
        order = np.argsort(-p, kind="stable")[:m]
        return [int(j) for j in order[1:] if p[j] > ta or p[order[0]] - p[j] < tr]

    with pytest.raises(AssertionError):
        check_branching(either)


def test_branch_rule_matches_a_full_sort_with_ties() -> None:
    """The partial selection ranks like a stable sort of the whole row (ties by token id)."""
    def by_full_sort(lp, ta, tr, m):
        p = np.exp(lp)
        order = np.argsort(-p, kind="stable")[:m]
        return [int(j) for j in order[1:] if p[j] > ta and p[order[0]] - p[j] < tr]

    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(0, 4, size=int(rng.integers(2, 9))) + (rng.random() < 0.5)  # many ties
        if counts.sum() == 0:
            continue
        with np.errstate(divide="ignore"):  # zero counts are −inf log-probabilities
            lp = np.log(counts / counts.sum())
        for m in (2, 3, 5):
            assert latr.branch_candidates(lp, 0.1, 0.3, m) == by_full_sort(lp, 0.1, 0.3, m), (counts, m)


PRUNE_CASES = [
    # (child span, parent span, rouge, suffix, edit) -> prune?
    (([1, 2, 3, 4], [1, 2, 3, 5], 0.5, 0.2, 0.4), True),    # ROUGE-L 2·3/8 = .75
    (([1, 2, 3, 4], [5, 6, 7, 8], 0.5, 0.2, 0.4), False),   # nothing shared
    (([9, 8, 3, 4], [1, 2, 3, 4], 0.5, 0.2, 0.0), True),    # ROUGE-L .5 (not > .5), common suffix 2/4 = .5
    (([9, 8, 3, 4], [1, 2, 3, 4], 0.5, 0.0, 0.4), False),   # suffix off; edit distance 2/4 = .5 ≥ .4
    (([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], 0.0, 0.0, 0.4), True),  # edit distance 1/5 = .2 < .4
    (([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], 0.0, 0.0, 0.0), False),  # every test off
]


def check_pruning(fn) -> None:
    for (a, b, r, s, e), expected in PRUNE_CASES:
        assert fn(a, b, r, s, e) is expected, (a, b, r, s, e)


def test_pruning_by_hand() -> None:
    assert latr.rouge_l([1, 2, 3, 4], [1, 2, 3, 5]) == 0.75
    assert latr.suffix_match([9, 8, 3, 4], [1, 2, 3, 4]) == 0.5
    assert latr.edit_distance([1, 2, 3, 4, 5], [1, 2, 3, 4, 6]) == pytest.approx(0.2)
    check_pruning(latr.too_similar)


def test_pruning_broken_twin_fails() -> None:
    def prefix_instead_of_suffix(a, b, r, s, e):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return (r > 0 and latr.rouge_l(a, b) > r) or (s > 0 and n / max(len(a), len(b)) > s) or (
            e > 0 and latr.edit_distance(a, b) < e)

    with pytest.raises(AssertionError):
        check_pruning(prefix_instead_of_suffix)


# ---------------------------------------------------------------------- the kernels
def fingerprint(post) -> list:
    g = post.extras["group"]
    return [[p.answer for p in post.particles], g["origin"], g["prefixes"], g["rewards"]]


@pytest.mark.parametrize("make", [Letters, Lines], ids=["tokens", "chunks"])
def test_treepo_group_is_reproducible_and_batch_invariant(make) -> None:
    a = treepo.run(make(), 8, seed=11, max_depth=3)
    b = treepo.run(make(), 8, seed=11, max_depth=3)
    c = treepo.run(make(), 8, seed=11, max_depth=3, engine=Engine(max_batch=1))
    assert fingerprint(a) == fingerprint(b) == fingerprint(c)
    assert len(a.particles) == 8 and np.isnan(a.log_Z) and np.all(a.log_weights == 0)
    assert fingerprint(treepo.run(make(), 8, seed=12, max_depth=3)) != fingerprint(a)


@pytest.mark.parametrize("control", treepo.FORK_CONTROLS)
def test_treepo_leaves_below_one_node_share_its_steps(control) -> None:
    post = treepo.run(Letters(n=8), 16, seed=5, segment_length=2, max_depth=3, fork_control=control)
    g = post.extras["group"]
    assert len(post.particles) == 16 and g["n_nodes"] > 1
    values = [[c.value for c in p.trace] for p in post.particles]
    by_node: dict[int, list[int]] = {}
    depth_of: dict[int, int] = {}
    for i, pre in enumerate(g["prefixes"]):
        assert len(pre) <= 3  # max_depth
        for d, node in enumerate(pre):
            by_node.setdefault(node, []).append(i)
            depth_of[node] = d + 1
    shared = 0
    for node, leaves in by_node.items():
        k = 2 * depth_of[node]  # a node at depth d sits after d segments of 2 steps
        heads = {tuple(values[i][:k]) for i in leaves}
        assert len(heads) == 1, (node, heads)
        shared += len(leaves) > 1
    assert shared > 0  # the tree really forked


def test_treepo_regrows_bad_leaves_and_fills_the_group() -> None:
    # "bad" = the path ended on EOS before its 3rd token (the toy LM often stops early)
    def short(p):
        return len(p.out) < 3

    kept = treepo.run(Letters(), 8, seed=2, max_depth=2, bad_fn=short, max_regrow=0)
    assert sum(short(p) for p in kept.particles) > 0  # without regrowth, bad leaves stay
    post = treepo.run(Letters(), 8, seed=2, max_depth=2, bad_fn=short, max_regrow=200)
    g = post.extras["group"]
    assert len(post.particles) == 8 and 0 < g["regrown"] < 200
    assert not any(short(p) for p in post.particles)  # every bad leaf was regrown into a good one
    assert "regrow" in g["origin"] and set(g["origin"]) <= {"root", "fork", "regrow", "fill"}
    capped = treepo.run(Letters(), 8, seed=2, max_depth=2, bad_fn=short, max_regrow=1)
    assert capped.extras["group"]["regrown"] == 1


@pytest.mark.parametrize("mode", latr.SAMPLE_MODES)
def test_latr_branches_where_the_rule_says_and_is_batch_invariant(mode) -> None:
    opts = dict(prune_steps=[2], rouge_l_threshold=0.9, suffix_threshold=0.0, edit_threshold=0.0, sample_mode=mode)
    a = latr.run(Letters(BRANCHY), 8, seed=4, **opts)
    b = latr.run(Letters(BRANCHY), 8, seed=4, engine=Engine(max_batch=1), **opts)
    assert fingerprint(a) == fingerprint(b)
    g = a.extras["group"]
    assert len(a.particles) == 8 and g["branched"] > 0
    # every branch equals its parent up to its birth and then takes a candidate of the rule
    tokens = {pid: p.out for pid, p in zip(g["path_ids"], a.particles, strict=True)}
    for p, parent, birth in zip(a.particles, g["parents"], g["births"], strict=True):
        if parent is None or parent not in tokens:
            continue
        mine, theirs = p.out, tokens[parent]
        assert mine[:birth] == theirs[:birth] and mine[birth] != theirs[birth]
        ctx = BRANCHY.context("").tokens + tuple(mine[:birth])
        row = BRANCHY.logprobs([ctx])[0]
        assert mine[birth] in latr.branch_candidates(row, 0.15, 0.25, 2)


def test_latr_mix_ratio_and_chunks() -> None:
    flat = latr.run(Lines(), 6, seed=1, mix_ratio=0.0)
    assert flat.extras["group"]["origin"] == ["independent"] * 6
    mixed = latr.run(Lines(), 6, seed=1, mix_ratio=0.5)
    origins = mixed.extras["group"]["origin"]
    assert len(origins) == 6 and origins.count("independent") == 3
    again = latr.run(Lines(), 6, seed=1, mix_ratio=0.5, engine=Engine(max_batch=1))
    assert fingerprint(again) == fingerprint(mixed)


# ---------------------------------------------------------------------- bad options
@pytest.mark.parametrize("kwargs, message", [
    ({"segment_length": 0}, "segment_length must be a positive integer, got 0"),
    ({"width": 0}, "width must be a positive integer, got 0"),
    ({"fork_control": "wide"}, "fork_control must be one of fixed, logprob_weighted, inverse_logprob, got 'wide'"),
    ({"first_width": [5, 2]}, r"first_width must satisfy 1 <= low <= high, got \[5, 2\]"),
])
def test_treepo_bad_options(kwargs, message) -> None:
    opts = {"width": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        treepo.run(Letters(), opts.pop("width"), seed=0, **opts)


@pytest.mark.parametrize("kwargs, message", [
    ({"tau_abs": 1.5}, r"tau_abs must be in \(0, 1\), got 1.5"),
    ({"tau_rel": 0.0}, r"tau_rel must be in \(0, 1\), got 0.0"),
    ({"width": 0}, "width must be a positive integer, got 0"),
    ({"mix_ratio": 2}, r"mix_ratio must be in \[0, 1\], got 2"),
    ({"sample_mode": "greedy"}, "sample_mode must be one of none, full, always"),
    ({"max_branch_per_token": 1}, "max_branch_per_token must be >= 2"),
])
def test_latr_bad_options(kwargs, message) -> None:
    opts = {"width": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        latr.run(Letters(), opts.pop("width"), seed=0, **opts)


@pytest.mark.parametrize("recipe, override, field, message", [
    ("arith_treepo.toml", "kernel.segment_length=0", "kernel.segment_length", "must be a positive integer, got 0"),
    ("arith_treepo.toml", "kernel.width=0", "kernel.width", "must be a positive integer, got 0"),
    ("arith_latr.toml", "kernel.tau_abs=1.5", "kernel.tau_abs", r"tau_abs must be in \(0, 1\), got 1.5"),
    ("arith_latr.toml", "kernel.tau_rel=-0.1", "kernel.tau_rel", r"tau_rel must be in \(0, 1\)"),
])
def test_recipe_checker_refuses_bad_tree_options(recipe, override, field, message) -> None:
    from pathlib import Path

    from ppllm.recipes import RecipeError, load_recipe

    path = Path(__file__).resolve().parent.parent / "inference" / recipe
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(path, [override])
    assert err.value.field == field


def test_latr_refuses_a_served_lm_and_a_step_with_other_randomness_first() -> None:
    class Served(ToyLM):
        chunk_requests = True

    served = Served(["a", "b", "<eos>"], {(): [0.5, 0.4, 0.1]})
    with pytest.raises(ppllm.ProgramError, match="latr branches token by token from next-token rows"):
        latr.run(Letters(served), 4, seed=0)

    calls = [0]

    class Restless(Letters):
        """Not a function of its state and LM draws: every other run of a step puts a "b" in
        the context first, so a branch re-running its parent's step sees another context."""

        async def step(self) -> None:
            calls[0] += 1
            if calls[0] % 2:
                self.ctx = self.ctx + 1
            await super().step()

    with pytest.raises(ppllm.ProgramError, match="a step's only randomness may be its LM draws"):
        latr.run(Restless(BRANCHY), 8, seed=0)
