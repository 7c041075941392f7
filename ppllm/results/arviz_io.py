"""Posteriors to ArviZ and back, and netCDF files written and read through one engine.

ArviZ has no weighted samples (arviz issue #2035), so a run goes in as an unweighted
resample (`posterior`), its weights (`sample_stats`), the weighted particles themselves
(`particles`) and the kernel's diagnostics (`smc_stats`, `tree_stats`); see
docs/results-and-arviz.md for the layout.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .diagnostics import StepInfo, Steps, TreeStats
from .posterior import ParticleRecord, Posterior, Variables
from .values import integer_or_none, is_number, pad_rows, read_value

if TYPE_CHECKING:
    import arviz

__all__ = ["load_arviz", "posteriors_from_arviz", "save_netcdf", "to_arviz"]

RESERVED = ("text", "log_weight", "particle")
# One engine for writing and reading: netCDF4 writes 6x and reads 4x faster than h5netcdf on
# these files (benchmarks/dataset_runner.py spends most of its writing phase here), and one
# HDF5 binding per process: h5py (behind ArviZ's default engine) and netCDF4 loaded together
# have crashed a process reading lazily. Read files with `load_arviz`, or
# `az.from_netcdf(path, engine="netcdf4")`.
NETCDF_ENGINE = "netcdf4"


def arviz_modules() -> tuple[Any, Any]:
    """`arviz` and `xarray`, imported without ArviZ's import-time notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz announces its 1.0 refactor on import
        import arviz as az
        import xarray as xr
    return az, xr


def quiet(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "smc_stats is not a standard group"
        return fn()


def to_arviz(
    posteriors: Posterior | Sequence[Posterior],
    variables: Variables | None = None,
    *,
    seed: int = 0,
) -> arviz.InferenceData:
    """Independent runs as the chains of one `arviz.InferenceData`.

    Groups (dims `chain`, `draw`, `step`; shorter runs are padded with NaN, "" or −1):
    - `posterior`: each variable on an unweighted resample of the run's particles
      (systematic, seeded by `seed` and the chain), and `particle`, the index of the
      weighted particle each draw copies;
    - `sample_stats`: `log_weight` of the weighted particles (draw = particle index);
    - `particles`: `text` and every variable on the weighted particles themselves, so the
      weighted estimators can be recomputed from the file alone;
    - `smc_stats`: per-step `ess`, `resampled`, `log_Z_increment`, `n_live`, `ancestors`,
      each `StepInfo.extra` figure as `extra_<name>`, and per chain
      `log_marginal_likelihood` and `budget_<name>`;
    - `tree_stats`, for tree kernels: per iteration `root_value` and `new_nodes`, per depth
      `nodes`, per chain `n_nodes`, `n_terminal`, `root_visits`.
    The log marginal likelihoods (one per chain) also sit in every group's attrs.
    """
    az, xr = arviz_modules()
    runs = [posteriors] if isinstance(posteriors, Posterior) else list(posteriors)
    if not runs:
        raise ValueError("to_arviz needs at least one posterior")
    variables = dict(variables or {})
    for name in RESERVED:
        if name in variables:
            raise ValueError(f"variable name {name!r} is reserved (it names a column ppllm writes itself)")
    C, D = len(runs), max(r.n for r in runs)
    T = max(len(r.steps) for r in runs)
    coords = {"chain": np.arange(C), "draw": np.arange(D)}

    idx = np.full((C, D), -1, dtype=np.int64)
    for c, r in enumerate(runs):
        if r.ok:
            idx[c, : r.n] = r.resample(seed=chain_seed(seed, c))

    columns = {name: [r.values(fn) for r in runs] for name, fn in variables.items()}
    columns["text"] = [r.texts() for r in runs]
    post, parts = {}, {}
    for name, rows in columns.items():
        parts[name] = (("chain", "draw"), pad_rows(rows, D))
        if name != "text":
            drawn = [[row[i] for i in idx[c] if i >= 0] for c, row in enumerate(rows)]
            post[name] = (("chain", "draw"), pad_rows(drawn, D, like=parts[name][1]))
    post["particle"] = (("chain", "draw"), idx)

    logw = np.full((C, D), np.nan)
    for c, r in enumerate(runs):
        logw[c, : r.n] = r.log_weights
    log_ml = np.array([r.log_Z for r in runs], dtype=np.float64)
    attrs = {
        "log_marginal_likelihood": log_ml,
        "kernel": ",".join(sorted({r.kernel for r in runs})),
        "n_particles": np.array([r.n for r in runs], dtype=np.int64),
        "seed": seed,
        "ppllm_layout": 1,
    }
    parts_ds = xr.Dataset(parts, coords=coords, attrs=attrs)
    for name, rows in columns.items():
        if integer_or_none(v for row in rows for v in row):
            parts_ds[name].attrs["integer"] = 1  # ints with missing values are stored as floats
    groups = {
        "posterior": xr.Dataset(post, coords=coords, attrs=attrs),
        "sample_stats": xr.Dataset({"log_weight": (("chain", "draw"), logw)}, coords=coords, attrs=attrs),
        "particles": parts_ds,
        "smc_stats": _smc_stats(runs, T, D, log_ml, attrs),
    }
    if any(isinstance(r.diagnostics, TreeStats) for r in runs):
        groups["tree_stats"] = _tree_stats(runs, attrs)
    return quiet(lambda: az.InferenceData(**groups))


def _smc_stats(runs: list[Posterior], T: int, D: int, log_ml: np.ndarray, attrs: dict[str, Any]) -> Any:
    _, xr = arviz_modules()
    C = len(runs)
    data: dict[str, Any] = {
        "ess": (("chain", "step"), _per_step(runs, T, lambda s: s.ess)),
        "resampled": (("chain", "step"), _per_step(runs, T, lambda s: float(s.resampled))),
        "log_Z_increment": (("chain", "step"), _per_step(runs, T, lambda s: s.log_Z_increment)),
        "n_live": (("chain", "step"), _per_step(runs, T, lambda s: s.n_live)),
        "log_marginal_likelihood": (("chain",), log_ml),
    }
    extra_keys = sorted({k for r in runs for s in r.steps for k, v in s.extra.items() if is_number(v)})
    for key in extra_keys:
        data[f"extra_{key}"] = (("chain", "step"), _per_step(runs, T, lambda s, k=key: s.extra.get(k, np.nan)))
    anc = np.full((C, T, D), -1, dtype=np.int64)
    for c, r in enumerate(runs):
        for t, s in enumerate(r.steps):
            a = np.asarray(s.ancestors, dtype=np.int64)
            anc[c, t, : min(len(a), D)] = a[:D]
    data["ancestors"] = (("chain", "step", "draw"), anc)
    for key in sorted({k for r in runs for k, v in r.budget.items() if is_number(v)}):
        vals = [float(r.budget[key]) if is_number(r.budget.get(key)) else np.nan for r in runs]
        data[f"budget_{key}"] = (("chain",), np.array(vals))
    coords = {"chain": np.arange(C), "step": np.arange(T), "draw": np.arange(D)}
    run_attrs = {
        "messages": json.dumps([r.message for r in runs]),
        "configs": json.dumps([r.config for r in runs], default=str),
    }
    return xr.Dataset(data, coords=coords, attrs={**attrs, **run_attrs})


def _per_step(runs: Sequence[Posterior], T: int, get: Callable[[StepInfo], Any]) -> np.ndarray:
    out = np.full((len(runs), T), np.nan, dtype=np.float64)
    for c, r in enumerate(runs):
        for t, s in enumerate(r.steps):
            out[c, t] = float(get(s))
    return out


def _tree_stats(runs: list[Posterior], attrs: dict[str, Any]) -> Any:
    _, xr = arviz_modules()
    trees = [r.diagnostics if isinstance(r.diagnostics, TreeStats) else None for r in runs]
    M = max((len(t.root_value) for t in trees if t), default=0)
    depth = max((len(t.per_depth) for t in trees if t), default=0)

    def rows(get: Callable[[TreeStats], list[Any]], width: int, fill: float) -> np.ndarray:
        out = np.full((len(runs), width), fill)
        for c, t in enumerate(trees):
            if t is not None:
                vals = get(t)
                out[c, : len(vals)] = vals
        return out

    def per_chain(get: Callable[[TreeStats], int]) -> np.ndarray:
        return np.array([get(t) if t else -1 for t in trees], dtype=np.int64)

    data = {
        "root_value": (("chain", "iteration"), rows(lambda t: t.root_value, M, np.nan)),
        "new_nodes": (("chain", "iteration"), rows(lambda t: t.new_nodes, M, -1).astype(np.int64)),
        "nodes": (("chain", "depth"), rows(lambda t: t.per_depth, depth, 0).astype(np.int64)),
        "n_nodes": (("chain",), per_chain(lambda t: t.n_nodes)),
        "n_terminal": (("chain",), per_chain(lambda t: t.n_terminal)),
        "root_visits": (("chain",), per_chain(lambda t: t.root_visits)),
    }
    coords = {"chain": np.arange(len(runs)), "iteration": np.arange(M), "depth": np.arange(depth)}
    return xr.Dataset(data, coords=coords, attrs=attrs)


# ---------------------------------------------------------------------- files
def save_netcdf(idata: arviz.InferenceData, path: str | Path) -> None:
    """Write `idata` to `path` with the engine `load_arviz` reads with."""
    quiet(lambda: idata.to_netcdf(str(path), engine=NETCDF_ENGINE))


def load_arviz(path: str | Path) -> arviz.InferenceData:
    """`arviz.from_netcdf` with the engine `save_netcdf` writes with, read into memory.

    Eager loading closes the file at once, so a results file can be replaced (resume,
    `ppllm report`) while what was read from it is still in use.
    """
    az, _ = arviz_modules()
    if not Path(path).is_file():
        raise FileNotFoundError(f"no results file at {path}")
    with az.rc_context({"data.load": "eager"}):
        return quiet(lambda: az.from_netcdf(str(path), engine=NETCDF_ENGINE))


def posteriors_from_arviz(idata: arviz.InferenceData) -> list[Posterior]:
    """Rebuild each chain's `Posterior` (particles as `ParticleRecord`s) from `to_arviz` output.

    Enough for the weighted estimators, the summary and the plots: `ppllm report` uses it.
    """
    for group in ("particles", "sample_stats", "smc_stats"):
        if group not in idata.groups():
            raise ValueError(f"this InferenceData has no {group!r} group: it was not written by ppllm.results.to_arviz")
    parts, ss, st = idata["particles"], idata["sample_stats"], idata["smc_stats"]
    n = np.atleast_1d(parts.attrs["n_particles"])
    messages = json.loads(st.attrs.get("messages", "[]"))
    configs = json.loads(st.attrs.get("configs", "[]"))
    kernel = str(parts.attrs.get("kernel", ""))
    names = [k for k in parts.data_vars if k != "text"]
    budget_keys = [k for k in st.data_vars if k.startswith("budget_")]
    extra_keys = [k for k in st.data_vars if k.startswith("extra_")]
    out = []
    for c in range(parts.sizes["chain"]):
        N = int(n[c])
        cols = {k: [read_value(v, bool(parts[k].attrs.get("integer"))) for v in parts[k].values[c, :N]] for k in names}
        particles = [ParticleRecord(str(t), {k: cols[k][i] for k in names})
                     for i, t in enumerate(parts["text"].values[c, :N])]
        steps = []
        ess_c = st["ess"].values[c]
        for t in range(st.sizes["step"]):
            if np.isnan(ess_c[t]):
                break
            extra = {k.removeprefix("extra_"): float(st[k].values[c, t]) for k in extra_keys
                     if not np.isnan(st[k].values[c, t])}
            steps.append(StepInfo(t, float(ess_c[t]), bool(st["resampled"].values[c, t]),
                                  st["ancestors"].values[c, t, :N].astype(np.int64),
                                  float(st["log_Z_increment"].values[c, t]), int(st["n_live"].values[c, t]), extra))
        budget: dict[str, float] = {}
        for k in budget_keys:
            v = float(st[k].values[c])
            if not np.isnan(v):
                budget[k.removeprefix("budget_")] = int(v) if v.is_integer() and k != "budget_seconds" else v
        out.append(Posterior(
            particles=particles,
            log_weights=ss["log_weight"].values[c, :N].astype(np.float64),
            log_Z=float(st["log_marginal_likelihood"].values[c]),
            ancestry=[s.ancestors for s in steps],
            budget=budget,
            kernel=kernel,
            config=configs[c] if c < len(configs) else {},
            message=messages[c] if c < len(messages) else None,
            diagnostics=Steps(steps) if steps else None,
        ))
    return out


def chain_seed(seed: int, chain: int) -> int:
    """The resampling seed of chain `chain`: independent across chains, fixed by `seed`."""
    return int(np.random.SeedSequence([seed, chain]).generate_state(1)[0])
