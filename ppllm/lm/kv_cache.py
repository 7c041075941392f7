"""The hf backend's KV cache: a token trie over a pool of per-token key/value slots.

Every cached token is a trie node pointing at one slot of a pooled tensor per K and V
(layers, slots, kv_heads, head_dim). A context's longest cached prefix is found by a hash
of the full context (the common case: last round's context plus one token) or a walk down
the trie; particles that fork or are resampled share their parent's nodes for free, and
memory is bounded by evicting least-recently-used leaves. `make_buffer_cache` hands a
batch's gathered past to transformers as a cache that writes new positions in place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["KVStore", "TrieNode", "batch_mask", "buffer_layer_class", "copy_back", "make_buffer_cache"]


class TrieNode:
    """One token of the trie: its KV slot in the pool and its place in the tree."""

    __slots__ = ("token", "parent", "children", "slot", "depth", "path", "buffer", "key")

    def __init__(self, token: int, parent: TrieNode | None, slot: int, depth: int) -> None:
        self.token = token
        self.parent = parent
        self.children: dict[int, TrieNode] = {}
        self.slot = slot  # -1 once evicted (or for the root)
        self.depth = depth
        self.path: np.ndarray | None = None  # slots root→self, kept on leaves only
        self.buffer: _PathBuffer | None = None  # the array `path` is a prefix of
        self.key: Any = None  # full context (tuple or ContextKey), for leaves in the index


class _PathBuffer:
    """An int64 array that paths are prefixes of, with room to grow: a child's path is its
    parent's plus one slot, written in place when no other child took that place yet, so a
    decode step extends a path in O(1) instead of copying it (O(depth))."""

    __slots__ = ("array", "used")

    def __init__(self, array: np.ndarray, used: int) -> None:
        self.array, self.used = array, used


def _extended_path(node: TrieNode, start: TrieNode, base: np.ndarray, slots: Sequence[int]) -> None:
    """Give `node` (below `start`, whose path is `base`) the path `base` + `slots`, in place in
    start's buffer when that place is free."""
    n, k = len(base), len(slots)
    buf = start.buffer if start.path is base else None
    if buf is None or buf.used != n or n + k > len(buf.array):
        array = np.empty(max(16, 2 * (n + k)), dtype=np.int64)
        array[:n] = base
        buf = _PathBuffer(array, n)
    if k == 1:
        buf.array[n] = slots[0]
    else:
        buf.array[n : n + k] = slots
    buf.used = n + k
    node.path = buf.array[: n + k]
    node.buffer = buf


class KVStore:
    """Token trie over a slot pool of per-token KV, with LRU eviction of leaves.

    The pool is one tensor per K and V of shape (layers, slots, kv_heads, head_dim), so a
    batch's whole past is gathered for all layers in one `index_select`. Slot 0 is a zero
    dummy that padding points at (finite values, masked out of attention).
    """

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, dtype, device, budget: int):
        if budget < 1:
            raise ValueError(f"kv_budget_tokens must be >= 1, got {budget}")
        self.shape = (n_layers, kv_heads, head_dim)
        self.dtype, self.device, self.budget = dtype, device, int(budget)
        # A forward's working copy of its rows' past (rows x width) stays within this many
        # tokens: pool plus working buffers are then at most 1.5x the budget.
        self.working = max(1, self.budget // 2)
        self.root = TrieNode(-1, None, -1, 0)
        self.root.path = np.zeros(0, dtype=np.int64)
        self.leaves: OrderedDict[TrieNode, None] = OrderedDict()  # oldest first
        # full context of each leaf (a tuple, or its ContextKey: they are equal) → leaf
        self.index: dict[Any, TrieNode] = {}
        self.free: list[int] = []
        self.capacity = 0
        self.k = self.v = torch.zeros(0)
        # On the CPU the whole pool is reserved at once, uninitialised: pages become resident
        # only as slots are written, and growing never holds two copies. Accelerators grow it.
        on_cpu = torch.device(device).type == "cpu"
        self._grow(self.budget + 1 + max(64, self.budget // 16) if on_cpu else min(self.budget, 1024) + 1)
        self.n_cached = 0
        self.evictions = 0

    # ---------------------------------------------------------------- slots
    def _grow(self, capacity: int) -> None:
        layers, heads, dim = self.shape
        k = torch.empty(layers, capacity, heads, dim, dtype=self.dtype, device=self.device)
        v = torch.empty_like(k)
        k[:, 0] = 0  # slot 0: the zero dummy that padding reads
        v[:, 0] = 0
        if self.capacity:
            k[:, : self.capacity] = self.k
            v[:, : self.capacity] = self.v
        self.free.extend(range(capacity - 1, max(self.capacity, 1) - 1, -1))
        self.k, self.v, self.capacity = k, v, capacity

    def alloc(self, n: int) -> list[int]:
        if len(self.free) < n:  # double, but not far past the budget (eviction follows the call)
            need = self.capacity + n - len(self.free) + 1
            self._grow(max(min(2 * self.capacity, self.budget + 1 + n), need))
        out = self.free[-n:][::-1]
        del self.free[len(self.free) - n :]
        return out

    # ---------------------------------------------------------------- storing a forward's K/V
    def store_column(self, kbuf: torch.Tensor, vbuf: torch.Tensor, P: int, rows: list[int], slots: list[int],
                     B: int) -> None:
        """Position P of buffer rows `rows` (ascending; all B rows when len(rows) == B) into
        `slots`: one decode step's new keys and values, (layers, rows, heads, head_dim)."""
        n = len(slots)
        if slots == list(range(slots[0], slots[0] + n)) and rows == list(range(rows[0], rows[0] + n)):
            s0, b0 = slots[0], rows[0]  # consecutive rows into consecutive slots: a slice copy
            for pool, buf in ((self.k, kbuf), (self.v, vbuf)):
                pool[:, s0 : s0 + n].copy_(buf[:, b0 : b0 + n, :, P])
            return
        dev = self.k.device
        slots_t = torch.tensor(slots, dtype=torch.long, device=dev)
        rows_t = None if n == B else torch.tensor(rows, dtype=torch.long, device=dev)
        for pool, buf in ((self.k, kbuf), (self.v, vbuf)):
            new = buf[:, :B, :, P] if rows_t is None else buf[:, :, :, P].index_select(1, rows_t)
            pool.index_copy_(1, slots_t, new)

    def store_positions(self, kbuf: torch.Tensor, vbuf: torch.Tensor, where: list[int], slots: list[int]) -> None:
        """Buffer positions `where` (row b's position p as b · capacity + p) into `slots`."""
        n_layers, heads, dim = self.shape
        cap = kbuf.shape[3]
        dev = self.k.device
        bp = torch.tensor(where, dtype=torch.long, device=dev).view(-1, 1)
        hs = torch.arange(heads, device=dev).view(1, heads)
        src = (bp // cap * (heads * cap) + hs * cap + bp % cap).reshape(-1)
        dst = (torch.tensor(slots, dtype=torch.long, device=dev).view(-1, 1) * heads + hs).reshape(-1)
        for pool, buf in ((self.k, kbuf), (self.v, vbuf)):
            pool.view(n_layers, -1, dim).index_copy_(1, dst, buf.view(n_layers, -1, dim).index_select(1, src))

    # ---------------------------------------------------------------- lookup
    def longest_prefix(self, tokens: tuple[int, ...], limit: int, key: Any = None) -> TrieNode:
        """The deepest cached node on `tokens`' path with depth <= limit. `key`: the
        tokens' `ContextKey`, whose parent (the context they extend) is found by its own hash."""
        if limit <= 0:
            return self.root
        parent = getattr(key, "parent", None)
        if parent is not None and len(parent.tokens) == limit:
            node = self.index.get(parent)
            if node is not None:
                return node
        # The common case: last round's context (a leaf) plus one token. One hash, no walk.
        node = self.index.get(tokens[:limit])
        if node is not None:
            return node
        node = self.root
        children = node.children
        for tok in tokens[:limit]:
            nxt = children.get(tok)
            if nxt is None:
                break
            node, children = nxt, nxt.children
        return node

    @staticmethod
    def path_of(node: TrieNode) -> np.ndarray:
        """Pool slots of the tokens root→node (cached on leaves, rebuilt by walking otherwise)."""
        if node.path is not None:
            return node.path
        slots = []
        n: TrieNode | None = node
        while n is not None and n.parent is not None:
            slots.append(n.slot)
            n = n.parent
        return np.asarray(slots[::-1], dtype=np.int64)

    # ---------------------------------------------------------------- insert / evict
    def insert(
        self, start: TrieNode, tokens: Sequence[int], slots: Sequence[int], full: Any
    ) -> tuple[TrieNode, list[int]]:
        """Add `tokens` below `start`, taking `slots` for new nodes; return (last node, slots used).

        Tokens already in the trie (computed twice in one batch) keep their first KV.
        """
        node, used = start, []
        base_path = self.path_of(start)
        new_slots: list[int] = []
        for tok, slot in zip(tokens, slots, strict=True):
            child = node.children.get(tok)
            if child is None:
                if node in self.leaves:
                    self._unleaf(node)
                child = TrieNode(tok, node, slot, node.depth + 1)
                node.children[tok] = child
                used.append(slot)
                self.n_cached += 1
            new_slots.append(child.slot)
            node = child
        if node is not start:
            _extended_path(node, start, base_path, new_slots)
        if not node.children and node is not self.root:
            self._leaf(node, full)
        return node, used

    def insert_one(self, start: TrieNode, token: int, slot: int, full: Any) -> TrieNode | None:
        """`insert` of one token (the common round), touching the new leaf: the new node, or
        None when the token was already there (computed twice in one batch; `slot` unused)."""
        if token in start.children:
            self.touch(start.children[token], full)
            return None
        if start in self.leaves:
            self._unleaf(start)
        child = TrieNode(token, start, slot, start.depth + 1)
        start.children[token] = child
        self.n_cached += 1
        _extended_path(child, start, self.path_of(start), (slot,))
        self._leaf(child, full)
        return child

    def touch(self, node: TrieNode, full: Any) -> None:
        if node in self.leaves:
            self.leaves.move_to_end(node)
            if node.key != full:
                if node.key is not None:
                    self.index.pop(node.key, None)
                node.key = full
                self.index[full] = node

    def _leaf(self, node: TrieNode, full: Any) -> None:
        node.key = full
        self.index[full] = node
        if node in self.leaves:
            self.leaves.move_to_end(node)
        else:
            self.leaves[node] = None  # new keys go last

    def _unleaf(self, node: TrieNode) -> None:
        # Its path stays until the end of the batch: siblings inserted next still extend it.
        del self.leaves[node]
        if node.key is not None:
            self.index.pop(node.key, None)
            node.key = None

    def evict(self) -> None:
        """Drop least-recently-used leaves until at most `budget` tokens stay cached."""
        while self.n_cached > self.budget and self.leaves:
            node = next(iter(self.leaves))
            self._unleaf(node)
            parent = node.parent
            assert parent is not None
            del parent.children[node.token]
            self.free.append(node.slot)
            node.slot = -1
            self.n_cached -= 1
            self.evictions += 1
            if parent is not self.root and not parent.children:
                # The parent of an evicted leaf is older than everything still cached below
                # other branches: queue it first, so dead branches go before live ones.
                parent.key = None
                self.leaves[parent] = None
                self.leaves.move_to_end(parent, last=False)

    def clear(self) -> None:
        """Forget every cached token, keeping the pool's memory: its pages are already
        resident, and a fresh pool would fault each one in again as slots are written
        (a tenth of a short run's time on the CPU)."""
        self.root = TrieNode(-1, None, -1, 0)
        self.root.path = np.zeros(0, dtype=np.int64)
        self.leaves = OrderedDict()
        self.index = {}
        self.free = list(range(self.capacity - 1, 0, -1))
        self.n_cached = 0
        self.evictions = 0


_BUFFER_LAYER: Any = None


def buffer_layer_class() -> Any:
    """A DynamicLayer over preallocated buffers (transformers >= 4.56), or None before that."""
    global _BUFFER_LAYER
    if _BUFFER_LAYER is None:
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:
            return None

        class _BufferLayer(DynamicLayer):
            """Holds `filled` past positions of (B, heads, W, dim) buffers; writes new ones in place."""

            def __init__(self, kbuf: torch.Tensor, vbuf: torch.Tensor, filled: int) -> None:
                super().__init__()
                self.kbuf, self.vbuf, self.filled = kbuf, vbuf, filled
                self.is_initialized = True
                self.dtype, self.device = kbuf.dtype, kbuf.device
                self.keys, self.values = kbuf[:, :, :filled], vbuf[:, :, :filled]

            def update(self, key_states, value_states, *args, **kwargs):
                end = self.filled + key_states.shape[-2]
                self.kbuf[:, :, self.filled : end] = key_states
                self.vbuf[:, :, self.filled : end] = value_states
                self.filled = end
                self.keys, self.values = self.kbuf[:, :, :end], self.vbuf[:, :, :end]
                return self.keys, self.values

            def get_seq_length(self) -> int:
                return self.filled

        _BUFFER_LAYER = _BufferLayer
    return _BUFFER_LAYER


def make_buffer_cache(keys: list[torch.Tensor], values: list[torch.Tensor], filled: int) -> Any:
    """A transformers cache whose layers already hold `filled` past positions of preallocated
    buffers and write new positions in place, so the gathered past is never copied again."""
    from transformers import DynamicCache

    layer = buffer_layer_class()
    cache = DynamicCache()
    if layer is None:  # older transformers: a plain cache, filled through its own update
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            cache.update(k[:, :, :filled].contiguous(), v[:, :, :filled].contiguous(), i)
        return cache
    cache.layers = [layer(k, v, filled) for k, v in zip(keys, values, strict=True)]
    cache.layer_class_to_replicate = None
    return cache


def copy_back(cache: Any, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Older transformers grow a plain cache by concatenation: copy its states to our buffers."""
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        if hasattr(cache, "key_cache"):
            ck, cv = cache.key_cache[i], cache.value_cache[i]
        else:
            ck, cv = cache.layers[i].keys, cache.layers[i].values
        k.copy_(ck)
        v.copy_(cv)


def batch_mask(past: list[int], lens: list[int], P: int, S: int, device: Any) -> torch.Tensor:
    """(B, 1, S, P+S) boolean attention mask of a padded batch whose row b has `past[b]` cached
    tokens right-aligned at P and `lens[b]` new ones right-aligned at P + S: each real query
    sees its own past and earlier new tokens; padding queries see only themselves (so they
    stay finite)."""
    B = len(past)
    pb = torch.tensor(past).view(B, 1, 1)
    nb = torch.tensor(lens).view(B, 1, 1)
    q = torch.arange(S).view(1, S, 1)
    k = torch.arange(P + S).view(1, 1, P + S)
    real_q = q >= S - nb
    past_ok = (k < P) & (k >= P - pb)
    kj = k - P
    suf_ok = (k >= P) & (kj >= S - nb) & (kj <= q)
    mask = real_q & (past_ok | suf_ok)
    mask = mask | (~real_q & (kj == q))
    return mask.unsqueeze(1).to(device)
