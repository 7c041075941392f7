"""Particle filtering on tiny-arith, this tree against an earlier revision, in fresh processes.

    python -m benchmarks.pf_arith [--quick] [--rev REV] [--problems 60] [--budgets 8,32]

The `scaling_arith` workload: held-out problems, the Puri et al. particle filter with the
exact verifier, `last` aggregation, one torch thread. Each side runs in its own subprocess,
importing `benchmarks.scaling_arith` from its own tree (the earlier revision is checked out
with `git worktree` under benchmarks/out/), so both run the same problems through the same
benchmark code of their time; sides alternate per budget and `--repeats` times. Reported:
problems per second (wall time of the kernel runs, model load excluded), accuracy, and the
ratio current / earlier. Results go to benchmarks/out/pf_arith[_quick].json (`--docs`:
docs/benchmarks/pf_arith.json). The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DOCS = ROOT / "docs" / "benchmarks"
DEFAULT_REV = "aba3aec"  # main before the kernel protocol and the throughput work

# Runs inside the tree under test, as `python -c`: prints one JSON line.
WORKER = r"""
import json, os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
import benchmarks.scaling_arith as sa
try:
    from ppllm.tasks.arith.data import heldout_problems
except ImportError:
    from ppllm.zoo.arith_data import heldout_problems
n, budget, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = sa._load(None, None)
problems = heldout_problems(n)
sa.run_method(ctx, "pf_puri", "exact", problems[0].operands, budget, seed)  # warm-up
start = time.perf_counter()
answers, tokens = [], 0
for p in problems:
    answer, b = sa.run_method(ctx, "pf_puri", "exact", p.operands, budget, seed)
    answers.append(answer)
    tokens += b.get("tokens") or 0
seconds = time.perf_counter() - start
correct = sum(a == p.answer for a, p in zip(answers, problems))
print(json.dumps({"seconds": seconds, "correct": correct, "problems": n, "tokens": tokens, "answers": answers}))
"""


def worktree(rev: str) -> Path:
    """A checkout of `rev` under benchmarks/out/ (made once; reused while it matches)."""
    path = OUT / f"rev-{rev}"
    if not (path / "ppllm").is_dir():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), rev],
                       check=True, capture_output=True)
    return path


def run_side(tree: Path, problems: int, budget: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(problems), str(budget), str(seed)], cwd=tree,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 problems, budget 8, one repeat (< 1 min)")
    ap.add_argument("--rev", default=DEFAULT_REV, help=f"the earlier revision (default {DEFAULT_REV})")
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--budgets", default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", action="store_true")
    args = ap.parse_args(argv)
    n = args.problems or (8 if args.quick else 60)
    budgets = [int(b) for b in (args.budgets or ("8" if args.quick else "8,32")).split(",")]
    repeats = args.repeats or (1 if args.quick else 2)
    base = worktree(args.rev)
    rows = []
    for budget in budgets:
        for r in range(repeats):
            sides = [("current", ROOT), ("earlier", base)]
            if r % 2:
                sides.reverse()  # alternate which side runs first
            got = {name: run_side(tree, n, budget, args.seed) for name, tree in sides}
            row = {"budget": budget, "repeat": r}
            for name in ("current", "earlier"):
                g = got[name]
                row[name] = {"problems_per_s": g["problems"] / g["seconds"], "seconds": g["seconds"],
                             "accuracy": g["correct"] / g["problems"], "tokens": g["tokens"]}
            row["ratio"] = row["current"]["problems_per_s"] / row["earlier"]["problems_per_s"]
            rows.append(row)
            print(f"budget {budget} repeat {r}: current {row['current']['problems_per_s']:.2f} problems/s "
                  f"(accuracy {row['current']['accuracy']:.2f}), earlier {row['earlier']['problems_per_s']:.2f} "
                  f"(accuracy {row['earlier']['accuracy']:.2f}) → {row['ratio']:.2f}×", flush=True)
    summary = {"config": {"problems": n, "budgets": budgets, "repeats": repeats, "rev": args.rev,
                          "method": "pf_puri", "prm": "exact", "seed": args.seed}, "rows": rows}
    by_budget = {}
    for budget in budgets:
        mine = [r for r in rows if r["budget"] == budget]
        ratios = sorted(r["ratio"] for r in mine)
        by_budget[budget] = {"ratio_median": ratios[len(ratios) // 2], "ratios": ratios,
                             "current_accuracy": mine[0]["current"]["accuracy"],
                             "earlier_accuracy": mine[0]["earlier"]["accuracy"]}
    summary["by_budget"] = by_budget
    OUT.mkdir(parents=True, exist_ok=True)
    name = "pf_arith_quick" if args.quick else "pf_arith"
    (OUT / f"{name}.json").write_text(json.dumps(summary, indent=1))
    if args.docs:
        (DOCS / "pf_arith.json").write_text(json.dumps(summary, indent=1))
    print("RESULT " + " ".join(
        f"b{b}_ratio={v['ratio_median']:.2f} b{b}_acc={v['current_accuracy']:.2f}/{v['earlier_accuracy']:.2f}"
        for b, v in by_budget.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
