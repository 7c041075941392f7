"""Helpers of the hf backend around the model: the tokenizer's decode, transformers' version,
and quiet loading."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

__all__ = ["fast_decoder", "quiet_transformers", "tf_version"]


def fast_decoder(tokenizer: Any, vocab_size: int) -> Any:
    """`ids -> text` without clean-up: the fast tokenizer's own decoder when it gives the same
    text as transformers' `decode` (whose wrapper costs more than the decoding, and stop
    strings decode a chunk at every token), else `decode` itself."""
    def slow(ids: list[int]) -> str:
        return tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return slow

    def fast(ids: list[int]) -> str:
        return backend.decode(ids, skip_special_tokens=False)

    gen = np.random.default_rng(0)
    try:
        same = all(fast(ids) == slow(ids) for ids in
                   ([int(i) for i in gen.integers(0, vocab_size, size=n)] for n in (1, 2, 3, 5, 8, 13) * 4))
    except Exception:  # noqa: BLE001 - any doubt keeps transformers' decode
        same = False
    return fast if same else slow


def tf_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@contextlib.contextmanager
def quiet_transformers() -> Any:
    """transformers' weight-loading bar and notices off while a model loads (the user's own
    settings come back after); `PPLLM_VERBOSE=1` (`ppllm --verbose`) keeps them."""
    if os.environ.get("PPLLM_VERBOSE"):
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
