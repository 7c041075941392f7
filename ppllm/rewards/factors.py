"""Converters from a PRM score r̂ ∈ [0, 1] to a log-potential log Φ (a `factor` or a `twist`).

- `bernoulli(r̂) = log r̂`: the Bernoulli likelihood of the observation "accepted" (o = 1)
  when r̂ is the acceptance probability (reference/algorithms.md §1.1). r̂ = 0 gives −inf,
  i.e. a hard constraint; soften the PRM (e.g. `ExactArithVerifier(delta=...)`) to avoid it.
- `odds(r̂) = log r̂ − log(1 − r̂)` with r̂ clipped to [eps, 1 − eps], eps = 1e-7: the
  resampling logit of the published particle-filter code (its_hub).
- `tempered(conv, tau)`: conv(r̂) / τ, a flatter (τ > 1) or sharper (τ < 1) potential.

All are vectorised (scalar in → float out, array in → array out). Scores outside [0, 1] or
NaN raise `RewardError`: clipping would otherwise hide a broken reward model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import RewardError

__all__ = ["EPS", "CONVERTERS", "Converter", "bernoulli", "get_converter", "odds", "tempered"]

EPS = 1e-7

Converter = Callable[[float | np.ndarray], float | np.ndarray]


def _probabilities(r: float | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(r, dtype=np.float64)
    ok = np.isfinite(arr) & (arr >= 0.0) & (arr <= 1.0)
    if not np.all(ok):
        bad = arr[~ok] if arr.ndim else arr
        raise RewardError(f"{what}: scores must be probabilities in [0, 1], got {np.ravel(bad)[0]!r}")
    return arr


def _out(value: np.ndarray) -> float | np.ndarray:
    return float(value) if value.ndim == 0 else value


def bernoulli(r: float | np.ndarray) -> float | np.ndarray:
    """log r̂: log-likelihood of "accepted" under Bernoulli(r̂)."""
    arr = _scalar(r, "bernoulli") if type(r) is float else _probabilities(r, "bernoulli")
    with np.errstate(divide="ignore"):
        return _out(np.log(arr))


def _scalar(r: float, what: str) -> np.float64:
    """One score (a PRM's usual answer), checked without building arrays."""
    if not 0.0 <= r <= 1.0:  # NaN fails this too
        raise RewardError(f"{what}: scores must be probabilities in [0, 1], got {r!r}")
    return np.float64(r)


def odds(r: float | np.ndarray, eps: float = EPS) -> float | np.ndarray:
    """logit(clip(r̂, eps, 1 − eps)): the log-odds the published particle filter resamples by."""
    if type(r) is float:  # the same ufuncs on a scalar: the same value as an array's entry
        x = _scalar(min(max(r, eps), 1.0 - eps) if 0.0 <= r <= 1.0 else r, "odds")
        return float(np.log(x) - np.log1p(-x))
    arr = np.clip(_probabilities(r, "odds"), eps, 1.0 - eps)
    return _out(np.log(arr) - np.log1p(-arr))


def tempered(conv: Converter | str, tau: float) -> Converter:
    """conv(r̂) / τ. τ = 1 is conv itself."""
    if not tau > 0:
        raise ValueError(f"temperature tau must be > 0, got {tau}")
    base = get_converter(conv) if isinstance(conv, str) else conv
    if tau == 1.0:
        return base

    def conv_tau(r: float | np.ndarray) -> float | np.ndarray:
        return _out(np.asarray(base(r), dtype=np.float64) / tau)

    conv_tau.__name__ = f"{getattr(base, '__name__', 'converter')}/{tau:g}"
    return conv_tau


CONVERTERS: dict[str, Converter] = {"bernoulli": bernoulli, "odds": odds}


def get_converter(name: str | Converter, tau: float = 1.0) -> Converter:
    """A converter by name ('bernoulli', 'odds') or a callable, tempered by τ."""
    if callable(name):
        return tempered(name, tau) if tau != 1.0 else name
    if name not in CONVERTERS:
        raise ValueError(f"unknown converter {name!r}; choose one of {', '.join(CONVERTERS)}")
    return tempered(CONVERTERS[name], tau) if tau != 1.0 else CONVERTERS[name]
