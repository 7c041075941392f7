"""Helpers of the hf backend around the model: the tokenizer's decode, the stop tokens, the
K/V shape, transformers' version, and quiet loading."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

__all__ = ["fast_decoder", "kv_shape", "quiet_transformers", "stop_ids_of", "tf_version"]

# Token strings that end a turn in common chat formats; added to the stop set when present.
_KNOWN_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "</s>")


def stop_ids_of(model: Any, tokenizer: Any, eos_token_id: int | None, vocab_size: int,
                extra: Any = ()) -> list[int]:
    """Every token id that ends a generation: EOS from the tokenizer, the config and the
    generation config, `extra`, and the known end-of-turn tokens the tokenizer has as specials."""
    ids: list[int] = []
    sources: list[Any] = [eos_token_id, getattr(model.config, "eos_token_id", None)]
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        sources.append(gen.eos_token_id)
    sources.append(list(extra))
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []))
    sources.append([vocab[t] for t in _KNOWN_STOP_TOKENS if t in vocab and t in special])
    for src in sources:
        for t in src if isinstance(src, list | tuple) else [src]:
            if t is not None and 0 <= int(t) < vocab_size and int(t) not in ids:
                ids.append(int(t))
    return ids


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a transformers config."""
    n_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    n_heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // n_heads
    return int(n_layers), int(kv_heads), int(head_dim)


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
