"""A character-level tokenizer that loads from a safetensors dir and from a GGUF file alike.

It is a byte-level BPE with no merges and a vocabulary of only the characters the
arithmetic task needs, so every character is one token. That shape is what GGUF calls a
`gpt2` tokenizer, which transformers can rebuild from GGUF metadata; any other shape
(a plain `WordLevel` model, say) would load from `tokenizer.json` but not from GGUF.

`<|endoftext|>` is the only special token and serves as EOS, PAD and BOS. Encoding adds no
BOS: the model is trained on text that starts directly with `Q:`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHARS",
    "EOS_TOKEN",
    "build_tokenizer",
    "byte_to_unicode",
    "save_tokenizer",
    "vocab_tokens",
]

EOS_TOKEN = "<|endoftext|>"
# Digits and arithmetic first, then a little room for prompt variations.
CHARS = "0123456789+-*=:()., \nQA?"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE's alphabet).

    Printable Latin-1 bytes stand for themselves; the others (space, newline, controls ...)
    are moved to code points 256 and up, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def vocab_tokens(chars: str = CHARS) -> list[str]:
    """The vocabulary in id order: EOS first, then each character in byte-level spelling."""
    spell = byte_to_unicode()
    tokens = [EOS_TOKEN]
    for ch in chars:
        encoded = ch.encode("utf-8")
        if len(encoded) != 1:
            raise ValueError(f"only single-byte characters are supported, got {ch!r}")
        tokens.append(spell[encoded[0]])
    if len(set(tokens)) != len(tokens):
        raise ValueError("duplicate characters in the vocabulary")
    return tokens


def build_tokenizer(chars: str = CHARS) -> PreTrainedTokenizerFast:
    """A fast tokenizer over `chars` (one token per character) plus `<|endoftext|>`."""
    vocab = {tok: i for i, tok in enumerate(vocab_tokens(chars))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def save_tokenizer(out_dir: str | Path, chars: str = CHARS) -> PreTrainedTokenizerFast:
    """Write tokenizer.json and friends so `AutoTokenizer.from_pretrained(out_dir)` loads it."""
    tokenizer = build_tokenizer(chars)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
