"""Reward-likelihood factors: the PRM protocol, verifiers, LM-as-judge, aggregations, converters.

A PRM maps (prompt, steps) to one probability per step (`PRM.score`, awaitable and batched
across particles by the engine). `prefix_score` aggregates them into one score r̂ of the
prefix (prod, min, last or model), and a converter turns r̂ into a log-potential for
`Program.factor` / `Program.twist` (bernoulli, odds, tempered). See docs/rewards.md.
"""

from .aggregate import AGGREGATIONS, aggregate, join_steps, prefix_score, prefix_score_now
from .arith import ExactArithVerifier, question_operands, solution_lines, step_lines
from .base import PRM, PRMScore, RewardError, StepwisePRM
from .callable import CallablePRM
from .factors import CONVERTERS, EPS, bernoulli, get_converter, odds, tempered
from .judge import LMJudgePRM
from .learned import LearnedArithPRM, roc_auc

__all__ = [
    "AGGREGATIONS",
    "CONVERTERS",
    "EPS",
    "PRM",
    "CallablePRM",
    "ExactArithVerifier",
    "LMJudgePRM",
    "LearnedArithPRM",
    "PRMScore",
    "RewardError",
    "StepwisePRM",
    "aggregate",
    "bernoulli",
    "get_converter",
    "join_steps",
    "odds",
    "prefix_score",
    "prefix_score_now",
    "question_operands",
    "roc_auc",
    "solution_lines",
    "step_lines",
    "tempered",
]
