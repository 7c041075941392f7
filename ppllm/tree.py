"""A search tree over program steps: nodes are program states, children merge identical steps.

A node is a program's state after some steps. Drawing a step from a node (running the
program one step from its state, a draw from the program's proposal q(· | node)) gives a
child, keyed by the values the step chose: drawing the same continuation twice increments
that child's multiplicity `count` instead of adding a second node, so `count / draws` is the
Monte-Carlo estimate of q(child | node). Prefixes, and with them the hf backend's KV cache,
are shared by construction: a node's context is a prefix of all its descendants'.

Each node keeps a log soft value ℓ = λ·v̂: at a terminal node (a finished program) the
path's total log-weight (log p − log q and factors, twists cancelled) plus λ·R(x) for an
optional reward R; at an internal node, after `backup`,

    soft:  ℓ(u) = log( Σ_c n_c e^{ℓ_c} / Σ_c n_c )          (DTS; the multiplicity-weighted mean)
    max:   ℓ(u) = max_c ℓ_c                                  (DTS*, the max-backup)

so exp(ℓ(u)) estimates E_q[w(x) e^{λ R(x)} | prefix u]. Sampling children ∝ n_c e^{ℓ_c} then
samples complete paths from q(x)·w(x)·e^{λR(x)} = γ(x)·e^{λR(x)} once the values are exact
(tests/test_dts.py checks it by enumeration).

`rollout` runs many draws at once, as one population through the engine, so every live
rollout of an iteration shares each batched forward.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine
from .program import Program, replay
from .rng import Rng

__all__ = ["Node", "SearchTree", "backup_value"]

FORMAT = 1


class Node:
    """One program state in the tree (see the module docstring)."""

    __slots__ = ("state", "parent", "key", "depth", "children", "count", "draws", "visits", "value",
                 "terminal", "log_w", "log_q", "choices")

    def __init__(self, state: Program | None, parent: Node | None, key: tuple, log_w: float, log_q: float,
                 choices: tuple) -> None:
        self.state = state
        self.parent = parent
        self.key = key
        self.depth = 0 if parent is None else parent.depth + 1
        self.children: dict[tuple, Node] = {}
        self.count = 1  # times this child was drawn from its parent
        self.draws = 0  # draws made from this node (Σ of its children's counts)
        self.visits = 1  # N(u): a new node counts as visited once (as in DTS)
        self.value = -math.inf if state is None or not state.finished else log_w
        self.terminal = bool(state is not None and state.finished)
        self.log_w = log_w  # the path's total log-weight so far (sum of step increments)
        self.log_q = log_q  # log q(this step | parent): the step's proposal log-probability
        self.choices = choices  # the step's recorded choices (for replay after a reload)

    def path(self) -> list[Node]:
        """Root → self."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def __repr__(self) -> str:
        return (f"Node(depth={self.depth}, count={self.count}, visits={self.visits}, "
                f"value={self.value:.3f}, terminal={self.terminal}, children={len(self.children)})")


def backup_value(children: Sequence[Node], rule: str = "soft", weighting: str = "multiplicity") -> float:
    """The value of a node from its children: multiplicity-weighted log-mean-exp, or max."""
    values = np.array([c.value for c in children], dtype=np.float64)
    if rule == "max":
        return float(values.max())
    if weighting == "multiplicity":
        logw = np.log(np.array([c.count for c in children], dtype=np.float64))
    else:  # "probability": each distinct child weighted by q(c | u), normalised over those present
        logw = np.array([c.log_q for c in children], dtype=np.float64)
    finite = values > -math.inf
    if not finite.any():
        return -math.inf
    top = float(np.max(values[finite] + logw[finite]))
    num = top + math.log(float(np.sum(np.exp(values[finite] + logw[finite] - top))))
    m = float(np.max(logw))
    den = m + math.log(float(np.sum(np.exp(logw - m))))
    return num - den


@dataclass
class SearchTree:
    """The tree, its root program, and how values combine (`rule`, `weighting`)."""

    program: Program
    root: Node = field(init=False)
    rule: str = "soft"
    weighting: str = "multiplicity"
    reward: Callable[[Program], float] | None = None
    lam: float = 1.0
    n_nodes: int = 1
    n_terminals: int = 0

    def __post_init__(self) -> None:
        self.root = Node(self.program.clone(), None, (), 0.0, 0.0, ())

    # ------------------------------------------------------------------ growth
    def add(self, parent: Node, stepped: Program, log_inc: float, n_before: int) -> Node:
        """Record one draw from `parent` that produced `stepped` (its state after the step)."""
        choices = tuple(stepped.trace[n_before:])
        key = tuple(_hashable(c.value) for c in choices)
        parent.draws += 1
        child = parent.children.get(key)
        if child is not None:
            child.count += 1
            if child.state is None:  # dropped when the tree was saved: this draw recomputed it
                child.state = stepped
            return child
        log_q = math.fsum(c.log_q for c in choices if c.kind == "sample")
        child = Node(stepped, parent, key, parent.log_w + float(log_inc), log_q, choices)
        if child.terminal:
            child.value = self.terminal_value(child)
            self.n_terminals += 1
        parent.children[key] = child
        self.n_nodes += 1
        return child

    def terminal_value(self, node: Node) -> float:
        """ℓ of a finished path: its log-weight, plus λ·R(x) with a reward."""
        value = node.log_w
        if self.reward is not None:
            r = float(self.reward(node.state))
            if math.isnan(r):
                raise ValueError(f"the reward returned NaN for a completed path at depth {node.depth}")
            value += self.lam * r
        return value

    def backup(self, leaf: Node) -> None:
        """Visit counts and values from `leaf`'s parent up to the root."""
        leaf.visits += 1
        node = leaf.parent
        while node is not None:
            node.visits += 1
            node.value = backup_value(list(node.children.values()), self.rule, self.weighting)
            node = node.parent

    # ------------------------------------------------------------------ reading
    def nodes(self) -> list[Node]:
        out, todo = [], [self.root]
        while todo:
            node = todo.pop()
            out.append(node)
            todo.extend(node.children.values())
        return out

    def terminals(self) -> list[Node]:
        return [n for n in self.nodes() if n.terminal]

    def choose(self, node: Node, rng: Rng) -> Node:
        """A child ∝ n_c e^{ℓ_c} (or q(c | u) e^{ℓ_c}): the tree's sampling policy."""
        children = list(node.children.values())
        base = (np.log([c.count for c in children]) if self.weighting == "multiplicity"
                else np.array([c.log_q for c in children]))
        logits = base + np.array([c.value for c in children])
        top = float(np.max(logits))
        if top == -math.inf:
            raise ValueError("every child of this node has value zero (−inf): nothing to sample")
        return children[int(rng.categorical(np.exp(logits - top)))]

    def select(self, widened: Callable[[Node], bool], descend: Callable[[Node, Rng], Node], rng: Rng) -> Node:
        """Walk down from the root while the node is `widened` (by `descend`'s choice of child);
        stop at a terminal, at a node that should draw again, or where every child is dead."""
        node = self.root
        while not node.terminal and node.children and widened(node):
            if max(ch.value for ch in node.children.values()) == -math.inf:
                break  # every child is dead so far: draw again from here
            node = descend(node, rng)
        return node

    def sample(self, rng: Rng) -> Node:
        """One complete path drawn by the sampling policy from the root; no LM calls."""
        node = self.root
        while not node.terminal:
            if not node.children:
                raise ValueError(f"the tree has an unexpanded node at depth {node.depth}: build it further")
            node = self.choose(node, rng)
        return node

    def best(self) -> Node:
        """The terminal reached by following the highest-valued child from the root (DTS*)."""
        node = self.root
        while not node.terminal and node.children:
            node = max(node.children.values(), key=lambda c: c.value)
        return node

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Pickle the tree without program states (they are rebuilt by replay on demand)."""
        states = {}
        for node in self.nodes():
            states[id(node)] = node.state
            node.state = None
        program, self.program = self.program, None  # type: ignore[assignment]
        try:
            Path(path).write_bytes(pickle.dumps({"format": FORMAT, "tree": self, "extra": extra or {}}))
        finally:
            self.program = program
            for node in self.nodes():
                node.state = states[id(node)]

    @staticmethod
    def load(path: str | Path, program: Program) -> tuple[SearchTree, dict[str, Any]]:
        data = pickle.loads(Path(path).read_bytes())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a ppllm search tree of format {FORMAT}")
        tree: SearchTree = data["tree"]
        tree.program = program
        tree.root.state = program.clone()
        return tree, data["extra"]

    def state_of(self, node: Node, engine: Engine, rng: Rng, max_steps: int) -> Program:
        """The node's program state, rebuilt by replaying its path if it was not kept."""
        if node.state is None:
            from .kernels.mh import rollout

            values = {c.address: c.value for n in node.path()[1:] for c in n.choices}
            got = rollout([replay(self.program, values)], [rng], [None], engine, node.depth, max_steps)
            node.state = got.programs[0]
            node.state._pp.replay = None  # from here on the program draws afresh
        return node.state


def _hashable(v: Any) -> Any:
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)
