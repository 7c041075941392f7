"""LM throughput of ppllm's particle kernels against `model.generate`, side by side.

Same model, same prompt, N sequences of T new tokens each (EOS ignored on both sides):

  (a) generate   `model.generate(num_return_sequences=N, do_sample=True)` — the baseline
  (b) smc_ess0   token-level SMC that never resamples (ess_threshold=0)
  (c) smc_ess1   token-level SMC resampling after every token (ess_threshold=1)
  (d) pf_chunk   chunk-level particle filter: chunks of `--chunk` tokens, resampling after each

The ppllm programs add a cheap token-dependent `factor`, so weights differ and resampling
really duplicates and drops particles (children then share their parent's KV cache).
Figures: tokens/s (N·T / wall seconds, the prompt's prefill included on both sides), CPU
seconds, and each method's ratio to (a). N ∈ {8, 32, 64}; models tiny-arith and SmolLM2
(each skipped with a note when absent).

    python -m benchmarks.lm_throughput            # full run, also writes docs/benchmarks/
    python -m benchmarks.lm_throughput --quick    # < 1 minute on 2 cores, same code path
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benchmarks" / "out"
DOCS_DIR = ROOT / "docs" / "benchmarks"
METHODS = ("generate", "smc_ess0", "smc_ess1", "pf_chunk")
PROMPTS = {"chat": "Write a short story about a cat.", "text": "Q: 37+48+19=\n"}

FULL = {
    "ns": (8, 32, 64),
    "tokens": {"tiny-arith": 64, "smollm2": 32},
    "repeats": {"tiny-arith": 3, "smollm2": 1},
}
QUICK = {
    "ns": (8, 32),
    "tokens": {"tiny-arith": 16, "smollm2": 4},
    "repeats": {"tiny-arith": 1, "smollm2": 1},
    "ns_by_model": {"smollm2": (8,)},
}


def _programs():
    """The two ppllm programs, defined after ppllm is importable."""
    import ppllm

    class TokenSampler(ppllm.Program):
        """T tokens from the LM, one per step, each weighted by a cheap token potential."""

        def __init__(self, lm, ctx, n_tokens: int) -> None:
            self.lm, self.ctx, self.n_tokens, self.n = lm, ctx, n_tokens, 0

        async def step(self) -> None:
            tok = await self.sample(self.lm.next_token(self.ctx))
            self.ctx = self.ctx + tok
            self.n += 1
            self.factor(-0.3 * (tok % 4))
            if self.n >= self.n_tokens:
                self.finish()

    class ChunkSampler(ppllm.Program):
        """T tokens from the LM in chunks of up to `chunk` tokens, one chunk per step."""

        def __init__(self, lm, ctx, n_tokens: int, chunk: int) -> None:
            self.lm, self.ctx, self.n_tokens, self.chunk, self.n = lm, ctx, n_tokens, chunk, 0

        async def step(self) -> None:
            size = min(self.chunk, self.n_tokens - self.n)
            piece = await self.sample(self.lm.chunk(self.ctx, max_tokens=size))
            self.ctx = self.ctx + piece
            self.n += len(piece.tokens)
            self.factor(-0.3 * (sum(piece.tokens) % 4))
            if self.n >= self.n_tokens:
                self.finish()

    return TokenSampler, ChunkSampler


def _timed(fn: Callable[[], int], repeats: int) -> dict[str, float]:
    """Best-of-`repeats` wall and CPU seconds of fn (which returns the tokens it produced)."""
    walls, cpus, tokens = [], [], 0
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        tokens = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    best = min(range(repeats), key=lambda i: walls[i])
    return {"seconds": walls[best], "cpu_seconds": cpus[best], "tokens": tokens,
            "seconds_all": walls, "seconds_median": statistics.median(walls)}


def bench_model(
    name: str, ns: Sequence[int], n_tokens: int, repeats: int, chunk: int, label: str | None = None
) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    import ppllm
    from ppllm import zoo

    lm = zoo.load_lm(name)
    res_name = label or name
    TokenSampler, ChunkSampler = _programs()
    chat = getattr(lm.tokenizer, "chat_template", None) is not None
    ctx = lm.context(lm.chat(PROMPTS["chat"]) if chat else PROMPTS["text"])
    ids = torch.tensor([ctx.tokens])
    stop = sorted(lm.eos_token_ids or {lm.eos_token_id})

    def generate(n: int, t: int) -> int:
        cfg = GenerationConfig(
            do_sample=True, max_new_tokens=t, min_new_tokens=t, top_k=0, top_p=1.0,
            temperature=1.0, num_return_sequences=n, pad_token_id=stop[0], eos_token_id=stop,
        )
        torch.manual_seed(0)
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        return int(out.shape[0] * (out.shape[1] - ids.shape[1]))

    def smc(program: ppllm.Program, n: int, ess: float) -> int:
        lm.clear_cache()  # every method starts cold: the prompt is encoded once per run
        post = ppllm.smc(program, n, seed=0, ess_threshold=ess)
        return sum(p.n for p in post.particles)

    runners: dict[str, Callable[[int, int], int]] = {
        "generate": generate,
        "smc_ess0": lambda n, t: smc(TokenSampler(lm, ctx, t), n, 0.0),
        "smc_ess1": lambda n, t: smc(TokenSampler(lm, ctx, t), n, 1.0),
        "pf_chunk": lambda n, t: smc(ChunkSampler(lm, ctx, t, chunk), n, 1.0),
    }
    for run in runners.values():  # warm-up: lazy initialisation stays out of the figures
        run(2, 2)
    rows = []
    for n in ns:
        for method, run in runners.items():
            lm.stats = dict.fromkeys(lm.stats, 0)
            got = _timed(lambda run=run, n=n: run(n, n_tokens), repeats)
            got.update(model=res_name, method=method, n=n, new_tokens=n_tokens,
                       tokens_per_s=got["tokens"] / got["seconds"],
                       cpu_tokens_per_s=got["tokens"] / got["cpu_seconds"])
            if method != "generate":
                got["lm_stats"] = {k: v // repeats for k, v in lm.stats.items()}
            rows.append(got)
            print(f"  {res_name:10s} N={n:3d} {method:9s} {got['tokens_per_s']:9.1f} tok/s "
                  f"({got['seconds']:.2f} s wall, {got['cpu_seconds']:.2f} s cpu)", flush=True)
    base = {r["n"]: r for r in rows if r["method"] == "generate"}
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / base[r["n"]]["tokens_per_s"]
        r["cpu_ratio"] = r["cpu_tokens_per_s"] / base[r["n"]]["cpu_tokens_per_s"]
    return {"model": name, "prompt_tokens": len(ctx), "vocab_size": lm.vocab_size,
            "new_tokens": n_tokens, "chunk": chunk, "repeats": repeats, "rows": rows}


def _available(name: str) -> str | None:
    """None if the model can be loaded here, else why not."""
    from ppllm import zoo

    try:
        zoo.resolve(name)
    except (FileNotFoundError, ImportError) as err:
        return str(err)
    return None


def _tiny_arith_stand_in(directory: Path) -> Path:
    """tiny-arith's architecture and tokenizer with random weights.

    Throughput depends on the shapes only (EOS is ignored on both sides), so this measures
    the same thing while the trained weights are absent; the figures say which was used.
    """
    import torch
    from transformers import GPT2LMHeadModel

    from ppllm.tasks.arith.train_lm import TrainConfig, model_config
    from ppllm.zoo.char_tokenizer import save_tokenizer

    tok = save_tokenizer(directory)
    torch.manual_seed(0)
    GPT2LMHeadModel(model_config(TrainConfig(), len(tok), tok.eos_token_id)).save_pretrained(directory)
    return directory


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        ns = sorted({r["n"] for r in res["rows"]})
        width = 0.8 / len(METHODS)
        for j, method in enumerate(METHODS):
            vals = [next(r["tokens_per_s"] for r in res["rows"] if r["n"] == n and r["method"] == method) for n in ns]
            ax.bar([i + (j - 1.5) * width for i in range(len(ns))], vals, width, label=method)
        ax.set_xticks(range(len(ns)), [f"N={n}" for n in ns])
        ax.set_ylabel("new tokens / s (wall)")
        random = " (random weights)" if res.get("weights", "trained") != "trained" else ""
        ax.set_title(f"{res['model']}{random}: {res['new_tokens']} new tokens per sequence", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 1 minute on 2 cores)")
    p.add_argument("--models", default="tiny-arith,smollm2", help="comma-separated zoo names or paths")
    p.add_argument("--threads", type=int, default=1,
                   help="torch / OpenMP threads (default 1: on a shared 2-core machine, 2 threads "
                        "spin-wait and are several times slower)")
    p.add_argument("--chunk", type=int, default=8, help="chunk size of the particle filter (d)")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks/")
    args = p.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    sizes = QUICK if args.quick else FULL
    results, notes = [], []
    start = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="lm_throughput-")
    for name in args.models.split(","):
        source = name
        why = _available(name)
        if why is not None and name == "tiny-arith":
            source = str(_tiny_arith_stand_in(Path(scratch.name)))
            notes.append(f"tiny-arith: trained weights absent ({why}); measured its architecture "
                         "and tokenizer with random weights")
            print(f"[lm_throughput] {notes[-1]}", flush=True)
        elif why is not None:
            notes.append(f"{name} skipped: {why}")
            print(f"[lm_throughput] {notes[-1]}", flush=True)
            continue
        ns = sizes.get("ns_by_model", {}).get(name, sizes["ns"])
        key = name if name in sizes["tokens"] else "tiny-arith"
        print(f"[lm_throughput] {name}: N in {ns}, {sizes['tokens'][key]} new tokens", flush=True)
        res = bench_model(source, ns, sizes["tokens"][key], sizes["repeats"][key], args.chunk, label=name)
        res["model"] = name
        res["weights"] = "trained" if source == name else "random (same architecture and tokenizer)"
        results.append(res)
    scratch.cleanup()

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
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"
    (OUT_DIR / f"lm_throughput_{tag}.json").write_text(json.dumps(record, indent=2) + "\n")
    if results:
        plot(results, OUT_DIR / f"lm_throughput_{tag}.png")
    if not args.quick and not args.no_docs and results:
        DOCS_DIR.mkdir(parents=True, exist_ok=True)
        (DOCS_DIR / "lm_throughput.json").write_text(json.dumps(record, indent=2) + "\n")
        plot(results, DOCS_DIR / "lm_throughput.png")

    print("\nratio to generate (tokens/s wall; cpu in brackets):")
    headline = []
    for res in results:
        for n in sorted({r["n"] for r in res["rows"]}):
            parts = [f"{r['method']}={r['ratio']:.2f} [{r['cpu_ratio']:.2f}]" for r in res["rows"]
                     if r["n"] == n and r["method"] != "generate"]
            print(f"  {res['model']:10s} N={n:3d}  " + "  ".join(parts))
        n_head = 32 if any(r["n"] == 32 for r in res["rows"]) else max(r["n"] for r in res["rows"])
        short = {"smc_ess0": "b", "smc_ess1": "c", "pf_chunk": "d"}
        for r in res["rows"]:
            if r["n"] == n_head and r["method"] in short:
                key = f"{res['model']}_N{n_head}_{short[r['method']]}_over_a"
                headline.append(f"{key}={r['ratio']:.2f} {key}_cpu={r['cpu_ratio']:.2f}")
    headline.append(f"seconds={record['seconds']:.0f}")
    print("RESULT " + " ".join(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
