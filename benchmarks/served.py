"""The served backend against the in-process hf backend, on the same model (SmolLM2-135M).

    python -m benchmarks.served [--quick]

A llama.cpp server (llama-cpp-python, one thread) serves SmolLM2's GGUF on 127.0.0.1; the
in-process baseline is the hf backend on the same weights (one torch thread). Workloads, run
side by side in this process: best-of-N (N = 8) and particle filtering (N = 8, ratio
weighting) on a chunk-level program — short sentences in chunks of up to 8 tokens, a soft
factor preferring chunks without the letter "e". Reported: runs per second on each backend
and their ratio, the most requests the served backend had in flight, the completion tokens
the server generated, and where the time goes (seconds in HTTP round trips against the
rest, from a profile of one served run).

The server answers one request at a time (llama-cpp-python holds one model context), so
requests in flight queue there; the point of many in flight is a server with batching
(vLLM, SGLang), not this one. Ends with `RESULT served_over_hf_bon=... served_over_hf_pf=...`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path("benchmarks/out")
PROMPTS = ["Write one short sentence about rain.", "Write one short sentence about a dog."]


def program(lm, prompt: str):
    import ppllm

    class Sentence(ppllm.Program):
        def __init__(self):
            self.lm, self.ctx, self.n = lm, lm.context(lm.chat(prompt)), 0

        async def step(self):
            chunk = await self.sample(self.lm.chunk(self.ctx, stop=".", max_tokens=8))
            self.ctx = self.ctx + chunk
            self.n += 1
            score = 0.9 if "e" not in chunk.text else 0.5
            self.prefix_score = score
            if self.lm.is_eos(chunk.tokens[-1]) or "." in chunk.text or self.n >= 3:
                self.factor(math.log(score))
                self.finish()
            else:
                self.twist(math.log(score))

    return Sentence()


def one(lm, kernel: str, prompt: str, seed: int):
    from ppllm.kernels import best_of_n, particle_filter

    prog = program(lm, prompt)
    if kernel == "bon":
        return best_of_n.run(prog, 8, seed=seed)
    return particle_filter.run(prog, 8, seed=seed, select="sample")


def rate(lm, kernel: str, runs: int) -> float:
    t0 = time.perf_counter()
    for i in range(runs):
        one(lm, kernel, PROMPTS[i % len(PROMPTS)], i)
    return runs / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two runs per workload (< 1 min after set-up)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from ppllm import zoo
    from ppllm.testing.servers import llama_server
    from ppllm.zoo import smollm2

    if not smollm2.is_available():
        smollm2.fetch()
    hf = zoo.load_lm("smollm2")
    runs = 2 if args.quick else 12
    record: dict = {"runs": runs}
    with llama_server(str(smollm2.gguf_path())) as (url, _):
        served = zoo.load_served(url, "smollm2", max_in_flight=8)
        one(served, "bon", PROMPTS[0], 0)  # warm up both sides
        one(hf, "bon", PROMPTS[0], 0)
        for kernel in ("bon", "pf"):
            r_served, r_hf = rate(served, kernel, runs), rate(hf, kernel, runs)
            record[kernel] = {"served_runs_per_s": r_served, "hf_runs_per_s": r_hf, "ratio": r_served / r_hf}
        prof = cProfile.Profile()
        prof.enable()
        one(served, "pf", PROMPTS[1], 99)
        prof.disable()
        stats = pstats.Stats(prof)
        total = sum(v[3] for k, v in stats.stats.items() if k[2] == "one")
        http = sum(v[3] for k, v in stats.stats.items() if k[2] == "result" and "concurrent" in k[0])
        record["profile"] = {"seconds": total, "waiting_for_the_server": http,
                             "share_waiting": http / total if total else math.nan}
        record["served_stats"] = dict(served.stats)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("served_quick.json" if args.quick else "served.json")).write_text(json.dumps(record, indent=1))
    for k in ("bon", "pf"):
        r = record[k]
        print(f"{k}: served {r['served_runs_per_s']:.2f} runs/s, hf {r['hf_runs_per_s']:.2f} runs/s, ratio {r['ratio']:.2f}")
    p = record["profile"]
    print(f"one served PF run: {p['seconds']:.2f} s, {p['share_waiting']:.0%} waiting for the server; "
          f"max in flight {record['served_stats']['max_in_flight']}")
    print(f"RESULT served_over_hf_bon={record['bon']['ratio']:.2f} served_over_hf_pf={record['pf']['ratio']:.2f} "
          f"share_waiting={p['share_waiting']:.2f} max_in_flight={record['served_stats']['max_in_flight']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
