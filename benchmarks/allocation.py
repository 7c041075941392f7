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

Self-consistency on tiny-arith (`--arith N`, default 100 problems; 8 with --quick): a pool of
64 answers per held-out problem (temperature 1); agreement of the majority of the samples
spent with the majority of the whole pool, against the average samples per problem, for
uniform k, PETS offline (optimistic knowledge gradient, Dirichlet(1 + counts) over the
answers seen so far plus a slot for an unseen one, one first sample each) and Beta early stopping at several confidences.

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


# ---------------------------------------------------------------------- self-consistency on tiny-arith
def arith_pools(n_problems: int, pool: int, seed: int = 0) -> tuple[list[list], list]:
    """`pool` independent answers per held-out problem (tiny-arith, temperature 1)."""
    import benchmarks.scaling_arith as sa
    from ppllm.kernels import smc
    from ppllm.tasks.arith.data import heldout_problems

    ctx = sa._load(None, None)
    problems = heldout_problems(n_problems)
    pools = []
    for i, p in enumerate(problems):
        post = smc.run(sa.program_for(ctx, "exact", p.operands, "none"), pool, seed=seed + i, ess_threshold=0.0)
        pools.append([q.answer for q in post.particles])
    return pools, [p.answer for p in problems]


def arith_allocation(names: list[str], n_problems: int, rounds: int, batch: int, group: int, seed: int = 0) -> dict:
    """Allocation with the tiny LM as the policy: each round every allocator picks `batch` of
    `n_problems` held-out problems, each gets `group` samples at the round's temperature, the
    reward is correctness. Drift: the temperature falls linearly from 1.6 to 0.6 over the
    rounds (a policy that sharpens), so every problem's success rate moves."""
    import benchmarks.scaling_arith as sa
    from ppllm.kernels import smc
    from ppllm.tasks.arith.data import heldout_problems
    from ppllm_models.math_reasoning import MathReasoning

    ctx = sa._load(None, None)
    problems = heldout_problems(n_problems)
    out = {}
    for name in names:
        alloc = ALLOCATORS[name](group)
        state = alloc.init(n_problems)
        rng = SeededRng(seed)
        informative = groups = 0
        for t in range(rounds):
            temp = 1.6 - 1.0 * t / max(rounds - 1, 1)
            picked = alloc.allocate(state, batch, rng.child("round", t))
            outcomes = {}
            for i in picked:
                prog = MathReasoning.tiny_arith(ctx["lm"], ctx["exact"], *problems[i].operands, weighting="none",
                                                aggregation="last", potential="odds", temperature=temp)
                post = smc.run(prog, group, seed=seed * 100_003 + t * 1_009 + i, ess_threshold=0.0)
                r = [float(p.answer == problems[i].answer) for p in post.particles]
                informative += bool(0 < sum(r) < group)
                groups += 1
                outcomes[i] = r
            state = alloc.update(state, outcomes)
        lo, hi = _wilson(informative, groups)
        out[name] = {"informative_per_group": informative / groups, "low": lo, "high": hi, "groups": groups}
    return out


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def _majority(answers: list) -> object:
    counts: dict = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: counts[a])  # first seen among the most frequent


def self_consistency(pools: list[list]) -> dict:
    """Agreement with each question's full-pool majority, against average samples used."""
    from ppllm.runs.self_consistency import beta_should_stop

    full = [_majority(p) for p in pools]
    n, pool = len(pools), len(pools[0])
    out: dict = {"uniform": [], "okg": [], "beta_stop": []}
    for k in (1, 2, 4, 8, 16, 32):
        if k <= pool:
            agree = np.mean([_majority(p[:k]) == f for p, f in zip(pools, full, strict=True)])
            out["uniform"].append({"samples": k, "agreement": float(agree)})
    for conf in (0.8, 0.9, 0.95, 0.99):
        used, agree = [], []
        for p, f in zip(pools, full, strict=True):
            k = 1
            while k < pool and not beta_should_stop(list(_counts(p[:k]).values()), confidence=conf):
                k += 1
            used.append(k)
            agree.append(_majority(p[:k]) == f)
        out["beta_stop"].append({"confidence": conf, "samples": float(np.mean(used)), "agreement": float(np.mean(agree))})
    for avg in (2, 4, 8, 16):
        if avg > pool:
            continue
        k = [1] * n
        gains = [_okg_gain(pools[q], k[q]) for q in range(n)]
        for _ in range(avg * n - n):
            q = int(np.argmax(gains))
            if gains[q] < 0:
                break
            k[q] += 1
            gains[q] = _okg_gain(pools[q], k[q])
        agree = np.mean([_majority(pools[q][: k[q]]) == full[q] for q in range(n)])
        out["okg"].append({"samples": float(np.mean(k)), "agreement": float(agree)})
    return out


def _okg_gain(pool: list, k: int) -> float:
    """PETS's optimistic gain of one more sample: Dirichlet(1 + counts) over the answers seen
    plus one slot, at its prior 1, for an answer not seen yet (free-form answers have no
    fixed option set; without it a question seen once would look settled)."""
    from ppllm.runs.self_consistency import okg_gain

    if k >= len(pool):
        return -1.0
    return okg_gain([v + 1.0 for v in _counts(pool[:k]).values()] + [1.0], n_samples=2000)


def _counts(answers: list) -> dict:
    c: dict = {}
    for a in answers:
        c[a] = c.get(a, 0) + 1
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 seeds, 30 rounds (seconds)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16, help="prompts per round")
    ap.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    ap.add_argument("--arith", type=int, default=None, help="tiny-arith problems for the self-consistency part")
    ap.add_argument("--real", type=int, default=500, help="tiny-arith problems for the allocation runs (0: skip)")
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
    n_real = 0 if args.quick else args.real
    if n_real:
        record["tiny_arith_allocation"] = {
            "problems": n_real, "rounds": 30, "batch": 16, "group": 8, "temperature": "1.6 → 0.6",
            "results": arith_allocation(["uniform", "closest_to_half", "thompson_eig", "thompson_decay"], n_real, 30, 16, 8),
        }
    n_arith = args.arith if args.arith is not None else (8 if args.quick else 100)
    if n_arith:
        import torch

        torch.set_num_threads(1)
        pools, _ = arith_pools(n_arith, 32 if args.quick else 64)
        record["self_consistency"] = {"problems": n_arith, "pool": len(pools[0]), **self_consistency(pools)}
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
    if "tiny_arith_allocation" in record:
        rec = record["tiny_arith_allocation"]
        print(f"allocation on tiny-arith ({rec['problems']} problems, temperature {rec['temperature']})")
        for k, v in rec["results"].items():
            print(f"  {k:24s} informative {v['informative_per_group']:.3f} [{v['low']:.3f}, {v['high']:.3f}] "
                  f"of {v['groups']} groups")
    if "self_consistency" in record:
        sc_rec = record["self_consistency"]
        print(f"self-consistency on tiny-arith ({sc_rec['problems']} problems, pools of {sc_rec['pool']})")
        for method in ("uniform", "okg", "beta_stop"):
            print(f"  {method:10s} " + ", ".join(f"{r['samples']:.1f} samples → {r['agreement']:.3f}" for r in sc_rec[method]))
    gain = {sc: results[sc]["thompson_nondegenerate"]["informative_per_group"]["mean"]
            / results[sc]["uniform"]["informative_per_group"]["mean"] for sc in SCENARIOS}
    print("RESULT " + " ".join(f"thompson_vs_uniform_{sc}={g:.2f}" for sc, g in gain.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
