"""Keyed streams: a stream is a function of its key, however it was made."""

from __future__ import annotations

import numpy as np
import pytest

from ppllm.rng import SeededRng, _fold, children_of, uniforms_of


def _draws(rng, n: int = 4) -> list[float]:
    return [rng.random() for _ in range(n)]


def test_children_are_the_children_made_one_by_one() -> None:
    step = SeededRng(7).child("step", 3)
    slots = [0, 1, 2, 5, 11, 64]
    many = children_of(step, "slot", slots)
    for i, rng in zip(slots, many, strict=True):
        alone = step.child("slot", i)
        assert rng.key == alone.key
        assert _draws(rng) == _draws(alone)


def test_children_of_an_rng_without_the_fast_path_fall_back_to_child() -> None:
    class Plain:
        def __init__(self) -> None:
            self.asked: list[tuple] = []

        def child(self, *key):
            self.asked.append(key)
            return key

    rng = Plain()
    assert children_of(rng, "slot", [3, 4]) == [("slot", 3), ("slot", 4)]


def test_broken_twin_children_that_skip_the_name_differ() -> None:
    """The equality above can fail: folding in the index alone gives other streams."""
    step = SeededRng(7).child("step", 3)
    wrong = [SeededRng(7, (), _fold(step.state, i)) for i in range(4)]
    assert all(_draws(w) != _draws(step.child("slot", i)) for i, w in enumerate(wrong))


def test_negative_indices_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        SeededRng(0).children("slot", [1, -1])


def test_vectorised_uniforms_equal_each_stream_drawn_alone() -> None:
    rngs = [SeededRng(1).child("slot", i) for i in range(9)]
    twins = [SeededRng(1).child("slot", i) for i in range(9)]
    for r in rngs[:3]:
        r.random()  # streams at different counters
    for r in twins[:3]:
        r.random()
    got = uniforms_of(rngs)
    assert got.tolist() == [t.random() for t in twins]
    assert np.all((got >= 0) & (got < 1))


@pytest.mark.parametrize("n", [3, 40])  # the plain-Python and the array path
def test_uniforms_list_is_each_stream_at_that_counter(n: int) -> None:
    from ppllm.rng import uniforms_list

    rngs = [SeededRng(7).child("slot", i) for i in range(n)]
    counters = [i % 5 + 1 for i in range(n)]
    want = []
    for r, c in zip(rngs, counters, strict=True):
        for _ in range(c):
            u = r.random()
        want.append(u)
    assert uniforms_list([r.state for r in rngs], counters) == want
    assert uniforms_list([r.state for r in rngs], [c + 1 for c in counters]) != want  # its broken twin
