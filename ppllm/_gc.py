"""Fewer cyclic garbage collections while a kernel runs.

A run allocates many small objects per token (trie nodes, draws, contexts, coroutine frames),
and CPython's collector, at its default thresholds, then runs often and every so often walks
the whole heap — with torch and transformers imported, hundreds of thousands of objects. On a
small model that took about a third of a token-SMC run's time (tiny-arith, N = 64, T = 256).
While any run is in progress the young-generation threshold is raised, so collections happen
about seventy times less often; cycles are still collected, and the user's thresholds come back
when the last run ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["fewer_collections"]

RUN_THRESHOLDS = (50_000, 20, 50)
_lock = threading.Lock()
_active = 0
_saved: tuple[int, ...] | None = None


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the collector's thresholds for the duration (re-entrant, thread-safe)."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            if _saved[0] > 0:  # a disabled threshold (0) stays as the user set it
                gc.set_threshold(*(max(a, b) for a, b in zip(_saved, RUN_THRESHOLDS, strict=False)))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
