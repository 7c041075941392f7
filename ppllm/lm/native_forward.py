"""A plain-torch decoder forward for GPT-2 and Llama-family models, over the backend's buffers.

transformers' forward costs about a millisecond of Python per call in module dispatch, config
lookups, cache objects and mask building, whatever the model's size. On a small model that is
most of a decode step (4 layers, 64 wide: ~1 ms of Python around ~0.2 ms of arithmetic), so
the `hf` backend runs these two architectures itself: the same weights (read from the loaded
model, never copied), the same operations in the same order, a few dozen tensor calls per
step. Keys and values are written straight into the backend's (B, heads, capacity, head_dim)
buffers.

`NativeDecoder.for_model(model)` returns None for anything it does not know (other
architectures, cross-attention, rope variants it cannot read, sliding windows, an activation
it does not have), and `HFLM` keeps transformers' forward then. Before it is used, a decoder
checks itself against the model's own forward on a short input (prefill and one cached step);
a mismatch means falling back, never wrong answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["NativeDecoder"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}
# Grouped-query attention inside SDPA (torch >= 2.5); before that, keys are repeated per head.
_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)
_FEW_ROWS = 8  # decode steps of at most this many rows attend by SDPA


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
            scale: float) -> torch.Tensor:
    """(B, heads, S, dim) attention output; k, v may have fewer (grouped) heads.

    One query per row (a decode step) of a batch of more than a few rows runs as two
    batched matmuls and a softmax: on CPU that is faster than SDPA's kernel at small head
    sizes (1.2x at 32 rows) and reads the buffers' strided views in place. Query heads of
    one key head become its rows, so grouped-query attention needs no repeated keys. A few
    rows (SDPA is 2x faster at one or two: fewer calls), and longer queries (prefill, forks)
    go to SDPA; with no mask, a longer query starts from an empty past (causal)."""
    B, H, S, D = q.shape
    G = H // k.shape[1]
    if S == 1 and (B > _FEW_ROWS or (G > 1 and not _GQA)):
        scores = torch.matmul(q.reshape(B, k.shape[1], G, D), k.transpose(-1, -2)).mul_(scale)
        if mask is not None:  # (B, 1, 1, W): the same keys for every head
            scores = scores.masked_fill_(~mask, -torch.inf)
        return torch.matmul(torch.softmax(scores, dim=-1), v).view(B, H, 1, D)
    causal = mask is None and S > 1
    if G > 1:
        if _GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                                  enable_gqa=True)
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


def _views(kbuf: torch.Tensor, vbuf: torch.Tensor, rows: int, past: int,
           end: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Per layer, the first `rows` rows' new positions and whole past: sliced once for all
    layers and split by one `unbind` each (indexing every layer's four views cost 16 calls
    at 4 layers); the buffers may have spare rows."""
    return (kbuf[:, :rows, :, past:end].unbind(0), vbuf[:, :rows, :, past:end].unbind(0),
            kbuf[:, :rows, :, :end].unbind(0), vbuf[:, :rows, :, :end].unbind(0))


class NativeDecoder:
    """`decoder(input_ids, position_ids, mask, kbuf, vbuf, past, keep)`: float logits (B, keep, V)
    of the last `keep` positions, with the new tokens' keys and values written into
    `kbuf[layer][:B, :, past:past + S]` (and `vbuf`); rows of the buffers past B are left alone."""

    def __init__(self, run: Callable[..., torch.Tensor], kind: str) -> None:
        self._run = run
        self.kind = kind

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None,
                 kbuf: torch.Tensor, vbuf: torch.Tensor, past: int, keep: int) -> torch.Tensor:
        return self._run(input_ids, position_ids, mask, kbuf, vbuf, past, keep)

    @classmethod
    def for_model(cls, model: Any) -> NativeDecoder | None:
        """The decoder of `model`, or None when its architecture is not one this module runs
        or the decoder does not reproduce the model's own forward."""
        build = {"gpt2": _gpt2, "llama": _llama}.get(getattr(model.config, "model_type", None))
        run = build(model) if build is not None else None
        if run is None:
            return None
        decoder = cls(run, model.config.model_type)
        return decoder if decoder.agrees_with(model) else None

    @torch.no_grad()
    def agrees_with(self, model: Any, length: int = 6, tol: float = 1e-3) -> bool:
        """True when a prefill of `length` tokens and one cached step give the model's own
        logits (within `tol` relative to their scale)."""
        vocab = int(model.get_output_embeddings().weight.shape[0])
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, length + 1), generator=gen).to(_device(model))
        want = model(input_ids=ids).logits.float()
        n_layers, heads, dim = _kv_layout(model)
        kbuf = torch.zeros(n_layers, 2, heads, length + 1, dim, dtype=_dtype(model), device=ids.device)
        vbuf = torch.zeros_like(kbuf)
        pos = torch.arange(length + 1, device=ids.device).expand(2, -1)
        first = self(ids[:, :length], pos[:, :length], None, kbuf, vbuf, 0, length).float()
        step = self(ids[:, length:], pos[:, length:], None, kbuf, vbuf, length, 1).float()
        got = torch.cat([first, step], dim=1)
        scale = 1.0 + float(want.abs().max())
        return bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= tol * scale


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


def _kv_layout(model: Any) -> tuple[int, int, int]:
    c = model.config
    n_layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    n_heads = getattr(c, "num_attention_heads", None) or c.n_head
    kv_heads = getattr(c, "num_key_value_heads", None) or n_heads
    hidden = getattr(c, "hidden_size", None) or c.n_embd
    return int(n_layers), int(kv_heads), int(getattr(c, "head_dim", None) or hidden // n_heads)


def _gpt2(model: Any) -> Callable[..., torch.Tensor] | None:
    c = model.config
    act = _ACTIVATIONS.get(getattr(c, "activation_function", ""))
    if act is None or getattr(c, "add_cross_attention", False) or not hasattr(model, "transformer"):
        return None
    body = model.transformer
    heads = int(c.n_head)
    hidden = int(c.n_embd)
    dim = hidden // heads
    scales = []
    for i in range(int(c.n_layer)):
        s = dim ** -0.5 if c.scale_attn_weights else 1.0
        scales.append(s / (i + 1) if c.scale_attn_by_inverse_layer_idx else s)
    eps = float(c.layer_norm_epsilon)
    blocks = [(b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight,
               b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
               b.mlp.c_proj.weight, b.mlp.c_proj.bias) for b in body.h]
    wte, wpe = body.wte.weight, body.wpe.weight
    ln_f = (body.ln_f.weight, body.ln_f.bias)
    head = model.lm_head.weight

    def run(input_ids, position_ids, mask, kbuf, vbuf, past, keep):
        # Rows stay flat, (B*S, hidden), between layers: every view is a dispatch saved.
        B, S = input_ids.shape
        end = past + S
        x = torch.embedding(wte, input_ids.reshape(-1)).add_(torch.embedding(wpe, position_ids.reshape(-1)))
        k_new, v_new, k_all, v_all = _views(kbuf, vbuf, B, past, end)
        for i, (w1, b1, wa, ba, wp, bp, w2, b2, wf, bf, wo, bo) in enumerate(blocks):
            h = torch.layer_norm(x, (hidden,), w1, b1, eps)
            qkv = torch.addmm(ba, h, wa)
            if S == 1:  # (B, 3·hidden) is already (B, 3, H, 1, D): no permute
                q, k, v = qkv.view(B, 3, heads, 1, dim).unbind(1)
            else:
                q, k, v = qkv.view(B, S, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
            k_new[i].copy_(k)  # (B, H, S, D) into the buffers
            v_new[i].copy_(v)
            a = _attend(q, k_all[i], v_all[i], mask, scales[i])
            # (B, H, S, D) -> (B*S, hidden); with one query per row the transpose moves nothing
            a = a.reshape(B, hidden) if S == 1 else a.transpose(1, 2).reshape(B * S, hidden)
            x = torch.addmm(bp, a, wp).add_(x)
            h = torch.layer_norm(x, (hidden,), w2, b2, eps)
            x = torch.addmm(bo, act(torch.addmm(bf, h, wf)), wo).add_(x)
        x = x.view(B, S, hidden) if keep == S else x.view(B, S, hidden)[:, S - keep :]
        return F.linear(torch.layer_norm(x, (hidden,), ln_f[0], ln_f[1], eps), head)

    return run


def _llama(model: Any) -> Callable[..., torch.Tensor] | None:
    c = model.config
    act = _ACTIVATIONS.get(getattr(c, "hidden_act", ""))
    body = getattr(model, "model", None)
    rotary = getattr(body, "rotary_emb", None)
    if act is None or rotary is None or not hasattr(rotary, "inv_freq"):
        return None
    if getattr(c, "sliding_window", None) or getattr(c, "pretraining_tp", 1) != 1:
        return None
    # Rotary frequencies read once: rope types that change them with the length are refused.
    if getattr(rotary, "rope_type", "default") not in _STATIC_ROPE:
        return None
    n_layers, kv_heads, dim = _kv_layout(model)
    heads = int(c.num_attention_heads)
    scale = dim ** -0.5
    inv_freq = rotary.inv_freq
    rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
    layers = []
    for layer in body.layers:
        at, mlp = layer.self_attn, layer.mlp
        layers.append((layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon),
                       at.q_proj, at.k_proj, at.v_proj, at.o_proj, layer.post_attention_layernorm.weight,
                       float(layer.post_attention_layernorm.variance_epsilon), mlp.gate_proj, mlp.up_proj,
                       mlp.down_proj))
    norm_w, norm_eps = body.norm.weight, float(body.norm.variance_epsilon)
    head = model.lm_head
    dtype = _dtype(model)

    def rms(x, w, eps):
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)

    def lin(x, m):
        return F.linear(x, m.weight, m.bias)

    def rotate(t, cos, sin):
        half = t.shape[-1] // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin

    def run(input_ids, position_ids, mask, kbuf, vbuf, past, keep):
        B, S = input_ids.shape
        end = past + S
        x = F.embedding(input_ids, body.embed_tokens.weight)
        freqs = position_ids[..., None].float() * inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * rope_scale).to(dtype)[:, None]
        sin = (emb.sin() * rope_scale).to(dtype)[:, None]
        k_new, v_new, k_all, v_all = _views(kbuf, vbuf, B, past, end)
        for i, (w1, e1, qp, kp, vp, op, w2, e2, gp, up, dp) in enumerate(layers):
            h = rms(x, w1, e1)
            q = rotate(lin(h, qp).view(B, S, heads, dim).transpose(1, 2), cos, sin)
            k_new[i].copy_(rotate(lin(h, kp).view(B, S, kv_heads, dim).transpose(1, 2), cos, sin))
            v_new[i].copy_(lin(h, vp).view(B, S, kv_heads, dim).transpose(1, 2))
            a = _attend(q, k_all[i], v_all[i], mask, scale)
            x = x + lin(a.transpose(1, 2).reshape(B, S, heads * dim), op)
            h = rms(x, w2, e2)
            x = x + lin(act(lin(h, gp)) * lin(h, up), dp)
        return lin(rms(x[:, S - keep :], norm_w, norm_eps), head)

    return run
