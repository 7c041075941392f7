"""Data-set runs on Ray against the single-process runner, on this machine's local cluster.

    python -m benchmarks.ray_scale [--quick]

Three measurements, all on one local Ray cluster started once (127.0.0.1), every figure a
ratio against the single-process runner run in the same process on the same recipe:

  scale     tiny-arith best-of-8 on held-out problems: prompt-rounds per second with 1 and 2
            actors (one torch thread each) against the runner (one thread), both batching 8
            prompt-rounds per call (the runner's window = the actors' per_call). On 2 cores
            the point is correctness and overhead, not speed.
  overhead  the seconds per prompt-round Ray adds with 1 actor (calls, transfers of the round
            files, the driver's commits), and the one-off start (actors loading the model).
  latency   the toy LM slowed to 20 ms per batched call (a stand-in for a remote model):
            one prompt-round per call (window 1), so each waits out its own calls; with 2
            actors their calls overlap and prompt-rounds per second should nearly double,
            where the single-process runner and 1 actor wait out every call in turn.
Each figure is the median of 3 interleaved runs (1 with --quick), after a warm-up run.

Times are the prompt-rounds' wall time (`sampling_seconds`), without writing the report.
Writes benchmarks/out/ray_scale[_quick].json; full runs also docs/benchmarks/ray_scale.json.
Last line: `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DOCS = ROOT / "docs" / "benchmarks"


def timed_run(recipe: Any, ray: Any) -> dict[str, float]:
    from ppllm.runs import run_recipe

    tmp = Path(tempfile.mkdtemp(prefix="ray_scale_"))
    try:
        t0 = time.perf_counter()
        result = run_recipe(recipe, tmp / "out", progress=False, ray=ray)
        total = time.perf_counter() - t0
        n = result["prompt_rounds"]
        return {"prompt_rounds": n, "seconds": result["sampling_seconds"], "per_s": n / result["sampling_seconds"],
                "start_seconds": total - result["wall_seconds"],
                "record": [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                           for x in (tmp / "out" / "record.jsonl").read_text().splitlines()]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare(name: str, recipe: Any, actors: list[int], per_call: int, repeats: int) -> dict[str, Any]:
    """Runner and Ray runs interleaved `repeats` times; the median of each (after a warm-up run)."""
    from ppllm.runs.ray_runner import RayOptions

    timed_run(recipe, None)  # warm-up: this process's first forward passes stay out of the figures
    runs: dict[str, list[dict[str, Any]]] = {"local": [], **{f"ray_{a}": [] for a in actors}}
    for _ in range(repeats):
        runs["local"].append(timed_run(recipe, None))
        for a in actors:
            runs[f"ray_{a}"].append(timed_run(recipe, RayOptions(actors=a, per_call=per_call, in_flight=2)))
    rows = {k: sorted(v, key=lambda r: r["per_s"])[len(v) // 2] for k, v in runs.items()}
    local = rows["local"]
    same = all(r["record"] == local["record"] for v in runs.values() for r in v)
    out = {"name": name, "prompt_rounds": local["prompt_rounds"], "same_record": same}
    for key, r in rows.items():
        out[key] = {k: v for k, v in r.items() if k != "record"}
        out[key]["vs_local"] = r["per_s"] / local["per_s"]
        print(f"  {name:9s} {key:8s} {r['per_s']:7.2f} prompt-rounds/s  ({r['seconds']:.2f} s, start "
              f"{r['start_seconds']:.1f} s)  ×{out[key]['vs_local']:.2f} of the runner", flush=True)
    print(f"  {name:9s} records identical to the runner's: {same}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small recipes (well under a minute after Ray starts)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    from ppllm.recipes import load_recipe

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             object_store_memory=128 * 1024 * 1024, _node_ip_address="127.0.0.1")
    try:
        n_arith = 16 if args.quick else 64
        arith = load_recipe(ROOT / "inference" / "arith_best_of_n.toml",
                            [f'prompts.file="{ROOT / "inference" / "arith_heldout_64.jsonl"}"',
                             f"prompts.limit={n_arith}", "kernel.budget=8", "run.window=8"])
        items = ", ".join(f'"{c}"' for c in ["a", "b", "c", "ab", "ba", "ca", "cb", "bc"])
        toy = load_recipe(ROOT / "inference" / "toy_smc.toml",
                          [f"prompts.items=[{items}]", f"run.repeats={1 if args.quick else 3}",
                           "kernel.n_particles=8", "model.latency=0.02", "run.window=1"])
        reps = 1 if args.quick else 3
        scale = compare("scale", arith, [1, 2], per_call=8, repeats=reps)
        latency = compare("latency", toy, [1, 2], per_call=1, repeats=reps)
    finally:
        ray.shutdown()
    overhead = (1 / scale["ray_1"]["per_s"] - 1 / scale["local"]["per_s"])
    record = {"command": "python -m benchmarks.ray_scale" + (" --quick" if args.quick else ""),
              "cores": os.cpu_count(), "scale": scale, "latency": latency,
              "overhead_seconds_per_prompt_round": overhead}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("ray_scale_quick.json" if args.quick else "ray_scale.json")).write_text(json.dumps(record, indent=1))
    if not args.quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "ray_scale.json").write_text(json.dumps(record, indent=1))
    print(f"RESULT scale_2_actors_vs_runner={scale['ray_2']['vs_local']:.2f} "
          f"scale_1_actor_vs_runner={scale['ray_1']['vs_local']:.2f} "
          f"overhead_ms_per_prompt_round={1000 * overhead:.1f} "
          f"latency_2_actors_vs_runner={latency['ray_2']['vs_local']:.2f} "
          f"same_records={scale['same_record'] and latency['same_record']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
