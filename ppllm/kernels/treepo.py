"""TreePO-style segment trees: a rollout group of `width` leaves grown as a tree (docs/kernels/tree_rollouts.md).

Heuristic: a deliberately biased proposal for RL rollout groups, not a sampler of the LM
or of any target. The leaves come back with uniform weights, log Ẑ = NaN, and each leaf's
reward and tree advantage in `extras["group"]`.

The tree, in program steps (for a token-level program a step is a token, for a chunked
one a line or a reasoning step):

- the root forks at once into k paths, k drawn uniformly from `first_width` cut at
  `width` (TreePO's first-step divergence, [2, 8]);
- a path that completes a segment of `segment_length` steps at depth < `max_depth` stops
  at a segment boundary (a node of the tree, its state kept); the paths at a boundary fork
  by `fork_counts`: about `step_width` children each, in total at most `width` minus the
  finished leaves and the paths still inside a segment, and at least one child each, so
  budget that finished paths free passes to the survivors; `fork_control` splits it evenly
  ("fixed"), towards likelier paths ("logprob_weighted", a softmax of the cumulative log
  p) or towards unlikelier ones ("inverse_logprob");
- a path ends when its program finishes or `stop_fn(program)` says so (an answer line:
  early stop); a path that ends badly (`bad_fn(program)`, e.g. no answer) is dropped and
  regrown from a random earlier boundary on its own path, at most `max_regrow` times per
  group (TreePO's fallback);
- past depth `max_depth` paths run to their end without forking, and if the group still
  has fewer than `width` leaves when every path has ended, new paths grow from random
  boundaries of random leaves until it has `width`.

Every path draws from its own stream (keyed by its id and step), and every live path of
the group is one row of each batched engine round, so results do not depend on batching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import Engine
from ..program import Program
from ..results.posterior import Posterior
from ..rng import Rng, as_rng
from .driver import Output, check_count, run_kernel
from .rollout_group import GroupPath, GroupState, group_extras, new_log_p, text_answer
from .selection import AnswerFn, ScoreFn, recorded_score

__all__ = ["FORK_CONTROLS", "SegmentNode", "TreePOState", "fork_counts", "init", "run", "step"]

FORK_CONTROLS = ("fixed", "logprob_weighted", "inverse_logprob")
PathFn = Callable[[Program], bool]


def fork_counts(n_at_boundary: int, available: int, step_width: int, fork_control: str = "fixed",
                log_probs: Sequence[float] | None = None) -> list[int]:
    """How many children each of the paths at a boundary continues as.

    `available`: leaves the group can still take from these paths (width − finished leaves
    − paths inside a segment). The total is min(available, n · step_width) but never below
    n (every path keeps at least itself); the extra beyond one child each is split evenly
    (remainder to the first paths) or ∝ softmax(±log_probs) by largest remainders.
    """
    n = int(n_at_boundary)
    if n == 0:
        return []
    if available < n:
        raise ValueError(f"{n} paths at a boundary but only {available} places left in the group")
    if fork_control not in FORK_CONTROLS:
        raise ValueError(f"fork_control must be one of {FORK_CONTROLS}, got {fork_control!r}")
    extra = max(n, min(int(available), n * int(step_width))) - n
    if fork_control == "fixed":
        base, rem = divmod(extra, n)
        return [1 + base + (1 if i < rem else 0) for i in range(n)]
    if log_probs is None or len(log_probs) != n:
        raise ValueError(f"{fork_control} needs one log-probability per path")
    lp = np.asarray(log_probs, dtype=np.float64).copy()
    finite = np.isfinite(lp)
    if not finite.any():  # no path has a usable log-probability: split evenly
        return fork_counts(n, available, step_width, "fixed")
    lp[~finite] = lp[finite].min() - 1e3  # a path of probability zero ranks last (first, inverted)
    lp *= 1.0 if fork_control == "logprob_weighted" else -1.0
    w = np.exp(lp - lp.max())
    shares = extra * w / w.sum()
    counts = np.floor(shares).astype(int)
    left = extra - int(counts.sum())
    order = np.argsort(-(shares - counts), kind="stable")  # largest remainders first, ties in order
    counts[order[:left]] += 1
    return [1 + int(c) for c in counts]


@dataclass
class SegmentNode:
    """A segment boundary: the state every path below it shares."""

    id: int
    parent: int | None
    depth: int
    state: Program
    log_p: float
    steps: int
    prefix: list[int]


@dataclass
class TreePOState(GroupState):
    """The group in progress: live paths, finished leaves and the segment nodes."""

    nodes: dict[int, SegmentNode] = field(default_factory=dict)
    seg_steps: dict[int, int] = field(default_factory=dict)  # path id -> steps into its segment
    depth: dict[int, int] = field(default_factory=dict)  # path id -> its last node's depth
    regrown: int = 0
    filled: int = 0


def _check_first_width(first_width: Any) -> tuple[int, int]:
    try:
        lo, hi = (int(first_width), int(first_width)) if isinstance(first_width, int) else map(int, first_width)
    except (TypeError, ValueError):
        raise ValueError(f"first_width must be an integer or a pair [low, high], got {first_width!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"first_width must satisfy 1 <= low <= high, got {first_width!r}")
    return lo, hi


def init(program: Program, width: int, rng: Rng, first_width: Any = (2, 8)) -> TreePOState:
    """The root node and its first divergence: k ~ U{first_width} paths (at most `width`)."""
    width = check_count("width", width)
    lo, hi = _check_first_width(first_width)
    hi = min(hi, width)  # uniform over what the group can hold
    lo = min(lo, hi)
    k = lo + int(rng.child("first_width").categorical(np.ones(hi - lo + 1)))
    root = SegmentNode(0, None, 0, program.clone(), 0.0, 0, [])
    state = TreePOState(width, nodes={0: root})
    state.active = [_start(state, root, "root") for _ in range(k)]
    return state


def _start(state: TreePOState, node: SegmentNode, origin: str) -> GroupPath:
    """A new path from `node`'s state (a copy), with a fresh id and stream."""
    path = GroupPath(node.state.clone(), state.next_id, origin, list(node.prefix), node.log_p, node.steps)
    state.next_id += 1
    state.seg_steps[path.id] = 0
    state.depth[path.id] = node.depth
    return path


def _boundary(state: TreePOState, path: GroupPath) -> SegmentNode:
    parent = path.prefix[-1] if path.prefix else 0
    node_id = len(state.nodes)
    node = SegmentNode(node_id, parent, state.depth[path.id] + 1, path.program.clone(), path.log_p,
                       path.steps, [*path.prefix, node_id])
    state.nodes[node_id] = node
    path.prefix.append(node_id)
    state.depth[path.id] = node.depth
    state.seg_steps[path.id] = 0
    return node


def _random_boundary(state: TreePOState, prefix: list[int], rng: Rng) -> SegmentNode:
    """A boundary on this path (the root or one of its segment nodes), uniformly."""
    choices = [0, *prefix]
    return state.nodes[choices[int(rng.categorical(np.ones(len(choices))))]]


def step(
    rng: Rng, state: TreePOState, engine: Engine, segment_length: int = 1, max_depth: int = 6,
    step_width: int = 2, fork_control: str = "fixed", stop_fn: PathFn | None = None,
    bad_fn: PathFn | None = None, max_regrow: int = 0,
) -> tuple[TreePOState, dict[str, int]]:
    """One program step of every live path, then forks, regrowth and fills."""
    t = state.t
    paths = state.active
    before = [p.program._pp.n_choices for p in paths]
    engine.step([p.program for p in paths], [rng.child("path", p.id, "step", p.steps) for p in paths], t)
    at_boundary: list[GroupPath] = []
    still: list[GroupPath] = []
    new: list[GroupPath] = []
    forked = regrown = 0
    r = rng.child("round", t)
    for p, n0 in zip(paths, before, strict=True):
        p.log_p += new_log_p(p.program, n0)
        p.steps += 1
        state.seg_steps[p.id] += 1
        if not p.program.finished and stop_fn is not None and stop_fn(p.program):
            p.program.finish()  # early stop: the answer is there
        if p.program.finished:
            if bad_fn is not None and state.regrown < max_regrow and bad_fn(p.program):
                state.regrown += 1
                regrown += 1
                new.append(_start(state, _random_boundary(state, p.prefix, r.child("regrow", p.id)), "regrow"))
            else:
                state.leaves.append(p)
            continue
        if state.seg_steps[p.id] >= segment_length and state.depth[p.id] < max_depth:
            _boundary(state, p)
            at_boundary.append(p)
        still.append(p)
    others = len(still) - len(at_boundary) + len(new)
    counts = fork_counts(len(at_boundary), state.width - len(state.leaves) - others, step_width, fork_control,
                         [p.log_p for p in at_boundary])
    children: list[GroupPath] = []
    for p, c in zip(at_boundary, counts, strict=True):
        node = state.nodes[p.prefix[-1]]
        for _ in range(c - 1):
            children.append(_start(state, node, "fork"))
            forked += 1
    state.active = still + new + children
    filled = 0
    if not state.active and len(state.leaves) < state.width:  # forks fell short: grow more
        for j in range(state.width - len(state.leaves)):
            leaf = state.leaves[int(r.child("fill", j).categorical(np.ones(len(state.leaves))))]
            state.active.append(_start(state, _random_boundary(state, leaf.prefix, r.child("fill_at", j)), "fill"))
            filled += 1
        state.filled += filled
    state.t = t + 1
    return state, {"t": t, "live": len(paths), "forked": forked, "regrown": regrown, "filled": filled}


def check_options(*, width: Any = 8, segment_length: Any = 1, max_depth: Any = 6, step_width: Any = 2,
                  first_width: Any = (2, 8), fork_control: Any = "fixed", max_regrow: Any = None,
                  bad_fn: Any = None, **_: Any) -> dict[str, Any]:
    """The checked options (the recipe checker calls this before any model work);
    ValueError naming the first bad one."""
    width = check_count("width", width)
    out = {"width": width, "segment_length": check_count("segment_length", segment_length),
           "max_depth": check_count("max_depth", max_depth), "step_width": check_count("step_width", step_width),
           "first_width": list(_check_first_width(first_width))}
    if fork_control not in FORK_CONTROLS:
        raise ValueError(f"fork_control must be one of {', '.join(FORK_CONTROLS)}, got {fork_control!r}")
    regrow = (width if bad_fn is not None else 0) if max_regrow is None else max_regrow
    if not isinstance(regrow, int) or isinstance(regrow, bool) or regrow < 0:
        raise ValueError(f"max_regrow must be an integer >= 0, got {max_regrow!r}")
    return {**out, "fork_control": fork_control, "max_regrow": regrow}


def run(
    program: Program,
    width: int = 8,
    *,
    segment_length: int = 1,
    max_depth: int = 6,
    step_width: int = 2,
    first_width: Any = (2, 8),
    fork_control: str = "fixed",
    stop_fn: PathFn | None = None,
    bad_fn: PathFn | None = None,
    max_regrow: int | None = None,
    reward_fn: ScoreFn = recorded_score,
    answer_fn: AnswerFn = text_answer,
    seed: int | None = None,
    rng: Rng | None = None,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """A group of `width` leaves grown as a segment tree (see the module docstring).

    `reward_fn` scores each leaf (default: its recorded `prefix_score`, e.g. a verifier's);
    `extras["group"]` holds the rewards, the whitened tree advantages (and the raw ones),
    each leaf's origin and segment-node prefix; `extras["answer"]` the majority answer.
    `max_regrow` defaults to `width` when `bad_fn` is given.
    """
    config = check_options(width=width, segment_length=segment_length, max_depth=max_depth, step_width=step_width,
                           first_width=first_width, fork_control=fork_control, max_regrow=max_regrow,
                           bad_fn=bad_fn)
    width, regrow = config["width"], config["max_regrow"]
    rng = as_rng(rng if rng is not None else seed)
    engine = engine or Engine()

    def finish(state: TreePOState, infos: list) -> Output:
        leaves = sorted(state.leaves, key=lambda p: p.id)
        extras = group_extras(leaves, reward_fn, answer_fn, tree=True, n_nodes=len(state.nodes),
                              regrown=state.regrown, filled=state.filled,
                              forked=sum(i["forked"] for i in infos))
        return Output([p.program for p in leaves], np.zeros(len(leaves)), math.nan, extras=extras)

    return run_kernel(
        "treepo", init(program, width, rng, first_width),
        lambda s: step(rng, s, engine, config["segment_length"], config["max_depth"], config["step_width"],
                       fork_control, stop_fn, bad_fn, regrow),
        finish, engine=engine, max_steps=max_steps, config=config, progress=progress,
        units={"generations": width},
    )
