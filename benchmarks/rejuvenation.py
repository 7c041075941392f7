"""Rejuvenation on tiny-arith: resample-move SMC against plain SMC and particle Gibbs, by tokens.

    python -m benchmarks.rejuvenation [--quick] [--problems N]

Every method runs the same program (`MathReasoning.tiny_arith`, ratio weighting, the learned
PRM as the potential: `last` aggregation, odds) on held-out problems, at several sizes:
  smc       SMC resampling every step (a consistent particle filter), N ∈ {4, 8, 16, 32}
  rm        resample-move: the same SMC plus one suffix-regeneration MH move per particle after
            every step's resampling (exact: the schedule does not depend on the particles),
            N ∈ {4, 8, 16}
  pg        particle Gibbs, N particles × 3 sweeps, N ∈ {4, 8}
Budget = tokens actually run through the model (the hf backend's new, uncached positions;
prefixes reused from the KV cache cost nothing), so methods are compared at equal token cost.
Per run: accuracy of the weighted posterior's most probable answer, distinct answers among
the final particles, surviving lineages (distinct generation-0 ancestors), final ESS.

Two potentials: odds(r̂) (τ = 1; the learned PRM is flat, so weights barely differ) and
odds(r̂)^(1/0.25) (sharper: resampling concentrates the population, moves have work to do).
Writes benchmarks/out/rejuvenation[_quick].json and, for full runs, docs/benchmarks/
rejuvenation.{json,png}. Ends with `RESULT key=value ...`: the accuracy of each method at
the token budget of SMC with 16 particles (linear interpolation over each method's sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

OUT = Path("benchmarks/out")
DOCS = Path("docs/benchmarks")
SIZES = {"smc": (4, 8, 16, 32), "rm": (4, 8, 16), "pg": (4, 8)}
QUICK_SIZES = {"smc": (4, 8), "rm": (4,), "pg": (4,)}


def run_one(lm, prm, method: str, n: int, operands, seed: int, tau: float) -> dict:
    from ppllm.kernels import particle_gibbs, resample_move, smc
    from ppllm_models.math_reasoning import MathReasoning

    prog = MathReasoning.tiny_arith(lm, prm, *operands, weighting="ratio", aggregation="last",
                                    potential="odds", tau=tau)
    lm.clear_cache()  # every run pays for its own tokens (no prefix left over from another run)
    prm.clear_cache()
    before = lm.stats["new_tokens"]
    t0 = time.perf_counter()
    if method == "smc":
        post = smc.run(prog, n, seed=seed, ess_threshold=1.0)
    elif method == "rm":
        post = resample_move.run(prog, n, seed=seed, n_moves=1, ess_threshold=1.0)
    else:
        post = particle_gibbs.run(prog, n, 3, seed=seed, select="sample", answer_fn=lambda p: p.answer)
    seconds = time.perf_counter() - t0
    answers = [p.answer for p in post.particles]
    pred = post.map_value(lambda p: p.answer) if post.ok else None
    moved = [s.extra for s in post.steps if "acceptance" in s.extra]
    return {
        "method": method, "n": n, "tokens": lm.stats["new_tokens"] - before, "seconds": seconds,
        "prediction": pred, "distinct_answers": len({a for a in answers if a is not None}),
        "lineages": int(post.n_lineages()[0]) if post.ancestry else post.n, "ess": float(post.ess),
        "acceptance": float(np.mean([m["acceptance"] for m in moved])) if moved else None,
    }


def summarise(rows: list[dict], sizes: dict) -> dict:
    out: dict = {}
    for method, ns in sizes.items():
        out[method] = []
        for n in ns:
            rs = [r for r in rows if r["method"] == method and r["n"] == n]
            if not rs:
                continue
            acc = np.array([r["correct"] for r in rs], dtype=float)
            acc_rates = [r["acceptance"] for r in rs if r["acceptance"] is not None]
            out[method].append({
                "n": n, "accuracy": float(acc.mean()), "stderr": float(acc.std(ddof=1) / np.sqrt(len(acc))) if len(acc) > 1 else 0.0,
                "tokens": float(np.mean([r["tokens"] for r in rs])), "seconds": float(np.mean([r["seconds"] for r in rs])),
                "distinct_answers": float(np.mean([r["distinct_answers"] for r in rs])),
                "lineages": float(np.mean([r["lineages"] for r in rs])), "ess": float(np.mean([r["ess"] for r in rs])),
                "acceptance": float(np.mean(acc_rates)) if acc_rates else None, "problems": len(rs),
            })
    return out


def at_tokens(points: list[dict], tokens: float, key: str = "accuracy") -> float | None:
    """`key` linearly interpolated at a token budget (None outside the measured range)."""
    xs = [p["tokens"] for p in points]
    if not xs or tokens < min(xs) or tokens > max(xs):
        return None
    return float(np.interp(tokens, xs, [p[key] for p in points]))


def table(summary: dict) -> str:
    lines = ["| method | N | tokens/problem | accuracy | distinct answers | lineages | final ESS | MH acceptance | s/problem |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, pts in summary.items():
        for p in pts:
            acc = "—" if p["acceptance"] is None else f"{p['acceptance']:.2f}"
            lines.append(f"| {method} | {p['n']} | {p['tokens']:.0f} | {p['accuracy']:.3f} ± {p['stderr']:.3f} | "
                         f"{p['distinct_answers']:.2f} | {p['lineages']:.2f} | {p['ess']:.2f} | {acc} | {p['seconds']:.2f} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for method, pts in summary.items():
        x = [p["tokens"] for p in pts]
        a1.errorbar(x, [p["accuracy"] for p in pts], yerr=[p["stderr"] for p in pts], marker="o", label=method, capsize=3)
        a2.plot(x, [p["distinct_answers"] for p in pts], marker="o", label=method)
    for ax, title in ((a1, "accuracy (weighted posterior mode)"), (a2, "distinct answers among final particles")):
        ax.set_xscale("log")
        ax.set_xlabel("tokens run through the model per problem")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few problems, small sizes (< 1 min)")
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--taus", default="1,0.25", help="potential temperatures: odds(r̂)^(1/τ), comma-separated")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from ppllm import zoo
    from ppllm.tasks.arith import LearnedArithPRM, heldout_problems

    sizes = QUICK_SIZES if args.quick else SIZES
    problems = heldout_problems(args.problems or (6 if args.quick else 100))
    lm, prm = zoo.load_lm("tiny-arith"), LearnedArithPRM.load()
    start = time.perf_counter()
    taus = [float(t) for t in args.taus.split(",")]
    results = {}
    for tau in taus:
        rows = []
        for i, problem in enumerate(problems):
            for method, ns in sizes.items():
                for n in ns:
                    row = run_one(lm, prm, method, n, problem.operands, args.seed + i, tau)
                    row.update(problem=i, correct=row["prediction"] == problem.answer)
                    rows.append(row)
            if not args.quick and (i + 1) % 25 == 0:
                print(f"tau={tau}: {i + 1}/{len(problems)} problems, {time.perf_counter() - start:.0f} s", flush=True)
        summary = summarise(rows, sizes)
        budget = next((p["tokens"] for p in summary["smc"] if p["n"] == (16 if not args.quick else 8)), None)
        at = {m: at_tokens(pts, budget) for m, pts in summary.items()} if budget else {}
        results[str(tau)] = {"summary": summary, "budget_tokens": budget, "accuracy_at_budget": at}
    record = {"config": {"problems": len(problems), "sizes": sizes, "seed": args.seed, "prm": "learned-arith",
                         "taus": taus, "program": "MathReasoning.tiny_arith(weighting=ratio, aggregation=last, "
                                                  "potential=odds, tau=τ)"},
              "results": results, "seconds": time.perf_counter() - start}
    name = "rejuvenation_quick" if args.quick else "rejuvenation"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=1))
    for tau, res in results.items():
        print(f"\npotential odds(r̂)^(1/{tau}):\n" + table(res["summary"]))
    if not args.quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "rejuvenation.json").write_text(json.dumps(record, indent=1))
        plot({f"{m} τ={tau}": pts for tau, res in results.items() for m, pts in res["summary"].items()},
             DOCS / "rejuvenation.png")
    fields = " ".join(f"acc_{m}_tau{tau}={v:.3f}" if v is not None else f"acc_{m}_tau{tau}=nan"
                      for tau, res in results.items() for m, v in res["accuracy_at_budget"].items())
    print(f"RESULT {fields} seconds={record['seconds']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
