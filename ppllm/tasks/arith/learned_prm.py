"""`LearnedArithPRM`: a small char-level GPT-2 that guesses whether a tiny-arith step is right.

It reads the question and the step being judged, nothing else (`Q: 37+48+19=\n85+19=104\n`),
and a `GPT2ForTokenClassification` logit at the step's closing newline gives P(right). Each
step is scored on its own, so the score of step j never depends on later steps, and repeated
prefixes are cached (`StepwisePRM`).

It is deliberately imperfect, by construction rather than by luck: the label (from
`ExactArithVerifier`, chain mode) says whether the running total is right, but the model
does not see the earlier steps, so it can check a step's arithmetic and whether its operand
fits the question, yet must guess whether the partial sum it starts from is the true one.
Its held-out step-level AUC is in `ppllm/assets/arith-prm/training.json`;
`python -m ppllm.tasks.arith.train_prm` retrains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ...rewards.base import Item, StepwisePRM
from .verifier import step_lines

__all__ = ["LearnedArithPRM", "default_path", "encode_step", "roc_auc"]


def default_path() -> Path:
    from ...zoo import ASSETS_DIR

    return ASSETS_DIR / "arith-prm"


def encode_step(tokenizer: Any, prompt: str, step: str) -> list[int]:
    """Token ids of what the model reads: the question line(s), then the step's lines."""
    head = prompt if prompt.endswith("\n") else prompt + "\n"
    return list(tokenizer(head + "\n".join(step_lines(step)) + "\n", add_special_tokens=False)["input_ids"])


class LearnedArithPRM(StepwisePRM):
    """The trained tiny-arith step classifier (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "arith-prm", batch_size: int = 128):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = int(batch_size)
        self.max_positions = int(model.config.n_positions)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    @classmethod
    def load(cls, path: str | Path | None = None, **kwargs: Any) -> LearnedArithPRM:
        """Load from `path` (default: the committed `ppllm/assets/arith-prm`), in float32."""
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        path = Path(path) if path is not None else default_path()
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"no arith-prm weights at {path}: run `python -m ppllm.tasks.arith.train_prm "
                f"--out {path}`"
            )
        from ...lm.hf import quiet_transformers

        with quiet_transformers():
            model = AutoModelForTokenClassification.from_pretrained(str(path), dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(model, tokenizer, **kwargs)

    def score_last(self, items: list[Item]) -> np.ndarray:
        import torch

        rows = [encode_step(self.tokenizer, p, s[-1]) for p, s in items]
        for row, (prompt, _) in zip(rows, items, strict=True):
            if len(row) > self.max_positions:
                raise ValueError(
                    f"{self.name}: {len(row)} tokens exceed the model's {self.max_positions} "
                    f"positions (prompt {prompt[:40]!r})"
                )
        out = np.empty(len(rows), dtype=np.float64)
        with torch.no_grad():
            for lo in range(0, len(rows), self.batch_size):
                part = rows[lo : lo + self.batch_size]
                width = max(len(r) for r in part)
                ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, row in enumerate(part):
                    ids[i, : len(row)] = torch.tensor(row)
                    mask[i, : len(row)] = 1
                logits = self.model(input_ids=ids, attention_mask=mask).logits[..., 0].double()
                last = torch.tensor([len(r) - 1 for r in part])
                out[lo : lo + len(part)] = torch.sigmoid(logits[torch.arange(len(part)), last]).numpy()
        return out


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count one half)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
