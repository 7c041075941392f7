"""Diffusion Tree Sampling on LM programs (Jain et al. 2025): an anytime tree that reuses rollouts.

Target: π*(x) ∝ γ(x) · exp(λ·R(x)), the program's own measure (its samples' p, its factors)
tempered by an optional terminal reward R; without a reward, π* = γ/Z, the program's
posterior. (In the paper's terms the tree's base chain is the program's proposal q and the
terminal reward is r(x) = [log w(x) + λR(x)] / λ with w = γ/q, so q·exp(λr) = γ·exp(λR).)

Nodes are program states after a step (`ppllm.tree`): identical steps merge into one child
with a multiplicity. One iteration:
  1. selection — from the root, while the node is fully widened (draws ≥ C·N^α at a
     branching depth, ≥ 1 elsewhere), descend to a child drawn ∝ n_c·exp(ℓ_c);
  2. expansion and rollout — draw steps from there to a finished program, adding every draw
     to the tree (the whole rollout is kept, unlike classical MCTS);
  3. soft backup — every node on the path gets ℓ(u) = log(Σ n_c e^{ℓ_c} / Σ n_c).
`rollouts` selections per iteration run together, one batched forward per round.

Exactness class: asymptotically exact — the samples' distribution converges to π* as the
iterations grow (the paper's Proposition 1); with exact values the sampling policy is exact
(tests/test_dts.py checks both: the injected-value identity by enumeration, TV shrinking
with iterations statistically). No finite-tree unbiasedness: `log_Z` is the root's soft
value log mean exp, a consistent estimate of log Z (of log Σ γ e^{λR}), not an unbiased one.

Drawing samples from a built tree costs no LM calls; more iterations refine the same tree
(`run(..., resume=post.extras["state"])`), and `state.save(path)` / `load(path, program)`
keep it on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine import Engine
from ..program import Program
from ..results.diagnostics import TreeStats
from ..results.posterior import Posterior
from ..rng import Rng, as_rng
from ..tree import Node, SearchTree
from .driver import Output, check_count, loop, run_kernel

__all__ = ["DTSState", "TreeInfo", "init", "load", "run", "step"]


@dataclass
class TreeInfo:
    """One iteration: where its rollouts started and what the root's value became."""

    t: int
    started_at_depth: list[int]
    new_nodes: int
    root_value: float


@dataclass
class DTSState:
    """The tree and how many iterations built it; `n_iterations` is where this run stops."""

    tree: SearchTree
    t: int = 0
    n_iterations: int = 0
    failed: str | None = None
    root_value: list[float] = field(default_factory=list)
    new_nodes: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.t >= self.n_iterations

    def save(self, path: str | Path) -> None:
        """Write the tree (without program states) and its iteration count to `path`."""
        self.tree.save(path, {"t": self.t, "root_value": self.root_value, "new_nodes": self.new_nodes})


def load(path: str | Path, program: Program) -> DTSState:
    """A saved tree, to resume with `run(program, more, resume=state)`; node states are
    rebuilt by replay when an iteration needs them."""
    tree, extra = SearchTree.load(path, program)
    return DTSState(tree, extra["t"], extra["t"], root_value=list(extra["root_value"]),
                    new_nodes=list(extra["new_nodes"]))


def check_tree_options(lam: float, c: float, alpha: float) -> None:
    if not (isinstance(lam, int | float) and lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam (λ, the inverse temperature) must be > 0, got {lam!r}")
    if not (isinstance(c, int | float) and c > 0):
        raise ValueError(f"C (progressive widening) must be > 0, got {c!r}")
    if not (isinstance(alpha, int | float) and 0 < alpha <= 1):
        raise ValueError(f"alpha (progressive widening) must be in (0, 1], got {alpha!r}")


def init(program: Program, *, lam: float = 1.0, reward: Callable[[Program], float] | None = None,
         rule: str = "soft", weighting: str = "multiplicity") -> DTSState:
    """An empty tree (just the root: the program before its first step)."""
    if not isinstance(program, Program):
        raise TypeError(f"expected a ppllm.Program, got {type(program).__name__}")
    if rule not in ("soft", "max"):
        raise ValueError(f"backup rule must be 'soft' or 'max', got {rule!r}")
    if weighting not in ("multiplicity", "probability"):
        raise ValueError(f"weighting must be 'multiplicity' or 'probability', got {weighting!r}")
    return DTSState(SearchTree(program, rule=rule, weighting=weighting, reward=reward, lam=float(lam)))


def fully_widened(node: Node, c: float, alpha: float, branch_at: set[int] | None) -> bool:
    """True when the node has had its share of draws (C·N^α, or 1 at a non-branching depth)."""
    if branch_at is not None and node.depth != 0 and node.depth not in branch_at:
        return node.draws >= 1
    return node.draws >= c * node.visits**alpha


def uct_child(node: Node, lam: float, c_uct: float) -> Node:
    """argmax v̂_c + c_uct·sqrt(log N(u) / N(c)), v̂ = ℓ/λ (DTS*'s selection while building)."""
    log_n = math.log(max(node.visits, 1))
    return max(node.children.values(),
               key=lambda ch: ch.value / lam + c_uct * math.sqrt(log_n / ch.visits))


@dataclass
class _Rollouts:
    """The iteration's rollouts, drawn step by step from their current nodes."""

    current: list[Node]
    rngs: list[Rng]
    draws: list[int]
    t: int = 0
    failed: str | None = None

    def live(self) -> list[int]:
        return [k for k, n in enumerate(self.current) if not n.terminal]

    @property
    def done(self) -> bool:
        return not self.live()

    @property
    def n_running(self) -> int:
        return len(self.live())


def step(
    rng: Rng, state: DTSState, engine: Engine, *, c: float = 2.0, alpha: float = 0.7,
    branch_at: set[int] | None = None, rollouts: int = 4, select: str = "sample",
    c_uct: float = 1.0, max_steps: int = 10_000,
) -> tuple[DTSState, TreeInfo]:
    """One iteration: `rollouts` selections, their rollouts (batched), and the backups."""
    tree, it = state.tree, state.t
    r = rng.child("iter", it)
    before = tree.n_nodes
    def descend(node: Node, pick: Rng) -> Node:
        return tree.choose(node, pick) if select == "sample" else uct_child(node, tree.lam, c_uct)

    starts = [tree.select(lambda n: fully_widened(n, c, alpha, branch_at), descend, r.child("select", k))
              for k in range(rollouts)]
    for node in starts:  # states dropped by a reload are rebuilt before the batch starts
        tree.state_of(node, engine, r.child("replay", node.depth), max_steps)
    run = _Rollouts(list(starts), [r.child("rollout", k) for k in range(rollouts)], [0] * rollouts)

    def advance(s: _Rollouts) -> tuple[_Rollouts, None]:
        live = s.live()
        programs = [s.current[k].state.clone() for k in live]  # type: ignore[union-attr]
        counts = [p._pp.n_choices for p in programs]
        incs = engine.step(programs, [s.rngs[k].child("draw", s.draws[k]) for k in live], s.t)
        for k, p, inc, n0 in zip(live, programs, incs, counts, strict=True):
            s.draws[k] += 1
            s.current[k] = tree.add(s.current[k], p, float(inc), n0)
        s.t += 1
        return s, None

    run, _ = loop(run, advance, max_steps)
    for leaf in run.current:
        tree.backup(leaf)
    state.t = it + 1
    state.root_value.append(tree.root.value)
    state.new_nodes.append(tree.n_nodes - before)
    return state, TreeInfo(it, [n.depth for n in starts], tree.n_nodes - before, tree.root.value)


def tree_stats(state: DTSState) -> TreeStats:
    nodes = state.tree.nodes()
    depth = max(n.depth for n in nodes)
    per_depth = [0] * (depth + 1)
    for n in nodes:
        per_depth[n.depth] += 1
    return TreeStats(state.t, len(nodes), sum(n.terminal for n in nodes), depth, per_depth,
                     state.tree.root.visits, list(state.root_value), list(state.new_nodes))


def run(
    program: Program,
    n_iterations: int,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    lam: float = 1.0,
    reward_fn: Callable[[Program], float] | None = None,
    C: float = 2.0,
    alpha: float = 0.7,
    branch_at: Iterable[int] | None = None,
    rollouts: int = 4,
    n_samples: int = 64,
    weighting: str = "multiplicity",
    resume: DTSState | None = None,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """Build (or extend) a DTS tree by `n_iterations` iterations and draw `n_samples` from it.

    Defaults are the paper's text experiments: C = 2, α = 0.7. `branch_at`: the depths where
    nodes branch (the root always does); None branches everywhere. `reward_fn(program)`: R of
    a finished program. `resume`: a state from an earlier run (`post.extras["state"]`).
    """
    rng = as_rng(rng if rng is not None else seed)
    check_tree_options(lam, C, alpha)
    check_count("n_iterations", n_iterations)
    check_count("rollouts", rollouts)
    check_count("n_samples", n_samples)
    engine = engine or Engine()
    state = resume if resume is not None else init(program, lam=lam, reward=reward_fn, weighting=weighting)
    state.n_iterations = state.t + n_iterations
    depths = None if branch_at is None else set(branch_at)
    config = {"n_iterations": state.n_iterations, "lam": lam, "C": C, "alpha": alpha, "rollouts": rollouts,
              "branch_at": sorted(depths) if depths is not None else None, "n_samples": n_samples}

    def finish(s: DTSState, infos: list) -> Output:
        tree = s.tree
        if tree.root.value == -math.inf:
            return Output([], np.zeros(0), -math.inf, diagnostics=tree_stats(s), ancestry=[], extras={"state": s},
                          message="every completed path in the tree has weight zero")
        leaves = [tree.sample(rng.child("sample", i)) for i in range(n_samples)]
        particles = [tree.state_of(leaf, engine, rng.child("replay"), max_steps) for leaf in leaves]
        return Output(particles, np.zeros(n_samples), tree.root.value,
                      diagnostics=tree_stats(s), ancestry=[], extras={"state": s},
                      message="DTS samples are asymptotically exact; log Ẑ is the root's soft value "
                              "(consistent, not unbiased)")

    return run_kernel(
        "dts", state,
        lambda s: step(rng, s, engine, c=C, alpha=alpha, branch_at=depths, rollouts=rollouts,
                       select="sample", max_steps=max_steps),
        finish, engine=engine, max_steps=state.n_iterations, config=config, progress=progress,
        units={"rollouts": n_iterations * rollouts},
    )
