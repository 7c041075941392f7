"""Running a recipe over its prompts and writing the results directory.

    out/recipe.toml            the recipe as run (overrides applied, prompts inline)
    out/particles.jsonl        one line per particle of every run
    out/prompt-NNN/posterior.nc  every run of prompt NNN as the chains of one InferenceData
    out/prompt-NNN/chains.nc   MCMC chains, for kernels that produce them
    out/summary.md, results.json and plots   (`runs.report`)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..program import Program
from ..recipes import Recipe, RecipeError, build_lm, build_program, build_reward, dump_recipe
from ..results import Chains, Posterior, json_value, to_arviz
from .report import same_answer, write_report

__all__ = ["prompt_variables", "run_prompt", "run_recipe", "run_seed"]


def run_seed(recipe: Recipe, prompt_index: int, repeat: int) -> int:
    """The seed of one run: distinct for every (prompt, repeat), fixed by [run] seed."""
    return int(np.random.SeedSequence([recipe.seed, prompt_index, repeat]).generate_state(1)[0] >> 1)


def run_prompt(recipe: Recipe, i: int, lm: Any, reward: Any, progress: bool = False, bar: Any = None) -> list[Posterior]:
    """The `repeats` independent runs of prompt i (one Posterior each)."""
    import inspect

    takes_progress = "progress" in inspect.signature(recipe.kernel_fn).parameters
    runs = []
    for r in range(recipe.repeats):
        program = build_program(recipe, recipe.prompts[i], lm, reward)
        opts = dict(recipe.kernel_options)
        if takes_progress:
            opts["progress"] = progress
        try:
            post = recipe.kernel_fn(program, seed=run_seed(recipe, i, r), **opts)
        except ValueError as e:  # kernels reject bad option values (and combinations) this way
            raise RecipeError("kernel", f"{recipe.kernel_name}: {e}") from None
        if isinstance(post, Chains):  # MCMC: the pooled draws as the posterior, the chains kept
            chains = post
            post = chains.as_posterior()
            post.extras["chains"] = chains
        if not isinstance(post, Posterior):
            raise RecipeError("kernel.name", f"{recipe.kernel_name} returned {type(post).__name__}, not a Posterior")
        runs.append(post)
        if bar is not None:
            bar.update(1)
    return runs


def prompt_variables(recipe: Recipe, i: int) -> dict[str, Callable[[Any], Any]]:
    """The variables recorded for prompt i: [run] variables, plus `correct` given an answer."""
    out: dict[str, Callable[[Any], Any]] = {
        name: (lambda p, n=name: getattr(p, n, None)) for name in recipe.variables
    }
    answer = recipe.prompts[i].answer
    if answer is not None and "answer" in recipe.variables:
        out["correct"] = lambda p: None if getattr(p, "answer", None) is None else same_answer(p.answer, answer)
    return out


def run_recipe(
    recipe: Recipe, out: Path, progress: bool = True, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every prompt (× repeats) and write the results directory; return the headline."""
    if not progress:
        _quiet_transformers()
    lm = build_lm(recipe.model)
    reward = build_reward(recipe.reward, lm)
    if log is not None:
        log(f"{recipe.kernel_name} on {len(recipe.prompts)} prompt(s) × {recipe.repeats} → {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.toml").write_text(dump_recipe(recipe))
    total = len(recipe.prompts) * recipe.repeats
    bar = _bar(progress, total, recipe.kernel_name)
    jsonl = (out / "particles.jsonl").open("w")
    try:
        for i, prompt in enumerate(recipe.prompts):
            variables = prompt_variables(recipe, i)
            runs = run_prompt(recipe, i, lm, reward, progress=progress and total == 1, bar=bar)
            for r, post in enumerate(runs):
                for row in post.records(variables):
                    jsonl.write(json.dumps({"prompt": i, "chain": r, **row}) + "\n")
            pdir = out / f"prompt-{i:03d}"
            pdir.mkdir(exist_ok=True)
            idata = to_arviz(runs, variables, seed=recipe.seed)
            idata["posterior"].attrs["prompt"] = prompt.label()
            idata["posterior"].attrs["prompt_id"] = prompt.id
            if prompt.answer is not None:
                idata["posterior"].attrs["reference_answer"] = json.dumps(prompt.answer)
            if all("answer" in p.extras for p in runs):
                selected = [json_value(p.extras["answer"]) for p in runs]
                idata["posterior"].attrs["selected_answers"] = json.dumps(selected)
            idata.to_netcdf(str(pdir / "posterior.nc"))
            state = runs[0].extras.get("state")
            if getattr(state, "tree", None) is not None:  # tree kernels: a picture of run 0's tree
                from ..results.plots import plot_tree

                plot_tree(state.tree, pdir / "tree.png")
            chains = chains_of(runs)
            if chains is not None:
                chain_vars = variables if chains.samples and isinstance(chains.samples[0][0], Program) else None
                chains.to_arviz(chain_vars).to_netcdf(str(pdir / "chains.nc"))
    finally:
        jsonl.close()
        if bar is not None:
            bar.close()
    return write_report(out)


def chains_of(runs: list[Posterior]) -> Chains | None:
    """The MCMC chains of the repeats side by side (a kernel's `extras["chains"]`), or None."""
    given = [p.extras.get("chains") for p in runs]
    if not given or not all(isinstance(c, Chains) for c in given):
        return None
    return Chains(
        samples=[[_json_ready(x) for x in s] for c in given for s in c.samples],
        stats={k: [row for c in given for row in np.asarray(c.stats[k]).tolist()] for k in given[0].stats},
        kernel=given[0].kernel,
        config=given[0].config,
    )


def _json_ready(draw: Any) -> Any:
    if isinstance(draw, dict):
        return {k: json_value(v) for k, v in draw.items()}
    return draw


def _quiet_transformers() -> None:
    """No weight-loading bars from transformers when the user asked for quiet output."""
    if "transformers" in sys.modules or importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name} runs", unit="run", file=sys.stderr)
