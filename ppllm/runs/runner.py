"""The data-set runner: a recipe's prompts in rounds that share batched forwards, recorded as
they finish, resumable after a crash.

Work is a list of prompt-rounds (prompt i, round r), each a kernel run with its own seed
(fixed by [run] seed, the prompt and the round). A round of the runner takes up to `window`
prompt-rounds (`[run] window`, default 64) and runs them together: each in its own thread
with its own engine, all engines sharing backend calls (`engine.SharedRounds`), so one
batched forward serves the particles of many prompts. Answers depend only on each request,
so every prompt-round's result is what it would be run alone.

    out/run.json                       the manifest: which recipe and prompts (a fingerprint)
    out/recipe.toml                    the recipe as run (overrides applied, prompts inline)
    out/record.jsonl                   one line per finished prompt-round (append-only, fsynced)
    out/prompt-NNN/round-RRR.{json,jsonl} each prompt-round's figures and particles (atomic)
    out/prompt-NNN/posterior.nc        the prompt's rounds as the chains of one InferenceData
    out/prompt-NNN/chains.nc           MCMC chains, for kernels that produce them
    out/particles.jsonl                every particle of every prompt-round, in order
    out/summary.md, results.json, plots   (`runs.report`)

Rerunning the same command on the same directory skips what the record holds and ends with
the same directory as an uninterrupted run (timings aside); a directory made by another
recipe or other prompts is refused (or cleared with `overwrite=True`). Ctrl-C abandons the
prompt-rounds in flight, writes the summary of what is done and says how to resume.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, SharedRounds
from ..program import Program
from ..recipes import Recipe, RecipeError, build_lm, build_program, build_reward, dump_recipe
from ..recipes.validate import attribute_names
from ..results import Chains, Posterior, json_value, load_arviz, save_netcdf, to_arviz
from .record import (
    Record,
    atomic_path,
    atomic_write,
    clear,
    fingerprint,
    read_manifest,
    write_manifest,
)
from .report import same_answer, write_report

__all__ = ["Job", "prepare", "prompt_variables", "run_job", "run_prompt", "run_recipe", "run_seed"]

DEFAULT_WINDOW = 64


@dataclass(frozen=True)
class Job:
    """One prompt-round: a kernel run on prompt `prompt` with `seed`."""

    prompt: int
    round: int
    seed: int


def run_seed(recipe: Recipe, prompt_index: int, repeat: int) -> int:
    """The seed of one run: distinct for every (prompt, round), fixed by [run] seed."""
    return int(np.random.SeedSequence([recipe.seed, prompt_index, repeat]).generate_state(1)[0] >> 1)


def prompt_variables(recipe: Recipe, i: int) -> dict[str, Callable[[Any], Any]]:
    """The variables recorded for prompt i: [run] variables, plus `correct` given an answer."""
    out: dict[str, Callable[[Any], Any]] = {
        name: (lambda p, n=name: getattr(p, n, None)) for name in recipe.variables
    }
    answer = recipe.prompts[i].answer
    if answer is not None and "answer" in recipe.variables:
        out["correct"] = lambda p: None if getattr(p, "answer", None) is None else same_answer(p.answer, answer)
    return out


def run_job(recipe: Recipe, job: Job, lm: Any, reward: Any, engine: Engine | None = None,
            progress: bool = False) -> Posterior:
    """One prompt-round; MCMC chains come back as their pooled draws (chains in extras)."""
    params = inspect.signature(recipe.kernel_fn).parameters
    program = build_program(recipe, recipe.prompts[job.prompt], lm, reward)
    opts = dict(recipe.kernel_options)
    if "progress" in params:
        opts["progress"] = progress
    if engine is not None and "engine" in params:
        opts["engine"] = engine
    try:
        post = recipe.kernel_fn(program, seed=job.seed, **opts)
    except RecipeError:
        raise
    except ValueError as e:  # kernels reject bad option values (and combinations) this way
        raise RecipeError("kernel", f"{recipe.kernel_name}: {e}") from None
    if isinstance(post, Chains):
        chains = post
        post = chains.as_posterior()
        post.extras["chains"] = chains
    if not isinstance(post, Posterior):
        raise RecipeError("kernel.name", f"{recipe.kernel_name} returned {type(post).__name__}, not a Posterior")
    return post


def run_prompt(recipe: Recipe, i: int, lm: Any, reward: Any, progress: bool = False, bar: Any = None) -> list[Posterior]:
    """Every round of prompt i, one after the other (one Posterior each)."""
    out = []
    for r in range(recipe.repeats):
        out.append(run_job(recipe, Job(i, r, run_seed(recipe, i, r)), lm, reward, progress=progress))
        if bar is not None:
            bar.update(1)
    return out


# ---------------------------------------------------------------------- the directory
def recipe_text(recipe: Recipe) -> str:
    return dump_recipe(recipe)


def prepare(recipe: Recipe, out: Path, overwrite: bool = False, log: Callable[[str], None] | None = None) -> bool:
    """Make `out` ready; True when it continues an earlier run of the same recipe."""
    text = recipe_text(recipe)
    fp = fingerprint(_without_out(text))
    if out.exists() and not out.is_dir():
        raise RecipeError("--out", f"{out} is a file, not a results directory")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    manifest = read_manifest(out)
    if entries and not (manifest and manifest.get("fingerprint") == fp):
        if not overwrite:
            what = "another recipe or other prompts" if manifest else "files that are not a ppllm run"
            raise RecipeError(
                "--out", f"{out} holds results of {what} ({len(entries)} entries); choose another "
                "--out, or pass --overwrite to remove them"
            )
        removed = clear(out)
        if log is not None:
            log(f"--overwrite: removed {len(removed)} entries from {out}: {', '.join(removed[:8])}"
                + (" ..." if len(removed) > 8 else ""))
        entries = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "recipe.toml", text)
        write_manifest(out, {"fingerprint": fp, "kernel": recipe.kernel_name, "prompts": len(recipe.prompts),
                             "rounds": recipe.rounds, "format": 1})
    except OSError as e:
        raise RecipeError("--out", f"cannot write to {out}: {e.strerror or e}") from None
    return bool(entries)


def _without_out(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("out = "))


def _round_files(out: Path, job: Job) -> tuple[Path, Path, Path]:
    pdir = out / f"prompt-{job.prompt:03d}"
    stem = f"round-{job.round:03d}"
    return pdir / f"{stem}.json", pdir / f"{stem}.jsonl", pdir / f"{stem}.chains.nc"


def _round_summary(post: Posterior, job: Job) -> dict[str, Any]:
    """Everything of a prompt-round's Posterior but its particles (those are in the .jsonl)."""
    return {
        "round": job.round, "seed": job.seed, "log_Z": json_value(post.log_Z), "kernel": post.kernel,
        "config": json.loads(json.dumps(post.config, default=str)), "message": post.message,
        "budget": {k: json_value(v) for k, v in post.budget.items()},
        "steps": [[s.t, json_value(s.ess), bool(s.resampled), json_value(s.log_Z_increment), s.n_live,
                   {k: json_value(v) for k, v in s.extra.items()}, np.asarray(s.ancestors).tolist()]
                  for s in post.steps],
        "ancestry": [np.asarray(a).tolist() for a in post.ancestry],
        "selected_answer": json_value(post.extras["answer"]) if "answer" in post.extras else None,
        "selects": "answer" in post.extras,
        # rollout groups (treepo, latr): each leaf's reward, advantage, origin and tree position
        **({"group": json.loads(json.dumps(post.extras["group"], default=json_value))} if "group" in post.extras else {}),
    }


def _read_round(summary_path: Path, particles_path: Path) -> tuple[Posterior, dict[str, Any]]:
    """A prompt-round's Posterior back from its files (particles as `ParticleRecord`s)."""
    from ..results import ParticleRecord, StepInfo, Steps

    meta = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in particles_path.read_text().splitlines()]
    skip = {"prompt", "chain", "index", "text", "log_weight", "weight"}
    particles = [ParticleRecord(r["text"], {k: v for k, v in r.items() if k not in skip}) for r in rows]
    steps = [StepInfo(t, float(e), res, np.asarray(a, dtype=np.int64), float(inc), live, extra)
             for t, e, res, inc, live, extra, a in meta["steps"]]
    post = Posterior(particles, np.array([float(r["log_weight"]) for r in rows]), float(meta["log_Z"]),
                     ancestry=[np.asarray(a, dtype=np.int64) for a in meta["ancestry"]], budget=meta["budget"],
                     kernel=meta["kernel"], config=meta["config"], message=meta["message"],
                     diagnostics=Steps(steps) if steps else None)
    return post, meta


def preflight(recipe: Recipe, prompts: list[int], lm: Any, reward: Any) -> None:
    """Build every pending prompt's program before any runs: a prompt the tokenizer cannot
    encode, one too long for the model or arguments the program refuses fail here, in one
    line naming the prompt, not after earlier prompts have run. (Building is cheap: no
    forward pass.)"""
    for i in prompts:
        build_program(recipe, recipe.prompts[i], lm, reward)


def check_variables(recipe: Recipe, post: Posterior) -> None:
    """A [run] variable that no particle has is a typo, not a column of nulls."""
    programs = [p for p in post.particles if isinstance(p, Program)]
    if not programs:
        return
    for name in recipe.variables:
        if not any(hasattr(p, name) for p in programs):
            known = ", ".join(attribute_names(programs[0])) or "none"
            raise RecipeError("run.variables", f"{name!r} is not an attribute of the {type(programs[0]).__name__} "
                              f"particles (they have: {known})")


@dataclass
class RoundFiles:
    """Everything one prompt-round writes, computed where it ran (a Ray actor or this process)
    and written by the one writer (`write_round`)."""

    job: Job
    particles: str  # round-RRR.jsonl
    summary: str  # round-RRR.json
    chains_nc: bytes | None  # round-RRR.chains.nc
    tree_png: bytes | None  # prompt-NNN/tree.png (round 0 of tree kernels)
    row: dict[str, Any]  # its record line


def round_files(recipe: Recipe, job: Job, post: Posterior) -> RoundFiles:
    """A prompt-round's files and record line, from its Posterior (no file in the results
    directory is touched)."""
    check_variables(recipe, post)
    prompt = recipe.prompts[job.prompt]
    variables = prompt_variables(recipe, job.prompt)
    rows = [json.dumps({"prompt": job.prompt, "chain": job.round, **row}) + "\n" for row in post.records(variables)]
    chains_nc = tree_png = None
    chains = post.extras.get("chains")
    state = post.extras.get("state")
    if isinstance(chains, Chains):
        draws = Chains([[_json_ready(x) for x in c] for c in chains.samples], chains.stats, chains.kernel,
                       chains.config)
        kind = variables if draws.samples and isinstance(chains.samples[0][0], Program) else None
        chains_nc = _written(lambda path: save_netcdf(chains.to_arviz(kind) if kind else draws.to_arviz(), path), ".nc")
    if job.round == 0 and getattr(state, "tree", None) is not None:
        from ..results.plots import plot_tree

        tree_png = _written(lambda path: plot_tree(state.tree, path), ".png")
    row = {
        "prompt": job.prompt, "id": prompt.id, "round": job.round, "seed": job.seed, "kernel": recipe.kernel_name,
        "answer": json_value(post.extras.get("answer", _weighted_answer(post))),
        "reference": prompt.answer, "log_Z": json_value(post.log_Z), "ess": json_value(post.ess), "n": post.n,
        "budget": {k: json_value(v) for k, v in post.budget.items() if k != "seconds"},
        "seconds": round(float(post.budget.get("seconds", 0.0)), 3), "message": post.message,
    }
    return RoundFiles(job, "".join(rows), json.dumps(_round_summary(post, job)) + "\n", chains_nc, tree_png, row)


def _written(write: Callable[[Path], Any], suffix: str) -> bytes:
    """The bytes `write(path)` puts in a file (netCDF and PNG writers want a path)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"file{suffix}"
        write(path)
        return path.read_bytes()


def write_round(out: Path, files: RoundFiles, record: Record) -> dict[str, Any]:
    """Write one prompt-round's files atomically, then its record line (the commit point)."""
    summary, jsonl, chains_nc = _round_files(out, files.job)
    atomic_write(jsonl, files.particles)
    atomic_write(summary, files.summary)
    if files.chains_nc is not None:
        atomic_write(chains_nc, files.chains_nc)
    if files.tree_png is not None:
        atomic_write(summary.parent / "tree.png", files.tree_png)
    record.append(files.row)
    return files.row


def commit(recipe: Recipe, out: Path, job: Job, post: Posterior, record: Record) -> dict[str, Any]:
    """Write one prompt-round's files atomically, then its record line."""
    return write_round(out, round_files(recipe, job, post), record)


def _weighted_answer(post: Posterior) -> Any:
    if not post.ok:
        return None
    dist = post.distribution(lambda p: getattr(p, "answer", None) if not isinstance(p, dict) else None)
    return next((a for a in dist if a is not None), None)


def _json_ready(draw: Any) -> Any:
    return {k: json_value(v) for k, v in draw.items()} if isinstance(draw, dict) else draw


def assemble(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Each prompt's posterior.nc (and chains.nc) from its round files; particles.jsonl.

    Returns the InferenceData written for each prompt directory, by directory name.
    """
    lines, written = [], {}
    for i, prompt in enumerate(recipe.prompts):
        pdir = out / f"prompt-{i:03d}"
        present = [r for r in range(recipe.rounds) if (pdir / f"round-{r:03d}.json").is_file()]
        if not present:
            continue
        posts, selected = [], []
        for r in present:
            post, meta = _read_round(pdir / f"round-{r:03d}.json", pdir / f"round-{r:03d}.jsonl")
            posts.append(post)
            if meta["selects"]:
                selected.append(meta["selected_answer"])
        names = list(prompt_variables(recipe, i))
        variables = {n: (lambda p, n=n: getattr(p, n, None)) for n in names}
        idata = to_arviz(posts, variables, seed=recipe.seed)
        attrs = idata["posterior"].attrs
        attrs.update(prompt=prompt.label(), prompt_id=prompt.id)
        if prompt.answer is not None:
            attrs["reference_answer"] = json.dumps(prompt.answer)
        if len(selected) == len(posts):
            attrs["selected_answers"] = json.dumps(selected)
        with atomic_path(pdir / "posterior.nc") as tmp:
            save_netcdf(idata, tmp)
        written[pdir.name] = idata
        chain_files = [pdir / f"round-{r:03d}.chains.nc" for r in present]
        if chain_files and all(f.is_file() for f in chain_files):
            import xarray as xr

            parts = [load_arviz(str(f)) for f in chain_files]
            groups = {g: xr.concat([p[g] for p in parts], dim="chain").assign_coords(
                chain=np.arange(sum(p[g].sizes["chain"] for p in parts))) for g in parts[0].groups()}
            import arviz as az

            with atomic_path(pdir / "chains.nc") as tmp:
                save_netcdf(az.InferenceData(**groups), tmp)
        for r in present:
            lines.append((pdir / f"round-{r:03d}.jsonl").read_text())
    atomic_write(out / "particles.jsonl", "".join(lines))
    return written


# ---------------------------------------------------------------------- running
def run_recipe(
    recipe: Recipe, out: Path, progress: bool = True, log: Callable[[str], None] | None = None,
    overwrite: bool = False, window: int | None = None, ray: Any = None,
) -> dict[str, Any]:
    """Run every prompt-round not yet recorded in `out`, then write the results; the headline.

    `ray` (a `ray_runner.RayOptions`) runs the prompt-rounds on Ray actors instead of in this
    process; the results directory and record are the same.
    """
    if not progress:
        _quiet_transformers()
    out = Path(out)
    lm = reward = None
    if ray is None:
        lm = build_lm(recipe.model)
        reward = build_reward(recipe.reward, lm)
    pools: list[Any] = []
    try:
        result = _run(recipe, out, progress, log, overwrite, window, lm, reward, ray, pools)
        if pools:
            result["ray"] = pools[0].summary()
        return result
    finally:
        for pool in pools:
            pool.close()


def _run(recipe: Recipe, out: Path, progress: bool, log: Callable[[str], None] | None, overwrite: bool,
         window: int | None, lm: Any, reward: Any, ray: Any, pools: list[Any]) -> dict[str, Any]:
    resumed = prepare(recipe, out, overwrite, log)
    record = Record(out)
    record.repair()
    done = {(r["prompt"], r["round"]) for r in record.read()}
    if recipe.allocation:
        jobs, total = [], recipe.rounds * min(recipe.allocation["per_round"], len(recipe.prompts))
        pending = list(range(len(recipe.prompts)))
    else:
        jobs = [Job(i, r, run_seed(recipe, i, r)) for r in range(recipe.repeats) for i in range(len(recipe.prompts))
                if (i, r) not in done]
        total = len(recipe.prompts) * recipe.repeats
        pending = sorted({j.prompt for j in jobs})
    pool = None
    if ray is not None and (jobs or recipe.allocation):  # actors only when there is work for them
        from .ray_runner import RayPool

        pool = RayPool(recipe, ray, log)
        pools.append(pool)
    if pool is not None:
        pool.preflight(pending)
    elif lm is not None:
        preflight(recipe, pending, lm, reward)
    if log is not None:
        start_note = f", resuming: {len(done)} of {total} prompt-rounds already done" if resumed else ""
        where = f" on {pool.describe()}" if pool is not None else ""
        log(f"{recipe.kernel_name} on {len(recipe.prompts)} prompt(s) × {recipe.repeats}{where} → {out}{start_note}")
    width = window or recipe.window or DEFAULT_WINDOW
    bar = _bar(progress and total > 1, total, len(done), recipe.kernel_name)
    t0 = time.perf_counter()
    committer = Committer(out, record, bar, t0)
    if pool is not None:
        def run_jobs(batch: list[Job]) -> None:
            pool.run(batch, committer)
    else:
        def run_jobs(batch: list[Job]) -> None:
            for lo in range(0, len(batch), width):
                _run_round(recipe, batch[lo : lo + width], lm, reward, committer, progress and total == 1)
    interrupted = False
    try:
        if recipe.allocation:
            run_allocated(recipe, out, done, run_jobs)
        if jobs:
            run_jobs(jobs)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    finished = len(Record(out).read())
    sampled = time.perf_counter()
    if log is not None and progress:
        log("writing the results (posteriors, plots, summary) ...")
    written = assemble(recipe, out)
    result = write_report(out, progress=progress, max_plots=recipe.plots, loaded=written,
                          estimator=recipe.estimator)
    now = time.perf_counter()
    # where the time went: the prompt-rounds themselves vs assembling files and plots
    result.update(prompt_rounds=finished, total_prompt_rounds=total, interrupted=interrupted,
                  wall_seconds=now - t0, sampling_seconds=sampled - t0, writing_seconds=now - sampled)
    if interrupted:
        raise Interrupted(finished, total, result)
    return result


class Committer:
    """The one writer: each prompt-round's files and record line, and the progress bar."""

    def __init__(self, out: Path, record: Record, bar: Any, t0: float) -> None:
        self.out, self.record, self.bar, self.t0 = out, record, bar, t0
        self.tokens = 0

    def __call__(self, files: RoundFiles) -> dict[str, Any]:
        row = write_round(self.out, files, self.record)
        self.tokens += int(row["budget"].get("tokens", 0) or 0)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.t0, 1e-9):.0f}")
        return row


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: what was done is recorded and summarised; the same command resumes."""

    def __init__(self, done: int, total: int, result: dict[str, Any]) -> None:
        super().__init__(f"interrupted after {done} of {total} prompt-rounds; rerun the same command to resume")
        self.result = result


ALLOCATION_LOG = "allocation.jsonl"


def run_allocated(recipe: Recipe, out: Path, done: set[tuple[int, int]],
                  run_jobs: Callable[[list[Job]], None]) -> None:
    """Rounds chosen by the recipe's allocator; its state after each round goes to
    allocation.jsonl (fsynced), so a resumed run replays the same decisions.

    Round r: the allocator picks `per_round` prompts from its state with the stream
    (seed, "allocate", r); each runs one prompt-round (kernel and seed as usual); each
    particle's reward is whether its answer is correct; the allocator is updated with the
    picked prompts' rewards. A round cut by a kill is picked again identically (same state,
    same stream) and only its missing prompt-rounds run.
    """
    from ..rng import SeededRng
    from .allocators import make_allocator

    spec = recipe.allocation
    assert spec is not None
    alloc = make_allocator(spec["name"], **spec["options"])
    log_path = out / ALLOCATION_LOG
    rows = []
    for line in log_path.read_text().splitlines() if log_path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: that round is redone
    rows = [r for k, r in enumerate(rows) if r["round"] == k and all((i, k) in done for i in r["picked"])]
    if log_path.is_file():
        atomic_write(log_path, "".join(json.dumps(r) + "\n" for r in rows))
    state = rows[-1]["state"] if rows else alloc.init(len(recipe.prompts))
    rng = SeededRng(recipe.seed).child("allocate")
    for r in range(len(rows), spec["rounds"]):
        picked = alloc.allocate(state, spec["per_round"], rng.child("round", r))
        jobs = [Job(i, r, run_seed(recipe, i, r)) for i in picked if (i, r) not in done]
        if jobs:
            run_jobs(jobs)
        outcomes = {i: _rewards(out, Job(i, r, 0)) for i in picked}
        state = alloc.update(state, outcomes)
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"round": r, "picked": picked, "state": state}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _rewards(out: Path, job: Job) -> list[float]:
    """The prompt-round's particles' rewards: 1 for a correct answer, 0 otherwise."""
    _, particles, _ = _round_files(out, job)
    rows = [json.loads(line) for line in particles.read_text().splitlines()]
    return [1.0 if row.get("correct") else 0.0 for row in rows]


def _run_round(recipe: Recipe, jobs: list[Job], lm: Any, reward: Any, commit_files: Callable[[RoundFiles], Any],
               progress: bool) -> None:
    """The round's prompt-rounds together; each recorded as soon as all before it are."""
    shared = SharedRounds()
    ready: dict[int, Posterior] = {}
    next_commit = [0]

    def job_fn(job: Job) -> Callable[[], Posterior]:
        return lambda: run_job(recipe, job, lm, reward, Engine(shared=shared), progress)

    def on_done(k: int, result: Any) -> None:
        if isinstance(result, BaseException):
            raise result
        ready[k] = result
        while next_commit[0] in ready:  # commit in order: the record is the same whatever finishes first
            commit_files(round_files(recipe, jobs[next_commit[0]], ready.pop(next_commit[0])))
            next_commit[0] += 1

    shared.run([job_fn(j) for j in jobs], on_done)


def run_jobs_here(recipe: Recipe, jobs: list[Job], lm: Any, reward: Any) -> list[RoundFiles]:
    """Prompt-rounds run together in this process (one batched forward for all), their files
    returned instead of written: what a Ray actor does with its share."""
    got: list[RoundFiles] = []
    _run_round(recipe, jobs, lm, reward, got.append, False)
    return got


def _quiet_transformers() -> None:
    """No weight-loading bars from transformers when the user asked for quiet output."""
    if "transformers" in sys.modules or importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _bar(enabled: bool, total: int, initial: int, name: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"{name} prompt-rounds", unit="run", file=sys.stderr)
