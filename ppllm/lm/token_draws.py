"""A round's token draws from its logits: `draw_tokens(...)` → (token, log q, log p) per row.

Each row is drawn by inverse CDF at its own uniform (the particle's), so a row's draw never
depends on the other rows of the batch. Two implementations of the same arithmetic:

- On the CPU (no top-p), NumPy on the logits' memory, with one exponential per entry: the
  row's weights exp(x − max) give the model's normaliser and, masked or tempered, the
  proposal's weights, which the draw uses unnormalised (u · total). Only the drawn token's
  log q and log p are formed; no normalised row over the vocabulary is built. At a 49k
  vocabulary the inverse CDF runs in blocks: block sums find the block, one block's
  cumulative sum finds the token (a full cumulative sum costs 3–4× as much).
- Elsewhere (an accelerator, or top-p), torch where the logits are: float64 log-softmax,
  `transform_logprobs_torch`, `inverse_cdf`, and a gather of the three scalars.

Both match the host sampler (`base.draw_from_rows`) row by row, to float rounding.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
import torch

from . import sampling_torch
from .sampling_torch import inverse_cdf, transform_logprobs_torch

__all__ = ["DeviceMasks", "draw_tokens"]

_BLOCK = 512  # entries per block of the blocked inverse CDF
_BLOCKED_FROM = 4096  # vocabularies at least this large are drawn in blocks
# Up to this many draws, on rows of at most this many entries in all, search in Python (measured:
# 1.4-2.5x faster at 1-8 rows of 25 tokens or 1-2 of 200; slower from 32 rows of 25 or 8 of 200).
_SEARCH_IN_PYTHON = 64
_SEARCH_IN_PYTHON_ENTRIES = 512


def draw_tokens(logits: torch.Tensor, u: np.ndarray, temperature: float = 1.0,
                mask: torch.Tensor | None = None, top_p: float | None = None,
                index: list[int] | None = None) -> tuple[list, list, list]:
    """(tokens, log q, log p) of each row of `logits` (B, V), unnormalised log-weights (float32
    logits or float64 log-probabilities), drawn at `u` (B,) from the tempered, masked (True =
    allowed; (V,) or (B, V)) and truncated distribution; log p under the model itself.
    `index`: draw j from row index[j] (draws that share a row), len(u) draws."""
    plain_top_p = top_p is None or top_p >= 1.0
    if sampling_torch.NUMPY_ON_CPU and logits.device.type == "cpu" and plain_top_p:
        x = logits.numpy()
        m = None if mask is None else mask.numpy()
        if index is not None and m is not None and m.ndim == 2:  # a mask per draw: rows per draw too
            x, index = x[index], None
        return _draw_numpy(x, u, temperature, m, index)
    if index is not None:
        logits = logits.index_select(0, torch.tensor(index, device=logits.device))
    return _draw_torch(logits, u, temperature, mask, top_p)


class DeviceMasks:
    """Boolean vocabulary masks on the device, kept while the same arrays are in use."""

    def __init__(self, device: torch.device | str, keep: int = 8) -> None:
        self.device, self.keep = device, keep
        self._cache: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

    def of(self, masks: list[np.ndarray]) -> torch.Tensor:
        """The rows' masks: (V,) when they are one array, else (rows, V)."""
        distinct: dict[int, int] = {}
        for m in masks:
            distinct.setdefault(id(m), len(distinct))
        if len(distinct) == 1:
            return self.one(masks[0])
        arrays = {id(m): m for m in masks}
        stacked = torch.tensor(np.stack([arrays[k] for k in distinct]), device=self.device)
        return stacked.index_select(0, torch.tensor([distinct[id(m)] for m in masks], device=self.device))

    def one(self, mask: np.ndarray) -> torch.Tensor:
        hit = self._cache.get(id(mask))
        if hit is None or hit[0] is not mask:  # the array itself is kept, so its id stays its own
            hit = (mask, torch.tensor(mask, dtype=torch.bool, device=self.device))
            self._cache[id(mask)] = hit
            while len(self._cache) > self.keep:
                self._cache.pop(next(iter(self._cache)))
        return hit[1]


def _draw_torch(logits: torch.Tensor, u: np.ndarray, temperature: float, mask: torch.Tensor | None,
                top_p: float | None) -> tuple[list, list, list]:
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    plain = temperature == 1.0 and mask is None and (top_p is None or top_p >= 1.0)
    lq = lp if plain else transform_logprobs_torch(lp, temperature, mask, top_p)
    tok = inverse_cdf(lq, torch.as_tensor(u, dtype=torch.float64).to(lq.device))
    picked = torch.stack([tok.to(torch.float64), lq.gather(1, tok[:, None])[:, 0],
                          lp.gather(1, tok[:, None])[:, 0]], 1).cpu().numpy()
    return picked[:, 0].astype(np.int64).tolist(), picked[:, 1].tolist(), picked[:, 2].tolist()


def _draw_numpy(x: np.ndarray, u: np.ndarray, temperature: float, mask: np.ndarray | None,
                index: list[int] | None = None) -> tuple[list, list, list]:
    """The CPU draw on `x` (float32 logits or float64 log-weights), with one (B, V) float64
    array alive at a time (the round's weights), built in place, and few NumPy calls (at a
    small vocabulary and a few rows, each call's overhead is the cost, not the arithmetic).
    `index`: draw j from row index[j]; the weights are built once per row."""
    B, V = x.shape
    w = x.astype(np.float64)  # a copy, also of float64 input
    top = w.max(axis=1)
    w -= top[:, None]
    np.exp(w, out=w)  # exp(x − top): max 1, so no overflow
    z = w.sum(axis=1)  # the model's normaliser: >= 1 unless a top was NaN or infinite
    if not all(map(math.isfinite, z.tolist())):  # a NaN or +inf logit, or no possible token
        raise ValueError("categorical: probabilities must be finite with a positive sum")
    plain = temperature == 1.0 and mask is None
    shift = top  # log w = (x − shift) / T
    if plain:
        total = z
    else:
        if temperature != 1.0:  # exp((x − top) / T)
            w = x.astype(np.float64)
            w -= top[:, None]
            w /= temperature
            np.exp(w, out=w)
        if mask is not None:
            w *= mask
        total = w.sum(axis=1)
        bad = np.flatnonzero(total <= 0)
        if len(bad):  # every allowed token underflowed (or none is allowed)
            shift = top.copy()
            for b in bad:
                row = x[b].astype(np.float64)
                allowed = row if mask is None else np.where(mask if mask.ndim == 1 else mask[b], row, -np.inf)
                shift[b] = allowed.max()
                if shift[b] == -np.inf:
                    raise ValueError("every token is masked out: the distribution is empty")
                w[b] = np.exp((allowed - shift[b]) / temperature)
                total[b] = w[b].sum()
    n = len(u)
    if n <= _SEARCH_IN_PYTHON and B * V <= _SEARCH_IN_PYTHON_ENTRIES:
        return _search_in_python(x, w, u, temperature, plain, top, z, shift, total, index)
    if index is not None:  # per draw from here on
        w, top, z, shift, total, x = w[index], top[index], z[index], shift[index], total[index], x[index]
        B = n
    tok = _inverse_cdf(w, np.asarray(u, dtype=np.float64) * total)
    xt = x[np.arange(B), tok].astype(np.float64)
    log_p = xt - top - np.log(z)
    if plain:  # log q is log p: the same arithmetic, (xt − top) / 1 − log z
        return tok.tolist(), log_p.tolist(), log_p.tolist()
    log_q = (xt - shift) / temperature - np.log(total)
    return tok.tolist(), log_q.tolist(), log_p.tolist()


def _search_in_python(x: np.ndarray, w: np.ndarray, u, temperature: float, plain: bool, top: np.ndarray,
                      z: np.ndarray, shift: np.ndarray, total: np.ndarray,
                      index: list[int] | None) -> tuple[list, list, list]:
    """`_inverse_cdf` and the log-probabilities for a few draws on a small vocabulary, each
    draw a binary search of its row's cumulative weights in Python (NumPy's per-call cost is
    most of a vector search there). The floats are the vector path's: the same cumulative
    sums, normalisers and logarithms from NumPy, the same IEEE products and differences."""
    V = w.shape[1]
    cdf = np.add.accumulate(w, axis=1).tolist()  # np.cumsum, without its wrapper's cost
    rows, tops, log_z, totals = x.tolist(), top.tolist(), np.log(z).tolist(), total.tolist()
    if not plain:
        shifts, log_total = shift.tolist(), np.log(total).tolist()
    tokens, log_q, log_p = [], [], []
    for j, uj in enumerate(u.tolist() if isinstance(u, np.ndarray) else u):
        b = j if index is None else index[j]
        i = bisect_right(cdf[b], uj * totals[b])  # the first cumulative weight above u · total
        if i >= V:  # rounding put the threshold at the total (only there can weight be zero)
            i = _last_possible(w[b])
        xi = rows[b][i]
        tokens.append(i)
        lp = xi - tops[b] - log_z[b]
        log_p.append(lp)
        log_q.append(lp if plain else (xi - shifts[b]) / temperature - log_total[b])
    return tokens, log_q, log_p


def _last_possible(w_row: np.ndarray) -> int:
    """The last index of positive weight: where a threshold at the row's total lands."""
    return int(np.flatnonzero(w_row > 0)[-1])


def _inverse_cdf(w: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per row, the first index whose cumulative weight exceeds `threshold` (never one of
    weight zero): `SeededRng.categorical` on unnormalised weights."""
    B, V = w.shape
    if V < _BLOCKED_FROM:
        cdf = np.add.accumulate(w, axis=1)
        idx = (cdf <= threshold[:, None]).sum(axis=1)
    else:
        n_blocks = -(-V // _BLOCK)
        padded = w if n_blocks * _BLOCK == V else np.pad(w, ((0, 0), (0, n_blocks * _BLOCK - V)))
        blocks = padded.reshape(B, n_blocks, _BLOCK)
        cum = np.cumsum(blocks.sum(axis=2), axis=1)
        j = np.minimum((cum <= threshold[:, None]).sum(axis=1), n_blocks - 1)
        rows = np.arange(B)
        before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0.0)
        inner = np.cumsum(blocks[rows, j], axis=1) + before[:, None]
        idx = j * _BLOCK + np.minimum((inner <= threshold[:, None]).sum(axis=1), _BLOCK - 1)
    idx = np.minimum(idx, V - 1)
    picked = w[np.arange(B), idx]
    if picked.min() <= 0:  # rounding landed on a zero: step back
        for b in np.flatnonzero(picked <= 0):
            before = np.flatnonzero(w[b, : idx[b] + 1] > 0)
            idx[b] = before[-1] if len(before) else np.flatnonzero(w[b] > 0)[0]
    return idx.astype(np.int64, copy=False)
