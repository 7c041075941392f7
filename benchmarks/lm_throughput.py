"""LM throughput of ppllm's particle kernels against the decode floor, side by side.

Same model, same prompt, N sequences of T new tokens each (EOS ignored everywhere):

  baselines
    lean          the lean decode loop: prefill the prompt once, expand its KV cache to N
                  rows, then one batched forward plus `torch.multinomial` per token — the
                  floor for any sampler built on a transformers forward
    lean_masked   the same with a token mask applied to the logits
    generate      `model.generate(num_return_sequences=N, do_sample=True)`
  ppllm (token-level SMC unless said otherwise)
    smc_free      no constraint, never resampling                       (vs lean)
    smc_masked    proposal masked, target the model, ESS rule 0.5       (vs lean_masked)
    smc_resample  a token potential, resampling after every token       (vs lean)
    pf_chunk      chunks of `--chunk` tokens, resampling after each     (vs lean)
    smc_free_tf   smc_free on transformers' forward instead of ppllm's native one (GPT-2 and
                  Llama families): the sampler's own overhead against the same forward as lean

Throughput = N·T / wall seconds (prefill included on every side), CPU seconds beside;
median of interleaved repeats. Also: bytes brought to the host per step (full float64
rows vs drawn scalars), peak memory above the loaded model at N = 64, T = 64 with
`kv_budget_tokens = 4096` (and at N = 8, T = 1024 with the default 32,768), a profile of
where ppllm's time goes, one decode step's forward (transformers' against ppllm's own) and
one round's draws at a 49k vocabulary (from the logits against the torch rows path).

    python -m benchmarks.lm_throughput            # full run; writes docs/benchmarks/
    python -m benchmarks.lm_throughput --quick    # < 1 minute on 2 cores, same code path
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benchmarks" / "out"
DOCS_DIR = ROOT / "docs" / "benchmarks"
BASELINES = ("lean", "lean_masked", "generate")
METHODS = ("smc_free", "smc_masked", "smc_resample", "pf_chunk", "smc_free_tf")
FLOOR = {"smc_free": "lean", "smc_masked": "lean_masked", "smc_resample": "lean", "pf_chunk": "lean",
         "smc_free_tf": "lean"}
PROMPTS = {"chat": "Write a short story about a cat.", "text": "Q: 37+48+19=\n"}
BANNED = {"smollm2": "e", "tiny-arith": "7"}  # the mask bans tokens containing this

FULL = {
    "tiny-arith": {"sizes": [(8, 32), (32, 32), (64, 32), (8, 256), (32, 256), (64, 256), (8, 1000)],
                   "repeats": 3},
    "smollm2": {"sizes": [(8, 32), (32, 32), (64, 32), (8, 256), (32, 256), (8, 1024)], "repeats": 1},
}
QUICK = {
    "tiny-arith": {"sizes": [(8, 32), (32, 32)], "repeats": 1},
    "smollm2": {"sizes": [(8, 8)], "repeats": 1},
}


def _programs():
    """The ppllm programs, defined once ppllm is importable."""
    import ppllm

    class Free(ppllm.Program):
        """T tokens from the LM, one per step."""

        def __init__(self, lm, ctx, n_tokens: int) -> None:
            self.lm, self.ctx, self.n_tokens, self.n = lm, ctx, n_tokens, 0

        async def step(self) -> None:
            tok = await self.sample(self.lm.next_token(self.ctx))
            self.ctx = self.ctx + tok
            self.n += 1
            if self.n >= self.n_tokens:
                self.finish()

    class Masked(Free):
        """The model, conditioned on a token mask: proposed from the masked model, weighted
        by the mask's mass (the lipogram case)."""

        def __init__(self, lm, ctx, n_tokens: int, mask) -> None:
            super().__init__(lm, ctx, n_tokens)
            self.mask = mask

        async def step(self) -> None:
            tok = await self.sample(self.lm.next_token(self.ctx),
                                    proposal=self.lm.next_token(self.ctx, mask=self.mask))
            self.ctx = self.ctx + tok
            self.n += 1
            if self.n >= self.n_tokens:
                self.finish()

    class Potential(Free):
        """A cheap token potential, so that resampling really duplicates and drops."""

        async def step(self) -> None:
            await super().step()
            self.factor(-0.3 * (self.ctx.tokens[-1] % 4))

    class Chunks(ppllm.Program):
        """T tokens in chunks of up to `chunk` tokens, one chunk per step."""

        def __init__(self, lm, ctx, n_tokens: int, chunk: int) -> None:
            self.lm, self.ctx, self.n_tokens, self.chunk, self.n = lm, ctx, n_tokens, chunk, 0

        async def step(self) -> None:
            size = min(self.chunk, self.n_tokens - self.n)
            piece = await self.sample(self.lm.chunk(self.ctx, max_tokens=size))
            self.ctx = self.ctx + piece
            self.n += len(piece.tokens)
            self.factor(-0.1 * (piece.tokens[-1] % 4))
            if self.n >= self.n_tokens or self.lm.is_eos(piece.tokens[-1]):
                self.finish()

    return Free, Masked, Potential, Chunks


def _mask(lm, banned: str):
    import numpy as np

    mask = np.array([banned not in s for s in lm.vocab_strings()], dtype=bool)
    mask.setflags(write=False)  # a constant: particles share it instead of copying it
    return mask


def runners(lm, ctx, chunk: int) -> dict[str, Callable[[int, int], int]]:
    """Each method as f(N, T) -> number of new tokens generated."""
    import torch
    from transformers import GenerationConfig

    import ppllm

    Free, Masked, Potential, Chunks = _programs()
    ids = torch.tensor([ctx.tokens])
    stop = sorted(lm.eos_token_ids or {lm.eos_token_id})
    mask = _mask(lm, BANNED.get(lm.name, "e"))
    mask_t = torch.from_numpy(mask.copy())  # the mask is read-only; torch wants writable memory
    model = lm.model
    cache_kw = lm._cache_kwarg  # transformers 5 renamed past_key_values to cache

    @torch.no_grad()
    def lean(n: int, t: int, masked: bool = False) -> int:
        torch.manual_seed(0)
        out = model(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)  # the prompt is encoded once, its KV expanded to N rows
        logits = out.logits[:, -1, :].expand(n, -1)
        for i in range(t):
            if masked:
                logits = logits.masked_fill(~mask_t, -torch.inf)
            tok = torch.multinomial(torch.softmax(logits.float(), -1), 1)
            if i == t - 1:
                break
            out = model(input_ids=tok, use_cache=True, **{cache_kw: cache})
            cache, logits = out.past_key_values, out.logits[:, -1, :]
        return n * t

    @torch.no_grad()
    def generate(n: int, t: int) -> int:
        cfg = GenerationConfig(do_sample=True, max_new_tokens=t, min_new_tokens=t, top_k=0, top_p=1.0,
                               temperature=1.0, num_return_sequences=n, pad_token_id=stop[0], eos_token_id=stop)
        torch.manual_seed(0)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        return int(out.shape[0] * (out.shape[1] - ids.shape[1]))

    # The same model behind transformers' own forward (the lean loop's), for smc_free_tf.
    lm_tf = type(lm)(model, lm.tokenizer, name=lm.name, native_forward=False) if hasattr(lm, "_native") else lm

    def smc(program: ppllm.Program, n: int, ess: float) -> int:
        program.lm.clear_cache()  # every method starts cold: the prompt is encoded once per run
        post = ppllm.smc(program, n, seed=0, ess_threshold=ess)
        return sum(p.n for p in post.particles)

    return {
        "lean": lean,
        "lean_masked": lambda n, t: lean(n, t, masked=True),
        "generate": generate,
        "smc_free": lambda n, t: smc(Free(lm, ctx, t), n, 0.0),
        "smc_masked": lambda n, t: smc(Masked(lm, ctx, t, mask), n, 0.5),
        "smc_resample": lambda n, t: smc(Potential(lm, ctx, t), n, 1.0),
        "pf_chunk": lambda n, t: smc(Chunks(lm, ctx, t, chunk), n, 1.0),
        "smc_free_tf": lambda n, t: smc(Free(lm_tf, ctx, t), n, 0.0),
    }


def _timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    c0, t0 = time.process_time(), time.perf_counter()
    tokens = fn()
    return time.perf_counter() - t0, time.process_time() - c0, tokens


def bench_model(name: str, sizes: Sequence[tuple[int, int]], repeats: int, chunk: int) -> dict[str, Any]:
    from ppllm import zoo

    lm = zoo.load_lm(name)
    lm.name = name
    chat = getattr(lm.tokenizer, "chat_template", None) is not None
    ctx = lm.context(lm.chat(PROMPTS["chat"]) if chat else PROMPTS["text"])
    run = runners(lm, ctx, chunk)
    for f in run.values():  # warm-up: lazy initialisation stays out of the figures
        f(2, 2)
    rows = []
    for n, t in sizes:
        t = min(t, lm.max_positions - len(ctx))
        walls: dict[str, list[float]] = {m: [] for m in run}
        cpus: dict[str, list[float]] = {m: [] for m in run}
        stats: dict[str, dict[str, int]] = {}
        tokens: dict[str, int] = {}
        for _ in range(repeats):  # interleaved: load drifts hit every method alike
            for method, f in run.items():
                if hasattr(lm, "stats"):
                    lm.stats = dict.fromkeys(lm.stats, 0)
                wall, cpu, tokens[method] = _timed(lambda f=f, n=n, t=t: f(n, t))
                walls[method].append(wall)
                cpus[method].append(cpu)
                stats[method] = dict(lm.stats)
        for method in run:
            wall, cpu = statistics.median(walls[method]), statistics.median(cpus[method])
            row = {"model": name, "method": method, "n": n, "new_tokens": t, "seconds": wall,
                   "cpu_seconds": cpu, "seconds_all": walls[method], "tokens": tokens[method],
                   "tokens_per_s": tokens[method] / wall, "cpu_tokens_per_s": tokens[method] / cpu}
            if method in METHODS:
                row["bytes_to_host_per_step"] = stats[method].get("bytes_to_host", 0) / t
                row["lm_stats"] = stats[method]
            rows.append(row)
            print(f"  {name:10s} N={n:3d} T={t:4d} {method:12s} {row['tokens_per_s']:9.1f} tok/s "
                  f"({wall:.2f} s wall, {cpu:.2f} s cpu)", flush=True)
    by = {(r["n"], r["new_tokens"], r["method"]): r for r in rows}
    for r in rows:
        if r["method"] in METHODS:
            floor = by[(r["n"], r["new_tokens"], FLOOR[r["method"]])]
            gen = by[(r["n"], r["new_tokens"], "generate")]
            r["ratio_lean"] = r["tokens_per_s"] / floor["tokens_per_s"]
            r["cpu_ratio_lean"] = r["cpu_tokens_per_s"] / floor["cpu_tokens_per_s"]
            r["ratio_generate"] = r["tokens_per_s"] / gen["tokens_per_s"]
    return {"model": name, "prompt_tokens": len(ctx), "vocab_size": lm.vocab_size, "chunk": chunk,
            "repeats": repeats, "rows": rows}


def profile(name: str, n: int, t: int) -> dict[str, Any]:
    """Where ppllm's token SMC spends its time: the model's forward vs everything else."""
    import ppllm
    from ppllm import zoo

    lm = zoo.load_lm(name)
    chat = getattr(lm.tokenizer, "chat_template", None) is not None
    ctx = lm.context(lm.chat(PROMPTS["chat"]) if chat else PROMPTS["text"])
    Free = _programs()[0]
    ppllm.smc(Free(lm, ctx, 2), 2, seed=0, ess_threshold=0.0)
    lm.clear_cache()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    ppllm.smc(Free(lm, ctx, t), n, seed=0, ess_threshold=0.0)
    prof.disable()
    total = time.perf_counter() - t0
    st = pstats.Stats(prof)
    cum = {f"{Path(k[0]).name}:{k[2]}": v[3] for k, v in st.stats.items()}  # type: ignore[attr-defined]
    own = sorted(((v[2], f"{Path(k[0]).name}:{k[2]}") for k, v in st.stats.items()), reverse=True)  # type: ignore[attr-defined]
    # the model: ppllm's own forward where it runs, else transformers' module calls
    model_s = max((v for k, v in cum.items() if k.endswith((":_call_impl", "native_forward.py:run"))), default=0.0)
    return {"model": name, "n": n, "new_tokens": t, "seconds": total,
            "model_forward_seconds": model_s,
            "share_in_model_forward": model_s / total if total else None,
            "top_own_time": [{"function": f, "seconds": s} for s, f in own[:12]]}


def _interleaved_ms(runs: dict[str, Callable[[], Any]], calls: int, repeats: int = 5) -> dict[str, float]:
    """`{name}_ms`: median over `repeats` interleaved rounds of the mean ms per call of `calls` calls."""
    ms: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            ms[k].append((time.perf_counter() - t0) / calls * 1e3)
    return {f"{k}_ms": statistics.median(x) for k, x in ms.items()}


def forward_costs(name: str) -> list[dict[str, Any]]:
    """One decode step's forward on the same buffers: transformers' forward (through the
    backend's cache layer) against ppllm's own, ms per call (median of 5 x 50 calls)."""
    import torch

    from ppllm import zoo
    from ppllm.lm.hf import HFLM

    lm = zoo.load_lm(name)
    if lm._native is None:
        return []
    plain = HFLM(lm.model, lm.tokenizer, native_forward=False)
    layers, heads, dim = lm._kv.shape
    out = []
    for b, p in ((1, 40), (8, 40), (64, 270)):
        k, v = (torch.randn(layers, b, heads, p + 40, dim) for _ in range(2))
        ids, pos = torch.randint(1, lm.vocab_size, (b, 1)), torch.full((b, 1), p)
        args = (ids, pos, None, k, v, p, 1)
        runs = {"transformers": lambda args=args: plain._model_forward(*args),
                "native": lambda args=args: lm._native(*args)}
        with torch.no_grad():
            ms = _interleaved_ms(runs, calls=50)
        out.append({"model": name, "rows": b, "past": p, **ms})
        print(f"  forward {out[-1]}", flush=True)
    return out


def draw_costs(vocab: int, rows: int = 32) -> list[dict[str, Any]]:
    """One round's draws from (rows, vocab) float32 logits: the CPU draw from the logits
    against the torch path (float64 log-softmax, transform, inverse CDF), ms per call (median
    of 5 x 10 calls), free and masked."""
    import numpy as np
    import torch

    from ppllm.lm.token_draws import _draw_torch, draw_tokens

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    mask = torch.rand(vocab, generator=gen) > 0.3
    u = np.random.default_rng(0).random(rows)
    out = []
    for name, m in (("free", None), ("masked", mask)):
        runs = {"from_logits": lambda m=m: draw_tokens(logits, u, 1.0, m),
                "torch_rows": lambda m=m: _draw_torch(logits, u, 1.0, m, None)}
        out.append({"vocab": vocab, "rows": rows, "draw": name, **_interleaved_ms(runs, calls=10)})
        print(f"  draw {out[-1]}", flush=True)
    return out


MEMORY_SCRIPT = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
import ppllm
from ppllm import zoo
from benchmarks.lm_throughput import PROMPTS, _programs

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

name, n, t, budget, method = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lm = zoo.load_lm(name, kv_budget_tokens=budget)
ctx = lm.context(lm.chat(PROMPTS["chat"]) if getattr(lm.tokenizer, "chat_template", None) else PROMPTS["text"])
Free = _programs()[0]
ppllm.smc(Free(lm, ctx, 2), 2, seed=0, ess_threshold=0.0)
lm.clear_cache()
base = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
if method == "lean":
    from benchmarks.lm_throughput import runners
    runners(lm, ctx, 8)["lean"](n, t)
else:
    ppllm.smc(Free(lm, ctx, t), n, seed=0, ess_threshold=0.0)
peak = status("VmHWM:")
kv = lm._kv
per_token = kv.k[:, :1].numel() * kv.k.element_size() * 2
print(json.dumps({"model": name, "n": n, "new_tokens": t, "method": method, "kv_budget_tokens": budget,
                  "rss_loaded": base, "peak_above_loaded": peak - base, "kv_budget_bytes": budget * per_token,
                  "ratio_to_budget": (peak - base) / (budget * per_token)}))
"""


def memory(name: str, n: int, t: int, budget: int, method: str) -> dict[str, Any]:
    """Peak RSS above the loaded model, in a fresh process (so earlier runs do not count)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, name, str(n), str(t), str(budget), method],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if out.returncode != 0:
        return {"model": name, "n": n, "new_tokens": t, "method": method, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available(name: str) -> str | None:
    from ppllm import zoo

    try:
        zoo.resolve(name)
    except (FileNotFoundError, ImportError) as err:
        return str(err)
    return None


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        sizes = sorted({(r["n"], r["new_tokens"]) for r in res["rows"]}, key=lambda s: (s[1], s[0]))
        width = 0.8 / len(METHODS)
        for j, method in enumerate(METHODS):
            vals = [next(r["ratio_lean"] for r in res["rows"] if (r["n"], r["new_tokens"]) == s
                         and r["method"] == method) for s in sizes]
            ax.bar([i + (j - (len(METHODS) - 1) / 2) * width for i in range(len(sizes))], vals, width, label=method)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(sizes)), [f"N={n}\nT={t}" for n, t in sizes], fontsize=8)
        ax.set_ylabel("tokens/s ÷ lean decode loop (wall)")
        ax.set_title(f"{res['model']}: ppllm against the decode floor", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 1 minute on 2 cores)")
    p.add_argument("--models", default="tiny-arith,smollm2", help="comma-separated zoo names")
    p.add_argument("--threads", type=int, default=1,
                   help="torch / OpenMP threads (default 1: on a shared 2-core machine, 2 threads "
                        "spin-wait and are several times slower)")
    p.add_argument("--chunk", type=int, default=8, help="chunk size of the particle filter")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks/")
    p.add_argument("--sizes", default=None, help="NxT,NxT,... instead of the plan's sizes (e.g. 32x32,32x256)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per size instead of the plan's")
    p.add_argument("--tag", default=None,
                   help="name of this run's record: lm_throughput_TAG.{json,png} (docs too unless --no-docs)")
    p.add_argument("--memory", choices=("default", "none", "only"), default="default",
                   help="peak-memory runs (SmolLM2, fresh processes): with the full run, never, or alone")
    args = p.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in FULL]
    if unknown:  # a typo would otherwise run nothing and still print a RESULT line
        p.error(f"--models: {', '.join(unknown)} not in the plan (choose from {', '.join(FULL)})")

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    plan = QUICK if args.quick else FULL
    results, notes, extras = [], [], {"profiles": [], "memory": [], "forward_ms": [], "draw_ms": []}
    start = time.perf_counter()
    for name in args.models.split(",") if args.memory != "only" else []:
        why = _available(name)
        if why is not None:
            notes.append(f"{name} skipped: {why}")
            print(f"[lm_throughput] {notes[-1]}", flush=True)
            continue
        cfg = dict(plan[name])
        if args.sizes:
            cfg["sizes"] = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
        if args.repeats:
            cfg["repeats"] = args.repeats
        print(f"[lm_throughput] {name}: (N, T) in {cfg['sizes']}", flush=True)
        results.append(bench_model(name, cfg["sizes"], cfg["repeats"], args.chunk))
        if not args.quick and not args.sizes:
            extras["profiles"].append(profile(name, 32, 256 if name == "smollm2" else 256))
            extras["forward_ms"].extend(forward_costs(name))
    if not args.quick and not args.sizes and args.memory != "only":
        extras["draw_ms"].extend(draw_costs(49_152))  # SmolLM2's vocabulary, N = 32
    want_memory = args.memory == "only" or (args.memory == "default" and not args.quick and not args.sizes)
    if want_memory and "smollm2" in args.models and _available("smollm2") is None:
        # A 4,096-token budget at N = 64, T = 64; the default budget (32,768 tokens) at T = 1,024,
        # where 8 rows of 1,066 tokens would not fit in 4,096 (live rows evicted, recomputed).
        for n, t, budget, method in ((64, 64, 4096, "smc"), (64, 64, 4096, "lean"),
                                     (8, 1024, 32768, "smc"), (8, 1024, 32768, "lean")):
            extras["memory"].append(memory("smollm2", n, t, budget, method))
            print(f"  memory {extras['memory'][-1]}", flush=True)

    record = {
        "benchmark": "lm_throughput",
        "quick": args.quick,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "seconds": time.perf_counter() - start,
        "notes": notes,
        "results": results,
        **extras,
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("quick" if args.quick else "full")
    (OUT_DIR / f"lm_throughput_{tag}.json").write_text(json.dumps(record, indent=2) + "\n")
    if results:
        plot(results, OUT_DIR / f"lm_throughput_{tag}.png")
    if not args.quick and not args.no_docs and (results or extras["memory"]):
        DOCS_DIR.mkdir(parents=True, exist_ok=True)
        name = f"lm_throughput_{args.tag}" if args.tag else "lm_throughput"
        (DOCS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        if results:
            plot(results, DOCS_DIR / f"{name}.png")

    print("\nratio to the lean decode loop (wall; cpu in brackets; generate after the bar):")
    headline = []
    for res in results:
        for n, t in sorted({(r["n"], r["new_tokens"]) for r in res["rows"]}, key=lambda s: (s[1], s[0])):
            parts = [f"{r['method']}={r['ratio_lean']:.2f} [{r['cpu_ratio_lean']:.2f}] | {r['ratio_generate']:.2f}"
                     for r in res["rows"] if (r["n"], r["new_tokens"]) == (n, t) and r["method"] in METHODS]
            print(f"  {res['model']:10s} N={n:3d} T={t:4d}  " + "  ".join(parts))
        for r in res["rows"]:
            if r["method"] in METHODS and r["n"] == max(x["n"] for x in res["rows"]) and \
                    r["new_tokens"] == min(x["new_tokens"] for x in res["rows"]):
                headline.append(f"{res['model']}_N{r['n']}_T{r['new_tokens']}_{r['method']}_lean={r['ratio_lean']:.2f}")
    headline.append(f"seconds={record['seconds']:.0f}")
    print("RESULT " + " ".join(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
