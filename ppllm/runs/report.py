"""The report of a results directory: summary.md, results.json and plots, from its files alone.

`ppllm report DIR` regenerates them; `ppllm run` writes them at the end of a run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..recipes import RecipeError
from .record import atomic_write

__all__ = ["same_answer", "write_report"]


def same_answer(a: Any, b: Any) -> bool:
    """Answers compare as stripped strings (a recorded 104 equals a reference "104")."""
    return str(a).strip() == str(b).strip()


PLOTTED_PROMPTS = 16  # per-prompt plots are drawn for this many prompts by default


def write_report(out: str | Path, progress: bool = False, max_plots: int | None = PLOTTED_PROMPTS,
                 loaded: dict[str, Any] | None = None, estimator: str | None = None) -> dict[str, Any]:
    """summary.md, results.json and the plots of a results directory, from its files alone.

    Per-prompt plots (diagnostics, genealogy, answers) are drawn for the first `max_plots`
    prompts (None: all); the summary says when some were left out.
    """
    from ..results import load_arviz, posteriors_from_arviz
    from ..results.plots import plot_answers, plot_diagnostics, plot_genealogy

    out = Path(out)
    pdirs = sorted(d for d in out.glob("prompt-*") if (d / "posterior.nc").is_file())
    if not pdirs:
        raise RecipeError("report", f"{out} holds no prompt-*/posterior.nc (is it a results directory?)")
    recipe_text = (out / "recipe.toml").read_text() if (out / "recipe.toml").is_file() else ""
    lines = ["# ppllm results", ""]
    if recipe_text:
        lines += ["Recipe (as run):", "", "```toml", recipe_text.strip(), "```", ""]
    rows = []
    by_estimator: dict[str, list[int]] = {}
    budget_total: dict[str, float] = {}
    if estimator is None:
        estimator = _recipe_estimator(out)
    bar = None
    if progress and len(pdirs) > 1:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=len(pdirs), desc="writing plots and summary", unit="prompt", file=sys.stderr)
    for d in pdirs:
        if bar is not None:
            bar.update(1)
        # `loaded`: what the runner has just written, so it is not read back from disk
        idata = loaded[d.name] if loaded and d.name in loaded else load_arviz(str(d / "posterior.nc"))
        posts = posteriors_from_arviz(idata)
        attrs = idata["posterior"].attrs
        ref = json.loads(attrs["reference_answer"]) if "reference_answer" in attrs else None
        has_answer = "answer" in idata["particles"].data_vars
        fn = (lambda p: p.answer) if has_answer else str
        first = posts[0]
        weighted = _prediction(posts, fn)
        selected = json.loads(attrs["selected_answers"]) if "selected_answers" in attrs else None
        predictions = {
            "weighted": weighted,
            "majority": _majority(posts, fn),
            **({"selected": Counter(map(_hashable, selected)).most_common(1)[0][0]} if selected else {}),
        }
        # by default a kernel that selects (best-of-N, beam search, ...) is judged by its
        # selection, a sampler by the weighted posterior's most probable answer (pooled over runs)
        chosen = estimator if estimator in predictions else ("selected" if selected else "weighted")
        pred = predictions[chosen]
        correct = None if ref is None or pred is None else same_answer(pred, ref)
        for name, value in predictions.items():
            if ref is not None:
                hits = by_estimator.setdefault(name, [0, 0])
                hits[0] += value is not None and same_answer(value, ref)
                hits[1] += 1
        for p in posts:
            for k, v in p.budget.items():
                budget_total[k] = budget_total.get(k, 0) + v
        row = {
            "prompt": str(attrs.get("prompt", "")),
            "id": str(attrs.get("prompt_id", d.name)),
            "dir": d.name,
            "prediction": pred,
            "estimator": chosen,
            "predictions": predictions,
            "weighted_prediction": weighted,
            "selected": selected,
            "reference": ref,
            "correct": correct,
            "log_Z": [p.log_Z for p in posts],
            "ess": [p.ess for p in posts],
            "n_particles": [p.n for p in posts],
            "budget": [p.budget for p in posts],
            "messages": [p.message for p in posts if p.message],
        }
        rows.append(row)
        plotted = max_plots is None or len(rows) <= max_plots
        if plotted:
            note = f"round 0 of {len(posts)}" if len(posts) > 1 else None
            plot_diagnostics(first, d / "diagnostics.png", note)
            plot_genealogy(first, d / "genealogy.png", note)
            plot_answers(_pooled(posts, fn), d / "answers.png", truth=ref)
        lines += _prompt_section(row, posts, fn, plotted)
    scored = [r["correct"] for r in rows if r["correct"] is not None]
    accuracy = sum(scored) / len(scored) if scored else None
    head = [f"- prompts: {len(rows)}"]
    if accuracy is not None:
        used = sorted({r["estimator"] for r in rows})
        head.append(f"- accuracy: {accuracy:.3f} ({sum(scored)}/{len(scored)}; estimator: {', '.join(used)})")
        head.append("- by estimator: " + ", ".join(f"{name} {h}/{n}" for name, (h, n) in sorted(by_estimator.items()))
                    + " (selected: the kernel's own choice; weighted: the posterior's most probable answer; "
                    "majority: the most common answer among particles)")
    if budget_total:
        head.append("- budget (all runs): " + ", ".join(f"{k}={_fmt(v)}" for k, v in budget_total.items()))
    lines[2:2] = [*head, ""]
    if bar is not None:
        bar.close()
    from .coverage import coverage_of_run, plot_coverage

    coverage = coverage_of_run(out)
    if coverage is not None and len(coverage["k"]) > 1:
        plot_coverage(coverage, out / "coverage.png")
        lines[2 + len(head):2 + len(head)] = ["- coverage (pass@k, every particle a sample): " + ", ".join(
            f"k={k}: {c:.3f}" for k, c in zip(coverage["k"], coverage["coverage"], strict=True)) + " (coverage.png)"]
    atomic_write(out / "summary.md", "\n".join(lines) + "\n")
    result = {
        "out": str(out),
        "prompts": rows,
        "accuracy": accuracy,
        "accuracy_by_estimator": {k: h / n for k, (h, n) in by_estimator.items() if n},
        "coverage": coverage,
        "budget": budget_total,
    }
    atomic_write(out / "results.json", json.dumps(result, indent=2, default=_json_default) + "\n")
    return result


def _recipe_estimator(out: Path) -> str:
    """[run] estimator of the recipe the directory was made with ("auto" when unset)."""
    import tomllib

    try:
        return str(tomllib.loads((out / "recipe.toml").read_text()).get("run", {}).get("estimator", "auto"))
    except (OSError, tomllib.TOMLDecodeError):
        return "auto"


def _majority(posts: list[Any], fn: Callable[[Any], Any]) -> Any:
    """The most common answer among all runs' particles, ignoring weights (self-consistency)."""
    counts = Counter(_hashable(fn(p)) for post in posts for p in post.particles)
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else None


def _hashable(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list | dict) else v


def _pooled(posts: list[Any], fn: Callable[[Any], Any]) -> dict[Any, float]:
    """The answer distribution averaged over independent runs (each run weighs equally)."""
    mass: dict[Any, float] = {}
    ok = [p for p in posts if p.ok]
    for p in ok:
        for k, v in p.distribution(fn).items():
            mass[k] = mass.get(k, 0.0) + v / len(ok)
    return dict(sorted(mass.items(), key=lambda kv: -kv[1]))


def _prediction(posts: list[Any], fn: Callable[[Any], Any]) -> Any:
    dist = {k: v for k, v in _pooled(posts, fn).items() if k is not None}
    return next(iter(dist), None)


def _prompt_section(row: dict[str, Any], posts: list[Any], fn: Callable[[Any], Any], plotted: bool = True) -> list[str]:
    lines = [f"## {row['dir']}: {row['prompt']!r}", ""]
    if row["reference"] is not None:
        mark = "correct" if row["correct"] else "wrong"
        lines.append(f"- prediction: `{row['prediction']!r}` (reference `{row['reference']!r}`: {mark})")
    else:
        lines.append(f"- prediction: `{row['prediction']!r}`")
    if row["selected"] is not None:
        lines.append(f"- selected by the kernel (per run): {', '.join(repr(x) for x in row['selected'])}")
    for c, p in enumerate(posts):
        steps = f", {len(p.steps)} steps, resampled {int(p.resampled.sum())}×" if p.steps else ""
        lines.append(
            f"- run {c}: {p.kernel}, N={p.n}, log Ẑ={p.log_Z:.4f}, ESS={p.ess:.2f}{steps}"
            + (f", budget: {', '.join(f'{k}={_fmt(v)}' for k, v in p.budget.items())}" if p.budget else "")
        )
        if p.message:
            lines.append(f"  - note: {p.message}")
    lines += ["", "| mass | answer |", "|---:|---|"]
    for k, v in list(_pooled(posts, fn).items())[:10]:
        lines.append(f"| {v:.4f} | `{k!r}` |")
    if plotted:
        lines += ["", f"![diagnostics]({row['dir']}/diagnostics.png) ![genealogy]({row['dir']}/genealogy.png) "
                  f"![answers]({row['dir']}/answers.png)", ""]
    else:
        lines += ["", "(no plots for this prompt: `ppllm report DIR --plots all` draws every prompt's)", ""]
    return lines


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return str(v)
