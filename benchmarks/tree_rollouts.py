"""Rollout groups grown as trees (TreePO, LATR) against independent sampling, at equal group size.

    python -m benchmarks.tree_rollouts [--quick] [--prompts 200] [--no-smollm2]

For each prompt, a group of G rollouts (G = 8 and 16) from
  independent  G independent samples of the program (`kernels.importance`)
  treepo       a TreePO segment tree: segments of one solution step, forks at the first 4
               boundaries (step width 2, first divergence 2–8), answer lines end paths, a
               path without an answer is regrown from an earlier boundary
  latr         LATR branching from one greedy root (τ_abs 0.15, τ_rel 0.25, pruning by
               ROUGE-L / suffix match 20 and 30 tokens after a birth), mix ratio 1
  latr_mix     the same with mix ratio 0.75 (a quarter independent samples)
The groups of a window of prompts run together (`engine.SharedRounds`), as in the data-set
runner, so every live path of every group shares each batched forward. Reward: the exact
verifier of the final answer (1 if it equals the sum). Per method and G:
  model_tokens   positions the hf backend ran per group (KV-trie misses: what a tree saves)
  path_tokens    Σ over the leaves of their length (prompt included): what a model without
                 prefix sharing would run for them
  trie_saving    1 − model_tokens / path_tokens: the share of positions the KV trie did not
                 recompute (the prompt, and every prefix two paths have in common)
  request_tokens positions the group's requests asked for (distinct per round)
  seconds        wall seconds per group (window wall / groups)
  distinct       distinct final answers per group;  pass@1, pass@G (unbiased, per group)
  informative    fraction of groups whose rewards are not all equal (non-zero advantage)
  branched       per group: LATR branches born (TreePO: forks); pruned: LATR branches pruned
                 (TreePO: paths regrown)

tiny-arith: `--prompts` held-out problems (200; 24 with --quick), temperature 1.
SmolLM2-135M-Instruct: 3 addition questions in its chat template, steps ending at a blank
line (≤ 48 tokens, ≤ 4 steps), G = 8, answer = the last number or \\boxed{}.

Writes benchmarks/out/tree_rollouts[_quick].json; full runs also docs/benchmarks/
tree_rollouts.{json,png}. Last line: `RESULT key=value ...` (tokens per group relative to
independent sampling, informative-group fractions, at G = 8 on tiny-arith).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DOCS = ROOT / "docs" / "benchmarks"
METHODS = ("independent", "treepo", "latr", "latr_mix")


def _threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)


def kernel_call(method: str, G: int, reward: Callable, bad: Callable | None, max_depth: int) -> Callable:
    """(program, seed, engine) -> Posterior for one method at group size G."""
    from ppllm.kernels import importance, latr, treepo

    if method == "independent":
        return lambda prog, seed, engine: importance.run(prog, G, seed=seed, engine=engine)
    if method == "treepo":
        return lambda prog, seed, engine: treepo.run(prog, G, seed=seed, engine=engine, segment_length=1,
                                                     max_depth=max_depth, bad_fn=bad, reward_fn=reward)
    mix = 1.0 if method == "latr" else 0.75
    return lambda prog, seed, engine: latr.run(prog, G, seed=seed, engine=engine, mix_ratio=mix,
                                               prune_steps=[20, 30], edit_threshold=0.0, reward_fn=reward)


def group_figures(post: Any, gold: Any) -> dict[str, float]:
    from ppllm.runs.coverage import pass_at_k

    g = post.extras.get("group", {})
    answers = [getattr(p, "answer", None) for p in post.particles]
    rewards = [1.0 if a is not None and a == gold else 0.0 for a in answers]
    n, c = len(rewards), int(sum(rewards))
    return {"distinct": len({a for a in answers if a is not None}), "pass1": pass_at_k(n, c, 1),
            "passG": pass_at_k(n, c, n), "informative": float(0 < c < n),
            "request_tokens": float(post.budget.get("tokens", 0)),
            "path_tokens": float(sum(len(p.ctx) for p in post.particles)),
            # how much of the group the tree built: LATR branches born / pruned, TreePO forks / regrowths
            "branched": float(g.get("branched", g.get("forked", 0))), "pruned": float(g.get("pruned", g.get("regrown", 0)))}


def run_method(lm: Any, programs: list[Callable[[], Any]], golds: list[Any], method: str, G: int, seeds: list[int],
               window: int, bad: Callable | None, max_depth: int) -> dict[str, Any]:
    """Every prompt's group for one method, `window` groups at a time sharing forwards."""
    from ppllm.engine import Engine, SharedRounds

    rows: list[dict[str, float]] = []
    wall = 0.0
    model = reused = 0
    for lo in range(0, len(programs), window):
        idx = list(range(lo, min(lo + window, len(programs))))
        lm.clear_cache()
        before = dict(lm.stats)
        shared = SharedRounds()
        jobs = []
        for i in idx:
            gold = golds[i]
            call = kernel_call(method, G, lambda p, g=gold: float(getattr(p, "answer", None) == g), bad, max_depth)
            jobs.append(lambda i=i, call=call, sr=shared: call(programs[i](), seeds[i], Engine(shared=sr)))
        t0 = time.perf_counter()
        posts = shared.run(jobs)
        wall += time.perf_counter() - t0
        for post in posts:
            if isinstance(post, BaseException):
                raise post
        model += lm.stats["new_tokens"] - before["new_tokens"]
        reused += lm.stats["reused_tokens"] - before["reused_tokens"]
        rows.extend(group_figures(post, golds[i]) for post, i in zip(posts, idx, strict=True))
    n = len(rows)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["informative_se"] = float(np.sqrt(out["informative"] * (1 - out["informative"]) / n))
    out["pass1_se"] = float(np.std([r["pass1"] for r in rows], ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    out.update({"method": method, "G": G, "groups": n, "model_tokens": model / n, "seconds": wall / n,
                "trie_saving": 1 - model / max(1.0, n * out["path_tokens"]), "attended_past": reused / n})
    return out


def arith_suite(n_prompts: int, sizes: list[int], window: int) -> dict[str, Any]:
    from ppllm import zoo
    from ppllm.tasks.arith import ExactArithVerifier
    from ppllm.tasks.arith.data import heldout_problems
    from ppllm_models.math_reasoning import MathReasoning, no_answer

    lm = zoo.load_lm("tiny-arith")
    verifier = ExactArithVerifier()
    problems = heldout_problems(n_prompts)
    programs = [lambda p=p: MathReasoning.tiny_arith(lm, verifier, *p.operands, weighting="none", aggregation="prod")
                for p in problems]
    golds = [sum(p.operands) for p in problems]
    seeds = [1000 + i for i in range(len(problems))]
    rows = []
    for G in sizes:
        for method in METHODS:
            row = run_method(lm, programs, golds, method, G, seeds, window, no_answer, 4)
            rows.append({"model": "tiny-arith", **row})
            _say(rows[-1])
    return {"model": "tiny-arith", "prompts": len(problems), "rows": rows}


def smollm2_suite(sizes: list[int]) -> dict[str, Any]:
    import ppllm
    from ppllm import zoo
    from ppllm_models.math_reasoning import boxed_answer

    lm = zoo.load_lm("smollm2")
    questions = [(12, 7), (23, 15), (8, 9)]

    class Solve(ppllm.Program):
        """Steps up to a blank line; ends on EOS, \\boxed{} or after 4 steps."""

        def __init__(self, a: int, b: int) -> None:
            self.lm, self.steps = lm, []
            self.ctx = lm.context(lm.chat(f"What is {a} + {b}? Give the final answer as \\boxed{{n}}."))

        async def step(self) -> None:
            chunk = await self.sample(self.lm.chunk(self.ctx, stop="\n\n", max_tokens=48))
            self.ctx = self.ctx + chunk
            self.steps.append(chunk.text)
            if lm.is_eos(chunk.tokens[-1]) or "\\boxed" in chunk.text or len(self.steps) >= 4:
                self.finish()

        @property
        def answer(self) -> int | None:
            text = "".join(self.steps)
            got = boxed_answer(text)
            nums = re.findall(r"-?\d+", got if got is not None else text)
            return int(nums[-1]) if nums else None

    programs = [lambda a=a, b=b: Solve(a, b) for a, b in questions]
    golds = [a + b for a, b in questions]
    rows = []
    for G in sizes:
        for method in METHODS:
            row = run_method(lm, programs, golds, method, G, [7 + i for i in range(len(questions))], len(questions),
                             lambda p: p.answer is None, 2)
            rows.append({"model": "smollm2", **row})
            _say(rows[-1])
    return {"model": "smollm2", "prompts": len(questions), "rows": rows}


def _say(r: dict[str, Any]) -> None:
    print(f"  {r['model']:10s} G={r['G']:2d} {r['method']:12s} model tokens/group {r['model_tokens']:7.1f} "
          f"(trie saved {r['trie_saving']:.0%} of {r['path_tokens']:.0f})  {r['seconds'] * 1000:6.1f} ms/group  distinct {r['distinct']:.2f}  "
          f"pass@1 {r['pass1']:.3f}  pass@G {r['passG']:.3f}  informative {r['informative']:.3f}  "
          f"branched {r['branched']:.2f} pruned {r['pruned']:.2f}", flush=True)


def plot(suites: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for s in suites for r in s["rows"]]
    panels = sorted({(r["model"], r["G"]) for r in rows})
    fig, axes = plt.subplots(2, len(panels), figsize=(3.4 * len(panels), 5.6), squeeze=False)
    colors = {"independent": "#888888", "treepo": "#1f77b4", "latr": "#d62728", "latr_mix": "#ff9896"}
    for j, (model, G) in enumerate(panels):
        sub = {r["method"]: r for r in rows if r["model"] == model and r["G"] == G}
        names = [m for m in METHODS if m in sub]
        x = np.arange(len(names))
        top, bottom = axes[0][j], axes[1][j]
        top.bar(x, [sub[m]["model_tokens"] for m in names], color=[colors[m] for m in names])
        top.set_title(f"{model}, G = {G}", fontsize=9)
        top.set_ylabel("model tokens per group")
        bottom.bar(x, [sub[m]["informative"] for m in names], yerr=[1.96 * sub[m]["informative_se"] for m in names],
                   color=[colors[m] for m in names], capsize=3)
        bottom.set_ylabel("groups with reward variance > 0")
        bottom.set_ylim(0, 1)
        for ax in (top, bottom):
            ax.set_xticks(x, names, rotation=30, fontsize=8)
    fig.suptitle("Tree rollouts vs independent groups (bars: 95 % intervals over prompts)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="24 tiny-arith prompts, G = 8, no SmolLM2 (seconds)")
    ap.add_argument("--prompts", type=int, default=None, help="tiny-arith prompts (default 200)")
    ap.add_argument("--window", type=int, default=25, help="groups that share forwards")
    ap.add_argument("--no-smollm2", action="store_true")
    args = ap.parse_args(argv)
    _threads()
    n = args.prompts or (24 if args.quick else 200)
    sizes = [8] if args.quick else [8, 16]
    suites = [arith_suite(n, sizes, args.window)]
    if not args.quick and not args.no_smollm2:
        suites.append(smollm2_suite([8]))
    record = {"command": "python -m benchmarks.tree_rollouts" + (" --quick" if args.quick else ""),
              "suites": suites}
    OUT.mkdir(parents=True, exist_ok=True)
    name = "tree_rollouts_quick" if args.quick else "tree_rollouts"
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=1))
    if not args.quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "tree_rollouts.json").write_text(json.dumps(record, indent=1))
        plot(suites, DOCS / "tree_rollouts.png")
    rows = {(r["method"], r["G"]): r for r in suites[0]["rows"]}
    base = rows[("independent", 8)]
    parts = []
    for m in METHODS[1:]:
        parts.append(f"tokens_{m}_vs_independent={rows[(m, 8)]['model_tokens'] / base['model_tokens']:.2f}")
    parts += [f"informative_{m}={rows[(m, 8)]['informative']:.2f}" for m in METHODS]
    print("RESULT " + " ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
