"""State-space programs: `Program` and its primitives. See docs/concepts.md.

A program is a subclass of `Program` with `async def step(self)`: one call is one
transition. Every primitive comes down to one weight update plus, for random choices,
one recorded `Choice(address, value, log_p, log_q)`:

- `await sample(dist, proposal=None)` adds log p(x) − log q(x)  (q = p without a proposal)
- `await observe(dist, value)`        adds log p(value)
- `factor(logw)`                      adds logw
- `twist(logw)`                       adds logw now and subtracts it at the particle's
                                      next step (or when it finishes), so guidance does not
                                      change the final target
- `finish()`                          marks the particle done

Kernels resample, fork, score or replay particles between steps, never inside one.
"""

from __future__ import annotations

import copy
import inspect
import math
import types
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Any

import numpy as np

from .distributions import Distribution, Draw, as_distribution
from .rng import Rng

__all__ = [
    "REDRAW",
    "Program",
    "Choice",
    "Shared",
    "ProgramError",
    "WeightError",
    "replay",
]


class ProgramError(RuntimeError):
    """A program's step raised; the message names the particle, the step and the cause."""


class WeightError(ValueError):
    """A primitive produced a NaN (or otherwise invalid) log-weight."""


class _Redraw:
    """Marks a replayed address whose value is drawn afresh from the site's own distribution."""

    def __repr__(self) -> str:
        return "REDRAW"


REDRAW = _Redraw()


class Shared:
    """Mixin for objects that particles share instead of copying (LMs, reward models,
    immutable values such as contexts)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Shared:
        return self


_ATOMS = frozenset({int, float, bool, str, bytes, type(None), complex})  # immutable: never copied
# ... and what deepcopy itself returns as it is (functions, classes)
_KEPT = _ATOMS | {types.FunctionType, types.BuiltinFunctionType, type}


def _read_only(values: dict[str, Any]) -> dict[int, Any]:
    """A deepcopy memo that keeps read-only arrays (constants) as they are."""
    return {id(v): v for v in values.values() if isinstance(v, np.ndarray) and not v.flags.writeable}


def _flat_copy(values: dict[str, Any]) -> dict[str, Any] | None:
    """`copy.deepcopy(values)` when every value is a list of atoms (a program's history of
    steps and scores), each its own: the lists copied, without deepcopy's per-item dispatch.
    None for anything else (nesting, aliasing), which deepcopy handles."""
    ids = set()
    for v in values.values():
        if type(v) is not list or id(v) in ids or not all(type(x) in _ATOMS for x in v):
            return None
        ids.add(id(v))
    return {k: v.copy() for k, v in values.items()}


@dataclass(frozen=True)
class Choice:
    """One recorded random choice (or observation): enough to score and replay it."""

    address: str
    value: Any
    log_p: float
    log_q: float
    kind: str = "sample"  # "sample" or "observe"
    latent: bool = False  # drawn from an ordinary (non-LM) distribution: a site MH can move


def _sampled(address: str, value: Any, log_p: float, log_q: float, latent: bool) -> Choice:
    """`Choice(address, value, log_p, log_q, latent=latent)` without the frozen dataclass's
    per-field `__init__` (a third of the cost; this runs once per particle and token)."""
    c = object.__new__(Choice)
    c.__dict__.update(address=address, value=value, log_p=log_p, log_q=log_q, kind="sample", latent=latent)
    return c


class _TraceNode:
    """Persistent linked list of choices: clones share their common history for free."""

    __slots__ = ("choice", "parent")

    def __init__(self, choice: Choice, parent: _TraceNode | None) -> None:
        self.choice, self.parent = choice, parent


@dataclass
class _ParticleState:
    """ppllm's bookkeeping on a program instance (kept apart from the user's attributes)."""

    trace: _TraceNode | None = None
    n_choices: int = 0
    twist: float = 0.0
    finished: bool = False
    step_logw: float = 0.0
    t: int = 0
    counter: int = 0
    rng: Rng | None = None
    replay: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # A kernel's override of LM draws (tree rollouts): `await policy(dist, rng) -> Draw`.
    # Never copied by `clone`: a kernel installs it per particle and step.
    policy: Any = None

    def copied(self) -> _ParticleState:
        """The state a clone starts from: everything but the step's weight, the stream and
        the policy (those belong to a running step), with its own `extras`."""
        new = object.__new__(_ParticleState)
        d = dict(self.__dict__)
        d["step_logw"], d["rng"], d["policy"], d["extras"] = 0.0, None, None, dict(self.extras)
        new.__dict__.update(d)
        return new


_STATE = "_ppllm"


class Program:
    """Base class of ppllm programs. Subclass it and write `async def step(self)`."""

    async def step(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define `async def step(self)`")

    # ------------------------------------------------------------------ bookkeeping
    @property
    def _pp(self) -> _ParticleState:
        state = self.__dict__.get(_STATE)
        if state is None:
            state = _ParticleState()
            self.__dict__[_STATE] = state
        return state

    @property
    def finished(self) -> bool:
        return self._pp.finished

    @property
    def trace(self) -> list[Choice]:
        """Every choice made so far, oldest first."""
        out: list[Choice] = []
        node = self._pp.trace
        while node is not None:
            out.append(node.choice)
            node = node.parent
        return out[::-1]

    @property
    def rng(self) -> Rng:
        rng = self._pp.rng
        if rng is None:
            raise RuntimeError("this program is not being run by a kernel (no rng attached)")
        return rng

    def clone(self) -> Program:
        """An independent copy. `Shared` attributes (LMs, reward models) are not copied."""
        state = self._pp
        new = object.__new__(type(self))
        user = {k: v for k, v in self.__dict__.items() if k != _STATE}
        # Atoms and `Shared` objects (LMs, contexts) are taken as they are, without a trip
        # through deepcopy's dispatch (a clone per duplicate on every resampling); read-only
        # arrays (a token mask, a table) are constants: shared, not copied. One pass over
        # the attributes: the attribute order stays the original's.
        out: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for k, v in user.items():
            if type(v) in _KEPT or isinstance(v, Shared):
                out[k] = v
            else:
                out[k] = rest[k] = v
        try:
            copied = _flat_copy(rest) if rest else rest
            if copied is None:
                copied = copy.deepcopy(rest, _read_only(rest))
            out.update(copied)
            new.__dict__.update(out)
        except Exception as e:  # name the attribute: deepcopy's own error does not
            name = _uncopyable(user, _read_only(rest))
            raise TypeError(
                f"cannot copy {type(self).__name__}.{name} ({type(user[name]).__name__}: {e}); particles are "
                f"copied on resampling, so wrap what they share in ppllm.Shared (LMs and reward models are "
                f"already)" if name else f"cannot copy {type(self).__name__}: {e}"
            ) from e
        new.__dict__[_STATE] = state.copied()
        return new

    def _add(self, logw: float, what: str) -> None:
        logw = float(logw)
        if math.isnan(logw):
            raise WeightError(f"{what} gave a NaN log-weight at step {self._pp.t}")
        if logw == math.inf:
            raise WeightError(f"{what} gave a +inf log-weight at step {self._pp.t}")
        self._pp.step_logw += logw

    def _address(self, address: str | None) -> str:
        pp = self._pp
        pp.counter += 1
        return address if address is not None else f"{pp.t}/{pp.counter}"

    def _record(self, choice: Choice) -> None:
        pp = self._pp
        pp.trace = _TraceNode(choice, pp.trace)
        pp.n_choices += 1

    # ------------------------------------------------------------------ primitives
    async def sample(
        self, dist: Any, proposal: Any = None, *, address: str | None = None
    ) -> Any:
        """Draw x ~ q (= proposal, or dist itself) and add log p(x) − log q(x) to the weight."""
        pp = self._pp
        pp.counter += 1
        addr = address if address is not None else f"{pp.t}/{pp.counter}"
        d = dist if isinstance(dist, Distribution) else as_distribution(dist)
        if pp.replay is not None and addr in pp.replay:
            # Replaying a recorded trace: the value is given, so the weight is its density.
            value = pp.replay[addr]
            if value is REDRAW:  # a fresh draw from p itself (not from any proposal): weight += 0
                draw = await d.sample(self.rng)
                log_p = self._check_draw(draw, addr, d)
                self._record(Choice(addr, draw.value, log_p, log_p, latent=not d.is_lm))
                return draw.value
            log_p = await d.log_prob(value)
            self._check_log_p(log_p, addr, d)
            self._record(Choice(addr, value, log_p, 0.0, latent=not d.is_lm))
            self._add(log_p, f"sample at {addr!r} ({type(d).__name__}, replayed)")
            return value
        if proposal is None:
            draw = await (d.sample(self.rng) if pp.policy is None else self._draw(d))
            log_p = log_q = self._check_draw(draw, addr, d)
            logw = 0.0
        else:
            q = as_distribution(proposal)
            draw = await self._draw(q)
            log_q = self._check_draw(draw, addr, q)
            known = d.log_prob_from_draw(draw)
            log_p = known if known is not None else await d.log_prob(draw.value)
            self._check_log_p(log_p, addr, d)
            logw = log_p - log_q if log_p != -math.inf else -math.inf
            if logw != logw or logw == math.inf:  # NaN or +inf: the message is built only then
                self._add(logw, f"sample at {addr!r}")
        pp.trace = _TraceNode(_sampled(addr, draw.value, log_p, log_q, not d.is_lm), pp.trace)
        pp.n_choices += 1
        pp.step_logw += logw
        return draw.value

    async def _draw(self, dist: Distribution) -> Draw:
        """A draw from `dist`, or from the kernel's policy for LM draws when one is installed
        (its Draw reports log q under `dist`, so the weight is as if `dist` had drawn it)."""
        policy = self._pp.policy
        if policy is not None and getattr(dist, "is_lm", False):
            return await policy(dist, self.rng)
        return await dist.sample(self.rng)

    async def observe(self, dist: Any, value: Any, *, address: str | None = None) -> float:
        """Condition on `value`: add log p(value) to the weight and return it."""
        addr = self._address(address)
        d = as_distribution(dist)
        log_p = await d.log_prob(value)
        self._check_log_p(log_p, addr, d)
        self._record(Choice(addr, value, log_p, 0.0, kind="observe"))
        self._add(log_p, f"observe at {addr!r} ({type(d).__name__})")
        return log_p

    def factor(self, logw: float) -> None:
        """Multiply the weight by exp(logw): rewards, constraints (−inf) and likelihoods."""
        self._add(logw, "factor")

    def twist(self, logw: float) -> None:
        """Add a potential now that is taken out again at the particle's next step."""
        self._add(logw, "twist")
        self._pp.twist += float(logw)

    def finish(self) -> None:
        """Mark the particle done: kernels stop stepping it."""
        self._pp.finished = True

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_log_p(log_p: float, addr: str, d: Distribution) -> None:
        if log_p is None or math.isnan(log_p):
            raise WeightError(f"{type(d).__name__} returned a NaN log-probability at {addr!r}")

    @staticmethod
    def _check_draw(draw: Draw, addr: str, d: Distribution) -> float:
        lp = float(draw.log_prob)
        if math.isnan(lp):
            raise WeightError(f"{type(d).__name__} returned a NaN log-probability at {addr!r}")
        if lp == -math.inf:
            raise WeightError(
                f"{type(d).__name__} drew a value of probability zero at {addr!r}"
            )
        return lp


def _uncopyable(user: dict[str, Any], memo: dict[int, Any]) -> str | None:
    for k, v in user.items():
        try:
            copy.deepcopy(v, dict(memo))
        except Exception:
            return k
    return None


# ---------------------------------------------------------------------- stepping
async def run_step(program: Program, rng: Rng) -> float:
    """One transition of `program`: undo the last twist, run `step`, return the log-weight.

    The twist of a particle that finishes in this step is undone right away, so a
    finished particle's weight is its final target weight.
    """
    pp = program._pp
    pp.rng = rng
    pp.counter = 0
    pp.step_logw = -pp.twist
    pp.twist = 0.0
    pending = program.step()
    if type(pending) is not CoroutineType and not inspect.isawaitable(pending):
        raise TypeError(f"{type(program).__name__}.step must be a coroutine: write `async def step(self):`")
    await pending
    if pp.finished and pp.twist != 0.0:
        pp.step_logw -= pp.twist
        pp.twist = 0.0
    pp.t += 1
    pp.rng = None
    return pp.step_logw


def replay(program: Program, trace: list[Choice] | dict[str, Any]) -> Program:
    """A copy of `program` whose samples take the recorded values (weight = their density)."""
    values = {c.address: c.value for c in trace} if isinstance(trace, list) else dict(trace)
    p = program.clone()
    p._pp.replay = values
    return p
