"""ppllm's own decoder forward (GPT-2, Llama) and the resident batch it runs on.

The native forward must give the model's own next-token log-probabilities on every round
shape the backend produces (prefill, one token per row, ragged forks with a 4-D mask,
grouped-query attention); an architecture it does not know, or a decoder that disagrees
with the model at load, falls back to transformers' forward. The resident batch's
arrangement must put every row's own past in its batch row, copying only what moves.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from ppllm import _gc
from ppllm.lm import HFLM
from ppllm.lm import native_forward as nf
from ppllm.lm.hf import DEFAULT_KV_BUDGET_BYTES, DEFAULT_KV_BUDGET_TOKENS
from ppllm.lm.resident import ResidentBatch
from ppllm.zoo.char_tokenizer import build_tokenizer

TOL = 1e-4


def _tokenizer():
    return build_tokenizer()


def _gpt2(tok, **extra):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=4,
                     activation_function="gelu_new", initializer_range=0.2, bos_token_id=0,
                     eos_token_id=0, pad_token_id=0, **extra)
    return GPT2LMHeadModel(cfg).eval()


def _llama(tok, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    opts = {"num_key_value_heads": 2, "tie_word_embeddings": False, **extra}
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256, initializer_range=0.2,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, **opts)
    return LlamaForCausalLM(cfg).eval()


def _reference(model, ctx):
    with torch.no_grad():
        logits = model(torch.tensor([ctx])).logits[0, -1]
    return torch.log_softmax(logits.double(), -1).numpy()


def _rounds(lm, seed=0, n_rounds=6, first=1, most=6):
    """Rounds of contexts the way kernels produce them: `first` prompts, forks of different
    lengths (ragged) up to `most` rows, then rows extended one token at a time, some
    duplicated, some dropped."""
    rng = np.random.default_rng(seed)
    V = lm.vocab_size
    contexts = [tuple(int(t) for t in rng.integers(1, V, size=7)) for _ in range(first)]
    worst = 0.0
    for r in range(n_rounds):
        if r in (1, 4):  # forks of 1-3 tokens: ragged suffixes, a 4-D mask
            contexts = [c + tuple(int(t) for t in rng.integers(1, V, size=int(rng.integers(1, 4))))
                        for c in contexts for _ in range(2)][:most]
        else:  # one token each; resampling duplicates and drops rows
            keep = rng.integers(0, len(contexts), size=len(contexts))
            contexts = [contexts[k] + (int(rng.integers(1, V)),) for k in keep]
        got = lm.logprobs(contexts)
        worst = max(worst, max(float(np.max(np.abs(g - _reference(lm.model, c))))
                               for g, c in zip(got, contexts, strict=True)))
    return worst


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("first,most", [(1, 6), (5, 20)], ids=["few-rows", "many-rows"])
def test_native_forward_equals_the_models_own_on_every_round_shape(build, first, most):
    """Decode steps of a few rows attend by SDPA, of more rows by matmuls: both checked."""
    tok = _tokenizer()
    lm = HFLM(build(tok), tok)
    assert lm._native is not None and lm._native.kind == lm.model.config.model_type
    assert _rounds(lm, first=first, most=most) < TOL
    assert lm.stats["resident_moved"] > 0 and lm.stats["gathered"] > 0
    assert (lm.stats["rows"] > 8 * lm.stats["forwards"]) == (first > 1)  # many rows: the matmul path


def test_llama_without_grouped_heads_and_gpt2_scaled_by_layer():
    tok = _tokenizer()
    for model in (_llama(tok, num_key_value_heads=4), _gpt2(tok, scale_attn_by_inverse_layer_idx=True)):
        lm = HFLM(model, tok)
        assert lm._native is not None
        assert _rounds(lm, seed=1) < TOL


def test_native_and_transformers_forward_agree():
    tok = _tokenizer()
    model = _llama(tok)
    native, plain = HFLM(model, tok), HFLM(model, tok, native_forward=False)
    assert native._native is not None and plain._native is None
    rng = np.random.default_rng(3)
    contexts = [tuple(int(t) for t in rng.integers(1, len(tok), size=n)) for n in (5, 9, 9, 12)]
    for _ in range(4):
        a, b = native.logprobs(contexts), plain.logprobs(contexts)
        assert max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True)) < TOL
        contexts = [c + (int(rng.integers(1, len(tok))),) for c in contexts]


def test_an_architecture_without_a_native_forward_keeps_transformers():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, initializer_range=0.2)
    lm = HFLM(GPTNeoXForCausalLM(cfg).eval(), tok)
    assert lm._native is None
    assert _rounds(lm, n_rounds=3) < TOL


def test_rotary_embeddings_that_change_with_the_length_keep_transformers():
    tok = _tokenizer()
    model = _llama(tok)
    assert nf.NativeDecoder.for_model(model) is not None
    model.model.rotary_emb.rope_type = "dynamic"
    assert nf.NativeDecoder.for_model(model) is None


def test_broken_twin_a_decoder_off_by_one_position_is_refused(monkeypatch):
    """A decoder that places decode steps one position off (an off-by-one after the prefill;
    a shift of every position would be harmless under rotary embeddings) disagrees with the
    model at load: HFLM does not use it, and its answers, were they used, would fail the
    equality check."""
    tok = _tokenizer()
    model = _llama(tok)
    right = nf._llama(model)

    def shifted(ids, pos, *rest):
        return right(ids, pos + 1 if ids.shape[1] == 1 else pos, *rest)

    broken = nf.NativeDecoder(shifted, "llama")
    assert nf.NativeDecoder(right, "llama").agrees_with(model)
    assert not broken.agrees_with(model)
    monkeypatch.setattr(nf, "_llama", lambda m: shifted)
    lm = HFLM(model, tok)
    assert lm._native is None and _rounds(lm, n_rounds=3) < TOL
    lm._native = broken  # forced in: the equality check catches it
    lm.clear_cache()
    assert _rounds(lm, n_rounds=3) > 1e-3


def _decode_with_spare_rows(decoder, model, spare: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A prefill and one step of 2 rows on buffers with `spare` extra rows of garbage:
    (step logits, the buffers' first 2 rows, their spare rows)."""
    n_layers, heads, dim = nf._kv_layout(model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, model.config.vocab_size, (2, 6), generator=gen)
    pos = torch.arange(6).expand(2, -1)
    k = torch.randn(n_layers, 2 + spare, heads, 6, dim, generator=gen)
    v = torch.randn(n_layers, 2 + spare, heads, 6, dim, generator=gen)
    garbage = k[:, 2:].clone()
    with torch.no_grad():
        decoder(ids[:, :5], pos[:, :5], None, k, v, 0, 5)
        step = decoder(ids[:, 5:], pos[:, 5:], None, k, v, 5, 1)
    assert torch.equal(k[:, 2:], garbage)  # rows past B are left alone
    return step, k[:, :2], v[:, :2]


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_buffers_with_spare_rows_give_the_same_logits_and_keys(build):
    """The backend's buffers keep spare rows for growth; the decoder reads and writes only
    the batch's rows."""
    model = build(_tokenizer())
    decoder = nf.NativeDecoder.for_model(model)
    exact = _decode_with_spare_rows(decoder, model, 0)
    spare = _decode_with_spare_rows(decoder, model, 3)
    for a, b in zip(exact, spare, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_broken_twin_views_over_every_row_of_the_buffers_fail(monkeypatch):
    """Views that ignore the batch size attend over the spare rows too: not the batch's shape."""
    model = _gpt2(_tokenizer())
    decoder = nf.NativeDecoder.for_model(model)
    _decode_with_spare_rows(decoder, model, 3)
    real = nf._views
    monkeypatch.setattr(nf, "_views", lambda k, v, rows, past, end: real(k, v, k.shape[1], past, end))
    with pytest.raises(RuntimeError):
        _decode_with_spare_rows(decoder, model, 3)


# ---------------------------------------------------------------------- resident arrangement
class _Node:
    pass


def _check_arrangement(resident_rows: int, wanted: list[int], arrange=ResidentBatch.arrange) -> None:
    """Row b of the arranged buffers must hold the past of the node its request wants."""
    nodes = [_Node() for _ in range(resident_rows)]
    k = torch.full((1, 16, 1, 5, 1), -1.0)  # room for 16 rows
    k[0, :resident_rows] = torch.arange(resident_rows, dtype=torch.float32).view(-1, 1, 1, 1)
    res = ResidentBatch(k.clone(), k.clone(), resident_rows, 4, nodes)  # row r holds the value r
    plan = arrange(res, [nodes[w] for w in wanted])
    assert res.fits(plan, 5) and not res.fits(plan, 6)
    assert sorted(plan.order) == list(range(len(wanted)))
    dests = {d for _, d in plan.copies}
    assert not dests & {s for s, _ in plan.copies}  # no copy reads a row another writes
    kb, _ = res.apply(plan)
    for b, j in enumerate(plan.order):
        assert float(kb[0, b, 0, 0, 0]) == wanted[j]
    moved = len(wanted) - len(set(w for w in wanted if w < len(wanted)))
    assert len(plan.copies) <= moved  # rows that can stay, stay


@pytest.mark.parametrize("seed", range(20))
def test_arranged_rows_hold_their_own_past(seed):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 9))
    wanted = [int(w) for w in rng.integers(0, rows, size=int(rng.integers(1, 12)))]
    _check_arrangement(rows, wanted)


def test_broken_twin_an_arrangement_that_skips_the_copies_fails():
    def no_copies(res, nodes):
        plan = ResidentBatch.arrange(res, nodes)
        plan.copies = []
        return plan

    _check_arrangement(3, [0, 1, 2])  # nothing to copy: the twin is right here
    _check_arrangement(3, [2, 2, 0])
    with pytest.raises(AssertionError):
        _check_arrangement(3, [2, 2, 0], arrange=no_copies)


def test_rows_that_all_extend_in_place_are_the_identity_and_a_permutation_is_not():
    nodes = [_Node() for _ in range(4)]
    k = torch.zeros(1, 4, 1, 5, 1)
    res = ResidentBatch(k, k.clone(), 4, 4, nodes)
    same = res.arrange(list(nodes))
    assert same.identity and same.order == [0, 1, 2, 3] and not same.copies
    swapped = res.arrange([nodes[1], nodes[0], nodes[2], nodes[3]])
    assert not swapped.identity  # the twin: the same rows in another order need the order back
    _check_arrangement(4, [0, 1, 2, 3])
    _check_arrangement(4, [1, 0, 2, 3])


def test_a_round_with_a_new_node_is_not_arranged():
    nodes = [_Node() for _ in range(3)]
    k = torch.zeros(1, 3, 1, 4, 1)
    res = ResidentBatch(k, k.clone(), 3, 4, nodes)
    assert res.arrange([nodes[0], _Node()]) is None


# ---------------------------------------------------------------------- memory and collection
def test_default_budget_counts_bytes_for_small_models():
    tok = _tokenizer()
    lm = HFLM(_gpt2(tok), tok)  # 2 layers x 32 wide x K and V x 4 bytes = 512 bytes a token
    assert lm._kv.budget == max(DEFAULT_KV_BUDGET_TOKENS, DEFAULT_KV_BUDGET_BYTES // 512)
    assert HFLM(_gpt2(tok), tok, kv_budget_tokens=100)._kv.budget == 100


def test_forwards_stay_within_a_small_kv_budget_and_answer_right():
    tok = _tokenizer()
    lm = HFLM(_gpt2(tok), tok, kv_budget_tokens=40)
    sizes = []
    inner = lm._past_buffers

    def recording(plans, S):
        k, v, P, order = inner(plans, S)
        sizes.append(k.shape[1] * k.shape[3])  # rows x positions of the working buffers
        return k, v, P, order

    lm._past_buffers = recording
    rng = np.random.default_rng(0)
    contexts = [tuple(int(t) for t in rng.integers(1, len(tok), size=12)) for _ in range(8)]
    got = lm.logprobs(contexts)
    assert lm._kv.working == 20  # half the budget: the pool plus the working copy stay <= 1.5x
    assert lm.stats["forwards"] == 8 and max(sizes) <= 20  # 8 rows x 12 tokens, one row a batch
    assert max(float(np.max(np.abs(g - _reference(lm.model, c)))) for g, c in zip(got, contexts, strict=True)) < TOL


def _restores_thresholds(context) -> bool:
    """True when `context` raises the thresholds inside (nested too) and restores them after."""
    before = gc.get_threshold()
    try:
        with context():
            raised = gc.get_threshold()
            with context():
                inner = gc.get_threshold()
        return raised[0] >= _gc.RUN_THRESHOLDS[0] and inner == raised and gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)


def test_fewer_collections_restores_the_users_thresholds():
    assert _restores_thresholds(_gc.fewer_collections)
    before = gc.get_threshold()
    gc.set_threshold(0)
    try:
        with _gc.fewer_collections():
            assert gc.get_threshold()[0] == 0  # collection switched off by the user stays off
    finally:
        gc.set_threshold(*before)


def test_broken_twin_a_context_that_forgets_the_users_thresholds_fails():
    import contextlib

    @contextlib.contextmanager
    def forgetful():
        gc.set_threshold(*_gc.RUN_THRESHOLDS)
        yield

    assert not _restores_thresholds(forgetful)
