"""`tiny-arith`: a character-level GPT-2 trained here, on CPU, on multi-step addition chains.

It exists so that every inference kernel has a real LM to run on that costs nothing to ship
and whose outputs can be checked exactly (each `x+y=z` line and the `A:` line). It is
deliberately undertrained: one sample at temperature 1 gets roughly half of the held-out
3-5-operand chains right, which leaves room for SMC, reranking and tree search to help.

    python -m ppllm.tasks.arith.train_lm train --out ppllm/assets/tiny-arith --seed 0
    python -m ppllm.tasks.arith.train_lm eval --model ppllm/assets/tiny-arith

The defaults of `train` are the committed model's recipe; the same command, seed and thread
count reproduce it (bit-for-bit on the same CPU kind and torch build; elsewhere floating-point
kernels may differ slightly, and so may the accuracy by a few points).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from ...zoo.char_tokenizer import save_tokenizer
from . import data as arith_data

__all__ = ["TrainConfig", "evaluate_accuracy", "load", "main", "sample_solutions", "train"]

IGNORE = -100


@dataclass(frozen=True)
class TrainConfig:
    """The whole recipe; its defaults produce the committed weights."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    cooldown: float = 0.2
    weight_decay: float = 0.01
    n_embd: int = 64
    n_layer: int = 4
    n_head: int = 4
    # transformers loads gpt2 GGUF files with GPT2Config's default of 1024 positions,
    # so the safetensors and GGUF versions only agree if the model has that many too.
    n_positions: int = 1024
    min_operands: int = 2
    max_operands: int = 5
    # Relative frequency of each operand count: long chains are where the model struggles.
    operand_weights: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    # One thread: results do not depend on the machine's core count, and on a busy 2-core
    # machine it is faster than two (OpenMP threads spin-waiting on shared cores).
    threads: int = 1
    eval_n: int = 300
    eval_seed: int = 0


@contextmanager
def _torch_threads(n: int):
    """Use at most `n` intra-op threads inside the block, then restore the old setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, old)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def model_config(cfg: TrainConfig, vocab_size: int, eos_id: int) -> GPT2Config:
    """A small GPT-2 without dropout (training data is unlimited, so nothing to regularise)."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # The same tanh-approximated GELU as GPT-2's "gelu_new", in one fused kernel.
        activation_function="gelu_pytorch_tanh",
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def make_batch(
    problems: Sequence[arith_data.Problem], tokenizer, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), right-padded with EOS; the loss covers solution + EOS only.

    The question is masked out of the loss because its operands are uniform noise: the
    model's job is to continue a given question, not to invent one.
    """
    questions = tokenizer([p.question_text for p in problems])["input_ids"]
    solutions = tokenizer([arith_data.format_solution(p) for p in problems])["input_ids"]
    rows = [q + s + [eos_id] for q, s in zip(questions, solutions, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), eos_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (q, row) in enumerate(zip(questions, rows, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(q) : len(row)] = torch.tensor(row[len(q) :])
    return ids, labels


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup, a constant peak, then a linear cooldown to a tenth over the last `cooldown`.

    Learning here comes in sudden drops that a decaying rate delays; holding the peak and
    cooling down only at the end learns fastest and still ends on settled weights.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    start = cfg.steps * (1.0 - cfg.cooldown)
    if step < start:
        return cfg.lr
    progress = (step - start) / max(1.0, cfg.steps - 1 - start)
    return cfg.lr * (1.0 - 0.9 * min(1.0, progress))


def _problem_stream(cfg: TrainConfig):
    """Endless batches of training problems (held-out questions are never drawn)."""
    problems = arith_data.iter_training_problems(
        cfg.seed, (cfg.min_operands, cfg.max_operands), cfg.operand_weights
    )
    while True:
        yield list(itertools.islice(problems, cfg.batch_size))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_matrix = param.ndim >= 2 and not name.endswith(("wte.weight", "wpe.weight"))
        (decay if is_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def _fit(
    model: GPT2LMHeadModel,
    tokenizer,
    cfg: TrainConfig,
    log_every: int,
    callback: Callable[[int, GPT2LMHeadModel], None] | None = None,
) -> list[float]:
    """The training loop; returns the per-step losses. `callback(step, model)` runs after each step."""
    eos_id = tokenizer.eos_token_id
    opt = _optimizer(model, cfg)
    losses: list[float] = []
    stream = _problem_stream(cfg)
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        ids, labels = make_batch(next(stream), tokenizer, eos_id)
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            recent = float(np.mean(losses[-log_every:]))
            print(f"step {step:5d}  loss {recent:.4f}  lr {lr_at(step, cfg):.2e}", flush=True)
        if callback is not None:
            callback(step, model)
    model.eval()
    return losses


def _save_weights(model: GPT2LMHeadModel, out_dir: Path) -> None:
    """float16 safetensors (half the size; the model is used in float32) and a float32 config.

    The config states float32 so that `from_pretrained` upcasts on load by default.
    """
    state = {
        name: tensor.detach().to(torch.float16).contiguous()
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"  # tied to transformer.wte.weight
    }
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    model.config.dtype = torch.float32
    model.config.save_pretrained(str(out_dir))
    model.generation_config.save_pretrained(str(out_dir))


def train(
    out_dir: str | Path, seed: int = 0, log_every: int = 100, evaluate: bool = True, **overrides
) -> dict:
    """Train `tiny-arith` from scratch into `out_dir`; returns what training.json records.

    `overrides` replace `TrainConfig` fields (steps, n_embd, ...). Only the defaults are the
    committed recipe.
    """
    cfg = TrainConfig(seed=seed, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(out)
    start = time.perf_counter()
    with _torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = GPT2LMHeadModel(model_config(cfg, len(tokenizer), tokenizer.eos_token_id))
        losses = _fit(model, tokenizer, cfg, log_every)
    train_seconds = time.perf_counter() - start
    _save_weights(model, out)

    record = {
        "command": f"python -m ppllm.tasks.arith.train_lm train --out {out_dir} --seed {seed}"
        + (f" --steps {cfg.steps}" if "steps" in overrides else ""),
        "overrides": overrides,
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": float(np.mean(losses[-50:])),
        "train_seconds": round(train_seconds, 1),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    if evaluate:
        acc = evaluate_accuracy(out, n=cfg.eval_n, seed=cfg.eval_seed, threads=cfg.threads)
        record["heldout_accuracy"] = acc
    _write_record(out, record)
    return record


def _write_record(out: Path, record: dict) -> None:
    """training.json (machine-readable) and TRAINING.md (the same facts, for people)."""
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    acc = record.get("heldout_accuracy", {})
    cfg = record["config"]
    weights = ", ".join(
        f"{n}: {w:g}"
        for n, w in zip(
            range(cfg["min_operands"], cfg["max_operands"] + 1), cfg["operand_weights"], strict=True
        )
    )
    lines = [
        "# tiny-arith",
        "",
        "A character-level GPT-2 trained by `ppllm.tasks.arith.train_lm` on addition chains: "
        "`Q: a+b+c=` then one `x+y=z` line per partial sum, then `A: z`, then `<|endoftext|>`. "
        "Operands are 2-digit (10-99).",
        "",
        f"- command: `{record['command']}`",
        f"- seed: {cfg['seed']}, steps: {cfg['steps']}, batch: {cfg['batch_size']} problems, "
        f"AdamW lr {cfg['lr']:g} (warmup {cfg['warmup']}, linear cooldown over the last "
        f"{cfg['cooldown']:.0%}), torch threads: {record['threads']}",
        f"- training problems: {cfg['min_operands']}-{cfg['max_operands']} operands, relative "
        f"frequency by operand count {{{weights}}}; loss on the solution and EOS only",
        f"- model: {cfg['n_layer']} layers, n_embd {cfg['n_embd']}, {cfg['n_head']} heads, "
        f"n_positions {cfg['n_positions']}, {record['parameters']} parameters, stored as float16",
        f"- final training loss (mean of the last 50 steps, nats per character): "
        f"{record['final_loss']:.4f}",
        f"- training time: {record['train_seconds']} s on {record['machine']} "
        f"(torch {record['torch']})",
    ]
    if acc:
        lines.append(
            f"- held-out accuracy, one sample at temperature {acc['temperature']:g} on "
            f"{acc['n']} 3-5-operand chains: {acc['accuracy']:.3f} (by operand count: "
            f"{acc['by_operands']}); re-measure with `python -m ppllm.tasks.arith.train_lm eval`"
        )
    lines += [
        "",
        "Held-out questions are those whose hash is 0 mod "
        f"{arith_data.HELDOUT_FRACTION_DENOM} (`ppllm.tasks.arith.data.is_heldout`); training "
        "never draws them, and evaluation draws from its own seed stream.",
    ]
    (out / "TRAINING.md").write_text("\n".join(lines) + "\n")


def load(model_dir: str | Path) -> tuple[GPT2LMHeadModel, object]:
    """(model in float32 eval mode, tokenizer) from a tiny-arith dir."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model.eval(), tokenizer


def sample_solutions(
    model,
    tokenizer,
    problems: Sequence[arith_data.Problem],
    temperature: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 80,
) -> list[str]:
    """One sampled completion per problem, with plain `model.generate`.

    Problems are batched by prompt length (all operands have two digits, so the operand
    count fixes it); that avoids padding, which GPT-2's absolute positions handle poorly.
    Sampling runs under a forked, seeded torch RNG so the caller's state is untouched.
    """
    by_len: dict[int, list[int]] = {}
    prompts = [tokenizer(p.question_text)["input_ids"] for p in problems]
    for i, ids in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(i)
    out: list[str] = [""] * len(problems)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for length in sorted(by_len):
            idx = by_len[length]
            ids = torch.tensor([prompts[i] for i in idx])
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(gen[:, length:], skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                out[i] = text
    return out


def evaluate_accuracy(
    model_dir: str | Path,
    n: int = 300,
    temperature: float = 1.0,
    seed: int = 0,
    heldout_seed: int = 1234,
    threads: int = 1,
) -> dict:
    """Single-sample accuracy of the `A:` line on `n` held-out 3-5-operand chains."""
    problems = arith_data.heldout_problems(n, seed=heldout_seed, operands=(3, 5))
    with _torch_threads(threads):
        model, tokenizer = load(model_dir)
        texts = sample_solutions(model, tokenizer, problems, temperature=temperature, seed=seed)
    correct = [arith_data.parse_answer(t) == p.answer for p, t in zip(problems, texts, strict=True)]
    by_ops: dict[str, list[bool]] = {}
    for p, ok in zip(problems, correct, strict=True):
        by_ops.setdefault(str(p.n_operands), []).append(ok)
    return {
        "n": n,
        "temperature": temperature,
        "seed": seed,
        "heldout_seed": heldout_seed,
        "accuracy": float(np.mean(correct)),
        "by_operands": {k: round(float(np.mean(v)), 3) for k, v in sorted(by_ops.items())},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ppllm.tasks.arith.train_lm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train tiny-arith from scratch")
    tr.add_argument("--out", default="ppllm/assets/tiny-arith")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    tr.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    ev = sub.add_parser("eval", help="held-out single-sample accuracy")
    ev.add_argument("--model", default=None, help="model dir (default: the committed one)")
    ev.add_argument("--n", type=int, default=300)
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; `ppllm models train tiny-arith` calls this with ["train", ...]."""
    args = _parser().parse_args(argv)
    if args.command == "train":
        overrides = {} if args.steps is None else {"steps": args.steps}
        record = train(args.out, seed=args.seed, evaluate=not args.no_eval, **overrides)
        print(json.dumps(record, indent=2))
    else:
        from ...zoo import resolve

        model_dir = args.model or resolve("tiny-arith")
        result = evaluate_accuracy(
            model_dir, n=args.n, temperature=args.temperature, seed=args.seed
        )
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
