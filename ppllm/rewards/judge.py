"""`LMJudgePRM`: a local causal LM asked "is the latest step correct?", read as P(Yes).

The judge sees the problem, the previous steps and the latest step in a chat turn (the
model's own chat template) and its next-token distribution after the assistant header is
reduced to the two answers: r̂ = P(Yes) / (P(Yes) + P(No)), summing over the spellings
"Yes"/" Yes"/"yes" and "No"/" no"/... . One batched forward answers every new prefix of a
round (right-padded; each row is read at its own last token, so any position scheme works).

Any local transformers causal LM works: `LMJudgePRM.load(model_dir)`, `LMJudgePRM.from_lm(lm)`, or
by name with `ppllm.zoo.load_judge("smollm2")`. Nothing is ever fetched from the model hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Item, StepwisePRM

__all__ = ["LMJudgePRM", "DEFAULT_SYSTEM"]

DEFAULT_SYSTEM = (
    "You check solutions step by step. Reply with one word: Yes if the latest step is "
    "correct, No if it is wrong."
)
YES = ("Yes", " Yes", "yes", " yes")
NO = ("No", " No", "no", " no")


class LMJudgePRM(StepwisePRM):
    """P(Yes) of a causal LM judging the latest step (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "lm-judge",
        system: str | None = DEFAULT_SYSTEM,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.system = system
        self.batch_size = int(batch_size)
        self.yes_ids = _first_ids(tokenizer, YES)
        self.no_ids = _first_ids(tokenizer, NO) - self.yes_ids
        if not self.yes_ids or not self.no_ids:
            raise ValueError(f"{name}: the tokenizer has no distinct first tokens for Yes / No")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> LMJudgePRM:
        """Load a local transformers causal LM directory as the judge, in float32.

        By name ("smollm2", ...) through `ppllm.zoo.load_judge`.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no transformers model directory at {str(path)!r}")
        from ..lm.hf import quiet_transformers

        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        kwargs.setdefault("name", f"judge:{path.name}")
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_lm(cls, lm: Any, **kwargs: Any) -> LMJudgePRM:
        """Judge with the model an LM backend already holds (e.g. an `HFLM`): no second copy."""
        model, tokenizer = getattr(lm, "model", None), getattr(lm, "tokenizer", None)
        if model is None or tokenizer is None:
            raise TypeError(f"{type(lm).__name__} has no transformers model/tokenizer to judge with")
        kwargs.setdefault("name", f"judge:{getattr(lm, 'name', 'lm')}")
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------ prompting
    def question(self, prompt: str, steps: Sequence[str]) -> str:
        """The user turn: problem, previous steps, latest step, the question."""
        previous = "\n".join(f"Step {i + 1}: {s.strip()}" for i, s in enumerate(steps[:-1]))
        parts = [f"Problem:\n{prompt.strip()}"]
        if previous:
            parts.append(f"Previous steps:\n{previous}")
        parts.append(f"Latest step (step {len(steps)}):\n{steps[-1].strip()}")
        parts.append("Is the latest step correct? Answer Yes or No.")
        return "\n\n".join(parts)

    def render(self, prompt: str, steps: Sequence[str]) -> str:
        """The full text given to the model, ending where its answer would start."""
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.question(prompt, steps)})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        plain = "\n\n".join(m["content"] for m in messages)
        return plain + "\nAnswer:"

    # ------------------------------------------------------------------ scoring
    def score_last(self, items: list[Item]) -> np.ndarray:
        import torch

        texts = [self.render(p, s) for p, s in items]
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        yes, no = sorted(self.yes_ids), sorted(self.no_ids)
        out = np.empty(len(rows), dtype=np.float64)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together
        with torch.no_grad():
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                width = max(len(rows[i]) for i in idx)
                ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : len(rows[i])] = torch.tensor(rows[i])
                    mask[r, : len(rows[i])] = 1
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                last = torch.tensor([len(rows[i]) - 1 for i in idx])
                lp = torch.log_softmax(logits[torch.arange(len(idx)), last].double(), dim=-1)
                ly = torch.logsumexp(lp[:, yes], dim=-1)
                ln = torch.logsumexp(lp[:, no], dim=-1)
                p = torch.exp(ly - torch.logaddexp(ly, ln))
                out[idx] = p.numpy()
        return out


def _first_ids(tokenizer: Any, words: Sequence[str]) -> set[int]:
    """Token ids of the spellings that are one token (a shared first piece would count
    every word starting with it); the first piece of the first spelling if none is."""
    encoded = [tokenizer.encode(w, add_special_tokens=False) for w in words]
    single = {int(e[0]) for e in encoded if len(e) == 1}
    if single:
        return single
    return {int(e[0]) for e in encoded[:1] if e}
