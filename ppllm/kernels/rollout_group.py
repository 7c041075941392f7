"""What the tree-rollout kernels (TreePO, LATR) share: paths, group rewards and advantages.

A rollout group is a set of G completions of one prompt, for group-based RL (GRPO, DAPO)
or for evaluation. The tree kernels grow it as a tree instead of G independent samples;
they are deliberately biased proposals, never samplers of the LM, so their Posterior has
uniform weights and log Ẑ = NaN, and `extras["group"]` carries each leaf's reward and
advantage (JSON-ready, written into the data-set runner's round files).

- `tree_advantages(scores, prefixes)`: TreePO's advantage. For each leaf, over the root
  group and every ancestor subgroup (leaves below one segment node) with more than one
  leaf: score − subgroup mean, averaged with weights ∝ subgroup size.
- `group_advantages(scores)`: GRPO's score − group mean (the tree advantage of a flat group).
- `whiten(a)`: (a − mean) / std over the group (zeros when every advantage is equal).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..program import Program
from ..results.posterior import particle_text
from .selection import AnswerFn, ScoreFn, scores_of

__all__ = ["GroupPath", "GroupState", "check_fraction", "group_advantages", "group_extras", "new_log_p", "text_answer",
           "tree_advantages", "whiten"]


@dataclass
class GroupPath:
    """One path of a rollout group: its program, where it branched from, what it cost."""

    program: Program
    id: int
    origin: str  # "root", "fork", "branch", "regrow", "fill", "independent"
    prefix: list[int] = field(default_factory=list)  # segment-node ids from depth 1 down
    log_p: float = 0.0  # the path's log-probability under its own distributions so far
    steps: int = 0  # program steps taken since the path started from the root
    tokens: list[int] = field(default_factory=list)  # LM tokens it drew (LATR)


@dataclass
class GroupState:
    """What every rollout-group kernel's state holds: the group's width, its live paths and
    finished leaves, the next path id, and the driver's step count and failure."""

    width: int
    active: list[Any] = field(default_factory=list)
    leaves: list[Any] = field(default_factory=list)
    next_id: int = 0
    t: int = 0
    failed: str | None = None

    @property
    def done(self) -> bool:
        return not self.active and len(self.leaves) >= self.width

    @property
    def n_running(self) -> int:
        return len(self.active)


def new_log_p(program: Program, n_before: int) -> float:
    """Σ log p of the choices `program` recorded after its first `n_before` ones."""
    total, node = 0.0, program._pp.trace
    for _ in range(program._pp.n_choices - n_before):
        if node is None:
            break
        if node.choice.kind == "sample":
            total += node.choice.log_p
        node = node.parent
    return total


def tree_advantages(scores: Sequence[float], prefixes: Sequence[Sequence[Hashable]]) -> np.ndarray:
    """TreePO's segment-level advantage of every leaf (before whitening).

    `prefixes[i]`: the ids of leaf i's segment nodes from depth 1 down (the root is shared
    by all). Leaf i's advantage is Σ_g |g| (s_i − mean_g) / Σ_g |g| over g = the root group
    and each of its ancestor subgroups holding more than one leaf.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(prefixes) != len(s):
        raise ValueError(f"{len(s)} scores but {len(prefixes)} prefixes")
    if len(s) == 0:
        return s
    if np.isnan(s).any():
        raise ValueError(f"score of leaf {int(np.flatnonzero(np.isnan(s))[0])} is NaN")
    members: dict[tuple[int, Hashable], list[int]] = {}
    for i, pre in enumerate(prefixes):
        for d, node in enumerate(pre):
            members.setdefault((d, node), []).append(i)
    sums = {g: float(s[idx].sum()) for g, idx in members.items()}
    root_mean = float(s.mean())
    out = np.empty(len(s))
    for i, pre in enumerate(prefixes):
        num = len(s) * (s[i] - root_mean)
        den = float(len(s))
        for d, node in enumerate(pre):
            idx = members[(d, node)]
            if len(idx) > 1:
                num += len(idx) * (s[i] - sums[(d, node)] / len(idx))
                den += len(idx)
        out[i] = num / den
    return out


def group_advantages(scores: Sequence[float]) -> np.ndarray:
    """score − group mean (GRPO's advantage before scaling)."""
    s = np.asarray(scores, dtype=np.float64)
    return s - s.mean() if len(s) else s


def whiten(a: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(a − mean) / std over the group; all zeros when the advantages are all equal."""
    a = np.asarray(a, dtype=np.float64)
    if len(a) == 0:
        return a
    sd = float(a.std())
    return np.zeros_like(a) if sd < eps else (a - a.mean()) / sd


def group_extras(paths: Sequence[GroupPath], reward_fn: ScoreFn, answer_fn: AnswerFn,
                 tree: bool, **more: Any) -> dict[str, Any]:
    """The Posterior extras of a finished group: rewards, advantages, answers, origins.

    `answer` is the group's majority answer (ties: first seen), for the runner's accuracy.
    """
    programs = [p.program for p in paths]
    rewards = scores_of(programs, reward_fn)
    raw = tree_advantages(rewards, [p.prefix for p in paths]) if tree else group_advantages(rewards)
    answers = [answer_fn(p) for p in programs]
    votes = Counter(a for a in answers if a is not None)
    group = {
        "rewards": rewards.tolist(),
        "advantages": whiten(raw).tolist(),
        "raw_advantages": raw.tolist(),
        "origin": [p.origin for p in paths],
        "path_ids": [p.id for p in paths],
        "prefixes": [list(p.prefix) for p in paths],
        "reward_variance": float(rewards.var()),
        "distinct_answers": len(votes),
        **more,
    }
    return {"group": group, "answer": votes.most_common(1)[0][0] if votes else None,
            "answers": answers}


def check_fraction(name: str, value: Any, *, closed_low: bool = False, closed_high: bool = False) -> float:
    """A number in (0, 1) (ends included where asked), or a ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    low_ok = v >= 0 if closed_low else v > 0
    high_ok = v <= 1 if closed_high else v < 1
    if not (low_ok and high_ok) or math.isnan(v):
        lo, hi = "[" if closed_low else "(", "]" if closed_high else ")"
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {value!r}")
    return v


def text_answer(program: Program) -> Any:
    """The program's `answer` if it has one, else its text (the default answer_fn)."""
    return getattr(program, "answer", None) if hasattr(program, "answer") else particle_text(program)
