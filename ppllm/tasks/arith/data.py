"""Multi-step addition chains: the task `tiny-arith` is trained and evaluated on.

A problem adds 2-digit operands left to right and writes every partial sum on its own line:

    Q: 37+48+19=
    37+48=85
    85+19=104
    A: 104

Each line is checkable on its own (`check_step`), which is what makes the task useful for
process rewards, and the final line is checkable against the answer (`parse_answer`).

Train and held-out problems are split by a hash of the question text, so the split does not
depend on which seed or stream produced a problem: a held-out question can never be drawn
for training, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HELDOUT_FRACTION_DENOM",
    "MAX_OPERAND",
    "MIN_OPERAND",
    "Problem",
    "check_step",
    "format_solution",
    "heldout_problems",
    "is_heldout",
    "iter_training_problems",
    "make_problem",
    "parse_answer",
    "parse_steps",
    "problem_from_operands",
    "training_problems",
]

MIN_OPERAND = 10
MAX_OPERAND = 99
# One question in this many (by hash) is held out of training.
HELDOUT_FRACTION_DENOM = 10
# Independent seed streams: training and evaluation never share draws.
_TRAIN_STREAM = 0
_HELDOUT_STREAM = 1

_STEP_RE = re.compile(r"^(\d+)\+(\d+)=(\d+)$")
_ANSWER_RE = re.compile(r"^A: ?(-?\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    """A question, its partial-sum lines (without newlines) and the final answer."""

    question_text: str
    steps: tuple[str, ...]
    answer: int
    operands: tuple[int, ...] = ()

    @property
    def n_operands(self) -> int:
        return len(self.operands)


def problem_from_operands(operands: tuple[int, ...] | list[int]) -> Problem:
    """Build the problem (question, steps, answer) that adds `operands` left to right."""
    ops = tuple(int(x) for x in operands)
    if len(ops) < 2:
        raise ValueError("a chain needs at least two operands")
    question = "Q: " + "+".join(str(x) for x in ops) + "=\n"
    steps: list[str] = []
    total = ops[0]
    for x in ops[1:]:
        steps.append(f"{total}+{x}={total + x}")
        total += x
    return Problem(question_text=question, steps=tuple(steps), answer=total, operands=ops)


def make_problem(rng: np.random.Generator, n_operands: int) -> Problem:
    """Draw a chain of `n_operands` uniform operands in [MIN_OPERAND, MAX_OPERAND]."""
    ops = rng.integers(MIN_OPERAND, MAX_OPERAND + 1, size=n_operands)
    return problem_from_operands(ops.tolist())


def format_solution(problem: Problem) -> str:
    """The completion that follows `problem.question_text`: step lines, then `A: z`."""
    return "".join(step + "\n" for step in problem.steps) + f"A: {problem.answer}\n"


def parse_answer(text: str) -> int | None:
    """The integer on the first `A: z` line of `text`, or None if there is none."""
    match = _ANSWER_RE.search(text)
    return int(match.group(1)) if match else None


def parse_steps(text: str) -> list[str]:
    """The lines of `text` that look like `x+y=z` (right or wrong), in order."""
    return [line.strip() for line in text.splitlines() if _STEP_RE.match(line.strip())]


def check_step(line: str) -> bool:
    """True iff `line` is `x+y=z` with x + y == z (surrounding whitespace ignored)."""
    match = _STEP_RE.match(line.strip())
    if match is None:
        return False
    x, y, z = (int(g) for g in match.groups())
    return x + y == z


def _question_hash(question_text: str) -> int:
    digest = hashlib.blake2b(question_text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def is_heldout(problem_or_question: Problem | str) -> bool:
    """The split rule: a question is held out iff its hash is 0 mod HELDOUT_FRACTION_DENOM."""
    q = problem_or_question
    text = q.question_text if isinstance(q, Problem) else q
    return _question_hash(text) % HELDOUT_FRACTION_DENOM == 0


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([stream, seed])


def iter_training_problems(
    seed: int = 0,
    operands: tuple[int, int] = (2, 5),
    weights: Sequence[float] | None = None,
) -> Iterator[Problem]:
    """An endless stream of training problems (held-out questions are skipped).

    Operand counts run over `operands` (inclusive), uniformly or with relative `weights`.
    """
    rng = _stream(seed, _TRAIN_STREAM)
    counts = np.arange(operands[0], operands[1] + 1)
    probs = None
    if weights is not None:
        if len(weights) != len(counts):
            raise ValueError(f"need {len(counts)} weights for operand counts {operands}")
        probs = np.asarray(weights, dtype=float) / float(np.sum(weights))
    while True:
        problem = make_problem(rng, int(rng.choice(counts, p=probs)))
        if not is_heldout(problem):
            yield problem


def training_problems(n: int, seed: int = 0, operands: tuple[int, int] = (2, 5)) -> list[Problem]:
    """The first `n` problems of `iter_training_problems(seed, operands)`."""
    return list(itertools.islice(iter_training_problems(seed, operands), n))


def heldout_problems(n: int, seed: int = 1234, operands: tuple[int, int] = (3, 5)) -> list[Problem]:
    """`n` held-out problems from their own seed stream, operand counts uniform in `operands`."""
    rng = _stream(seed, _HELDOUT_STREAM)
    lo, hi = operands
    out: list[Problem] = []
    while len(out) < n:
        problem = make_problem(rng, int(rng.integers(lo, hi + 1)))
        if is_heldout(problem):
            out.append(problem)
    return out
