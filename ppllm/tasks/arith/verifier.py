"""The exact verifier of tiny-arith chains, and the helpers the arithmetic PRMs share.

A tiny-arith solution is one line per partial sum, then the answer line:

    Q: 37+48+19=        (prompt)
    37+48=85            step 0
    85+19=104           step 1
    A: 104              step 2

A PRM step is one or more of these lines (usually one; `model` aggregation joins the whole
prefix into one step). The verifier gives a step 1 when every line in it is right:

- `chain=True` (default): a line `x+y=z` is right iff it is the reference line at its
  position (x is the true partial sum, y the next operand of the question, z = x + y), and
  `A: n` is right iff n is the question's sum and every operand has been added. So after a
  wrong line every later line is wrong too (it builds on a wrong partial sum), and
  "step j is right" means "the running total written at step j is the true one".
- `chain=False`: only the arithmetic of each line (`check_step`), and `A: n` is checked
  against the last partial sum written (or the first operand if none was written).

`delta` softens 1/0 to 1 − δ / δ so that log-potentials stay finite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ...rewards.base import Item, StepwisePRM
from .data import check_step, parse_answer

__all__ = ["ExactArithVerifier", "question_operands", "step_lines", "solution_lines"]

_QUESTION_RE = re.compile(r"Q:\s*(\d+(?:\s*\+\s*\d+)+)\s*=")
_STEP_RE = re.compile(r"^(\d+)\+(\d+)=(\d+)$")


def question_operands(prompt: str) -> tuple[int, ...] | None:
    """The operands of the (last) `Q: a+b+...=` question in `prompt`, or None."""
    found = _QUESTION_RE.findall(prompt)
    if not found:
        return None
    return tuple(int(x) for x in found[-1].replace(" ", "").split("+"))


def step_lines(step: str) -> list[str]:
    """The non-empty lines of one step, stripped."""
    return [line.strip() for line in step.splitlines() if line.strip()]


def solution_lines(text: str) -> list[str]:
    """A sampled completion cut into step lines, up to and including the first `A:` line."""
    out: list[str] = []
    for line in step_lines(text):
        out.append(line)
        if line.startswith("A:"):
            break
    return out


class ExactArithVerifier(StepwisePRM):
    """Exact step verifier for tiny-arith (see the module docstring for what "right" means)."""

    def __init__(self, delta: float = 0.0, chain: bool = True, name: str = "exact-arith") -> None:
        super().__init__()
        if not 0.0 <= delta < 0.5:
            raise ValueError(f"delta must be in [0, 0.5), got {delta}")
        self.delta = float(delta)
        self.chain = bool(chain)
        self.name = name

    def line_ok(self, prompt: str, previous: Sequence[str], line: str) -> bool:
        """Is `line` right after the lines `previous` (all steps so far, split into lines)?"""
        operands = question_operands(prompt)
        if self.chain and operands is None:
            raise ValueError(
                f"{self.name} (chain=True) needs a tiny-arith question 'Q: a+b+...=' in the "
                f"prompt, got {prompt[:60]!r}; use chain=False to check arithmetic only"
            )
        if any(p.startswith("A:") for p in previous):
            return False  # nothing may follow the answer
        n_steps = sum(1 for p in previous if _STEP_RE.match(p))
        if line.startswith("A:"):
            answer = parse_answer(line)
            if answer is None:
                return False
            if self.chain:
                assert operands is not None
                return n_steps == len(operands) - 1 and answer == sum(operands)
            return answer == _last_partial_sum(previous, operands)
        if not check_step(line):
            return False
        if not self.chain:
            return True
        assert operands is not None
        if n_steps >= len(operands) - 1:
            return False  # more steps than the question has operands to add
        x, y, _ = (int(g) for g in _STEP_RE.match(line).groups())  # type: ignore[union-attr]
        return x == sum(operands[: n_steps + 1]) and y == operands[n_steps + 1]

    def step_ok(self, prompt: str, steps: Sequence[str]) -> bool:
        """Is the last of `steps` right (every line in it)?"""
        previous = [line for s in steps[:-1] for line in step_lines(s)]
        lines = step_lines(steps[-1])
        if not lines:
            return False  # an empty step makes no progress
        for line in lines:
            if not self.line_ok(prompt, previous, line):
                return False
            previous.append(line)
        return True

    def score_last(self, items: list[Item]) -> np.ndarray:
        hi, lo = 1.0 - self.delta, self.delta
        return np.array([hi if self.step_ok(p, s) else lo for p, s in items], dtype=np.float64)

    def labels(self, prompt: str, steps: Sequence[str]) -> list[int]:
        """0/1 label of every step (what the learned PRM is trained to predict)."""
        return [int(self.step_ok(prompt, steps[: j + 1])) for j in range(len(steps))]


def _last_partial_sum(previous: Sequence[str], operands: tuple[int, ...] | None) -> int | None:
    for line in reversed(previous):
        m = _STEP_RE.match(line)
        if m:
            return int(m.group(3))
    return operands[0] if operands else None
