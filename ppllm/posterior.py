"""Results of inference: weighted particles, evidence, per-step diagnostics, estimators.

Every particle kernel returns a `Posterior`; MCMC kernels may also return `Chains`.
Weighted estimators live here because ArviZ has no weighted samples (arviz issue
#2035): `to_arviz()` hands ArviZ an unweighted resample in `posterior`, the log-weights
in `sample_stats` and the per-step figures in an extra `smc_stats` group (docs/results-and-arviz.md).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .population import DegenerateWeights, ess, normalise
from .program import Program
from .resampling import get_resampler
from .rng import Rng, SeededRng

if TYPE_CHECKING:  # arviz is imported lazily: it is slow to import
    import arviz

__all__ = [
    "Chains",
    "ParticleRecord",
    "Posterior",
    "StepRecord",
    "load_arviz",
    "particle_text",
    "to_arviz",
    "variable_array",
]

Variables = Mapping[str, Callable[[Any], Any]]


@dataclass
class StepRecord:
    """Per-step figures of a particle kernel.

    `ancestors[i]` is the index, in the previous generation, of the parent of particle i
    after this step (the identity when the step did not resample).
    """

    t: int
    ess: float
    resampled: bool
    ancestors: np.ndarray
    log_Z_increment: float
    n_live: int

    @classmethod
    def from_info(cls, info: Any) -> StepRecord:
        return cls(info.t, info.ess, info.resampled, np.asarray(info.ancestors), info.log_Z_increment, info.n_live)


@dataclass(frozen=True)
class ParticleRecord:
    """A particle read back from a results file: its text and recorded variables.

    Attribute access reads the variables, so `lambda p: p.answer` works on programs and
    on records alike; `str()` is the text.
    """

    text: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __str__(self) -> str:
        return self.text


def particle_text(p: Any) -> str:
    """What to show for a particle: `str(program)` if the class defines it, else its trace."""
    if not isinstance(p, Program):
        return str(p)  # a ParticleRecord or a plain value
    if type(p).__str__ is not object.__str__:
        return str(p)
    return " ".join(repr(c.value) for c in p.trace)


def trace_ancestors(steps: Sequence[StepRecord], n: int) -> np.ndarray:
    """Lineages of the n final particles: row k holds each one's ancestor in generation k.

    Generation 0 is the initial population and generation len(steps) the final one, so
    row k−1 = steps[k−1].ancestors[row k]. Shape (len(steps)+1, n).
    """
    out = np.empty((len(steps) + 1, n), dtype=np.int64)
    out[-1] = np.arange(n)
    for k in range(len(steps), 0, -1):
        A = np.asarray(steps[k - 1].ancestors, dtype=np.int64)
        out[k - 1] = A[out[k]] if len(A) else out[k]
    return out


@dataclass
class Posterior:
    """Weighted particles with log Ẑ, per-step diagnostics and the budget used.

    `particles` are programs (or plain values); `log_weights` their unnormalised
    log-weights; `budget` what the run used (lm_calls, tokens, seconds, ...).
    """

    particles: list[Any]
    log_weights: np.ndarray
    log_Z: float
    steps: list[StepRecord] = field(default_factory=list)
    budget: dict[str, float] = field(default_factory=dict)
    kernel: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # kernel-specific results

    def __post_init__(self) -> None:
        self.log_weights = np.asarray(self.log_weights, dtype=np.float64)
        if self.log_weights.shape != (len(self.particles),):
            raise ValueError(
                f"log_weights has shape {self.log_weights.shape} for {len(self.particles)} particles"
            )
        if np.isnan(self.log_weights).any():
            raise ValueError("log_weights contains NaN")

    # ------------------------------------------------------------------ weights
    @property
    def n(self) -> int:
        return len(self.particles)

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights; raises DegenerateWeights (with the reason) if all are zero."""
        if self.n == 0:
            raise DegenerateWeights(self.message or "the posterior has no particles")
        try:
            return normalise(self.log_weights)
        except DegenerateWeights:
            raise DegenerateWeights(self.message or "every particle has weight zero") from None

    @property
    def ess(self) -> float:
        return ess(self.log_weights) if self.n else 0.0

    @property
    def ok(self) -> bool:
        """Some particle has positive weight. (log Ẑ may be NaN: search kernels have none.)"""
        return self.n > 0 and self.log_Z != -math.inf and bool(np.max(self.log_weights) > -math.inf)

    def collapse(self, rng: Rng) -> tuple[Any | None, float]:
        """One particle drawn ∝ weight, with log Ẑ (unbiased: E[Ẑ·1{x}] = γ(x))."""
        if not self.ok:
            return None, -math.inf
        return self.particles[rng.categorical(self.weights)], self.log_Z

    def resample(self, n: int | None = None, seed: int = 0, scheme: str = "systematic") -> np.ndarray:
        """Indices of an unweighted resample of size n (default N), drawn ∝ weight."""
        n = self.n if n is None else n
        return np.asarray(get_resampler(scheme)(SeededRng(seed), self.weights, n), dtype=np.int64)

    # ------------------------------------------------------------------ per-step figures
    @property
    def ess_history(self) -> np.ndarray:
        return np.array([s.ess for s in self.steps], dtype=np.float64)

    @property
    def resampled(self) -> np.ndarray:
        return np.array([s.resampled for s in self.steps], dtype=bool)

    @property
    def log_Z_increments(self) -> np.ndarray:
        return np.array([s.log_Z_increment for s in self.steps], dtype=np.float64)

    @property
    def n_live(self) -> np.ndarray:
        return np.array([s.n_live for s in self.steps], dtype=np.int64)

    def genealogy(self) -> np.ndarray:
        """Each final particle's lineage: shape (steps+1, N); see `trace_ancestors`."""
        return trace_ancestors(self.steps, self.n)

    def n_lineages(self) -> np.ndarray:
        """Distinct ancestors of the final particles in each generation (path degeneracy)."""
        return np.array([len(np.unique(row)) for row in self.genealogy()], dtype=np.int64)

    # ------------------------------------------------------------------ estimators
    def values(self, fn: Callable[[Any], Any] = particle_text) -> list[Any]:
        return [fn(p) for p in self.particles]

    def texts(self) -> list[str]:
        return self.values(particle_text)

    def expectation(self, fn: Callable[[Any], float]) -> float:
        """Σ_i W_i f(x_i), the self-normalised estimate of E_π[f]."""
        vals = np.array([float(fn(p)) for p in self.particles])
        W = self.weights
        keep = W > 0  # f may be undefined (NaN) on particles ruled out by a constraint
        return float(np.sum(W[keep] * vals[keep]))

    def distribution(self, fn: Callable[[Any], Hashable] = particle_text) -> dict[Hashable, float]:
        """Posterior mass of each distinct value of fn, largest first (ties: first seen)."""
        mass: dict[Hashable, float] = {}
        for p, w in zip(self.particles, self.weights, strict=True):
            if w > 0:
                k = fn(p)
                mass[k] = mass.get(k, 0.0) + float(w)
        return dict(sorted(mass.items(), key=lambda kv: -kv[1]))

    answer_distribution = distribution

    def map_value(self, fn: Callable[[Any], Hashable] = particle_text) -> Hashable:
        """The value with the largest posterior mass (weighted majority vote)."""
        return next(iter(self.distribution(fn)))

    def majority_vote(
        self, fn: Callable[[Any], Hashable] = particle_text, weighted: bool = False
    ) -> Hashable:
        """The most common value among particles (self-consistency); `weighted=True` uses W."""
        if weighted:
            return self.map_value(fn)
        counts = Counter(fn(p) for p in self.particles)
        return counts.most_common(1)[0][0]

    def mbr(
        self, loss: Callable[[Hashable, Hashable], float], fn: Callable[[Any], Hashable] = particle_text
    ) -> Hashable:
        """Minimum Bayes risk: the candidate minimising Σ_j W_j loss(candidate, x_j)."""
        dist = self.distribution(fn)
        return min(dist, key=lambda c: sum(w * loss(c, x) for x, w in dist.items()))

    # ------------------------------------------------------------------ export
    def to_arviz(self, variables: Variables | None = None, *, seed: int = 0) -> arviz.InferenceData:
        """This run as one chain of an `arviz.InferenceData`; see the module-level `to_arviz`."""
        return to_arviz([self], variables, seed=seed)

    def records(self, variables: Variables | None = None) -> list[dict[str, Any]]:
        """One JSON-ready dict per particle: index, text, log-weight, weight, variables."""
        W = self.weights if self.ok else np.zeros(self.n)
        rows = []
        for i, p in enumerate(self.particles):
            row: dict[str, Any] = {
                "index": i,
                "text": particle_text(p),
                "log_weight": _json_float(self.log_weights[i]),
                "weight": float(W[i]),
            }
            for name, fn in (variables or {}).items():
                row[name] = _json_value(fn(p))
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ display
    def summary(self, top: int = 10, fn: Callable[[Any], Hashable] = particle_text) -> str:
        head = f"{self.kernel or 'posterior'}: {self.n} particles, log Ẑ = {self.log_Z:.4f}"
        lines = [head]
        if self.message:
            lines.append(f"  note: {self.message}")
        if not self.ok:
            return "\n".join(lines)
        lines[0] += f", ESS = {self.ess:.2f}"
        if self.steps:
            n_res = int(self.resampled.sum())
            lines.append(
                f"  {len(self.steps)} steps, resampled {n_res} times, "
                f"min ESS {self.ess_history.min():.2f}, {self.n_lineages()[0]} surviving lineages"
            )
        dist = self.distribution(fn)
        for value, w in list(dist.items())[:top]:
            lines.append(f"  {w:7.4f}  {value!r}")
        if len(dist) > top:
            lines.append(f"  ... {len(dist) - top} more distinct values")
        if self.budget:
            lines.append("  budget: " + _budget_text(self.budget))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------- MCMC chains
@dataclass
class Chains:
    """MCMC output: `samples[c][d]` is draw d of chain c (a program, a dict of scalars or a scalar).

    `stats` maps a name to per-draw figures shaped (chain, draw), e.g. acceptance.
    Chains go to ArviZ as chains, so `az.rhat` / `az.ess` / `az.summary` are meaningful.
    """

    samples: list[list[Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    kernel: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)

    @property
    def n_chains(self) -> int:
        return len(self.samples)

    @property
    def n_draws(self) -> int:
        return max((len(c) for c in self.samples), default=0)

    def flat(self, burn_in: int = 0) -> list[Any]:
        return [x for chain in self.samples for x in chain[burn_in:]]

    def expectation(self, fn: Callable[[Any], float], burn_in: int = 0) -> float:
        vals = [float(fn(x)) for x in self.flat(burn_in)]
        if not vals:
            raise ValueError("no draws after burn-in")
        return float(np.mean(vals))

    def distribution(self, fn: Callable[[Any], Hashable] = particle_text, burn_in: int = 0) -> dict[Hashable, float]:
        vals = [fn(x) for x in self.flat(burn_in)]
        if not vals:
            raise ValueError("no draws after burn-in")
        counts = Counter(vals)
        return {k: c / len(vals) for k, c in counts.most_common()}

    def to_arviz(self, variables: Variables | None = None) -> arviz.InferenceData:
        """`posterior` (chain, draw) of each variable; `sample_stats` from `stats`, NaN-padded."""
        az, xr = _arviz()
        variables = _default_variables(self.samples[0][0] if self.samples and self.samples[0] else 0, variables)
        C, D = self.n_chains, self.n_draws
        post = {}
        for name, fn in variables.items():
            rows = [[fn(x) for x in chain] for chain in self.samples]
            post[name] = (("chain", "draw"), _pad2(rows, D))
        coords = {"chain": np.arange(C), "draw": np.arange(D)}
        stats = {k: (("chain", "draw"), _pad2([list(r) for r in v], D)) for k, v in self.stats.items()}
        attrs = {"kernel": self.kernel, "config": json.dumps(self.config, default=str)}
        groups = {"posterior": xr.Dataset(post, coords=coords, attrs=attrs)}
        if stats:
            groups["sample_stats"] = xr.Dataset(stats, coords=coords)
        return _quiet(lambda: az.InferenceData(**groups))

    def __str__(self) -> str:
        return f"{self.kernel or 'chains'}: {self.n_chains} chains × {self.n_draws} draws"


# ---------------------------------------------------------------------- ArviZ
def to_arviz(
    posteriors: Posterior | Sequence[Posterior],
    variables: Variables | None = None,
    *,
    seed: int = 0,
) -> arviz.InferenceData:
    """Independent runs as the chains of one `arviz.InferenceData`.

    Groups (dims `chain`, `draw`, `step`; shorter runs are padded with NaN, or "" / −1):
    - `posterior`: each variable on an unweighted resample of the run's particles
      (systematic, seeded by `seed` and the chain), so ArviZ's unweighted summaries apply,
      and `particle`, the index of the weighted particle each draw copies;
    - `sample_stats`: `log_weight` of the weighted particles (draw = particle index);
    - `particles`: `text` and every variable on the original weighted particles, so the
      weighted estimators can be recomputed from the file alone;
    - `smc_stats`: per-step `ess`, `resampled`, `log_Z_increment`, `n_live`, `ancestors`,
      and per-chain `log_marginal_likelihood` and budget figures.
    The log marginal likelihoods (one per chain) also sit in the attrs of every group.
    `variables` maps a name to a function of a particle returning a number or a string.
    """
    az, xr = _arviz()
    runs = [posteriors] if isinstance(posteriors, Posterior) else list(posteriors)
    if not runs:
        raise ValueError("to_arviz needs at least one posterior")
    variables = dict(variables or {})
    for reserved in ("text", "log_weight", "particle"):
        if reserved in variables:
            raise ValueError(f"variable name {reserved!r} is reserved")
    C = len(runs)
    D = max(r.n for r in runs)
    T = max(len(r.steps) for r in runs)
    coords = {"chain": np.arange(C), "draw": np.arange(D)}

    idx = np.full((C, D), -1, dtype=np.int64)
    for c, r in enumerate(runs):
        if r.ok:
            idx[c, : r.n] = r.resample(seed=_chain_seed(seed, c))

    orig = {name: [r.values(fn) for r in runs] for name, fn in variables.items()}
    orig["text"] = [r.texts() for r in runs]
    post, parts = {}, {}
    for name, rows in orig.items():
        parts[name] = (("chain", "draw"), _pad2(rows, D))
        if name != "text":
            res = [[row[i] for i in idx[c] if i >= 0] for c, row in enumerate(rows)]
            post[name] = (("chain", "draw"), _pad2(res, D, like=parts[name][1]))
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

    steps: dict[str, Any] = {
        "ess": (("chain", "step"), _steps(runs, T, "ess", np.nan)),
        "resampled": (("chain", "step"), _steps(runs, T, "resampled", np.nan)),
        "log_Z_increment": (("chain", "step"), _steps(runs, T, "log_Z_increment", np.nan)),
        "n_live": (("chain", "step"), _steps(runs, T, "n_live", np.nan)),
        "log_marginal_likelihood": (("chain",), log_ml),
    }
    anc = np.full((C, T, D), -1, dtype=np.int64)
    for c, r in enumerate(runs):
        for t, s in enumerate(r.steps):
            a = np.asarray(s.ancestors, dtype=np.int64)
            anc[c, t, : min(len(a), D)] = a[:D]
    steps["ancestors"] = (("chain", "step", "draw"), anc)
    for key in sorted({k for r in runs for k, v in r.budget.items() if _is_number(v)}):
        vals = [float(r.budget[key]) if _is_number(r.budget.get(key)) else np.nan for r in runs]
        steps[f"budget_{key}"] = (("chain",), np.array(vals))
    step_coords = {"chain": np.arange(C), "step": np.arange(T), "draw": np.arange(D)}
    run_attrs = {
        "messages": json.dumps([r.message for r in runs]),
        "configs": json.dumps([r.config for r in runs], default=str),
    }

    parts_ds = xr.Dataset(parts, coords=coords, attrs=attrs)
    for name, rows in orig.items():
        if _integer_or_none(v for row in rows for v in row):
            parts_ds[name].attrs["integer"] = 1  # ints with missing values are stored as float
    groups = {
        "posterior": xr.Dataset(post, coords=coords, attrs=attrs),
        "sample_stats": xr.Dataset(
            {"log_weight": (("chain", "draw"), logw)},
            coords=coords,
            attrs=attrs,
        ),
        "particles": parts_ds,
        "smc_stats": xr.Dataset(steps, coords=step_coords, attrs={**attrs, **run_attrs}),
    }
    return _quiet(lambda: az.InferenceData(**groups))


def load_arviz(path: str) -> arviz.InferenceData:
    """`arviz.from_netcdf`, without ArviZ's import-time notices."""
    az, _ = _arviz()
    return _quiet(lambda: az.from_netcdf(path))


def posteriors_from_arviz(idata: arviz.InferenceData) -> list[Posterior]:
    """Rebuild each chain's `Posterior` (particles = `ParticleRecord`s) from `to_arviz` output.

    Enough for the weighted estimators, the summary and the plots: `ppllm report` uses it.
    """
    parts = idata["particles"]
    ss = idata["sample_stats"]
    st = idata["smc_stats"]
    n = np.atleast_1d(parts.attrs["n_particles"])
    messages = json.loads(st.attrs.get("messages", "[]"))
    configs = json.loads(st.attrs.get("configs", "[]"))
    kernels = str(parts.attrs.get("kernel", ""))
    budget_keys = [k for k in st.data_vars if k.startswith("budget_")]
    out = []
    for c in range(parts.sizes["chain"]):
        N = int(n[c])
        names = [k for k in parts.data_vars if k != "text"]
        columns = {k: [_read_value(v, parts[k].attrs) for v in parts[k].values[c, :N]] for k in names}
        particles = [
            ParticleRecord(str(t), {k: columns[k][i] for k in names})
            for i, t in enumerate(parts["text"].values[c, :N])
        ]
        steps = []
        ess_c = st["ess"].values[c]
        for t in range(st.sizes["step"]):
            if np.isnan(ess_c[t]):
                break
            steps.append(
                StepRecord(
                    t=t,
                    ess=float(ess_c[t]),
                    resampled=bool(st["resampled"].values[c, t]),
                    ancestors=st["ancestors"].values[c, t, :N].astype(np.int64),
                    log_Z_increment=float(st["log_Z_increment"].values[c, t]),
                    n_live=int(st["n_live"].values[c, t]),
                )
            )
        budget = {}
        for k in budget_keys:
            v = float(st[k].values[c])
            if not np.isnan(v):
                budget[k.removeprefix("budget_")] = int(v) if v.is_integer() and k != "budget_seconds" else v
        out.append(
            Posterior(
                particles=particles,
                log_weights=ss["log_weight"].values[c, :N].astype(np.float64),
                log_Z=float(st["log_marginal_likelihood"].values[c]),
                steps=steps,
                budget=budget,
                kernel=kernels,
                config=configs[c] if c < len(configs) else {},
                message=messages[c] if c < len(messages) else None,
            )
        )
    return out


def variable_array(values: Sequence[Any]) -> np.ndarray:
    """A column for netCDF: float64 for numbers (None → NaN), int64 for ints, else strings."""
    vals = [_scalar(v) for v in values]
    if all(isinstance(v, bool | np.bool_) for v in vals) and vals:
        return np.array(vals, dtype=bool)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in vals) and vals:
        return np.array(vals, dtype=np.int64)
    if all(v is None or isinstance(v, int | float | np.integer | np.floating) for v in vals):
        return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
    return np.array(["" if v is None else str(v) for v in vals], dtype=str)


# ---------------------------------------------------------------------- helpers
def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz announces its 1.0 refactor on import
        import arviz as az
        import xarray as xr
    return az, xr


def _quiet(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "smc_stats is not a standard group"
        return fn()


def _chain_seed(seed: int, chain: int) -> int:
    return int(np.random.SeedSequence([seed, chain]).generate_state(1)[0])


def _pad2(rows: Sequence[Sequence[Any]], width: int, like: np.ndarray | None = None) -> np.ndarray:
    """Stack ragged rows into (len(rows), width), padding with NaN (numbers), −1 (ints), "" (text)."""
    cols = [variable_array(r) for r in rows]
    kinds = {c.dtype.kind for c in cols if len(c)}
    if like is not None:
        kinds = {like.dtype.kind}
    if kinds & {"U", "S", "O"}:
        out = np.full((len(rows), width), "", dtype=object)
        cols = [c.astype(str) for c in cols]
    elif kinds == {"b"}:
        # keep booleans exact when nothing is padded; otherwise fall back to float
        ragged = any(len(c) < width for c in cols)
        out = np.full((len(rows), width), np.nan) if ragged else np.zeros((len(rows), width), dtype=bool)
    elif kinds == {"i"}:
        out = np.full((len(rows), width), -1, dtype=np.int64)
    else:
        out = np.full((len(rows), width), np.nan)
    for i, c in enumerate(cols):
        out[i, : len(c)] = c
    if out.dtype == object:
        out = out.astype(str)
    return out


def _steps(runs: Sequence[Posterior], T: int, attr: str, fill: float) -> np.ndarray:
    out = np.full((len(runs), T), fill, dtype=np.float64)
    for c, r in enumerate(runs):
        for t, s in enumerate(r.steps):
            out[c, t] = float(getattr(s, attr))
    return out


def _default_variables(example: Any, variables: Variables | None) -> dict[str, Callable[[Any], Any]]:
    if variables:
        return dict(variables)
    if isinstance(example, Mapping):
        return {str(k): (lambda x, k=k: x[k]) for k in example}
    if isinstance(example, Program):
        return {"text": particle_text}
    return {"x": _identity}


def _identity(x: Any) -> Any:
    return x


def _scalar(v: Any) -> Any:
    if isinstance(v, np.ndarray) and v.shape == ():
        return v.item()
    if hasattr(v, "item") and callable(v.item) and getattr(v, "shape", None) == ():
        return v.item()  # torch / jax scalars
    return v


def _integer_or_none(values: Any) -> bool:
    seen = False
    for v in values:
        v = _scalar(v)
        if v is None:
            continue
        if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_):
            return False
        seen = True
    return seen


def _read_value(v: Any, attrs: Mapping[str, Any]) -> Any:
    v = _scalar(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    if attrs.get("integer") and isinstance(v, float):
        return int(v)
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _json_float(x: float) -> float | str:
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)  # JSON has no infinities: "-inf"
    return x


def _json_value(v: Any) -> Any:
    v = _scalar(v)
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return _json_float(v)
    return str(v)


def _budget_text(budget: Mapping[str, Any]) -> str:
    parts = []
    for k, v in budget.items():
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)
