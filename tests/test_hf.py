"""The `hf` backend: batched log-probabilities with KV reuse equal a plain full forward.

Every check compares the backend's answers with a fresh, cache-free forward pass of each
context on its own. They run on tiny-arith when its weights are present, else on a
randomly initialised model of the same shape and tokenizer; SmolLM2 checks are marked.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import ppllm
from ppllm.lm import HFLM, Context
from ppllm.lm.context import key_of
from ppllm.lm.kv_cache import KVStore

TOL = 1e-4
PROMPT = "Q: 37+48+19=\n"


@pytest.fixture
def tiny(tiny_dir):
    return HFLM.load(tiny_dir)


def reference(lm: HFLM, ctx: tuple[int, ...]) -> np.ndarray:
    """Next-token log-probabilities from one plain forward pass, no cache, no batching."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([ctx])).logits[0, -1]
    return torch.log_softmax(logits.float(), -1).double().numpy()


def max_error(lm: HFLM, contexts: list[tuple[int, ...]]) -> float:
    got = lm.logprobs(contexts)
    return max(float(np.max(np.abs(g - reference(lm, c)))) for g, c in zip(got, contexts, strict=True))


def grow(rng: np.random.Generator, contexts: list[tuple[int, ...]], vocab: int, width: int = 8):
    """Fork and extend contexts by 1-3 random tokens each: ragged rows sharing prefixes."""
    out = []
    for c in contexts:
        for _ in range(int(rng.integers(1, 3))):
            extra = rng.integers(1, vocab, size=int(rng.integers(1, 4)))
            out.append(c + tuple(int(t) for t in extra))
    return out[:width]


# ---------------------------------------------------------------------- equality
def test_batched_logprobs_equal_full_recompute_across_rounds(tiny):
    rng = np.random.default_rng(0)
    contexts = [tiny.context(PROMPT).tokens]
    errors = []
    for _ in range(5):
        contexts = grow(rng, contexts, tiny.vocab_size)
        errors.append(max_error(tiny, contexts))
        assert all(len(c) > len(PROMPT) for c in contexts)
    assert max(errors) < TOL
    # The prompt and every earlier round were reused, never recomputed.
    assert tiny.stats["forwards"] == 5
    assert tiny.stats["reused_tokens"] > tiny.stats["new_tokens"]


def test_same_length_rows_extended_by_one_token(tiny):
    base = tiny.context(PROMPT).tokens
    contexts = [base + (t,) for t in range(1, 9)]
    assert max_error(tiny, contexts) < TOL
    contexts = [c + (3,) for c in contexts]  # the common SMC round: every row plus one token
    assert max_error(tiny, contexts) < TOL
    # Round 1 encodes each row in full; round 2 runs one token per row on the cached rows.
    assert tiny.stats["new_tokens"] == 8 * (len(base) + 1) + 8
    assert tiny.stats["reused_tokens"] == 8 * (len(base) + 1)


def test_continuation_logprobs_equal_full_recompute(tiny):
    base = tiny.context(PROMPT).tokens
    tiny.logprobs([base])  # the context is cached; the continuation must still be right
    pairs = [(base, (5, 6, 7)), (base[:-2], (2,)), (base + (4,), (1, 1))]
    got = tiny.continuation_logprobs(pairs)
    for (ctx, cont), rows in zip(pairs, got, strict=True):
        assert rows.shape == (len(cont), tiny.vocab_size) and rows.dtype == np.float64
        for j in range(len(cont)):
            assert np.max(np.abs(rows[j] - reference(tiny, ctx + cont[:j]))) < TOL


def test_chunk_log_prob_agrees_with_its_draw(tiny):
    """A chunk's log p from sampling (next-token path) equals its score (continuation path)."""
    ctx = tiny.context(PROMPT)
    dist = tiny.chunk(ctx, stop="\n", max_tokens=12)
    for seed in range(3):
        draw = ppllm.request.answer_now(dist.sample(ppllm.SeededRng(seed)))
        tokens = draw.value.tokens
        assert "\n" in draw.value.text or tiny.is_eos(tokens[-1]) or len(tokens) == 12
        scored = ppllm.request.answer_now(dist.log_prob(draw.value))
        assert scored == pytest.approx(draw.log_prob, abs=TOL)


class _Extend(ppllm.Program):
    """Token-level program whose weights differ, so resampling forks and drops particles."""

    def __init__(self, lm, ctx, n):
        self.lm, self.ctx, self.n = lm, ctx, n

    async def step(self):
        tok = await self.sample(self.lm.next_token(self.ctx))
        self.ctx = self.ctx + tok
        self.factor(-1.0 * (tok % 3))
        if len(self.ctx) >= self.n:
            self.finish()


def test_after_smc_with_resampling_the_cache_still_answers_right(tiny):
    ctx = tiny.context(PROMPT)
    post = ppllm.smc(_Extend(tiny, ctx, len(ctx) + 10), 12, seed=1, ess_threshold=1.0)
    assert sum(s.resampled for s in post.steps) >= 5
    ancestors = np.concatenate([s.ancestors for s in post.steps if s.resampled])
    assert len(np.unique(ancestors)) < len(ancestors)  # resampling really duplicated particles
    survivors = sorted({p.ctx.tokens for p in post.particles})
    forwards = tiny.stats["forwards"]
    assert max_error(tiny, survivors) < TOL
    # Survivors' prefixes came from the cache: only their last token was run again.
    assert tiny.stats["forwards"] == forwards + 1
    assert tiny.stats["new_tokens"] - sum(1 for _ in survivors) < len(ctx) + 12 * 10


class _Hot(_Extend):
    """Hot proposals: tiny-arith's particles really diverge (it is nearly deterministic)."""

    async def step(self):
        tok = await self.sample(self.lm.next_token(self.ctx, temperature=6.0))
        self.ctx = self.ctx + tok
        self.factor(-1.0 * (tok % 3))
        if len(self.ctx) >= self.n:
            self.finish()


def _smc_rows(lm, seed=1):
    """Every (context, row) the backend computed during an SMC run with resampling."""
    seen = []
    inner = lm._next_rows

    def recording(contexts, **kw):
        rows = inner(contexts, **kw)  # logits, when a draw asked for them unnormalised
        lp = torch.log_softmax(rows.to(torch.float64), dim=-1)
        seen.extend(zip((key_of(c)[0] for c in contexts), lp.numpy().copy(), strict=True))  # ids of keys
        return rows

    lm._next_rows = recording
    ctx = lm.context(PROMPT)
    ppllm.smc(_Hot(lm, ctx, len(ctx) + 10), 12, seed=seed, ess_threshold=0.5)
    assert len({c for c, _ in seen}) > 60  # distinct rows, not one context repeated
    return seen


def test_rows_kept_from_last_round_answer_right_in_place_and_after_resampling(tiny):
    """Last round's batch buffers are reused (in place while the rows stay; rearranged along
    the batch after resampling) and every row computed on them equals a full recompute."""
    seen = _smc_rows(tiny)
    assert tiny.stats["resident_in_place"] > 0 and tiny.stats["resident_moved"] > 0
    assert max(float(np.max(np.abs(row - reference(tiny, c)))) for c, row in seen) < TOL


def test_broken_twin_reusing_the_wrong_rows_fails_the_check(tiny_dir):
    """A resident batch that hands row b another row's past must fail the same check."""
    from ppllm.lm import hf

    class Shuffled(hf.ResidentBatch):
        def __init__(self, k, v, rows, end, lasts):
            super().__init__(k, v, rows, end, lasts)
            n = len(lasts)
            self.row_of = {id(node): (b + 1) % n for b, node in enumerate(lasts)}

    old = hf.ResidentBatch
    hf.ResidentBatch = Shuffled
    try:
        lm = HFLM.load(tiny_dir)
        seen = _smc_rows(lm)
    finally:
        hf.ResidentBatch = old
    assert max(float(np.max(np.abs(row - reference(lm, c)))) for c, row in seen) > 1e-3


def test_after_eviction_answers_stay_right(tiny_dir):
    lm = HFLM.load(tiny_dir, kv_budget_tokens=12)
    rng = np.random.default_rng(3)
    contexts = [lm.context(PROMPT).tokens]
    for _ in range(5):
        contexts = grow(rng, contexts, lm.vocab_size)
        assert max_error(lm, contexts) < TOL
        assert lm.cached_tokens <= 12
    assert lm._kv.evictions > 0
    # Evicted prefixes are recomputed, not read from reused slots.
    assert max_error(lm, [contexts[0][:-1], contexts[-1] + (2,)]) < TOL


def test_broken_twin_reusing_the_wrong_prefix_fails_the_check(tiny_dir):
    """A store that hands out another context's KV must be caught by the equality check."""

    class WrongPrefix(KVStore):
        def longest_prefix(self, tokens, limit, key=None):
            node = super().longest_prefix(tokens, limit, key)
            # Any other cached node of the same depth: right length, wrong tokens.
            for other in self.index.values():
                if other.depth == node.depth and other is not node:
                    return other
            return node

    lm = HFLM.load(tiny_dir)
    lm._kv.__class__ = WrongPrefix
    base = lm.context(PROMPT).tokens
    first = [base + (t,) for t in (1, 2, 3, 4)]
    lm.logprobs(first)
    assert max_error(lm, [c + (5,) for c in first]) > 1e-3


# ---------------------------------------------------------------------- loading
def test_gguf_and_safetensors_give_the_same_logprobs(tiny_dir, tmp_path):
    from ppllm.zoo.gguf_export import export_gguf

    gguf = export_gguf(tiny_dir, tmp_path / "tiny.gguf")
    a = HFLM.load(tiny_dir)
    b = HFLM.load(gguf)
    c = HFLM.load(tmp_path, gguf_file="tiny.gguf")
    ctx = a.context(PROMPT).tokens
    assert b.context(PROMPT).tokens == ctx
    contexts = [ctx, ctx + (3, 4), ctx[:-3]]
    for x, y, z in zip(a.logprobs(contexts), b.logprobs(contexts), c.logprobs(contexts), strict=True):
        assert np.max(np.abs(x - y)) < 1e-5 and np.max(np.abs(x - z)) < 1e-5
    assert a.eos_token_ids == b.eos_token_ids


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        HFLM.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFLM.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no GGUF file 'x.gguf'"):
        HFLM.load(tmp_path, gguf_file="x.gguf")


def test_a_model_that_is_not_a_causal_lm_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="'vit' model, which is not a causal LM"):
        HFLM.load(tmp_path)


def test_a_directory_without_weights_is_a_clear_error(tiny_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="cannot load the weights"):
        HFLM.load(tmp_path)


def test_text_the_tokenizer_cannot_encode_is_rejected(tiny):
    with pytest.raises(ValueError, match=r"cannot encode the characters \['x', 'y'\]"):
        tiny.context("Q: 2x+y=\n")
    with pytest.raises(ValueError, match="at least one context token"):
        tiny.logprobs([()])


def test_logprobs_are_float64_distributions(tiny):
    (lp,) = tiny.logprobs([tiny.context(PROMPT).tokens])
    assert lp.dtype == np.float64 and lp.shape == (tiny.vocab_size,)
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-9)
    assert not lp.flags.writeable  # shared between particles: nobody may change it


# ---------------------------------------------------------------------- SMC end to end
def _run(lm, seed):
    ctx = lm.context(PROMPT)
    post = ppllm.smc(_Extend(lm, ctx, len(ctx) + 24), 8, seed=seed, ess_threshold=0.5)
    return [p.ctx.tokens for p in post.particles], post.log_weights.copy(), post.log_Z


def test_smc_on_tiny_model_is_reproducible(tiny):
    a = _run(tiny, 7)
    tiny.clear_cache()
    b = _run(tiny, 7)
    c = _run(tiny, 8)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert np.isfinite(a[2]) and a[0] != c[0]


def test_importing_ppllm_lm_does_not_import_torch():
    code = "import sys, ppllm.lm; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smol():
    from ppllm.zoo import smollm2

    if not smollm2.is_available():
        try:
            smollm2.fetch(progress=False)
        except smollm2.DownloadError as err:
            pytest.skip(f"SmolLM2 cannot be fetched here: {err}")
    return ppllm.zoo.load_lm("smollm2")


@pytest.mark.smollm2
def test_smollm2_chat_and_stop_tokens(smol):
    text = smol.chat("hi")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = {smol.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert ids <= smol.eos_token_ids and all(smol.is_eos(i) for i in ids)
    assert smol.context(text).tokens == tuple(smol.tokenizer.encode(text, add_special_tokens=False))
    # A chunk ends at the end of the turn, whichever stop token the model picks.
    dist = smol.chunk(Context(smol.context(text).tokens), max_tokens=3)
    assert all(dist._stops_after((5, i)) for i in ids)


@pytest.mark.smollm2
def test_smollm2_batched_logprobs_equal_full_recompute(smol):
    rng = np.random.default_rng(0)
    contexts = [smol.context(smol.chat("Name a colour.")).tokens]
    for _ in range(2):
        contexts = grow(rng, contexts, 1000, width=4)
        assert max_error(smol, contexts) < TOL


# ---------------------------------------------------------------------- draws on the device
def _draw_requests(lm: HFLM, n: int, seed: int):
    """SampleToken requests over ragged contexts, with every kind of sampling setting."""
    from ppllm.lm.base import SampleToken

    gen = np.random.default_rng(seed)
    base = lm.context(PROMPT).tokens
    ctxs = grow(gen, [base, base + (5,)], lm.vocab_size, width=n)
    mask = np.ones(lm.vocab_size, dtype=bool)
    mask[gen.choice(lm.vocab_size, size=lm.vocab_size // 2, replace=False)] = False
    # tiny-arith is nearly certain of its next token; hot settings make the draws depend on u
    dists = [lm.next_token(Context(()), **kw) for kw in
             ({}, {"temperature": 8.0}, {"temperature": 6.0, "mask": mask}, {"temperature": 10.0, "top_p": 0.8},
              {"temperature": 0.7, "top_p": 0.9})]
    reqs = []
    for i, c in enumerate(ctxs * 4):
        reqs.append(SampleToken(lm, c, dists[i % len(dists)], float(gen.random())))
    return reqs


@pytest.mark.parametrize("numpy_on_cpu", [True, False], ids=["numpy", "torch"])
def test_device_draws_equal_the_host_sampler(tiny, numpy_on_cpu, monkeypatch):
    """The device path (batched transform + inverse CDF) draws what the host path draws from
    the same rows: same token, same log q and log p. On the CPU the inverse CDF runs in NumPy;
    the torch one (what an accelerator runs) is checked here too."""
    from ppllm.lm import sampling_torch
    from ppllm.lm.base import draw_from_rows

    monkeypatch.setattr(sampling_torch, "NUMPY_ON_CPU", numpy_on_cpu)
    reqs = _draw_requests(tiny, 8, seed=1)
    want = draw_from_rows(reqs, tiny.logprobs([r.tokens for r in reqs]))
    got = tiny.sample_tokens(reqs)  # on the same rows: the answers the host path was given
    assert tiny.stats["answer_hits"] > 0
    assert len({g.token for g in got}) >= 4  # the draws really vary (see the broken twin below)
    assert [g.token for g in got] == [w.token for w in want]
    np.testing.assert_allclose([g.log_q for g in got], [w.log_q for w in want], rtol=0, atol=1e-9)
    np.testing.assert_allclose([g.log_p for g in got], [w.log_p for w in want], rtol=0, atol=1e-12)


def test_a_batched_draw_equals_the_draw_alone(tiny_dir):
    """Each particle's draw depends on its own request only: drawn in one batch or alone
    (cold cache, batch of one), the same token (log-probabilities within float rounding)."""
    reqs = _draw_requests(HFLM.load(tiny_dir), 8, seed=2)
    batched = HFLM.load(tiny_dir).sample_tokens(reqs)
    alone = []
    for r in reqs:
        lm = HFLM.load(tiny_dir)
        r.backend = lm
        alone.append(lm.sample_tokens([r])[0])
    assert [a.token for a in alone] == [b.token for b in batched]
    np.testing.assert_allclose([a.log_q for a in alone], [b.log_q for b in batched], atol=TOL)


def test_broken_twin_drawing_at_a_neighbours_uniform_fails_the_check(tiny):
    """The check above can fail: a sampler that hands row i the uniform of row i+1 (a
    batching bug) draws different tokens."""
    from ppllm.lm.base import SampleToken, draw_from_rows

    reqs = _draw_requests(tiny, 8, seed=1)
    got = tiny.sample_tokens(reqs)
    shifted = [SampleToken(r.backend, r.tokens, r.dist, reqs[(i + 1) % len(reqs)].u) for i, r in enumerate(reqs)]
    wrong = draw_from_rows(shifted, tiny.logprobs([r.tokens for r in reqs]))
    assert [g.token for g in got] != [w.token for w in wrong]


def test_draws_move_scalars_not_rows(tiny):
    """A draw brings three numbers per particle to the host; a full-row request a whole
    float64 vocabulary row."""
    reqs = _draw_requests(tiny, 8, seed=3)
    before = tiny.stats["bytes_to_host"]
    tiny.sample_tokens(reqs)
    assert tiny.stats["bytes_to_host"] - before == 3 * 8 * len(reqs)
    before = tiny.stats["bytes_to_host"]
    tiny.logprobs([r.tokens for r in reqs])
    assert tiny.stats["bytes_to_host"] - before == 8 * tiny.vocab_size * len({r.tokens for r in reqs})


def test_decode_takes_the_fast_tokenizers_own_decoder_and_gives_the_same_text(tiny):
    from ppllm.lm.hf_support import fast_decoder

    rng = np.random.default_rng(5)
    for _ in range(50):
        ids = [int(t) for t in rng.integers(0, tiny.vocab_size, size=int(rng.integers(1, 12)))]
        assert fast_decoder(tiny.tokenizer, tiny.vocab_size)(ids) == tiny.tokenizer.decode(
            ids, clean_up_tokenization_spaces=False)
    assert tiny._decode_ids.__name__ == "fast"


def test_broken_twin_a_backend_decoder_that_differs_is_not_taken(tiny):
    """The choice can go the other way: a backend whose text differs keeps transformers' decode."""
    from ppllm.lm.hf_support import fast_decoder

    class Backend:
        def decode(self, ids, skip_special_tokens=False):
            return "!" + tiny.tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    class Tokenizer:
        backend_tokenizer = Backend()

        def decode(self, ids, clean_up_tokenization_spaces=False):
            return tiny.tokenizer.decode(ids, clean_up_tokenization_spaces=clean_up_tokenization_spaces)

    decode = fast_decoder(Tokenizer(), tiny.vocab_size)
    assert decode.__name__ == "slow" and decode([3, 4]) == tiny.tokenizer.decode([3, 4])


def test_clearing_the_cache_keeps_the_pool_and_still_answers_right(tiny):
    base = tiny.context(PROMPT).tokens
    tiny.logprobs([base + (1,), base + (2,)])
    pool = tiny._kv.k
    tiny.clear_cache()
    assert tiny._kv.k is pool and tiny.cached_tokens == 0 and not tiny._kv.index
    assert len(tiny._kv.free) == tiny._kv.capacity - 1  # every slot but the zero dummy
    assert max_error(tiny, [base + (3,), base + (1, 4)]) < TOL


def _pool_read_back_error(lm, seed=2):
    """After an SMC run of decode steps, every surviving context's next row recomputed from the
    pool alone (the resident buffers dropped, so its past is gathered slot by slot)."""
    ctx = lm.context(PROMPT)
    post = ppllm.smc(_Hot(lm, ctx, len(ctx) + 10), 8, seed=seed, ess_threshold=1.0)
    err = 0.0
    for c in sorted({p.ctx.tokens for p in post.particles}):
        lm._resident = None
        lm._answers.clear()
        err = max(err, max_error(lm, [c + (3,)]))
    return err


def test_decode_steps_store_their_keys_and_values_in_the_right_slots(tiny, monkeypatch):
    from ppllm.lm.kv_cache import KVStore

    writes = {"slice": 0}
    real = KVStore.store_column

    def counted(self, kbuf, vbuf, P, rows, slots, B):
        writes["slice"] += slots == list(range(slots[0], slots[0] + len(slots)))
        return real(self, kbuf, vbuf, P, rows, slots, B)

    monkeypatch.setattr(KVStore, "store_column", counted)
    assert _pool_read_back_error(tiny) < TOL
    assert writes["slice"] > 5  # the one-copy path ran


def test_broken_twin_a_decode_step_storing_the_previous_position_fails_the_read_back(tiny, monkeypatch):
    from ppllm.lm.kv_cache import KVStore

    real = KVStore.store_column
    monkeypatch.setattr(KVStore, "store_column", lambda self, kbuf, vbuf, P, rows, slots, B:
                        real(self, kbuf, vbuf, P - 1, rows, slots, B))  # the previous position's K/V
    assert _pool_read_back_error(tiny) > 1e-3
