"""Plots of inference results, written as PNG files (matplotlib, Agg backend).

Each function takes a `Posterior` (or plain figures), writes one file and returns its
path, so scripts, the CLI and `ppllm report` share them. Nothing here needs a display.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .posterior import Posterior, particle_text

__all__ = ["plot_answers", "plot_diagnostics", "plot_genealogy", "plot_scaling", "plot_tree", "plot_all"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Write the figure atomically (a temporary file renamed into place)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.tight_layout()  # one layout pass; bbox_inches="tight" would draw the figure twice
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        _plt().close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def _integer_ticks(*axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))


def _noted(title: str, note: str | None) -> str:
    return f"{title}\n({note})" if note else title


def plot_diagnostics(post: Posterior, path: str | Path, note: str | None = None) -> Path:
    """ESS/N over steps with resampling events marked, beside the final normalised weights.

    `note` is added to the title, e.g. which of several runs the figure shows.
    """
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    n = max(post.n, 1)
    if post.steps:
        t = np.arange(len(post.steps))
        ax1.plot(t, post.ess_history / n, marker="o", ms=3, label="ESS / N")
        res = t[post.resampled]
        ax1.scatter(res, post.ess_history[post.resampled] / n, color="C3", zorder=3, label="resampled")
        ax1.plot(t, post.n_live / n, ls="--", color="0.5", label="live / N")
        ax1.set_ylim(0, 1.05)
        ax1.legend(fontsize=8, loc="lower left")
    else:
        ax1.text(0.5, 0.5, "no per-step records", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("step")
    ax1.set_title(_noted("effective sample size", note))
    _integer_ticks(ax1.xaxis, ax2.xaxis)
    if post.ok:
        W = post.weights
        ax2.bar(np.arange(post.n), W, color="C0")
        ax2.axhline(1 / n, color="0.5", ls="--", lw=1)
    else:
        ax2.text(0.5, 0.5, post.message or "all weights zero", ha="center", va="center",
                 transform=ax2.transAxes, wrap=True, fontsize=8)
    ax2.set_xlabel("particle")
    ax2.set_title(f"final weights (ESS {post.ess:.1f} of {post.n}, log Ẑ {post.log_Z:.3g})")
    return _save(fig, path)


def plot_genealogy(post: Posterior, path: str | Path, note: str | None = None) -> Path:
    """Lines from each particle's ancestor to it at every step; surviving lineages in colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    T = len(post.ancestry)
    lineage = post.genealogy()  # (T+1, N)
    surviving = [set(map(int, row)) for row in lineage]
    resampled = post.resampled if len(post.steps) == T else np.ones(T, dtype=bool)
    for k, A in enumerate(post.ancestry, start=1):
        A = np.asarray(A, dtype=np.int64)
        for i, a in enumerate(A):
            alive = i in surviving[k] and int(a) in surviving[k - 1]
            ax.plot([k - 1, k], [a, i], color="C3" if alive else "0.8",
                    lw=1.6 if alive else 0.7, zorder=2 if alive else 1)
        if resampled[k - 1]:
            ax.axvline(k - 0.5, color="0.9", lw=6, zorder=0)
    for k, row in enumerate(surviving):
        ax.scatter([k] * len(row), sorted(row), s=8, color="C3", zorder=3)
    ax.set_xlim(-0.3, max(T, 1) + 0.3)
    ax.set_xlabel("generation (shaded: resampled in that step)")
    ax.set_ylabel("particle")
    n_lin = post.n_lineages()[0] if T else post.n
    ax.set_title(_noted(f"genealogy: {n_lin} of {post.n} initial particles have descendants", note))
    _integer_ticks(ax.xaxis, ax.yaxis)
    return _save(fig, path)


def plot_answers(
    post: Posterior | Mapping[Hashable, float],
    path: str | Path,
    fn: Callable[[Any], Hashable] = particle_text,
    top: int = 15,
    truth: Hashable | None = None,
) -> Path:
    """Bar chart of the weighted answer distribution (the `top` most probable values)."""
    plt = _plt()
    dist = dict(post) if isinstance(post, Mapping) else (post.distribution(fn) if post.ok else {})
    items = list(dist.items())[:top]
    fig, ax = plt.subplots(figsize=(8, 0.4 * max(len(items), 2) + 1.2))
    labels = [_short(k) for k, _ in items][::-1]
    mass = [v for _, v in items][::-1]
    colors = ["C2" if truth is not None and k == truth else "C0" for k, _ in items][::-1]
    ax.barh(range(len(items)), mass, color=colors)
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("posterior mass")
    rest = 1.0 - sum(v for _, v in items)
    ax.set_title("answer distribution" + (f" (other values: {rest:.3f})" if rest > 1e-9 else ""))
    return _save(fig, path)


def plot_scaling(results: Mapping[str, Any] | str | Path, path: str | Path, metric: str = "accuracy") -> Path:
    """Metric vs budget, one line per method.

    `results` is {method: {budget: value}} or {method: [[budget, value], ...]} or
    {method: [{"budget": b, metric: v, "stderr": s?}, ...]}, or a JSON file holding one.
    """
    plt = _plt()
    if isinstance(results, str | Path):
        results = json.loads(Path(results).read_text())
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, pts in results.items():
        b, v, e = _points(pts, metric)
        if e is not None:
            ax.errorbar(b, v, yerr=e, marker="o", ms=4, capsize=3, label=method)
        else:
            ax.plot(b, v, marker="o", ms=4, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("budget")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metric} vs budget")
    return _save(fig, path)


def plot_tree(tree: Any, path: str | Path, max_depth: int = 3, max_children: int = 6,
              label: Callable[[Any], str] | None = None) -> Path:
    """The top levels of a search tree (`ppllm.tree.SearchTree`): node area ∝ visits, colour =
    value v̂ = ℓ/λ, edge width ∝ multiplicity; each node labelled with its step's text.

    At most `max_children` children per node are drawn (the most visited); the title says
    how many nodes were left out.
    """
    plt = _plt()
    import matplotlib
    from matplotlib import cm, colors

    label = label or (lambda node: _step_text(node))
    layers: list[list[Any]] = [[tree.root]]
    for _ in range(max_depth):
        nxt = []
        for node in layers[-1]:
            kids = sorted(node.children.values(), key=lambda c: -c.visits)[:max_children]
            nxt.extend(kids)
        if not nxt:
            break
        layers.append(nxt)
    pos = {}
    for d, layer in enumerate(layers):
        for i, node in enumerate(layer):
            pos[id(node)] = ((i + 0.5) / len(layer), -d)
    values = [n.value / tree.lam for layer in layers for n in layer if np.isfinite(n.value)]
    norm = colors.Normalize(vmin=min(values, default=0.0), vmax=max(values, default=1.0))
    cmap = matplotlib.colormaps["viridis"]
    width = max(6.0, 1.1 * max(len(layer) for layer in layers))
    fig, ax = plt.subplots(figsize=(min(width, 18), 1.9 * len(layers) + 1))
    top_visits = max(tree.root.visits, 1)
    for layer in layers[1:]:
        for node in layer:
            (x0, y0), (x1, y1) = pos[id(node.parent)], pos[id(node)]
            ax.plot([x0, x1], [y0, y1], color="0.6", lw=0.5 + 3 * node.count / max(node.parent.draws, 1), zorder=1)
    shown = 0
    for layer in layers:
        for node in layer:
            x, y = pos[id(node)]
            v = node.value / tree.lam
            ax.scatter([x], [y], s=40 + 900 * (node.visits / top_visits) ** 0.5, zorder=2,
                       color=cmap(norm(v)) if np.isfinite(v) else "0.85", edgecolor="k" if node.terminal else "none")
            ax.text(x, y - 0.22, label(node), ha="center", va="top", fontsize=7)
            shown += 1
    hidden = tree.n_nodes - shown
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03, label="value v̂ = ℓ/λ")
    ax.set_axis_off()
    ax.set_title(f"search tree: {tree.n_nodes} nodes, {tree.root.visits} visits at the root"
                 + (f" ({hidden} nodes not drawn)" if hidden > 0 else "") + "; area ∝ visits, black edge: finished")
    return _save(fig, path)


def _step_text(node: Any) -> str:
    if node.parent is None:
        return "root"
    parts = []
    for c in node.choices:
        text = getattr(c.value, "text", None)
        parts.append(text if text is not None else repr(c.value))
    s = " ".join(parts).replace("\n", "⏎")
    return (s[:18] + "…" if len(s) > 19 else s) + f"\n×{node.count}"


def plot_all(post: Posterior, out_dir: str | Path, prefix: str = "", fn: Callable[[Any], Hashable] = particle_text) -> list[Path]:
    """The three per-run plots into `out_dir`."""
    out = Path(out_dir)
    return [
        plot_diagnostics(post, out / f"{prefix}diagnostics.png"),
        plot_genealogy(post, out / f"{prefix}genealogy.png"),
        plot_answers(post, out / f"{prefix}answers.png", fn),
    ]


def _points(pts: Any, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if isinstance(pts, Mapping):
        rows = sorted((float(k), float(v)) for k, v in pts.items())
        return np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), None
    rows: list[tuple[float, float, float | None]] = []
    for p in pts:
        if isinstance(p, Mapping):
            rows.append((float(p["budget"]), float(p[metric]), p.get("stderr")))
        else:
            rows.append((float(p[0]), float(p[1]), None))
    rows.sort()
    errs = [r[2] for r in rows]
    e = np.array(errs, dtype=float) if all(x is not None for x in errs) else None
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), e


def _short(x: Any, width: int = 40) -> str:
    s = repr(x) if isinstance(x, str) else str(x)
    return s if len(s) <= width else s[: width - 1] + "…"

