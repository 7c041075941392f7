"""Token draws on the device that holds the logits: the torch twin of the host-side sampler.

`transform_logprobs_torch` is `ppllm.lm.base.transform_logprobs` on a (B, V) float64 batch
(temperature, mask, top-p, renormalised), and `inverse_cdf` is `SeededRng.categorical` at
given uniforms: the first index whose cumulative mass exceeds u · total. Both work row by
row, so a row's draw does not depend on the other rows of the batch.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["inverse_cdf", "transform_logprobs_torch"]

# On the CPU the draw runs in NumPy on the same memory (zero-copy): a dozen small torch calls
# cost more than the arithmetic at small batches. Tests switch it off to check the torch path.
NUMPY_ON_CPU = True


def transform_logprobs_torch(
    lp: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None, top_p: float | None = None
) -> torch.Tensor:
    """(B, V) log-probabilities sampled from: tempered, masked (True = allowed), truncated."""
    if temperature != 1.0:
        lp = lp / temperature
    if mask is not None:
        lp = lp.masked_fill(~mask, -torch.inf)
    lp = _normalise(lp)
    if top_p is not None and top_p < 1.0:
        order = torch.argsort(-lp, dim=-1, stable=True)
        cum = torch.cumsum(lp.gather(-1, order).exp(), dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = torch.searchsorted(cum, torch.full((lp.shape[0], 1), top_p, dtype=cum.dtype, device=cum.device)) + 1
        ranks = torch.arange(lp.shape[-1], device=lp.device).expand_as(lp)
        dropped = torch.zeros_like(lp, dtype=torch.bool).scatter(-1, order, ranks >= keep)
        lp = _normalise(lp.masked_fill(dropped, -torch.inf))
    return lp


def _normalise(lp: torch.Tensor) -> torch.Tensor:
    top = lp.max(dim=-1, keepdim=True).values
    if torch.isneginf(top).any():
        raise ValueError("every token is masked out: the distribution is empty")
    return lp - (top + torch.log(torch.exp(lp - top).sum(dim=-1, keepdim=True)))


def inverse_cdf(lq: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row b, the index drawn from exp(lq[b]) at uniform u[b] (int64, shape (B,))."""
    if NUMPY_ON_CPU and lq.device.type == "cpu":
        return torch.from_numpy(_inverse_cdf_numpy(lq.numpy(), u.numpy()))
    probs = lq.exp()
    cdf = torch.cumsum(probs, dim=-1)
    total = cdf[:, -1:]
    if not torch.isfinite(total).all() or (total <= 0).any():
        raise ValueError("categorical: probabilities must be finite with a positive sum")
    idx = torch.searchsorted(cdf, u.view(-1, 1) * total, right=True).clamp_(max=lq.shape[-1] - 1)
    zero = probs.gather(1, idx)[:, 0] <= 0
    if zero.any():  # rounding landed on a zero-probability entry: step back to a positive one
        for b in torch.nonzero(zero)[:, 0].tolist():
            i = int(idx[b, 0])
            while probs[b, i] <= 0:
                i -= 1
            idx[b, 0] = i
    return idx[:, 0]


def _inverse_cdf_numpy(lq: np.ndarray, u: np.ndarray) -> np.ndarray:
    cdf = np.exp(lq)
    np.cumsum(cdf, axis=-1, out=cdf)  # in place: one (B, V) array, not two
    total = cdf[:, -1]
    if not np.isfinite(total).all() or (total <= 0).any():
        raise ValueError("categorical: probabilities must be finite with a positive sum")
    # the first index whose cumulative mass exceeds u * total (searchsorted, right side)
    idx = np.minimum((cdf <= (u * total)[:, None]).sum(axis=-1), lq.shape[-1] - 1)
    rows = np.arange(len(idx))
    for b in np.flatnonzero(np.exp(lq[rows, idx]) <= 0):  # rounding landed on a zero: step back
        i = int(idx[b])
        while np.exp(lq[b, i]) <= 0:
            i -= 1
        idx[b] = i
    return idx.astype(np.int64)
