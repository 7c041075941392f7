"""LATR-style lookahead branching: a rollout group that forks at uncertain tokens (docs/kernels/tree_rollouts.md).

Heuristic: a deliberately biased proposal for trajectory diversity in RL rollout groups,
not a sampler of the LM or of any target. The leaves come back with uniform weights, log Ẑ
= NaN, and each leaf's reward and group advantage in `extras["group"]`.

Of a group of `width` rollouts, round(mix_ratio · width) grow from one root by branching
and the rest are independent samples, all stepped together in one engine round. While
the root is branching, the kernel takes over its branches' LM draws token by token
(`Program` policies: the program still decides what it samples from and when it stops):

- **branch** (`branch_candidates`): of the top `max_branch_per_token` tokens of the
  distribution the program samples from (tempered, masked), a non-top candidate j spawns
  a branch when p_j > `tau_abs` and p_1 − p_j < `tau_rel`; the branch being drawn keeps
  the top token. The root holds at most `cap` = round(mix_ratio · width) branches (live
  or finished; pruned ones free their place); candidates beyond it are dropped in rank
  order. A new branch is the parent's state before this step, replaying the parent's
  tokens of the step up to the branch point and then the candidate.
- **other tokens** take the top token (`sample_mode="none"`), are sampled once the root is
  full (`"full"`), or always sampled (`"always"`).
- **lookahead pruning** (`too_similar`): `prune_steps` tokens after a branch's birth its
  new span is compared with its parent's span over the same positions, and the branch is
  dropped when ROUGE-L F1 > `rouge_l`, the common suffix covers more than `suffix_match`
  of the span, or the normalised edit distance is below `edit_distance` (0 turns a test
  off). Finished branches are exempt; a parent that ended sooner is compared over what it
  has. Branches replay their parent's tokens, so a step's only randomness may be its LM draws.
- **exit**: once the root's branches fill at least a threshold of `cap` (starting at
  `exit_threshold`, lowered by `exit_decay` every step) or a branch has drawn
  `force_exit_tokens` tokens, the policies are removed and every branch finishes by the
  program's own sampling.

A root whose branching ends (exit, or every branch finished) with fewer than `cap`
branches is topped up at once with independent samples, so every group has `width` leaves. Every path draws from its own stream (its id and step),
so results do not depend on batching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..distributions import Draw
from ..engine import Engine
from ..lm.base import ChunkDistribution, NextToken, NextTokenLogprobs, draw_by_token
from ..program import Program
from ..results.posterior import Posterior
from ..rng import Rng, as_rng
from .driver import Output, check_count, run_kernel
from .rollout_group import GroupPath, GroupState, check_fraction, group_extras, text_answer
from .selection import AnswerFn, ScoreFn, recorded_score

__all__ = ["SAMPLE_MODES", "LATRState", "branch_candidates", "init", "rouge_l", "run", "step",
           "suffix_match", "too_similar"]

SAMPLE_MODES = ("none", "full", "always")


# ---------------------------------------------------------------------- the rules
def branch_candidates(logprobs: np.ndarray, tau_abs: float, tau_rel: float, max_branch_per_token: int = 2) -> list[int]:
    """Non-top tokens that spawn a branch: among the top `max_branch_per_token`, each j with
    p_j > tau_abs and p_1 − p_j < tau_rel, in rank order (ties by token id)."""
    p = np.exp(np.asarray(logprobs, dtype=np.float64))
    m = min(int(max_branch_per_token), len(p))
    # the top m without sorting the vocabulary: everything at least the m-th largest value,
    # ranked by probability, ties by token id (as a stable sort of the whole row would)
    kth = np.partition(p, len(p) - m)[len(p) - m]
    cand = np.flatnonzero(p >= kth)
    order = cand[np.argsort(-p[cand], kind="stable")][:m]
    top = p[order[0]]
    return [int(j) for j in order[1:] if p[j] > tau_abs and top - p[j] < tau_rel]


def rouge_l(a: Sequence[int], b: Sequence[int]) -> float:
    """ROUGE-L F1 of two token sequences: 2·LCS / (|a| + |b|)."""
    from rapidfuzz.distance import LCSseq

    if not a and not b:
        return 1.0
    return 2.0 * LCSseq.similarity(list(a), list(b)) / (len(a) + len(b))


def suffix_match(a: Sequence[int], b: Sequence[int]) -> float:
    """The longest common suffix of the two spans, as a fraction of the longer one."""
    n = 0
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y:
            break
        n += 1
    longest = max(len(a), len(b))
    return n / longest if longest else 1.0


def edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Levenshtein distance normalised by the longer length (0 = identical)."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(list(a), list(b)))


def too_similar(child: Sequence[int], parent: Sequence[int], rouge: float = 0.5, suffix: float = 0.2,
                edit: float = 0.4) -> bool:
    """True when the child's span repeats its parent's: ROUGE-L > rouge, or a common suffix
    over `suffix` of the span, or a normalised edit distance below `edit` (0 disables a test)."""
    if rouge > 0 and rouge_l(child, parent) > rouge:
        return True
    if suffix > 0 and suffix_match(child, parent) > suffix:
        return True
    return edit > 0 and edit_distance(child, parent) < edit


# ---------------------------------------------------------------------- state
@dataclass
class Branch:
    """A LATR path: its parent and birth position (None for the root and independent ones)."""

    path: GroupPath
    parent: GroupPath | None = None
    birth: int = 0  # index in `tokens` of the first token that differs from the parent
    checked: set[int] = field(default_factory=set)  # prune steps already tested
    latr: bool = False  # grown from the root by branching (not an independent sample)


@dataclass
class Spawn:
    parent: Branch
    state: Program  # the parent's state before the step the branch was born in
    forced: list[tuple[int, float, tuple[int, ...]]]  # (token, log q, context) replayed; the last: the candidate
    tokens_before: int  # len(parent.tokens) when the step began


@dataclass
class LATRState(GroupState):
    """The group in progress: its branches (live and finished), those pruned, and those born
    in the current step waiting for their first pass."""

    cap: int = 0  # branches the root may hold
    pruned: list[Branch] = field(default_factory=list)
    pending: list[Spawn] = field(default_factory=list)
    branching: bool = True  # the root is still in LATR mode
    root: Program | None = None  # the program every path starts from (fills too)
    n_branched: int = 0
    n_filled: int = 0

    def root_count(self) -> int:
        """Branches of the root that hold a place: live, finished or waiting to be born."""
        return sum(b.latr for b in self.active) + sum(b.latr for b in self.leaves) + len(self.pending)

    def new_path(self, program: Program, origin: str, steps: int = 0, tokens: list[int] | None = None) -> GroupPath:
        p = GroupPath(program, self.next_id, origin, steps=steps, tokens=list(tokens or []))
        self.next_id += 1
        return p


@dataclass(frozen=True)
class Settings:
    tau_abs: float
    tau_rel: float
    max_branch_per_token: int
    sample_mode: str


class BranchPolicy:
    """Draws one branch's LM tokens for one step: replays forced tokens, branches, picks."""

    def __init__(self, state: LATRState, branch: Branch, settings: Settings,
                 forced: list[tuple[int, float, tuple[int, ...]]], pre: Program | None) -> None:
        self.state, self.branch, self.settings = state, branch, settings
        self.forced = list(forced)
        self.drawn: list[tuple[int, float, tuple[int, ...]]] = []  # this step's tokens, log q, context
        self.pre = pre  # the branch's state before this step (None: no more branching)

    async def __call__(self, dist: Any, rng: Rng) -> Draw:
        if not isinstance(dist, NextToken | ChunkDistribution):
            return await dist.sample(rng)
        if getattr(dist.lm, "chunk_requests", False):
            raise ValueError(f"latr branches token by token from next-token rows, which {dist.lm.name} (a served "
                             "LM) does not return; use treepo, or an in-process model")

        async def pick(tokens: tuple[int, ...]) -> tuple[int, float]:
            here = dist.ctx.tokens + tokens
            if self.forced:  # replayed: already in the branch's token list since its birth
                tok, lq, where = self.forced.pop(0)
                if where != here:
                    raise ValueError("latr replays a parent's tokens into a new branch, so a step's only randomness "
                                     "may be its LM draws (this step drew something else before them, or its "
                                     "context differs)")
            else:
                tok, lq = await self._next(dist, here, rng)
            self.drawn.append((tok, lq, here))
            return tok, lq

        return await draw_by_token(dist, pick)

    async def _next(self, dist: Any, here: tuple[int, ...], rng: Rng) -> tuple[int, float]:
        """A fresh token after context `here`: spawn the branches the rule allows, then pick."""
        base = await NextTokenLogprobs(dist.lm, here)
        lq = dist.transform(base)
        s, st = self.settings, self.state
        top = int(np.argmax(lq))
        spawned = False
        if self.pre is not None:
            for j in branch_candidates(lq, s.tau_abs, s.tau_rel, s.max_branch_per_token):
                if st.root_count() >= st.cap:
                    break  # the root is full: lower-ranked candidates are dropped
                st.pending.append(Spawn(self.branch, self.pre, [*self.drawn, (j, float(lq[j]), here)],
                                        len(self.branch.path.tokens) - len(self.drawn)))
                spawned = True
        # at a branch point the branch keeps the top token (its children took the others)
        greedy = spawned or s.sample_mode == "none" or (s.sample_mode == "full" and st.root_count() < st.cap)
        tok = top if greedy else int(rng.categorical(np.exp(lq)))
        self.branch.path.tokens.append(tok)
        return tok, float(lq[tok])


def init(program: Program, width: int, mix_ratio: float = 1.0) -> LATRState:
    """The root branch and the group's independent samples."""
    width = check_count("width", width)
    cap = int(round(check_fraction("mix_ratio", mix_ratio, closed_low=True, closed_high=True) * width))
    state = LATRState(width, cap=cap, root=program)
    if cap > 0:
        state.active.append(Branch(state.new_path(program.clone(), "root"), latr=True))
    else:
        state.branching = False
    for _ in range(width - cap):
        state.active.append(Branch(state.new_path(program.clone(), "independent")))
    return state


def step(
    rng: Rng, state: LATRState, engine: Engine, settings: Settings, prune_steps: Sequence[int] = (20, 30, 50),
    rouge: float = 0.5, suffix: float = 0.2, edit: float = 0.4, exit_threshold: float = 0.98,
    exit_decay: float = 0.05, force_exit_tokens: int = 1024,
) -> tuple[LATRState, dict[str, int]]:
    """One program step of every live path; branches born in it take their step too."""
    t = state.t
    todo: list[tuple[Branch, list[tuple[int, float, tuple[int, ...]]]]] = [(b, []) for b in state.active]
    born = 0
    stepped: list[Branch] = []
    for _ in range(state.cap + 1):  # passes: the live paths, then the branches born in the pass before
        if not todo:
            break
        progs, rngs = [], []
        for b, forced in todo:
            if state.branching and b.latr:
                b.path.program._pp.policy = BranchPolicy(state, b, settings, forced, b.path.program.clone())
            progs.append(b.path.program)
            rngs.append(rng.child("path", b.path.id, "step", b.path.steps))
        try:
            engine.step(progs, rngs, t)
        finally:
            for p in progs:
                p._pp.policy = None
        for b, _ in todo:
            b.path.steps += 1
        stepped.extend(b for b, _ in todo)
        todo = []
        for sp in state.pending:  # branches born this step: their step, from the parent's state
            path = state.new_path(sp.state.clone(), "branch", sp.parent.path.steps - 1,
                                  sp.parent.path.tokens[: sp.tokens_before])
            path.tokens.extend(tok for tok, _, _ in sp.forced)
            child = Branch(path, sp.parent.path, len(path.tokens) - 1, latr=True)
            todo.append((child, sp.forced))
            state.n_branched += 1
            born += 1
        state.pending = []
        state.active.extend(b for b, _ in todo)
    pruned = 0
    still: list[Branch] = []
    for b in state.active:
        if b.path.program.finished:
            state.leaves.append(b)
            continue
        if state.branching and b.parent is not None:
            span = len(b.path.tokens) - b.birth
            for k in prune_steps:
                if k in b.checked or span < k:
                    continue
                b.checked.add(k)
                theirs = b.parent.tokens[b.birth: b.birth + k]  # shorter if the parent ended first
                mine = b.path.tokens[b.birth: b.birth + len(theirs)]
                if theirs and too_similar(mine, theirs, rouge, suffix, edit):
                    state.pruned.append(b)
                    pruned += 1
                    break
            else:
                still.append(b)
            continue
        still.append(b)
    state.active = still
    if state.branching:
        threshold = exit_threshold - exit_decay * t
        longest = max((len(b.path.tokens) for b in state.active if b.latr), default=0)
        if state.root_count() >= threshold * state.cap or longest >= force_exit_tokens:
            state.branching = False
    if state.branching and not any(b.latr for b in state.active):
        state.branching = False  # every branch of the root has ended
    filled = 0
    if not state.branching:  # the root's share is settled: independent samples fill the rest
        for _ in range(state.width - len(state.leaves) - len(state.active)):
            state.active.append(Branch(state.new_path(state.root.clone(), "fill")))
            filled += 1
        state.n_filled += filled
    state.t = t + 1
    return state, {"t": t, "live": len(stepped), "born": born, "pruned": pruned, "filled": filled}


def check_options(*, width: Any = 8, tau_abs: Any = 0.15, tau_rel: Any = 0.25, max_branch_per_token: Any = 2,
                  sample_mode: Any = "none", prune_steps: Any = (20, 30, 50), rouge_l_threshold: Any = 0.5,
                  suffix_threshold: Any = 0.2, edit_threshold: Any = 0.4, exit_threshold: Any = 0.98,
                  exit_decay: Any = 0.05, force_exit_tokens: Any = 1024, mix_ratio: Any = 1.0,
                  **_: Any) -> dict[str, Any]:
    """The checked options (the recipe checker calls this before any model work);
    ValueError naming the first bad one."""
    out: dict[str, Any] = {"width": check_count("width", width), "tau_abs": check_fraction("tau_abs", tau_abs),
                           "tau_rel": check_fraction("tau_rel", tau_rel),
                           "max_branch_per_token": check_count("max_branch_per_token", max_branch_per_token)}
    if max_branch_per_token < 2:
        raise ValueError(f"max_branch_per_token must be >= 2 (the top token and a candidate), got {max_branch_per_token}")
    if sample_mode not in SAMPLE_MODES:
        raise ValueError(f"sample_mode must be one of {', '.join(SAMPLE_MODES)}, got {sample_mode!r}")
    for name, v in (("rouge_l_threshold", rouge_l_threshold), ("suffix_threshold", suffix_threshold),
                    ("edit_threshold", edit_threshold), ("exit_threshold", exit_threshold),
                    ("exit_decay", exit_decay), ("mix_ratio", mix_ratio)):
        out[name] = check_fraction(name, v, closed_low=True, closed_high=True)
    if isinstance(prune_steps, int | str) or not hasattr(prune_steps, "__iter__"):
        raise ValueError(f"prune_steps must be a list of token counts, got {prune_steps!r}")
    out["prune_steps"] = [check_count("prune_steps", k) for k in prune_steps]
    out["force_exit_tokens"] = check_count("force_exit_tokens", force_exit_tokens)
    return {**out, "sample_mode": sample_mode}


def run(
    program: Program,
    width: int = 8,
    *,
    tau_abs: float = 0.15,
    tau_rel: float = 0.25,
    max_branch_per_token: int = 2,
    sample_mode: str = "none",
    prune_steps: Sequence[int] = (20, 30, 50),
    rouge_l_threshold: float = 0.5,
    suffix_threshold: float = 0.2,
    edit_threshold: float = 0.4,
    exit_threshold: float = 0.98,
    exit_decay: float = 0.05,
    force_exit_tokens: int = 1024,
    mix_ratio: float = 1.0,
    reward_fn: ScoreFn = recorded_score,
    answer_fn: AnswerFn = text_answer,
    seed: int | None = None,
    rng: Rng | None = None,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Posterior:
    """A group of `width` rollouts, round(mix_ratio · width) of them by lookahead branching.

    `extras["group"]` holds each leaf's reward, advantage (score − group mean, whitened),
    origin ("root", "branch", "independent", "fill") and the counts of branches born and
    pruned; `extras["answer"]` is the majority answer.
    """
    config = check_options(width=width, tau_abs=tau_abs, tau_rel=tau_rel, max_branch_per_token=max_branch_per_token,
                           sample_mode=sample_mode, prune_steps=prune_steps, rouge_l_threshold=rouge_l_threshold,
                           suffix_threshold=suffix_threshold, edit_threshold=edit_threshold,
                           exit_threshold=exit_threshold, exit_decay=exit_decay,
                           force_exit_tokens=force_exit_tokens, mix_ratio=mix_ratio)
    rng = as_rng(rng if rng is not None else seed)
    engine = engine or Engine()
    settings = Settings(tau_abs, tau_rel, max_branch_per_token, sample_mode)
    steps = config["prune_steps"]
    state = init(program, width, mix_ratio)

    def finish(s: LATRState, infos: list) -> Output:
        leaves = sorted(s.leaves, key=lambda b: b.path.id)
        paths = [b.path for b in leaves]
        extras = group_extras(paths, reward_fn, answer_fn, tree=False, branched=s.n_branched,
                              pruned=len(s.pruned), filled=s.n_filled,
                              parents=[None if b.parent is None else b.parent.id for b in leaves],
                              births=[b.birth if b.parent is not None else None for b in leaves])
        return Output([b.path.program for b in leaves], np.zeros(len(leaves)), math.nan, extras=extras)

    return run_kernel(
        "latr", state,
        lambda s: step(rng, s, engine, settings, steps, rouge_l_threshold, suffix_threshold, edit_threshold,
                       exit_threshold, exit_decay, force_exit_tokens),
        finish, engine=engine, max_steps=max_steps, config=config, progress=progress,
        units={"generations": width},
    )
