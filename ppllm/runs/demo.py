"""`ppllm demo`: SmolLM2 writes a lipogram (no letter "e") with token-level SMC.

The program (`models/lipogram.py`, importable as `ppllm_models.lipogram`) proposes each token from the LM with the banned tokens
masked out and weights it by the mass the mask removed, so the weighted particles target
the LM conditioned on the constraint. The demo prints log Ẑ and the ESS after every step,
then the weighted posterior. If SmolLM2 cannot be fetched or loaded it says why and runs
the same program on `tiny-arith` instead, banning a digit from the solution of a sum.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

CHAT_PROMPT = "Write one sentence about a cat sitting in the sun."
ARITH_PROMPT = "Q: 37+48+19=\n"
DEFAULT_BANNED = {"smollm2": "e", "tiny-arith": "6"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppllm demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (default), tiny-arith, or a local model directory / .gguf file")
    p.add_argument("--prompt", default=None, help="the user prompt (chat models) or text prefix")
    p.add_argument("--banned", default=None,
                   help='characters no generated token may contain (default "e"; "6" on tiny-arith)')
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--ess-threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1),
                   help="torch threads (default: $OMP_NUM_THREADS, else 1)")
    p.add_argument("--top", type=int, default=8, help="how many distinct texts to print")
    return p


def _lipogram_module() -> Any:
    """`ppllm_models.lipogram`: the program lives on the user's side, beside the library."""
    try:
        return importlib.import_module("ppllm_models.lipogram")
    except ImportError as err:
        raise SystemExit(
            f"cannot import ppllm_models.lipogram ({err}); install ppllm from its repository "
            "(`make demo` does) so the example programs in models/ are importable"
        ) from err


def _load(name: str, log) -> tuple[Any, str]:
    """The LM to run on, falling back from SmolLM2 to tiny-arith with the reason printed."""
    from .. import zoo

    if name == "smollm2":
        try:
            from ..zoo import smollm2

            if not smollm2.is_available():
                log("SmolLM2 is not in the cache yet: fetching it (one time, ~93 MB)")
                smollm2.fetch()
            return zoo.load_lm("smollm2"), "smollm2"
        except Exception as err:  # any failure to get the big model: say why, use the small one
            log(f"SmolLM2 is unavailable ({type(err).__name__}: {err}); using tiny-arith instead")
            name = "tiny-arith"
    return zoo.load_lm(name), name


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    import ppllm

    torch.set_num_threads(max(1, args.threads))
    log = lambda msg: print(f"[demo] {msg}", flush=True)  # noqa: E731
    start = time.perf_counter()
    lipogram = _lipogram_module()
    try:
        lm, name = _load(args.model, log)
    except (FileNotFoundError, ValueError) as err:
        print(f"ppllm demo: cannot load a model: {err}", file=sys.stderr)
        return 1
    chat = getattr(lm.tokenizer, "chat_template", None) is not None
    banned = args.banned if args.banned is not None else DEFAULT_BANNED.get(name, "e" if chat else "6")
    if chat:
        prompt = args.prompt or CHAT_PROMPT
        text = lm.chat(f"{prompt} Do not use the letter {banned!r}." if banned.isalpha() else prompt)
        shown = prompt
    else:
        text = shown = args.prompt or ARITH_PROMPT
    ctx = lm.context(text)
    mask = lipogram.lipogram_mask(lm, banned)
    log(f"model {name} ({lm.vocab_size} tokens, {int((~mask).sum())} contain one of {banned!r} "
        f"and are masked); loaded in {time.perf_counter() - start:.1f} s")
    log(f"prompt: {shown!r}")
    log(f"SMC: {args.particles} particles, up to {args.max_tokens} tokens, "
        f"resample when ESS < {args.ess_threshold}·N, seed {args.seed}")

    program = lipogram.Lipogram(lm, ctx, mask, max_tokens=args.max_tokens)
    t0 = time.perf_counter()
    post = ppllm.smc(program, args.particles, seed=args.seed, ess_threshold=args.ess_threshold)
    seconds = time.perf_counter() - t0

    print("\n step   ESS   resampled   live   log Ẑ so far")
    log_z = 0.0
    for rec in post.steps:
        log_z += rec.log_Z_increment
        print(f" {rec.t:4d} {rec.ess:6.2f}   {'yes' if rec.resampled else ' no':>9} {rec.n_live:6d}   {log_z:10.4f}")
    print(f"\nlog Ẑ = {post.log_Z:.4f}  (estimate of log P(no {banned!r} in the text) under the LM)")
    if not post.ok:
        print(f"every particle was ruled out: {post.message}")
        return 1
    print(f"final ESS = {post.ess:.2f} of {post.n}\n\nweighted posterior (weight, text):")
    for value, w in list(post.distribution().items())[: args.top]:
        print(f"  {w:7.4f}  {value!r}")
    ok = all(not (set(banned.lower() + banned.upper()) & set(str(p))) for p in post.particles)
    tokens = sum(len(p.generated) for p in post.particles)
    print(f"\nno particle contains {banned!r}: {ok}; {tokens} tokens in {seconds:.1f} s "
          f"({tokens / max(seconds, 1e-9):.1f} tokens/s); {lm.stats['forwards']} forward passes, "
          f"{lm.stats['reused_tokens']} prefix tokens reused from the KV cache")
    return 0 if ok and math.isfinite(post.log_Z) else 1


if __name__ == "__main__":
    raise SystemExit(main())
