"""`ContextKey`: a context's ids hashed once, standing in for the tuple in every dict, and the
parent hint that lets the KV trie find last round's node without hashing the new context.

The hint must never change an answer: on SMC runs (token draws with resampling, and chunks)
every trie lookup made with a key returns the node the plain lookup returns, the hint is
really taken, and the rows equal a cache-free recompute; a twin whose hint names another
context of the same length fails that recompute.
"""

from __future__ import annotations

import copy
import pickle
import weakref

import numpy as np
import pytest
import torch
from test_hf import _Hot

import ppllm
from ppllm.lm import HFLM, Context
from ppllm.lm.base import Chunk
from ppllm.lm.context import ContextKey, key_of
from ppllm.lm.kv_cache import KVStore

PROMPT = "Q: 37+48+19=\n"


def test_a_key_is_equal_to_and_hashes_like_its_tuple_in_both_directions():
    t = tuple(range(5, 300))
    k = ContextKey(t)
    assert k == t and t == k and hash(k) == hash(t) and len(k) == len(t)
    assert {t: 1}[k] == 1 and {k: 2}[t] == 2  # found either way round
    assert ("next", k) == ("next", t) and hash(("next", k)) == hash(("next", t))
    assert k != t[:-1] and k != ContextKey(t[:-1]) and k == ContextKey(tuple(t))
    assert key_of(k) == (t, k) and key_of(t) == (t, t)


def test_a_key_keeps_one_level_of_parents_and_copies_without_it():
    a = ContextKey((1, 2))
    b = ContextKey((1, 2, 3), a)
    assert b.parent is a
    c = ContextKey((1, 2, 3, 4), b)
    assert c.parent is b and b.parent is None  # making c let go of a: no chain builds up
    for twin in (copy.deepcopy(c), pickle.loads(pickle.dumps(c))):
        assert twin == c and twin.parent is None


def test_contexts_and_chunks_pickle_as_their_values():
    ctx = Context((1, 2, 3))
    ctx.key()
    child = ctx + 4
    assert child.__dict__["_parent_key"] is ctx.key()
    back = pickle.loads(pickle.dumps(child))
    assert back == child and "_parent_key" not in back.__dict__
    chunk = Chunk((4, 5), "45")
    last = ContextKey((1, 2, 3, 4))
    chunk.__dict__["_last_key"] = weakref.ref(last)
    assert pickle.loads(pickle.dumps(chunk)).__dict__ == {"tokens": (4, 5), "text": "45"}
    assert (Context((1, 2, 3)) + chunk).__dict__["_parent_key"] is last  # (1, 2, 3) + (4, 5) extends (1, 2, 3, 4)
    gone = Chunk((6,), "6")
    gone.__dict__["_last_key"] = weakref.ref(ContextKey((1, 2)))  # its key already collected
    assert "_parent_key" not in (Context((1, 2)) + gone).__dict__


def test_a_key_is_made_once_per_context_and_knows_its_parent():
    ctx = Context((1, 2, 3))
    k = ctx.key()
    assert ctx.key() is k and k.parent is None
    child = ctx + 4
    assert child.key().parent is k and "_parent_key" not in child.__dict__
    assert (ctx + [4, 5]).__dict__.get("_parent_key") is None  # a list: no hint, plain lookups


# ---------------------------------------------------------------------- the trie's hint
class _Chunks(_Hot):
    async def step(self):
        piece = await self.sample(self.lm.chunk(self.ctx, max_tokens=3, temperature=6.0))
        self.ctx = self.ctx + piece
        self.factor(-1.0 * (piece.tokens[-1] % 3))
        if len(self.ctx) >= self.n:
            self.finish()


class _Checked(KVStore):
    """Every lookup made with a key also made without it: the two must agree."""

    hinted = 0

    def longest_prefix(self, tokens, limit, key=None):
        node = super().longest_prefix(tokens, limit, key)
        if getattr(key, "parent", None) is not None and len(key.parent.tokens) == limit:
            type(self).hinted += 1
            assert node is super().longest_prefix(tokens, limit), "the hint found another node"
        return node


def _rows_against_recompute(lm, program, n=10, seed=3):
    """Largest |row − cache-free recompute| over every row an SMC run computed."""
    seen = []
    inner = lm._next_rows

    def recording(contexts, **kw):
        rows = inner(contexts, **kw)
        lp = torch.log_softmax(rows.to(torch.float64), dim=-1)
        seen.extend(zip((key_of(c)[0] for c in contexts), lp.numpy().copy(), strict=True))
        return rows

    lm._next_rows = recording
    ppllm.smc(program, n, seed=seed, ess_threshold=1.0)
    with torch.no_grad():
        err = 0.0
        for c, row in seen:
            ref = torch.log_softmax(lm.model(torch.tensor([c])).logits[0, -1].double(), -1).numpy()
            err = max(err, float(np.max(np.abs(row - ref))))
    return err, len(seen)


@pytest.mark.parametrize("kind", [_Hot, _Chunks])
def test_the_parent_hint_is_taken_and_finds_the_node_the_plain_lookup_finds(tiny_dir, kind):
    lm = HFLM.load(tiny_dir)
    lm._kv.__class__ = _Checked
    _Checked.hinted = 0
    ctx = lm.context(PROMPT)
    err, rows = _rows_against_recompute(lm, kind(lm, ctx, len(ctx) + 12))
    assert err < 1e-4
    assert _Checked.hinted > rows // 2  # most rows were found through the hint


def test_broken_twin_a_hint_naming_another_context_fails_the_recompute(tiny_dir, monkeypatch):
    """Keys whose parent is a sibling (same length, other tokens): the trie hands out that
    sibling's KV, and the rows no longer equal the recompute."""
    lm = HFLM.load(tiny_dir)
    ctx = lm.context(PROMPT)
    real = Context.extend

    def sibling_parent(self, more):
        new = real(self, more)
        parent = new.__dict__.get("_parent_key")
        if parent is not None and type(more) is int:
            wrong = parent.tokens[:-1] + ((parent.tokens[-1] + 1) % lm.vocab_size or 1,)
            lm.logprobs([wrong])  # the sibling is cached, so the lookup finds it
            new.__dict__["_parent_key"] = ContextKey(wrong)
        return new

    monkeypatch.setattr(Context, "extend", sibling_parent)
    monkeypatch.setattr(Context, "__add__", sibling_parent)
    err, _ = _rows_against_recompute(lm, _Hot(lm, ctx, len(ctx) + 8))
    assert err > 1e-3
