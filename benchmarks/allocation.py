"""Rollout allocation on a simulator with known, drifting per-prompt success probabilities.

    python -m benchmarks.allocation [--quick] [--seeds 20] [--rounds 60]

Each round an allocator picks B of P prompts; each picked prompt gets a group of G rollouts,
Bernoulli(θ_i(t)). A group is *informative* when its rewards are not all equal (a GRPO
group with non-zero advantage). Reported per scenario and allocator, with 95 % intervals
over seeds (mean ± 1.96 standard errors): the informative groups per rollout spent (×G, i.e.
the fraction of groups that are informative), and, for the Beta-posterior allocators, the
tracking error mean_i |E[θ_i] − θ_i(t)| at the end of the run.

Scenarios:
- `spread`: θ ~ Beta(0.4, 0.4), static — most prompts nearly always or never solved, so
  picking the uncertain ones pays;
- `drift`: θ starts from the spread and each prompt's logit moves linearly with its own rate
  (a policy improving on some prompts and forgetting others), so stale counts mislead;
- `middling`: θ ~ U(0.35, 0.65), static — every group is informative about as often, so
  no allocator can beat uniform.

Figures: benchmarks/out/allocation[_quick].json; without --quick also
docs/benchmarks/allocation.{json,png}. The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ppllm.rng import SeededRng
from ppllm.runs.allocators import BetaThompson, ClosestToHalf, Uniform

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DOCS = ROOT / "docs" / "benchmarks"

ALLOCATORS = {
    "uniform": lambda g: Uniform(),
    "closest_to_half": lambda g: ClosestToHalf(group_size=g),
    "thompson_nondegenerate": lambda g: BetaThompson(score="nondegenerate", group_size=g),
    "thompson_eig": lambda g: BetaThompson(score="eig", group_size=g),
    "thompson_decay": lambda g: BetaThompson(score="nondegenerate", group_size=g, rho_fast=0.97, rho_slow=0.8),
}
SCENARIOS = ("spread", "drift", "middling")


def thetas(scenario: str, n: int, rounds: int, gen: np.random.Generator) -> np.ndarray:
    """(rounds, n) true success probabilities."""
    if scenario == "middling":
        return np.tile(gen.uniform(0.35, 0.65, n), (rounds, 1))
    base = np.clip(gen.beta(0.4, 0.4, n), 1e-3, 1 - 1e-3)
    if scenario == "spread":
        return np.tile(base, (rounds, 1))
    logit = np.log(base / (1 - base))
    rate = gen.normal(0.0, 6.0 / rounds, n)  # up to a few logits over the run
    t = np.arange(rounds)[:, None]
    return 1 / (1 + np.exp(-(logit + rate * t)))


def simulate(name: str, scenario: str, seed: int, n: int, rounds: int, batch: int, group: int) -> dict:
    gen = np.random.default_rng([seed, SCENARIOS.index(scenario)])
    theta = thetas(scenario, n, rounds, gen)
    alloc = ALLOCATORS[name](group)
    state = alloc.init(n)
    rng = SeededRng(seed)
    informative = 0
    for t in range(rounds):
        picked = alloc.allocate(state, batch, rng)
        outcomes = {}
        for i in picked:
            r = (gen.random(group) < theta[t, i]).astype(float)
            informative += bool(0 < r.sum() < group)
            outcomes[i] = r.tolist()
        state = alloc.update(state, outcomes)
    row = {"informative_per_group": informative / (rounds * batch)}
    if "alpha" in state:
        a, b = np.asarray(state["alpha"]), np.asarray(state["beta"])
        row["tracking_error"] = float(np.mean(np.abs(a / (a + b) - theta[-1])))
    return row


def summarise(values: list[float]) -> dict:
    v = np.asarray(values)
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "low": float(v.mean() - half), "high": float(v.mean() + half), "n": len(v)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(13, 3.8), sharey=True)
    for ax, sc in zip(axes, SCENARIOS, strict=True):
        names = list(results[sc])
        m = [results[sc][k]["informative_per_group"]["mean"] for k in names]
        err = [[mm - results[sc][k]["informative_per_group"]["low"] for k, mm in zip(names, m, strict=True)],
               [results[sc][k]["informative_per_group"]["high"] - mm for k, mm in zip(names, m, strict=True)]]
        ax.barh(range(len(names)), m, xerr=err, color=["0.6"] + ["C0"] * (len(names) - 1), capsize=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(sc)
        ax.set_xlabel("informative groups per group spent")
        ax.set_xlim(0, 1)
    fig.suptitle("allocation on the simulator (95 % intervals over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 seeds, 30 rounds (seconds)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16, help="prompts per round")
    ap.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    args = ap.parse_args(argv)
    seeds = args.seeds or (4 if args.quick else 20)
    rounds = args.rounds or (30 if args.quick else 60)
    results: dict = {}
    for sc in SCENARIOS:
        results[sc] = {}
        for name in ALLOCATORS:
            rows = [simulate(name, sc, s, args.prompts, rounds, args.batch, args.group) for s in range(seeds)]
            results[sc][name] = {k: summarise([r[k] for r in rows]) for k in rows[0]}
    record = {"config": {"seeds": seeds, "rounds": rounds, "prompts": args.prompts, "batch": args.batch,
                         "group": args.group}, "results": results}
    OUT.mkdir(parents=True, exist_ok=True)
    name = "allocation_quick" if args.quick else "allocation"
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=1))
    if not args.quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "allocation.json").write_text(json.dumps(record, indent=1))
        plot(results, DOCS / "allocation.png")
    for sc in SCENARIOS:
        print(sc)
        for k, v in results[sc].items():
            ig = v["informative_per_group"]
            te = v.get("tracking_error")
            tail = f", tracking error {te['mean']:.3f} [{te['low']:.3f}, {te['high']:.3f}]" if te else ""
            print(f"  {k:24s} informative {ig['mean']:.3f} [{ig['low']:.3f}, {ig['high']:.3f}]{tail}")
    gain = {sc: results[sc]["thompson_nondegenerate"]["informative_per_group"]["mean"]
            / results[sc]["uniform"]["informative_per_group"]["mean"] for sc in SCENARIOS}
    print("RESULT " + " ".join(f"thompson_vs_uniform_{sc}={g:.2f}" for sc, g in gain.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
