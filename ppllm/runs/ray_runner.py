"""Data-set runs on a Ray cluster: prompt-rounds on actors, one writer, the same results directory.

    ppllm run RECIPE --ray [ADDRESS] [--actors N] [--in-flight K]
    run_recipe(recipe, out, ray=RayOptions(address=None, actors=2))

Each actor (`Worker`) loads the recipe's LM (an in-process model with its KV cache, or a
client of a served LM) and reward model once, then runs the prompt-rounds it is handed
together, one batched forward for all (`runner.run_jobs_here`), and sends back their files
(`runner.RoundFiles`), never Python objects that hold a model. This process stays the only
writer: it commits prompt-rounds strictly in job order, so the record is line for line the
one a single-process run writes (timings aside), and the allocator of `[allocation]` decides
each round here, centrally.

- **Backpressure**: each actor holds at most `in_flight` calls of `per_call` prompt-rounds
  (one running, the next queued so that it never waits for this process).
- **Faults**: an actor that dies (its process killed, its node lost) fails the calls it
  held; they go back to the queue and run on another actor, and a replacement actor is
  started (at most `restarts` in a run). Nothing is committed twice: a prompt-round is
  recorded only when its files arrive, and the record is the commit point, so a driver
  killed and restarted resumes from it like any run.
- A user's mistake inside a prompt-round (a `RecipeError`, a `ProgramError`) is not a fault:
  it stops the run with the same one-line error as a single-process run.

Without `address`, a local cluster is started on this machine (127.0.0.1) and shut down at
the end; with one, the run joins that cluster and only disconnects. Every node needs ppllm
(and the recipe's program module) installed, and the recipe's model must load on it; the
recipe travels as text with its prompts inline, so files beside the recipe are not needed
on the nodes.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..recipes import Recipe, dump_recipe
from .runner import Job, RoundFiles

__all__ = ["RayOptions", "RayPool", "Worker", "ray_missing"]

INSTALL_HINT = "Ray is not installed: pip install 'ppllm[ray]' (or pip install ray)"


def ray_missing() -> str | None:
    """None when Ray can be imported, else how to install it."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    return None


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: cluster address (None: a local one), actors, calls and threads."""

    address: str | None = None
    actors: int = 2
    per_call: int = 8  # prompt-rounds one call runs together (one batched forward for all)
    in_flight: int = 2  # calls an actor holds at once
    threads: int = 1  # torch threads per actor
    cpus: float = 1.0  # CPUs Ray reserves per actor
    gpus: float = 0.0  # GPUs Ray reserves per actor
    restarts: int | None = None  # replacement actors in a run (default: `actors`)
    # called with the actors' process ids once their models have loaded (monitoring, tests)
    on_start: Callable[[list[int]], None] | None = None

    def __post_init__(self) -> None:
        for name in ("actors", "per_call", "in_flight", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ray {name} must be a positive integer, got {v!r}")


class Worker:
    """A Ray actor's body: the recipe's LM and reward, loaded once; prompt-rounds on demand."""

    def __init__(self, recipe_text: str, threads: int, base: str | None = None) -> None:
        self.error: BaseException | None = None
        try:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            import torch

            torch.set_num_threads(threads)
            from pathlib import Path

            from ..recipes import build_lm, build_reward, load_recipe
            from .runner import _quiet_transformers

            _quiet_transformers()
            # relative file paths in the recipe (a program.py) resolve beside the recipe, as here
            where = Path(base) / "recipe.toml" if base else None
            self.recipe = load_recipe(where, data=tomllib.loads(recipe_text))
            self.lm = build_lm(self.recipe.model)
            self.reward = build_reward(self.recipe.reward, self.lm)
        except Exception as e:  # noqa: BLE001 - kept, raised by the first call (an actor must not die of it)
            self.error = e

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def pid(self) -> int:
        self._check()
        return os.getpid()

    def preflight(self, prompts: list[int]) -> None:
        from .runner import preflight

        self._check()
        preflight(self.recipe, prompts, self.lm, self.reward)

    def run(self, jobs: list[tuple[int, int, int]]) -> list[RoundFiles]:
        from .runner import run_jobs_here

        self._check()
        return run_jobs_here(self.recipe, [Job(*j) for j in jobs], self.lm, self.reward)


def _fault_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the actor is gone", not "the work failed"."""
    from ray import exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
             "NodeDiedError", "OwnerDiedError", "ObjectLostError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class RayPool:
    """The actors of one run and the queue of prompt-rounds handed to them."""

    def __init__(self, recipe: Recipe, options: RayOptions, log: Callable[[str], None] | None = None) -> None:
        hint = ray_missing()
        if hint:
            raise RuntimeError(hint)
        import ray

        self.ray, self.options, self.log = ray, options, log
        self.text = dump_recipe(recipe)
        self.base = str(recipe.path.parent.resolve()) if getattr(recipe, "path", None) is not None else None
        self.started = self.connected = False
        if ray.is_initialized():
            if options.address and self.log is not None:
                self.log(f"already connected to a Ray cluster: using it, not {options.address}")
        else:
            quiet = {} if os.environ.get("PPLLM_VERBOSE") else {"logging_level": logging.ERROR, "log_to_driver": False}
            if options.address:
                ray.init(address=options.address, **quiet)
                self.connected = True
            else:
                cpus = max(os.cpu_count() or 1, int(options.actors * options.cpus))
                ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                         _node_ip_address="127.0.0.1", **quiet)
                self.started = True
        self.remote_worker = ray.remote(num_cpus=options.cpus, num_gpus=options.gpus, max_restarts=0,
                                        max_task_retries=0)(Worker)
        self.restarts_left = options.actors if options.restarts is None else options.restarts
        self.actors = [self._start() for _ in range(options.actors)]
        self.pids = self._get_all([a.pid.remote() for a in self.actors])  # waits until every model has loaded
        self.retried = 0
        if options.on_start is not None:
            options.on_start(list(self.pids))

    def _get_all(self, refs: list[Any]) -> list[Any]:
        try:
            return [self._get(r) for r in refs]
        except BaseException:
            self.close()
            raise

    def summary(self) -> dict[str, Any]:
        return {"actors": self.options.actors, "address": self.options.address or "local",
                "retried_calls": self.retried, "replacements": (self.options.actors if self.options.restarts is None
                                                                else self.options.restarts) - self.restarts_left}

    def _start(self) -> Any:
        return self.remote_worker.remote(self.text, self.options.threads, self.base)

    def describe(self) -> str:
        where = self.options.address or "a local Ray cluster"
        return f"{len(self.actors)} Ray actors ({where})"

    def preflight(self, prompts: list[int]) -> None:
        """Build every pending prompt's program on one actor (no model work), before any runs."""
        self._call_any(lambda a: a.preflight.remote(prompts))

    def _call_any(self, make: Callable[[Any], Any]) -> Any:
        while True:
            actor = self.actors[0]
            try:
                return self._get(make(actor))
            except _fault_types():
                self._replace(actor)

    def _get(self, ref: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as e:  # the work raised: the user's error, as if it ran here
            original = getattr(e, "cause", None)
            if isinstance(original, BaseException) and not isinstance(original, _fault_types()):
                raise original from None
            raise

    def _replace(self, actor: Any) -> None:
        if actor in self.actors:
            self.actors.remove(actor)
        try:
            self.ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if self.restarts_left > 0:
            self.restarts_left -= 1
            new = self._start()
            self.actors.append(new)
            if self.log is not None:
                self.log("a Ray actor died; its prompt-rounds run again on the others (a replacement started)")
        if not self.actors:
            raise RuntimeError("every Ray actor died and no replacements are left (RayOptions.restarts)")

    def run(self, jobs: list[Job], commit: Callable[[RoundFiles], Any]) -> None:
        """Run `jobs` on the actors; commit each one's files in job order as they come back."""
        per = self.options.per_call
        chunks = [jobs[lo : lo + per] for lo in range(0, len(jobs), per)]
        queue: deque[int] = deque(range(len(chunks)))
        flying: dict[Any, tuple[Any, int]] = {}  # ref -> (actor, chunk)
        arrived: dict[int, list[RoundFiles]] = {}
        next_chunk = 0
        faults = _fault_types()
        try:
            while next_chunk < len(chunks):
                # top every actor up to `in_flight` calls, but never run far ahead of the oldest
                # uncommitted call: what arrives early waits in memory, not in the record
                ahead = 2 * len(self.actors) * self.options.in_flight
                for actor in list(self.actors):
                    held = sum(1 for a, _ in flying.values() if a is actor)
                    while queue and held < self.options.in_flight and queue[0] - next_chunk < ahead:
                        k = queue.popleft()
                        ref = actor.run.remote([(j.prompt, j.round, j.seed) for j in chunks[k]])
                        flying[ref] = (actor, k)
                        held += 1
                ready, _ = self.ray.wait(list(flying), num_returns=1)
                for ref in ready:
                    actor, k = flying.pop(ref)
                    try:
                        arrived[k] = self._get(ref)
                    except faults:
                        self.retried += 1
                        lost = [k]
                        for other, (a, c) in list(flying.items()):  # its queued calls are lost too
                            if a is actor:
                                del flying[other]
                                lost.append(c)
                        queue.extendleft(sorted(lost, reverse=True))  # first in line, in job order
                        self._replace(actor)
                while next_chunk in arrived:
                    for files in arrived.pop(next_chunk):
                        commit(files)
                    next_chunk += 1
        finally:
            for ref in flying:  # interrupted: what is still queued need not run
                try:
                    self.ray.cancel(ref)
                except Exception:  # noqa: BLE001 - finished or gone meanwhile
                    pass

    def close(self) -> None:
        """Stop the actors; shut down the local cluster if this run started it."""
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
        if self.started or self.connected:  # a cluster this run started is shut down, one it joined left
            self.ray.shutdown()
