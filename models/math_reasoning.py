"""Math reasoning with a process reward model as the reward-likelihood.

State
    `ctx`            the LM context: prompt tokens plus every step generated so far
    `steps`          the text of each step (delimiter stripped), in order
    `step_scores`    r̂_1 .. r̂_t: the PRM score of the prefix after each step (aggregated)
    `prefix_score`   r̂_t, the latest of them (1.0 before the first step)
    `log_potential`  log Φ_t = conv(r̂_t) / τ

Step t
    x_t ~ p_LM(· | prompt, x_<t), one chunk up to the step delimiter ("\\n" for tiny-arith,
    "\\n\\n" for chat models), EOS, or `max_step_tokens`; then r̂_t = the PRM's score of the
    prefix x_1..x_t under the chosen aggregation (`prod`, `min`, `last`, `model`). The particle
    finishes on the answer step (`A: n` for tiny-arith; `\\boxed` for chat models), on EOS, or
    after `max_steps` steps.

Target
    weighting="ratio": every non-final step calls `twist(log Φ_t)` (undone at the next step)
    and the final step calls `factor(log Φ_T)`. The incremental weight of step t is therefore
    Φ_t / Φ_{t−1} and the program's target is

        π(x) ∝ p_LM(x) · Φ_T(x),       Φ_T = conv(r̂_T)^(1/τ)

    With `aggregation="prod"` and `potential="bernoulli"` this is the posterior of the
    state-space model p(x | every step accepted), steps accepted independently with
    probability r̂ (reference/algorithms.md §1.1). SMC on it is consistent; intermediate
    twists only guide resampling. A zero potential on a non-final step (e.g. a wrong step
    under an exact 0/1 verifier with `bernoulli`) kills the particle at once (weight 0,
    finished): exact for `prod`/`min`, where Φ_T would be 0 too; for `last`/`model` it assumes
    the PRM never forgives a step once it has scored 0 (soften the PRM to avoid the question).

    weighting="none": the program only records the scores and its target is p_LM(x). Kernels
    that weight particles themselves (the Puri et al. particle filter, best-of-N, beam
    search) read `prefix_score` / `step_scores` between steps.

Prompts: `arith_prompt(37, 48, 19)` → "Q: 37+48+19=\\n" for tiny-arith; `chat_prompt(lm, q)`
formats a question with the LM's chat template when it has one. Answers: `arith_answer`,
`boxed_answer`, or `program.answer`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import ppllm
from ppllm.lm import LM
from ppllm.rewards import PRM, get_converter, score_prefix

__all__ = [
    "MathReasoning",
    "arith_answer",
    "arith_prompt",
    "boxed_answer",
    "chat_prompt",
    "no_answer",
]

_ARITH_ANSWER = re.compile(r"^\s*A: ?(-?\d+)\s*$", re.MULTILINE)
WEIGHTINGS = ("ratio", "none")


def arith_prompt(*operands: int) -> str:
    """The tiny-arith question for adding `operands` left to right: 'Q: 37+48+19=\\n'."""
    if len(operands) < 2:
        raise ValueError("a tiny-arith question needs at least two operands")
    return "Q: " + "+".join(str(int(x)) for x in operands) + "=\n"


def arith_answer(text: str) -> int | None:
    """The integer of the first `A: n` line, or None."""
    m = _ARITH_ANSWER.search(text)
    return int(m.group(1)) if m else None


def no_answer(program: MathReasoning) -> bool:
    """True when a finished solution has no answer line (a rollout that ended badly)."""
    return program.answer is None


def boxed_answer(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def chat_prompt(lm: object, question: str, system: str | None = None) -> str:
    """`question` in the LM's chat template (if its tokenizer has one), ready for generation."""
    if hasattr(lm, "chat"):
        try:
            return lm.chat(question, system=system)
        except ValueError:  # no chat template: plain text below
            pass
    tok = getattr(lm, "tokenizer", None)
    if tok is not None and getattr(tok, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (system + "\n\n" if system else "") + question + "\n\n"


class MathReasoning(ppllm.Program):
    """One reasoning step per `step()`, weighted by a PRM (see the module docstring)."""

    def __init__(
        self,
        lm: LM,
        prm: PRM,
        question: str,
        *,
        lm_prompt: str | None = None,
        delimiter: str = "\n",
        max_steps: int = 8,
        max_step_tokens: int = 32,
        aggregation: str = "last",
        weighting: str = "ratio",
        potential: str | Callable = "bernoulli",
        tau: float = 1.0,
        temperature: float = 1.0,
        is_final: Callable[[str], bool] | None = None,
        answer_fn: Callable[[str], object] | None = None,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.lm = lm
        self.prm = prm
        self.question = question  # what the PRM sees as the prompt
        self.ctx = lm.context(question if lm_prompt is None else lm_prompt)
        self.delimiter = delimiter
        self.max_steps = int(max_steps)
        self.max_step_tokens = int(max_step_tokens)
        self.aggregation = aggregation
        self.weighting = weighting
        self.convert = get_converter(potential, tau)
        self.temperature = float(temperature)
        self.is_final = is_final or (lambda step: "\\boxed" in step)
        self.answer_fn = answer_fn or boxed_answer
        self.steps: list[str] = []
        self.step_scores: list[float] = []
        self.prefix_score = 1.0
        self.log_potential = 0.0

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny_arith(cls, lm: LM, prm: PRM, *operands: int, **kwargs) -> MathReasoning:
        """A tiny-arith chain: prompt 'Q: a+b+...=\\n', one line per step, stop at 'A: n'."""
        kwargs.setdefault("delimiter", "\n")
        kwargs.setdefault("max_steps", len(operands) + 2)
        kwargs.setdefault("max_step_tokens", 16)
        kwargs.setdefault("is_final", lambda step: step.lstrip().startswith("A:"))
        kwargs.setdefault("answer_fn", arith_answer)
        return cls(lm, prm, arith_prompt(*operands), **kwargs)

    @classmethod
    def chat(cls, lm: LM, prm: PRM, question: str, system: str | None = None, **kwargs) -> MathReasoning:
        """A chat model: steps end at a blank line, the answer step contains '\\boxed'."""
        kwargs.setdefault("delimiter", "\n\n")
        kwargs.setdefault("max_steps", 16)
        kwargs.setdefault("max_step_tokens", 256)
        kwargs.setdefault("lm_prompt", chat_prompt(lm, question, system))
        return cls(lm, prm, question, **kwargs)

    # ------------------------------------------------------------------ the transition
    async def step(self) -> None:
        dist = self.lm.chunk(
            self.ctx,
            stop=self.delimiter,
            max_tokens=self.max_step_tokens,
            temperature=self.temperature,
        )
        chunk = await self.sample(dist)
        self.ctx = self.ctx + chunk
        text = chunk.text
        if text.endswith(self.delimiter):
            text = text[: -len(self.delimiter)]
        self.steps.append(text)
        stops = getattr(self.lm, "eos_token_ids", None) or {self.lm.eos_token_id}
        eos = chunk.tokens[-1] in stops
        final = eos or self.is_final(text) or len(self.steps) >= self.max_steps

        r = await score_prefix(self.prm, self.question, self.steps, self.aggregation, self.delimiter)
        self.prefix_score = r
        self.step_scores.append(r)
        self.log_potential = float(self.convert(r))
        if self.weighting == "ratio":
            if final:
                self.factor(self.log_potential)
            elif self.log_potential == -math.inf:
                self.factor(-math.inf)  # Φ_t = 0: the particle is dead (see the docstring)
                final = True
            else:
                self.twist(self.log_potential)
        if final:
            self.finish()

    # ------------------------------------------------------------------ reading results
    @property
    def text(self) -> str:
        """The generated solution (steps joined by the delimiter)."""
        return self.delimiter.join(self.steps)

    @property
    def answer(self) -> object:
        return self.answer_fn(self.text)

    def __str__(self) -> str:
        return self.text
