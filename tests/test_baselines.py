"""Baselines on hand-built toys with a deterministic scorer: known answers, budgets, ties.

Two tokens from {a, b} (uniform LM), scores fixed per prefix so that greedy search and the
global best disagree:
    a .9   b .1   |   aa .5   ab .6   ba .95   bb .4
answer_fn maps "ba" to "Y" and the other three texts to "X". Known answers:
- best-of-N (budget 64, every text present): "ba" (the global best, 0.95)
- weighted best-of-N: "X" (about 48 × 0.5 against 16 × 0.95)
- majority vote: "X" (about 3/4 of the samples)
- beam search, beam width 1: greedy "a" then "ab"; beam width 2 also "ab": its_hub's beam
  keeps particles, not distinct prefixes, so copies of "a" fill both places (with 8 first
  tokens, fewer than two a's has probability 9/256; seed 0 has more)
- DVTS, M = 4, budget 4: one subtree, greedy like beam width 1: "ab"; budget 16: four
  subtrees, each greedy on its own candidates, the answer the best of their four paths
Runs are seeded, so every assertion is deterministic; the seeds were not chosen (seed 0,
and for the counts, the chance that a text is missing from 64 samples is below 1e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

import ppllm
from ppllm.kernels import beam_search, best_of_n, dvts, majority_vote, weighted_best_of_n
from ppllm.lm import ToyLM

LM = ToyLM(["a", "b"], {(): [0.5, 0.5]}, eos=None)
SCORES = {"a": 0.9, "b": 0.1, "aa": 0.5, "ab": 0.6, "ba": 0.95, "bb": 0.4}


class TwoTokens(ppllm.Program):
    def __init__(self):
        self.ctx = LM.context("")

    async def step(self) -> None:
        self.ctx = self.ctx + await self.sample(LM.next_token(self.ctx))
        self.prefix_score = SCORES[str(self)]
        if len(self.ctx) == 2:
            self.finish()

    def __str__(self) -> str:
        return LM.decode(self.ctx.tokens)


def answer(p) -> str:
    return "Y" if str(p) == "ba" else "X"


def test_best_of_n_picks_the_global_best() -> None:
    post = best_of_n.run(TwoTokens(), 64, seed=0)
    assert {str(p) for p in post.particles} == {"aa", "ab", "ba", "bb"}
    assert post.extras["answer"] == "ba"
    assert str(post.particles[post.extras["selected"]]) == "ba"


def test_weighted_best_of_n_sums_scores_per_answer() -> None:
    post = weighted_best_of_n.run(TwoTokens(), 64, seed=0, answer_fn=answer)
    totals = post.extras["totals"]
    texts = [str(p) for p in post.particles]
    assert totals["Y"] == pytest.approx(0.95 * texts.count("ba"))
    assert post.extras["answer"] == "X" and totals["X"] > totals["Y"]


def test_majority_vote_and_seeded_ties() -> None:
    post = majority_vote.run(TwoTokens(), 64, seed=0, answer_fn=answer)
    assert post.extras["answer"] == "X"
    # Budget 2 with answers "first token": ties (one a, one b) are broken by the seed.
    first = lambda p: str(p)[0]  # noqa: E731
    winners = set()
    for seed in range(40):
        a = majority_vote.run(TwoTokens(), 2, seed=seed, answer_fn=first)
        b = majority_vote.run(TwoTokens(), 2, seed=seed, answer_fn=first)
        assert a.extras["answer"] == b.extras["answer"]
        if len(a.extras["counts"]) == 2:
            winners.add(a.extras["answer"])
    assert winners == {"a", "b"}  # P(one letter wins all ≈20 ties) ≈ 2^-19: fixed by the seeds


@pytest.mark.parametrize("width,expected", [(1, "ab"), (2, "ab")])
def test_beam_search_known_answers(width: int, expected: str) -> None:
    post = beam_search.run(TwoTokens(), 8, beam_width=width, seed=0)
    assert post.extras["answer"] == expected
    assert post.n == 8 and len({str(p) for p in post.particles}) <= width


def test_dvts_is_greedy_per_subtree() -> None:
    post = dvts.run(TwoTokens(), 4, seed=0)
    assert post.n == 1 and [str(p) for p in post.particles] == ["ab"]
    assert post.extras["answer"] == "ab"
    wide = dvts.run(TwoTokens(), 16, seed=0)
    texts = [str(p) for p in wide.particles]
    assert wide.config["subtrees"] == 4 and len(texts) == 4
    assert wide.extras["scores"].tolist() == [SCORES[t] for t in texts]
    assert wide.extras["answer"] == texts[int(np.argmax(wide.extras["scores"]))]


def test_budgets_are_reported_and_bounded() -> None:
    for kernel in (best_of_n.run, weighted_best_of_n.run, majority_vote.run, beam_search.run, dvts.run):
        post = kernel(TwoTokens(), 8, seed=3)
        b = post.budget
        assert b["generations"] == 8 and b["seconds"] >= 0
        assert b["lm_calls"] >= 1 and 1 <= b["unique_requests"] <= b["requests"] <= 8 * 2
        assert "answer" in post.extras
    assert np.isnan(dvts.run(TwoTokens(), 4, seed=0).log_Z)


def test_bad_budgets() -> None:
    with pytest.raises(ValueError, match="multiple of beam_width"):
        beam_search.run(TwoTokens(), 6, beam_width=4, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        best_of_n.run(TwoTokens(), 0, seed=0)
