"""Contexts: `Context` (the token ids a program generates from), `Chunk` (a run of tokens
drawn as one step) and `ContextKey` (a context's ids with their hash computed once).

A draw's context is looked up several times per particle and token — the engine's request
key and its cost key, the backend's row index, the KV trie's index of leaves (insert, then
remove when the leaf grows) — and a tuple's hash costs time linear in its length (~1.5 µs
at 270 tokens), so on long generations hashing outgrew the rest of a particle's
bookkeeping. A `ContextKey` hashes its tuple once. It is equal to, and hashes like, the
plain tuple of its ids, so keys and tuples mix freely in one dict.

A key may also know the key of the context it extends (`parent`, set through
`Context.extend`), so the trie finds last round's node by that key's own hash instead of
slicing and hashing the new context. Only one level is kept: making a key forgets its
parent's parent, so a long generation does not keep every earlier context alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..program import Shared

__all__ = ["Chunk", "Context", "ContextKey", "key_of"]


class ContextKey:
    """Token ids (`tokens`, a tuple) with `hash(tokens)` kept, and the key they extend."""

    __slots__ = ("tokens", "hash", "parent", "__weakref__")

    def __init__(self, tokens: tuple[int, ...], parent: ContextKey | None = None) -> None:
        self.tokens = tokens
        self.hash = hash(tokens)
        self.parent = parent
        if parent is not None:
            parent.parent = None  # one level only

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: Any) -> bool:
        if type(other) is ContextKey:
            return self.tokens is other.tokens or (self.hash == other.hash and self.tokens == other.tokens)
        return self.tokens == other

    def __len__(self) -> int:
        return len(self.tokens)

    def __reduce__(self) -> tuple:  # copies and pickles without the parent
        return (ContextKey, (self.tokens,))

    def __repr__(self) -> str:
        return f"ContextKey({len(self.tokens)} tokens)"


def key_of(tokens: Any) -> tuple[tuple[int, ...], Any]:
    """(the ids, what to index them by): a key's own tuple and the key, or a tuple twice."""
    if type(tokens) is ContextKey:
        return tokens.tokens, tokens
    return tokens, tokens


@dataclass(frozen=True)
class Context(Shared):
    """An immutable token sequence (prompt plus what was generated). Cheap to share."""

    tokens: tuple[int, ...]

    def extend(self, more: int | Iterable[int]) -> Context:
        # The new context remembers the key its parent was drawn with (`ContextKey`), so
        # the backend finds the parent's cached node without hashing the new context again.
        if type(more) is int:  # the common case first: one drawn token
            new = Context(self.tokens + (more,))
            parent = self.__dict__.get("_key")
        elif isinstance(more, int | np.integer):
            new = Context(self.tokens + (int(more),))
            parent = self.__dict__.get("_key")
        elif isinstance(more, Chunk):
            new = Context(self.tokens + more.tokens)
            ref = more.__dict__.pop("_last_key", None)  # the key of the chunk's last draw (once)
            parent = ref() if ref is not None else None
        else:
            return Context(self.tokens + tuple(int(t) for t in more))
        if parent is not None:
            new.__dict__["_parent_key"] = parent
        return new

    def key(self) -> ContextKey:
        """This context's `ContextKey` (made once; it knows the key of the context this one
        extends, when that context was drawn from)."""
        d = self.__dict__
        k = d.get("_key")
        if k is None:
            k = d["_key"] = ContextKey(self.tokens, d.pop("_parent_key", None))
        return k

    def __reduce__(self) -> tuple:  # pickles as its tokens alone
        return (Context, (self.tokens,))

    def __add__(self, more: int | Iterable[int]) -> Context:
        return self.extend(more)

    def __len__(self) -> int:
        return len(self.tokens)



@dataclass(frozen=True)
class Chunk(Shared):
    """A run of tokens sampled as one step, with its text."""

    tokens: tuple[int, ...]
    text: str

    def __str__(self) -> str:
        return self.text


    def __reduce__(self) -> tuple:  # pickles as its fields alone
        return (Chunk, (self.tokens, self.text))
