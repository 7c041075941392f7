"""Scalars for files: JSON-ready values and netCDF-ready columns.

JSON has no NaN or infinities and netCDF columns need one dtype; these helpers decide how a
particle's variable (a number, a bool, a string, None, a torch or numpy scalar) is written
so that it reads back as what it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "integer_or_none", "is_number", "json_float", "json_value", "pad_rows", "read_value", "scalar", "variable_array",
]


def scalar(v: Any) -> Any:
    """A 0-d numpy, torch or jax value as a Python scalar; anything else unchanged."""
    if isinstance(v, np.ndarray) and v.shape == ():
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    if hasattr(v, "item") and callable(v.item) and getattr(v, "shape", None) == ():
        return v.item()
    return v


def is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def json_float(x: float) -> float | str:
    """A float for JSON: NaN and ±inf become the strings "nan", "inf", "-inf"."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return x


def json_value(v: Any) -> Any:
    """A variable's value for JSON: None, bool, str, int, float (non-finite as strings), else str()."""
    v = scalar(v)
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return json_float(v)
    return str(v)


def variable_array(values: Sequence[Any]) -> np.ndarray:
    """A column for netCDF: bool, int64 for ints, float64 for numbers (None → NaN), else strings."""
    vals = [scalar(v) for v in values]
    if vals and all(isinstance(v, bool | np.bool_) for v in vals):
        return np.array(vals, dtype=bool)
    if vals and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in vals):
        return np.array(vals, dtype=np.int64)
    if all(v is None or is_number(v) for v in vals):
        return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
    return np.array(["" if v is None else str(v) for v in vals], dtype=str)


def integer_or_none(values: Any) -> bool:
    """Every value is an int or None, and at least one is an int (stored as float with NaN)."""
    seen = False
    for v in values:
        v = scalar(v)
        if v is None:
            continue
        if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_):
            return False
        seen = True
    return seen


def read_value(v: Any, integer: bool = False) -> Any:
    """A value read back from a netCDF column: NaN → None, ints stored as float → int."""
    v = scalar(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    if integer and isinstance(v, float):
        return int(v)
    return v


def pad_rows(rows: Sequence[Sequence[Any]], width: int, like: np.ndarray | None = None) -> np.ndarray:
    """Ragged rows stacked into (len(rows), width), padded with NaN (numbers), −1 (ints), "" (text).

    `like` forces the column kind of another array (a resample keeps its source's dtype
    even when it drew no particle of a row).
    """
    cols = [variable_array(r) for r in rows]
    kinds = {c.dtype.kind for c in cols if len(c)}
    if like is not None:
        kinds = {like.dtype.kind}
    if kinds & {"U", "S", "O"}:
        out: np.ndarray = np.full((len(rows), width), "", dtype=object)
        cols = [c.astype(str) for c in cols]
    elif kinds == {"b"}:
        # booleans stay exact when nothing is padded; otherwise NaN needs floats
        ragged = any(len(c) < width for c in cols)
        out = np.full((len(rows), width), np.nan) if ragged else np.zeros((len(rows), width), dtype=bool)
    elif kinds == {"i"}:
        out = np.full((len(rows), width), -1, dtype=np.int64)
    else:
        out = np.full((len(rows), width), np.nan)
    for i, c in enumerate(cols):
        out[i, : len(c)] = c
    if out.dtype == object:
        out = out.astype(str)
    return out
