"""Train `arith-prm`, the learned tiny-arith PRM, on steps that tiny-arith itself samples.

    python -m ppllm.tasks.arith.train_prm --out ppllm/assets/arith-prm --seed 0
    ppllm models train arith-prm            (the same, through the CLI)

1. Sample one solution per *training* problem from the committed tiny-arith weights with
   `model.generate` at temperature 1 (held-out questions are never drawn: `arith_data` splits
   by question hash).
2. Label every step (line) with `ExactArithVerifier` (chain mode: 1 iff the running total
   written at that line is the true one).
3. Fit a 2-layer char-level `GPT2ForTokenClassification` briefly on (question, step) ->
   label, binary cross-entropy at the step's closing newline. The model never sees the
   earlier steps: that is what keeps it fallible (see `ppllm.tasks.arith.learned_prm`).
4. Sample held-out problems the same way, label them, and report the step-level ROC AUC.
   The held-out steps are saved next to the weights (`heldout_steps.json`), so the AUC can be
   re-checked exactly without sampling.

Training is kept short on purpose: the PRM should be clearly useful yet clearly fallible.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import data as arith_data
from .learned_prm import LearnedArithPRM, encode_step, roc_auc
from .verifier import ExactArithVerifier, solution_lines

__all__ = ["PRMTrainConfig", "evaluate_auc", "load_heldout", "main", "sample_labelled", "train"]

HELDOUT_FILE = "heldout_steps.json"


@dataclass(frozen=True)
class PRMTrainConfig:
    """The whole recipe; its defaults produce the committed weights."""

    seed: int = 0
    policy: str = "tiny-arith"
    sample_temperature: float = 1.0
    n_train_chains: int = 4000
    min_operands: int = 2
    max_operands: int = 5
    steps: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    n_embd: int = 48
    n_layer: int = 2
    n_head: int = 4
    n_positions: int = 128
    threads: int = 1
    heldout_n: int = 300
    heldout_seed: int = 1234


@contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, 2)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sample_labelled(
    policy, tokenizer, problems: Sequence[arith_data.Problem], temperature: float, seed: int
) -> list[dict]:
    """One sampled solution per problem, cut into steps and labelled by the exact verifier."""
    from .train_lm import sample_solutions

    verifier = ExactArithVerifier()
    out: list[dict] = []
    chunk = 500  # bounds the generation cache; seeds per chunk keep it reproducible
    for k, lo in enumerate(range(0, len(problems), chunk)):
        part = problems[lo : lo + chunk]
        texts = sample_solutions(policy, tokenizer, part, temperature=temperature, seed=seed * 1000 + k)
        for problem, text in zip(part, texts, strict=True):
            steps = solution_lines(text)
            if steps:
                labels = verifier.labels(problem.question_text, steps)
                out.append({"prompt": problem.question_text, "steps": steps, "labels": labels})
    return out


def _model(cfg: PRMTrainConfig, vocab_size: int, pad_id: int):
    from transformers import GPT2Config, GPT2ForTokenClassification

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        classifier_dropout=0.0,
        activation_function="gelu_pytorch_tanh",
        num_labels=1,
        bos_token_id=pad_id,
        eos_token_id=pad_id,
        pad_token_id=pad_id,
        architectures=["GPT2ForTokenClassification"],
    )
    return GPT2ForTokenClassification(config)


def _tensors(records: list[dict], tokenizer, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, last, y): one right-padded row per step, the index of its last token, its label."""
    rows = [encode_step(tokenizer, r["prompt"], step) for r in records for step in r["steps"]]
    labels = [float(y) for r in records for y in r["labels"]]
    ids = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, torch.tensor([len(row) - 1 for row in rows]), torch.tensor(labels)


def _fit(model, ids: torch.Tensor, last: torch.Tensor, y: torch.Tensor, cfg: PRMTrainConfig) -> list[float]:
    """AdamW with a short warmup and linear decay; binary cross-entropy at each step's end."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    model.train()
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 50) * (1.0 - 0.9 * step / cfg.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, ids.shape[0], (cfg.batch_size,), generator=gen)
        width = int(last[idx].max()) + 1  # trim padding
        x = ids[idx, :width]
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[..., 0]
        picked = logits[torch.arange(len(idx)), last[idx]]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(picked, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            print(f"step {step:4d}  loss {np.mean(losses[-50:]):.4f}", flush=True)
    model.eval()
    return losses


def evaluate_auc(prm, records: list[dict]) -> dict:
    """Step-level ROC AUC (and base rate) of `prm` on labelled records."""
    scores = prm.score_many([(r["prompt"], r["steps"]) for r in records])
    y = np.concatenate([np.asarray(r["labels"]) for r in records])
    s = np.concatenate(scores)
    return {
        "auc": roc_auc(y, s),
        "n_steps": int(y.size),
        "positive_rate": float(y.mean()),
        "accuracy_at_0.5": float(np.mean((s >= 0.5) == y.astype(bool))),
    }


def load_heldout(path: str | Path | None = None) -> list[dict]:
    """The labelled held-out steps saved at training time."""
    from .learned_prm import default_path

    base = Path(path) if path is not None else default_path()
    return json.loads((base / HELDOUT_FILE).read_text())["records"]


def _save(model, out: Path) -> None:
    from safetensors.torch import save_file

    from ...zoo.char_tokenizer import save_tokenizer

    save_tokenizer(out)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.dtype = torch.float32  # upcast on load
    model.config.save_pretrained(str(out))


def train(out_dir: str | Path, seed: int = 0, **overrides) -> dict:
    """Sample, label, fit and evaluate; writes the model and training.json into `out_dir`."""
    from ...zoo import resolve
    from .train_lm import load as load_policy

    cfg = PRMTrainConfig(seed=seed, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        policy_dir = resolve(cfg.policy)
        policy, tokenizer = load_policy(policy_dir)
        problems = arith_data.training_problems(
            cfg.n_train_chains, seed=cfg.seed, operands=(cfg.min_operands, cfg.max_operands)
        )
        assert not any(arith_data.is_heldout(p) for p in problems)
        train_records = sample_labelled(policy, tokenizer, problems, cfg.sample_temperature, cfg.seed)
        heldout = arith_data.heldout_problems(cfg.heldout_n, seed=cfg.heldout_seed, operands=(3, 5))
        heldout_records = sample_labelled(
            policy, tokenizer, heldout, cfg.sample_temperature, cfg.seed + 1
        )
        sample_seconds = time.perf_counter() - start
        pad_id = int(tokenizer.eos_token_id)
        ids, last, y = _tensors(train_records, tokenizer, pad_id)
        torch.manual_seed(cfg.seed)
        model = _model(cfg, len(tokenizer), pad_id)
        losses = _fit(model, ids, last, y, cfg)
        _save(model, out)
        (out / HELDOUT_FILE).write_text(
            json.dumps({"heldout_seed": cfg.heldout_seed, "records": heldout_records}) + "\n"
        )
        prm = LearnedArithPRM.load(out)
        heldout_eval = evaluate_auc(prm, heldout_records)
        exact_eval = evaluate_auc(ExactArithVerifier(), heldout_records)
    seconds = time.perf_counter() - start
    n_train_steps = int(sum(len(r["labels"]) for r in train_records))
    record = {
        "command": f"python -m ppllm.tasks.arith.train_prm --out {out_dir} --seed {seed}"
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(overrides.items())),
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_chains": len(train_records),
        "train_steps_labelled": n_train_steps,
        "train_positive_rate": float(np.mean([y for r in train_records for y in r["labels"]])),
        "final_loss": float(np.mean(losses[-50:])),
        "heldout": heldout_eval,
        "heldout_exact_verifier_auc": exact_eval["auc"],
        "sample_seconds": round(sample_seconds, 1),
        "total_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ppllm.tasks.arith.train_prm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ppllm/assets/arith-prm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    parser.add_argument("--n-train-chains", type=int, default=None, help="override the chain count")
    parser.add_argument("--policy", default=None, help="tiny-arith dir to sample from (default: committed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; `ppllm models train arith-prm` calls this with the remaining arguments."""
    args = _parser().parse_args(argv)
    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.n_train_chains is not None:
        overrides["n_train_chains"] = args.n_train_chains
    if args.policy is not None:
        overrides["policy"] = args.policy
    record = train(args.out, seed=args.seed, **overrides)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
