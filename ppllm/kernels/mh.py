"""Metropolis–Hastings on recorded traces: moves that rejuvenate SMC, and standalone chains.

A move is an MCMC kernel applied to every particle of a population that keeps its paths
(`store_history=True`); `Population.move(kernel, engine, rng, t)` calls it. Its target is the
population's current one: after t steps, π_t(x) ∝ γ_t(x), the program's weight of the path
so far (choices' log p, factors, and the twist pending at its last step); for complete traces
π_t is the program's posterior. Every move's LM work — the regenerated suffixes, the
replayed traces — runs as one population through the engine, so it is batched across
particles. Weights are left untouched, so a move never changes the evidence.

- `SuffixMH(rule)`: pick k ∈ {0..L(x)−1} by `rule` (probabilities c_k(L) over the steps of
  the current path), re-run the program from its state after k steps until it finishes or
  reaches the horizon, and accept with
      min(1, [w_{>k}(x') c_k(L(x'))] / [w_{>k}(x) c_k(L(x))]),
  where w_{>k} is the product of the regenerated steps' weight increments (γ/q of the
  suffix, twists included): the proposal is the program's own proposal from step k, so q
  cancels against the weights, and c_k(L(x'))/c_k(L(x)) corrects for the length change.
  Rules: "uniform" (c_k = 1/L), "last" (k = L−1), or `suffix_steps=m` (uniform over the last
  m steps; c_k(L(x')) = 0 rejects a proposal that moved k out of reach).
  Inside SMC (a horizon of t steps) only unfinished paths move, and a proposal that finishes
  before t is rejected: the move is then the identity on finished paths, so a run may stop
  when every particle has finished without biasing the result.
- `IndependentMH()`: k = 0 always — a whole new trajectory from the program, accepted with
  min(1, w(x')/w(x)); or from a separate `proposal` program (same addresses, no factors),
  accepted with min(1, [γ(x')/q(x')] / [γ(x)/q(x)]), γ and q scored by replay.
- `SiteMH(proposal, scale)`: pick one latent site (a choice from an ordinary distribution,
  not an LM) uniformly, propose a new value — "prior" (redrawn from its own distribution)
  or "random_walk" (v + scale·N(0, 1), continuous values) — and replay the path with every
  other value kept; accept with the replayed density ratio (prior: divided by the site's
  prior ratio). A proposal that changes which sites exist (the program's control flow
  depends on the value) is rejected, which keeps the move reversible.

Exactness class: exact — each move's transition K satisfies πK = π (tests/test_mh.py builds
K by enumeration on toy programs), and their compositions are irreducible where the
proposal has full support ("uniform" suffix moves include k = 0).

Standalone MCMC (`init` / `step` / `run`): several chains, each a complete trace, all moved
together every iteration; `run` returns `Chains`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import Engine
from ..population import History, Population, Trajectory, path_of
from ..program import REDRAW, Program, replay
from ..results.chains import Chains
from ..rng import Rng, as_rng
from .driver import check_count, loop, run_chains

__all__ = [
    "IndependentMH",
    "MHState",
    "MoveInfo",
    "SiteMH",
    "SuffixMH",
    "as_move",
    "distinct_particles",
    "init",
    "log_gamma",
    "run",
    "step",
]


@dataclass
class MoveInfo:
    """One move applied to every particle: which proposals were accepted."""

    accepted: np.ndarray  # per particle
    moved: int = 0  # particles the move applied to (finished paths inside SMC are left alone)
    rejected_structure: int = 0  # site proposals rejected because they changed the trace's sites

    @property
    def rate(self) -> float:
        """Acceptance among the particles the move applied to (NaN when none)."""
        return float(np.sum(self.accepted) / self.moved) if self.moved else math.nan


def log_gamma(traj: Trajectory) -> float:
    """log γ_t of a path: its increments (log p − log q, factors, twists) plus the log q's back."""
    return traj.log_weight + math.fsum(c.log_q for c in traj.final.trace)


def distinct_particles(pop: Population) -> int:
    """How many different paths (sampled values) the population holds."""
    return len({tuple(c.value for c in p.trace if c.kind == "sample") for p in pop.programs})


def _accept(rng: Rng, log_alpha: float) -> bool:
    """Bernoulli(min(1, exp(log α))) through the particle's stream (enumerable by the oracle)."""
    if math.isnan(log_alpha):
        raise RuntimeError("MH acceptance ratio is NaN")
    a = 1.0 if log_alpha >= 0 else math.exp(log_alpha)
    return bool(rng.categorical(np.array([1.0 - a, a])))


def _node_at(node: History | None, depth: int, length: int) -> History | None:
    """The history node after `depth` steps of a path of `length` steps ending at `node`."""
    for _ in range(length - depth):
        assert node is not None
        node = node.parent
    return node


@dataclass
class _Rollout:
    """Proposals being run forward: each from its own state, with its own stream."""

    programs: list[Program]
    rngs: list[Rng]
    horizon: int
    paths: list[History | None]
    log_w: np.ndarray
    t: int = 0
    failed: str | None = None

    def live(self) -> list[int]:
        return [i for i, p in enumerate(self.programs) if not p.finished and p._pp.t < self.horizon]

    @property
    def done(self) -> bool:
        return not self.live()

    @property
    def n_running(self) -> int:
        return len(self.live())


def rollout(starts: Sequence[Program], rngs: Sequence[Rng], paths: Sequence[History | None],
            engine: Engine, horizon: int, max_steps: int = 10_000) -> _Rollout:
    """Run copies of `starts` until each finishes or has taken `horizon` steps, batched."""
    state = _Rollout([p.clone() for p in starts], list(rngs), horizon, list(paths), np.zeros(len(starts)))

    def advance(s: _Rollout) -> tuple[_Rollout, None]:
        live = s.live()
        incs = engine.step([s.programs[i] for i in live],
                           [s.rngs[i].child("step", s.programs[i]._pp.t) for i in live], s.t)
        for i, inc in zip(live, incs, strict=True):
            s.log_w[i] += inc
            s.paths[i] = History(s.programs[i].clone(), float(inc), s.paths[i])
        s.t += 1
        return s, None

    state, _ = loop(state, advance, max_steps)
    return state


# ---------------------------------------------------------------------- suffix regeneration
@dataclass(frozen=True)
class SuffixMH:
    """Regenerate the path from a step k chosen by `rule` (see the module docstring)."""

    rule: str = "uniform"
    suffix_steps: int | None = None
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        if self.rule not in ("uniform", "last", "restart"):
            raise ValueError(f"suffix rule must be 'uniform', 'last' or 'restart', got {self.rule!r}")
        if self.suffix_steps is not None and (not isinstance(self.suffix_steps, int) or self.suffix_steps < 1):
            raise ValueError(f"suffix_steps must be a positive integer, got {self.suffix_steps!r}")

    def pick_probs(self, length: int) -> np.ndarray:
        """c_k(L): the probability of regenerating from step k, for k = 0..L−1."""
        c = np.zeros(max(length, 1))
        if self.rule == "restart" or length <= 1:
            c[0] = 1.0
        elif self.rule == "last":
            c[length - 1] = 1.0
        else:
            lo = 0 if self.suffix_steps is None else max(0, length - self.suffix_steps)
            c[lo:length] = 1.0 / (length - lo)
        return c

    def selection_log_ratio(self, k: int, length: int, new_length: int) -> float:
        """log c_k(L(x')) − log c_k(L(x)): the correction for a change of length."""
        new = self.pick_probs(new_length)
        c_new = new[k] if k < len(new) else 0.0
        return (math.log(c_new) if c_new > 0 else -math.inf) - math.log(self.pick_probs(length)[k])

    def suffix_weight(self, log_incs: Sequence[float], program: Program, n_prefix: int) -> float:
        """log w_{>k}: the regenerated steps' increments (γ/q of the suffix, twists included).

        `program` is the path's final state and `n_prefix` the number of its choices made
        before step k (what a variant that recomputes the weight from choices would need).
        """
        return math.fsum(log_incs)

    def __call__(self, pop: Population, engine: Engine, rng: Rng, t: int, horizon: int | None = None) -> MoveInfo:
        movable = _movable(pop, horizon)
        rngs = [rng.child("slot", i) for i in movable]
        trajs = [pop.trajectory(i) for i in movable]
        ks = [int(r.child("pick").categorical(self.pick_probs(tr.n_steps))) if tr.n_steps else 0
              for r, tr in zip(rngs, trajs, strict=True)]
        paths = [_node_at(pop.history[i], k, tr.n_steps) for i, k, tr in zip(movable, ks, trajs, strict=True)]
        props = rollout([tr.states[k] for k, tr in zip(ks, trajs, strict=True)], rngs, paths, engine,
                        self.max_steps if horizon is None else horizon, self.max_steps)
        accepted = np.zeros(pop.n, dtype=bool)
        for j, (i, k, tr) in enumerate(zip(movable, ks, trajs, strict=True)):
            new_traj = path_of(props.paths[j], pop.initial or tr.states[0])
            if horizon is not None and props.programs[j].finished:
                continue  # an intermediate move keeps unfinished paths unfinished (see _movable)
            n_prefix = tr.states[k]._pp.n_choices
            old = self.suffix_weight(tr.log_incs[k:], tr.final, n_prefix)
            new = self.suffix_weight(new_traj.log_incs[k:], props.programs[j], n_prefix)
            log_alpha = _ratio(new, old) + self.selection_log_ratio(k, tr.n_steps, new_traj.n_steps)
            if _accept(rngs[j].child("accept"), log_alpha):
                pop.programs[i], pop.history[i] = props.programs[j], props.paths[j]  # type: ignore[index]
                accepted[i] = True
        return MoveInfo(accepted, moved=len(movable))


def _movable(pop: Population, horizon: int | None) -> list[int]:
    """The particles a move may change.

    Complete traces (horizon None): all. Inside SMC (after `horizon` steps): the unfinished
    ones, and proposals that finish early are rejected — the move is the identity on finished
    paths and π_t-invariant on unfinished ones, so once every particle has finished a move
    changes nothing, and it does not matter that the run stops then (the schedule of moves
    stays independent of the particles).
    """
    if horizon is None:
        return list(range(pop.n))
    return [i for i, p in enumerate(pop.programs) if not p.finished]


def IndependentMH(proposal: Program | None = None, max_steps: int = 10_000) -> Any:
    """A whole new trajectory from the program itself (k = 0), or from a `proposal` program."""
    if proposal is None:
        return SuffixMH(rule="restart", max_steps=max_steps)
    return _ProposalMH(proposal, max_steps)


@dataclass(frozen=True)
class _ProposalMH:
    """Independence sampler with a separate proposal program (scored by replay)."""

    proposal: Program
    max_steps: int = 10_000

    def __call__(self, pop: Population, engine: Engine, rng: Rng, t: int, horizon: int | None = None) -> MoveInfo:
        from .importance import score_traces

        target = pop.initial
        if target is None:
            raise ValueError("an independence move needs the population's initial program")
        movable = _movable(pop, horizon)
        limit = self.max_steps if horizon is None else horizon
        rngs = [rng.child("slot", i) for i in movable]
        props = rollout([self.proposal] * len(movable), rngs, [None] * len(movable), engine, limit, self.max_steps)
        new_traces = [p.trace for p in props.programs]
        new_q = np.array([math.fsum(c.log_p for c in tr if c.kind == "sample") for tr in new_traces])
        # the target replayed on the proposals (log γ(x') and their states), and the proposal's
        # density of the current paths, each as one batch through the engine
        replays = rollout([replay(target, tr) for tr in new_traces], rngs, [None] * len(movable), engine,
                          limit, self.max_steps)
        old_q = score_traces(self.proposal, [pop.programs[i].trace for i in movable], engine, self.max_steps)
        accepted = np.zeros(pop.n, dtype=bool)
        for j, i in enumerate(movable):
            if horizon is not None and replays.programs[j].finished:
                continue
            old_gamma = log_gamma(pop.trajectory(i))
            log_alpha = _ratio(float(replays.log_w[j]) - new_q[j], old_gamma - old_q[j])
            if _accept(rngs[j].child("accept"), log_alpha):
                pop.programs[i], pop.history[i] = replays.programs[j], replays.paths[j]  # type: ignore[index]
                accepted[i] = True
        return MoveInfo(accepted, moved=len(movable))


# ---------------------------------------------------------------------- single-site moves
@dataclass(frozen=True)
class SiteMH:
    """Move one latent (non-LM) site: a prior redraw or a Gaussian random walk."""

    proposal: str = "prior"
    scale: float = 1.0
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        if self.proposal not in ("prior", "random_walk"):
            raise ValueError(f"site proposal must be 'prior' or 'random_walk', got {self.proposal!r}")
        if not (isinstance(self.scale, int | float) and self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"random-walk scale must be > 0, got {self.scale!r}")

    def __call__(self, pop: Population, engine: Engine, rng: Rng, t: int, horizon: int | None = None) -> MoveInfo:
        target = pop.initial
        if target is None:
            raise ValueError("a site move needs the population's initial program")
        movable = _movable(pop, horizon)
        rngs = [rng.child("slot", i) for i in movable]
        starts, sites = [], []
        for j, i in enumerate(movable):
            p = pop.programs[i]
            latent = [c for c in p.trace if c.kind == "sample" and c.latent]
            if not latent:
                raise ValueError(
                    f"particle {i} has no latent site to move (its choices are all LM draws); "
                    "use SuffixMH or IndependentMH"
                )
            site = latent[int(rngs[j].child("site").categorical(np.ones(len(latent))))]
            values: dict[str, Any] = {c.address: c.value for c in p.trace if c.kind == "sample"}
            if self.proposal == "prior":
                values[site.address] = REDRAW  # drawn afresh from its own distribution in the replay
            else:
                if not isinstance(site.value, float):
                    raise ValueError(f"random-walk moves need continuous (float) values; site "
                                     f"{site.address!r} holds {type(site.value).__name__}")
                values[site.address] = site.value + self.scale * _std_normal(rngs[j].child("walk"))
            starts.append(replay(target, values))
            sites.append((site, len(latent), set(values), pop.trajectory(i).n_steps))
        limit = self.max_steps if horizon is None else horizon
        props = rollout(starts, rngs, [None] * len(movable), engine, limit, self.max_steps)
        accepted = np.zeros(pop.n, dtype=bool)
        structure = 0
        for j, i in enumerate(movable):
            site, n_sites, addresses, length = sites[j]
            new = props.programs[j]
            new_sites = [c for c in new.trace if c.kind == "sample" and c.latent]
            same = {c.address for c in new.trace if c.kind == "sample"} == addresses and len(new_sites) == n_sites
            if not same or new._pp.t != length or (horizon is not None and new.finished):
                structure += 1
                continue
            old = log_gamma(pop.trajectory(i))
            replayed = float(props.log_w[j])  # log γ(x'), but a prior-redrawn site adds log p − log q = 0
            if self.proposal == "prior":
                old -= site.log_p
            log_alpha = _ratio(replayed, old)
            if _accept(rngs[j].child("accept"), log_alpha):
                pop.programs[i], pop.history[i] = new, props.paths[j]  # type: ignore[index]
                accepted[i] = True
        return MoveInfo(accepted, moved=len(movable), rejected_structure=structure)


def _std_normal(rng: Rng) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(min(max(float(rng.uniform(1)[0]), 1e-300), 1 - 1e-16))


def _ratio(new: float, old: float) -> float:
    """log α before the min(1, ·): from a zero-weight state any proposal is accepted."""
    if old == -math.inf:
        return 0.0
    return new - old


MOVES = {"suffix": SuffixMH, "independent": IndependentMH, "site": SiteMH}


def as_move(move: Any, **options: Any) -> Any:
    """A move object from a name ("suffix", "independent", "site") and its options."""
    if not isinstance(move, str):
        if options:
            raise ValueError("move options are given with a move name, not with a move object")
        return move
    if move not in MOVES:
        raise ValueError(f"unknown move {move!r}; choose one of {', '.join(MOVES)}")
    return MOVES[move](**options)


# ---------------------------------------------------------------------- standalone chains
@dataclass
class MHState:
    """Every chain's current trace, as one population (chain c = particle c)."""

    population: Population
    t: int = 0
    failed: str | None = None
    n_draws: int = 0
    accepted: list[np.ndarray] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.t >= self.n_draws


def init(program: Program, n_chains: int, rng: Rng, engine: Engine, n_draws: int = 1,
         max_steps: int = 10_000) -> MHState:
    """Each chain starts from an independent run of the program (its own proposal)."""
    check_count("n_chains", n_chains)
    pop = Population.spawn(program, n_chains, store_history=True)
    rngs = [rng.child("init", "slot", c) for c in range(n_chains)]
    start = rollout(pop.programs, rngs, [None] * n_chains, engine, max_steps, max_steps)
    pop.programs, pop.history = start.programs, start.paths
    return MHState(pop, n_draws=check_count("n_draws", n_draws))


def step(rng: Rng, state: MHState, engine: Engine, move: Any = None) -> tuple[MHState, MoveInfo]:
    """One MH move of every chain."""
    move = move if move is not None else SuffixMH()
    info = state.population.move(move, engine, rng.child("draw", state.t), state.t)
    state.t += 1
    return state, info


def run(
    program: Program,
    n_chains: int = 4,
    n_draws: int = 100,
    *,
    seed: int | None = None,
    rng: Rng | None = None,
    move: Any = "suffix",
    rule: str = "uniform",
    scale: float = 1.0,
    burn_in: int = 0,
    thin: int = 1,
    max_steps: int = 10_000,
    engine: Engine | None = None,
    progress: bool = False,
) -> Chains:
    """`n_chains` MH chains of `n_draws` draws on the program's posterior (complete traces).

    `move`: "suffix" (with `rule`), "independent", "site" (with `scale` for random walks;
    `rule` picks "prior" or "random_walk" there), or a move object.
    """
    rng = as_rng(rng if rng is not None else seed)
    engine = engine or Engine()
    kernel = _named_move(move, rule, scale, max_steps)
    if burn_in < 0 or thin < 1:
        raise ValueError(f"burn_in must be >= 0 and thin >= 1, got {burn_in} and {thin}")
    total = burn_in + n_draws * thin
    state = init(program, n_chains, rng, engine, total, max_steps)
    config = {"n_chains": n_chains, "n_draws": n_draws, "move": move if isinstance(move, str) else type(move).__name__,
              "rule": rule, "burn_in": burn_in, "thin": thin}
    return run_chains(
        "mh", state, lambda s: step(rng, s, engine, kernel),
        lambda s: list(s.population.programs),
        lambda info: {"accepted": info.accepted.astype(float)},
        engine=engine, burn_in=burn_in, thin=thin, config=config, progress=progress,
    )


def _named_move(move: Any, rule: str, scale: float, max_steps: int) -> Any:
    if move == "suffix":
        return SuffixMH(rule=rule, max_steps=max_steps)
    if move == "independent":
        return IndependentMH(max_steps=max_steps)
    if move == "site":
        return SiteMH(proposal=rule if rule in ("prior", "random_walk") else "prior", scale=scale,
                      max_steps=max_steps)
    return as_move(move)
