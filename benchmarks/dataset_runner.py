"""The data-set runner: prompts per round against one prompt at a time, on one process.

    python -m benchmarks.dataset_runner [--quick]

tiny-arith, 128 held-out problems, particle filtering (ratio weighting, N = 8, the exact
verifier as PRM), run through `runs.runner` with 1, 16, 64 and 128 prompt-rounds per round
(window). Reported per window: problems per second, batched forward passes, rows per
forward, and whether the particles are identical to the one-at-a-time run (the contract:
answers depend on each request alone; the hf backend's batched arithmetic may round
differently in the last bits, which is counted, not hidden). The same on SmolLM2 with a few
prompts (windows 1 and 4). Figures: benchmarks/out/dataset_runner[_quick].json and, for full
runs, docs/benchmarks/dataset_runner.json. Ends with `RESULT speedup_64=...` (target ≥ 3).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path("benchmarks/out")
DOCS = Path("docs/benchmarks")


def arith_recipe(n: int):
    from ppllm.recipes import validate
    from ppllm.tasks.arith import heldout_problems

    items = [{"args": list(p.operands), "answer": p.answer} for p in heldout_problems(n)]
    return validate({
        "model": {"lm": "tiny-arith"},
        "program": {"path": "ppllm_models.math_reasoning:MathReasoning.tiny_arith",
                    "args": {"weighting": "ratio", "aggregation": "prod"}},
        "reward": {"name": "exact-arith", "delta": 0.05},
        "kernel": {"name": "particle_filter", "n_particles": 8, "select": "sample", "answer_fn": "answer"},
        "prompts": {"items": items},
        "run": {"seed": 0, "variables": ["answer"]},
    })


def smol_recipe():
    from ppllm.recipes import validate

    return validate({
        "model": {"lm": "smollm2"},
        "program": {"path": "ppllm_models.soft_lipogram:SoftLipogram", "args": {"banned": "e"}},
        "kernel": {"name": "particle_filter", "n_particles": 8, "select": "sample", "answer_fn": "answer"},
        "prompts": {"chat": True, "items": ["Write one short sentence about rain.", "Write one sentence about a cat.",
                                            "Write one sentence about the sea.", "Write one sentence about bread."]},
        "run": {"seed": 0, "variables": ["answer"]},
    })


def run(recipe, window: int, out: Path) -> dict:
    import shutil

    from ppllm.runs import run_recipe

    if out.exists():
        shutil.rmtree(out)
    lm_stats = {}

    def counted(spec):
        from ppllm.recipes import build_lm

        lm = build_lm(spec)
        lm_stats["lm"] = lm
        return lm

    import ppllm.runs.runner as runner

    old = runner.build_lm
    runner.build_lm = counted  # the same factory; kept to read the backend's counters
    try:
        t0 = time.perf_counter()
        got = run_recipe(recipe, out, progress=False, window=window)
        seconds = time.perf_counter() - t0
    finally:
        runner.build_lm = old
    stats = lm_stats["lm"].stats
    sampling = got["sampling_seconds"]
    return {"window": window, "seconds": seconds, "sampling_seconds": sampling,
            "writing_seconds": got["writing_seconds"],
            "problems_per_s": len(recipe.prompts) / sampling,
            "problems_per_s_with_writing": len(recipe.prompts) / seconds,
            "forwards": stats["forwards"], "rows_per_forward": stats["rows"] / max(stats["forwards"], 1),
            "particles": (out / "particles.jsonl").read_text()}


def compare(base: str, other: str) -> dict:
    a, b = [json.loads(x) for x in base.splitlines()], [json.loads(x) for x in other.splitlines()]
    same_text = sum(x["text"] == y["text"] for x, y in zip(a, b, strict=True))
    same_weight = sum(x["log_weight"] == y["log_weight"] for x, y in zip(a, b, strict=True))
    worst = max(abs(float(x["log_weight"]) - float(y["log_weight"])) for x, y in zip(a, b, strict=True)
                if x["text"] == y["text"] and "inf" not in str(x["log_weight"]))
    return {"particles": len(a), "identical_bytes": base == other, "same_text": same_text,
            "same_log_weight": same_weight, "worst_log_weight_difference": worst}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="24 problems, windows 1 and 24 (< 1 min)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    scratch = OUT / "dataset_runner_dirs"
    n, windows = (24, (1, 24)) if args.quick else (128, (1, 16, 64, 128))
    recipe = arith_recipe(n)
    rows = [run(recipe, w, scratch / f"arith-{w}") for w in windows]
    base, reference = rows[0], rows[0]["particles"]
    for r in rows:
        r["speedup"] = r["problems_per_s"] / base["problems_per_s"]
        r["speedup_with_writing"] = r["problems_per_s_with_writing"] / base["problems_per_s_with_writing"]
        r["vs_one_at_a_time"] = compare(reference, r.pop("particles"))
    record = {"tiny_arith": {"problems": n, "rows": rows}}
    if not args.quick:
        smol = smol_recipe()
        srows = [run(smol, w, scratch / f"smol-{w}") for w in (1, 4)]
        for r in srows:
            r["speedup"] = r["problems_per_s"] / srows[0]["problems_per_s"]
            r["speedup_with_writing"] = r["problems_per_s_with_writing"] / srows[0]["problems_per_s_with_writing"]
        srows[1]["vs_one_at_a_time"] = compare(srows[0]["particles"], srows[1]["particles"])
        for r in srows:
            r.pop("particles")
        record["smollm2"] = {"prompts": len(smol.prompts), "rows": srows}
    name = "dataset_runner_quick" if args.quick else "dataset_runner"
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=1))
    if not args.quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "dataset_runner.json").write_text(json.dumps(record, indent=1))
    for section, rec in record.items():
        print(section)
        for r in rec["rows"]:
            cmp = r.get("vs_one_at_a_time", {})
            print(f"  window {r['window']:4d}: {r['problems_per_s']:.2f} problems/s sampling (×{r['speedup']:.2f}; "
                  f"×{r['speedup_with_writing']:.2f} with {r['writing_seconds']:.1f} s of files and plots), "
                  f"{r['forwards']} forwards, {r['rows_per_forward']:.1f} rows/forward, "
                  f"identical particles: {cmp.get('identical_bytes')} (same text {cmp.get('same_text')}/{cmp.get('particles')})")
    key = 64 if not args.quick else 24
    sp = next(r["speedup"] for r in rows if r["window"] == key)
    print(f"RESULT speedup_{key}={sp:.2f} rows_per_forward_{key}="
          f"{next(r['rows_per_forward'] for r in rows if r['window'] == key):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
