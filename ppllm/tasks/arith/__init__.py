"""tiny-arith: multi-step addition chains, their exact verifier, and a learned PRM.

- `data`: problems, formatting, parsing and the train / held-out split;
- `verifier`: `ExactArithVerifier`, the exact step checker used as a PRM;
- `learned_prm`: `LearnedArithPRM`, a small, deliberately fallible learned PRM;
- `train_lm` / `train_prm`: the scripts that trained the committed weights.
"""

from .data import Problem, heldout_problems, parse_answer, problem_from_operands, training_problems
from .learned_prm import LearnedArithPRM, roc_auc
from .verifier import ExactArithVerifier, question_operands, solution_lines, step_lines

__all__ = [
    "ExactArithVerifier",
    "LearnedArithPRM",
    "Problem",
    "heldout_problems",
    "parse_answer",
    "problem_from_operands",
    "question_operands",
    "roc_auc",
    "solution_lines",
    "step_lines",
    "training_problems",
]
