"""Warnings that point at the user's line, not at ppllm's internals."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """`warnings.warn` with the stack level of the first frame outside the ppllm package."""
    level = 2  # stacklevel 1 is this function; 2 its caller
    frame = sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
