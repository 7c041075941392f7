"""The toy LM: an n-gram model over a tiny vocabulary given by explicit tables.

Cheap and exactly enumerable, it is the reference backend of every exact test. The
next-token distribution after a context is looked up by the context's last `order − 1`
tokens, backing off to shorter suffixes and finally to the table's `()` entry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

import numpy as np

from .base import LM, check_token_ids

__all__ = ["ToyLM"]

BOS = "<bos>"


class ToyLM(LM):
    """n-gram LM. `tables[suffix] = probabilities over vocab` (suffixes are token-string tuples).

    The row of the longest suffix of the context that has one is used; `()` is the fallback.
    `"<bos>"` in a suffix stands for the start of the text, so `("<bos>", "a")` is the row
    after a context that is exactly "a", and `("<bos>",)` the row of the empty context.

    >>> lm = ToyLM(["a", "b", "<eos>"], {(): [0.5, 0.3, 0.2]}, eos="<eos>")
    >>> round(float(np.exp(lm.logprobs([lm.context("ab").tokens])[0][2])), 3)
    0.2
    """

    def __init__(
        self,
        vocab: Sequence[str],
        tables: Mapping[tuple[str, ...], Sequence[float]],
        eos: str | None = "<eos>",
        order: int | None = None,
        name: str = "toy",
    ) -> None:
        self.vocab = list(vocab)
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("toy vocabulary has duplicate tokens")
        self.vocab_size = len(self.vocab)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        self.eos_token_id = self.index[eos] if eos is not None else None
        self.eos = eos
        self.name = name
        self.tables: dict[tuple[int, ...], np.ndarray] = {}
        for suffix, probs in tables.items():
            unknown = [tok for tok in suffix if tok != BOS and tok not in self.index]
            if unknown:
                raise ValueError(f"table key {tuple(suffix)!r} has {unknown[0]!r}, which is neither in the "
                                 f"vocabulary {self.vocab} nor {BOS!r} (the start of the text)")
            key = tuple(-1 if tok == BOS else self.index[tok] for tok in suffix)
            p = np.asarray(probs, dtype=np.float64)
            if p.shape != (self.vocab_size,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
                raise ValueError(f"table row {suffix} must be {self.vocab_size} probabilities summing to 1")
            with np.errstate(divide="ignore"):
                self.tables[key] = np.log(p)
        if () not in self.tables and order is None:
            raise ValueError("toy LM needs a () fallback row or an explicit order covering all contexts")
        self.order = order or (1 + max((len(k) for k in self.tables), default=0))
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    @classmethod
    def random(
        cls,
        vocab: Sequence[str],
        order: int = 2,
        seed: int = 0,
        eos: str | None = "<eos>",
        concentration: float = 1.0,
    ) -> ToyLM:
        """A toy LM with Dirichlet-random tables for every context of length < order."""
        gen = np.random.default_rng(seed)
        tables: dict[tuple[str, ...], list[float]] = {}
        symbols = [BOS, *vocab]
        for n in range(order):
            for suffix in product(symbols, repeat=n):
                if BOS in suffix[1:] or (suffix and suffix[-1] == BOS and n > 1):
                    continue
                tables[suffix] = list(gen.dirichlet([concentration] * len(vocab)))
        return cls(vocab, tables, eos=eos, order=order)

    # -------------------------------------------------------------- backend
    def _row(self, tokens: tuple[int, ...]) -> np.ndarray:
        ctx = (-1, *tokens)  # a leading BOS lets tables single out the first token
        for n in range(min(self.order - 1, len(ctx)), -1, -1):
            row = self.tables.get(ctx[len(ctx) - n :] if n else ())
            if row is not None:
                return row
        raise KeyError(f"toy LM has no table row for context {tokens}")

    latency = 0.0  # seconds each batched call waits: a stand-in for a remote model's round trip

    def evaluate(self, requests: Sequence[Any]) -> list[Any]:
        if self.latency > 0:
            time.sleep(self.latency)
        return super().evaluate(requests)

    def logprobs(self, contexts: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        out = []
        for tokens in contexts:
            if tokens and not 0 <= tokens[-1] < self.vocab_size:
                check_token_ids(tokens, self.vocab_size, self.name)
            key = tokens[-(self.order - 1) :] if self.order > 1 else ()
            if len(tokens) < self.order - 1:
                key = ("short", *tokens)  # near the start the BOS position matters
            row = self._cache.get(key)
            if row is None:
                check_token_ids(tokens, self.vocab_size, self.name)
                row = self._row(tokens)
                self._cache[key] = row
            out.append(row)
        return out

    # -------------------------------------------------------------- tokenizer
    def encode(self, text: str) -> list[int]:
        """Greedy longest match over the vocabulary strings."""
        out: list[int] = []
        i = 0
        longest = max(len(t) for t in self.vocab)
        while i < len(text):
            for n in range(min(longest, len(text) - i), 0, -1):
                tok = self.index.get(text[i : i + n])
                if tok is not None:
                    out.append(tok)
                    i += n
                    break
            else:
                raise ValueError(f"text {text!r} has a character not in the toy vocabulary at {i}")
        return out

    def decode(self, tokens: Sequence[int]) -> str:
        check_token_ids(list(tokens), self.vocab_size, self.name)
        return "".join(self.vocab[t] for t in tokens if t != self.eos_token_id)
