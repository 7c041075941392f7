"""Inference scaling on tiny-arith: accuracy against budget for every particle kernel and baseline.

    python -m benchmarks.scaling_arith [--quick] [--problems N] [--budgets 1,2,4] [--jobs 2]

Methods, all at equal budget (number of full generations; particle Gibbs: particles ×
iterations) and with the same program (`models/math_reasoning.py`, `last` aggregation):
  pf_puri   particle filter, published weighting (softmax of logit r̂, weights reset)
  pf_ratio  particle filter, consistent weighting (Φ_t/Φ_{t−1}, Φ = odds(r̂)), same potential
  pg        particle Gibbs, ratio weighting; 2 sweeps from budget 4, 4 sweeps from 32
  bon, wbon, majority   best-of-N, weighted best-of-N, self-consistency
  beam      its_hub beam search, beam width min(4, budget)
  dvts      diverse verifier tree search, M = min(4, budget)
PF, PG, BoN, beam and DVTS select the highest final score ("argmax"), as published.
Each is run with the learned PRM (`LearnedArithPRM`) and with the exact verifier.

BoN, WBoN and majority vote at budget b use the first b of one run's 64 samples: particle
streams are keyed by (seed, step, slot), so these are exactly the samples a budget-b run
with the same seed draws (checked in --quick), and one set of samples serves all three.

Rows go to benchmarks/out/scaling_arith[_quick].jsonl as they finish (`--resume` skips
problems already there); the summary goes to the matching .json, and with `--docs` to
docs/benchmarks/scaling_arith.{json,png}. The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ppllm.kernels import (  # noqa: E402
    beam_search,
    best_of_n,
    dvts,
    particle_filter,
    particle_gibbs,
    selection,  # noqa: E402
    smc,
)
from ppllm.rng import SeededRng  # noqa: E402

METHODS = ("pf_puri", "pf_ratio", "pg", "bon", "wbon", "majority", "beam", "dvts")
SAMPLING = ("bon", "wbon", "majority")
PRMS = ("learned", "exact")
BUDGETS = (1, 2, 4, 8, 16, 32, 64)
OUT = Path("benchmarks/out")
DOCS = Path("docs/benchmarks")

_CTX: dict = {}  # per process: the LM and the PRMs, loaded once


def _load(lm_path: str | None, prm_path: str | None) -> dict:
    if not _CTX:
        torch.set_num_threads(1)
        from ppllm import zoo
        from ppllm.tasks.arith import ExactArithVerifier, LearnedArithPRM

        _CTX["lm"] = zoo.load_lm(lm_path or "tiny-arith")
        _CTX["learned"] = LearnedArithPRM.load(prm_path)
        _CTX["exact"] = ExactArithVerifier()
    return _CTX


def program_for(ctx: dict, prm: str, operands: tuple[int, ...], weighting: str):
    from ppllm_models.math_reasoning import MathReasoning

    return MathReasoning.tiny_arith(
        ctx["lm"], ctx[prm], *operands, weighting=weighting, aggregation="last", potential="odds"
    )


def pg_iterations(budget: int) -> int:
    return 1 if budget < 4 else 2 if budget < 32 else 4


def _answer(p) -> int | None:
    return p.answer


def _budget_row(post) -> dict:
    b = post.budget
    return {k: b.get(k) for k in ("lm_calls", "requests", "unique_requests", "tokens", "seconds")}


def run_method(ctx: dict, method: str, prm: str, operands, budget: int, seed: int):
    """One kernel run: (answer, budget figures)."""
    if method in ("pf_puri", "pf_ratio"):
        weighting = method[3:]
        prog = program_for(ctx, prm, operands, "ratio" if weighting == "ratio" else "none")
        post = particle_filter.run(prog, budget, seed=seed, weighting=weighting, select="argmax", answer_fn=_answer)
    elif method == "pg":
        it = pg_iterations(budget)
        post = particle_gibbs.run(program_for(ctx, prm, operands, "ratio"), budget // it, it, seed=seed,
                                  select="argmax", answer_fn=_answer)
    elif method in ("beam", "dvts"):
        kernel = beam_search.run if method == "beam" else dvts.run
        post = kernel(program_for(ctx, prm, operands, "none"), budget, min(4, budget), seed=seed,
                      answer_fn=_answer)
    else:
        raise ValueError(method)
    return post.extras.get("answer"), _budget_row(post)


def sampling_rows(ctx: dict, problem_id: int, operands, budgets, prms, seed: int) -> list[dict]:
    """BoN, WBoN and majority vote at every budget from one run of max(budgets) samples."""
    n = max(budgets)
    post = smc.run(program_for(ctx, "exact", operands, "none"), n, seed=seed, ess_threshold=0.0)
    texts = [p.steps for p in post.particles]
    answers = [p.answer for p in post.particles]
    n_tokens = [len(p.ctx) for p in post.particles]
    question = post.particles[0].question
    scores = {"exact": np.array([p.prefix_score for p in post.particles])}
    if "learned" in prms:
        t0 = time.perf_counter()
        got = ctx["learned"].score_many([(question, s) for s in texts])
        scores["learned"] = np.array([float(g[-1]) for g in got])  # `last` aggregation
        learned_seconds = time.perf_counter() - t0
    rows = []
    for prm in prms:
        for b in budgets:
            s, a = scores[prm][:b], answers[:b]
            picks = {
                "bon": a[selection.pick_best(s)],
                "wbon": selection.pick_weighted(a, s)[0],
                "majority": selection.pick_majority(a, SeededRng(seed).child("tie", b))[0],
            }
            share = b / n
            cost = {"lm_calls": None, "requests": None, "unique_requests": None,
                    "tokens": int(sum(n_tokens[:b])),
                    "seconds": post.budget["seconds"] * share + (learned_seconds * share if prm == "learned" else 0)}
            for method, ans in picks.items():
                rows.append({"problem": problem_id, "prm": prm, "method": method, "budget": b,
                             "answer": ans, **cost})
    return rows


def run_problem(args: tuple) -> list[dict]:
    problem_id, operands, truth, budgets, methods, prms, seed, lm_path, prm_path = args
    ctx = _load(lm_path, prm_path)
    rows = []
    if any(m in SAMPLING for m in methods):
        rows += [r for r in sampling_rows(ctx, problem_id, operands, budgets, prms, seed + problem_id)
                 if r["method"] in methods]
    for prm in prms:
        for method in methods:
            if method in SAMPLING:
                continue
            for b in budgets:
                ans, cost = run_method(ctx, method, prm, operands, b, seed + problem_id)
                rows.append({"problem": problem_id, "prm": prm, "method": method, "budget": b,
                             "answer": ans, **cost})
    for r in rows:
        r["correct"] = r["answer"] == truth
    return rows


def summarise(rows: list[dict], budgets, methods, prms) -> dict:
    acc: dict = {}
    for prm in prms:
        for m in methods:
            for b in budgets:
                hits = [r["correct"] for r in rows if (r["prm"], r["method"], r["budget"]) == (prm, m, b)]
                if hits:
                    acc.setdefault(prm, {}).setdefault(m, {})[str(b)] = {
                        "accuracy": float(np.mean(hits)), "n": len(hits),
                        "se": float(np.std(hits) / np.sqrt(len(hits))),
                        "seconds": float(np.mean([r["seconds"] for r in rows if (r["prm"], r["method"], r["budget"]) == (prm, m, b)])),
                    }
    return acc


def table(acc: dict, budgets, methods, prms) -> str:
    lines = []
    for prm in prms:
        if prm not in acc:
            continue
        n = next(iter(next(iter(acc[prm].values())).values()))["n"]
        lines.append(f"\n{prm} PRM ({n} problems): accuracy (%) by budget")
        lines.append("| method | " + " | ".join(str(b) for b in budgets) + " |")
        lines.append("|---|" + "---:|" * len(budgets))
        for m in methods:
            cells = [f"{100 * acc[prm][m][str(b)]['accuracy']:.1f}" if str(b) in acc[prm].get(m, {}) else "–"
                     for b in budgets]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def result_line(acc: dict, budgets, methods) -> str:
    parts = []
    for prm, by_m in acc.items():
        for b in (8, 64) if 64 in budgets else (budgets[len(budgets) // 2], budgets[-1]):
            base = by_m.get("bon", {}).get(str(b), {}).get("accuracy")
            for m in methods:
                a = by_m.get(m, {}).get(str(b), {}).get("accuracy")
                if a is None:
                    continue
                parts.append(f"{prm}_{m}@{b}={a:.3f}")
                if m.startswith("pf") and base:
                    parts.append(f"{prm}_{m}_vs_bon@{b}={a / base:.3f}")
    return "RESULT " + " ".join(parts)


def plot(acc: dict, budgets, methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(acc), figsize=(6 * len(acc), 4.2), squeeze=False)
    for ax, (prm, by_m) in zip(axes[0], acc.items(), strict=True):
        for m in methods:
            pts = [(b, by_m[m][str(b)]["accuracy"]) for b in budgets if str(b) in by_m.get(m, {})]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(budgets), [str(b) for b in budgets])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("budget (generations)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"tiny-arith, {prm} PRM")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def check_nested_samples(ctx: dict, operands, seed: int) -> None:
    """The first b of 64 samples are what a budget-b best-of-N run with the seed draws."""
    prog = program_for(ctx, "exact", operands, "none")
    big = smc.run(prog, 8, seed=seed, ess_threshold=0.0)
    small = best_of_n.run(prog, 3, seed=seed)
    assert [p.text for p in small.particles] == [p.text for p in big.particles[:3]], "slot streams differ"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few problems, small budgets (< 1 min)")
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--budgets", default=None, help="comma-separated, e.g. 1,2,4,8")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--prms", default=",".join(PRMS))
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="skip problems already in the .jsonl")
    ap.add_argument("--docs", action="store_true", help="also write docs/benchmarks/scaling_arith.*")
    ap.add_argument("--lm", default=None, help="tiny-arith directory (default: the committed one)")
    ap.add_argument("--prm", default=None, help="arith-prm directory (default: the committed one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from ppllm.tasks.arith.data import heldout_problems

    n_problems = args.problems or (4 if args.quick else 300)
    budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else ((1, 4, 8) if args.quick else BUDGETS)
    methods = tuple(m for m in args.methods.split(",") if m)
    prms = tuple(p for p in args.prms.split(",") if p)
    name = "scaling_arith_quick" if args.quick else "scaling_arith"
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"{name}.jsonl"
    problems = heldout_problems(n_problems)
    done: set[int] = set()
    rows: list[dict] = []
    if args.resume and log.exists():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        done = {r["problem"] for r in rows}
    elif log.exists():
        log.unlink()
    start = time.perf_counter()
    if args.quick:
        check_nested_samples(_load(args.lm, args.prm), problems[0].operands, args.seed)
    todo = [(i, p.operands, p.answer, budgets, methods, prms, args.seed, args.lm, args.prm)
            for i, p in enumerate(problems) if i not in done]
    with log.open("a") as fh:
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                results = pool.map(run_problem, todo)
                for k, got in enumerate(results, 1):
                    _write(fh, got, rows, k, len(todo), start)
        else:
            for k, job in enumerate(todo, 1):
                _write(fh, run_problem(job), rows, k, len(todo), start)
    acc = summarise(rows, budgets, methods, prms)
    elapsed = time.perf_counter() - start
    summary = {"config": {"problems": n_problems, "budgets": budgets, "methods": methods, "prms": prms,
                          "seed": args.seed, "jobs": args.jobs, "aggregation": "last", "potential": "odds"},
               "accuracy": acc, "seconds": elapsed, "n_rows": len(rows)}
    (OUT / f"{name}.json").write_text(json.dumps(summary, indent=1))
    print(table(acc, budgets, methods, prms))
    print(f"\n{len(rows)} runs in {elapsed:.0f} s")
    if args.docs:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "scaling_arith.json").write_text(json.dumps(summary, indent=1))
        plot(acc, budgets, methods, DOCS / "scaling_arith.png")
    print(result_line(acc, budgets, methods))
    return 0


def _write(fh, got: list[dict], rows: list[dict], k: int, total: int, start: float) -> None:
    for r in got:
        fh.write(json.dumps(r) + "\n")
    fh.flush()
    rows.extend(got)
    print(f"  problem {k}/{total} done, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
