"""Reward-likelihood factors: the PRM protocol, aggregations, converters, LM-as-judge.

A PRM maps (prompt, steps) to one probability per step (`PRM.score`, awaitable and batched
across particles by the engine). `score_prefix` aggregates them into one score r̂ of the
prefix (prod, min, last or model), and a converter turns r̂ into a log-potential for
`Program.factor` / `Program.twist` (bernoulli, odds, tempered). See docs/rewards.md.

`REWARDS` is the registry recipes read (`[reward] name = ...`); task-specific reward
models (the tiny-arith verifier and learned PRM in `ppllm.tasks.arith`) are registered by
reference and imported only when a recipe asks for them.
"""

from ..registry import Registry
from .aggregate import AGGREGATIONS, aggregate, join_steps, score_prefix, score_prefix_now
from .base import PRM, PRMScore, RewardError, StepwisePRM
from .callable import CallablePRM
from .factors import CONVERTERS, EPS, bernoulli, get_converter, odds, tempered
from .judge import LMJudgePRM

REWARDS = Registry("reward")
REWARDS.register("exact-arith", "ppllm.tasks.arith:ExactArithVerifier")
REWARDS.register("learned-arith", "ppllm.tasks.arith:LearnedArithPRM.load")
REWARDS.register("lm-judge", "ppllm.zoo:load_judge")


def register_reward(name: str, factory: object, *, replace: bool = False) -> None:
    """Make a reward-model factory (or a "module:function" reference) available to recipes."""
    REWARDS.register(name, factory, replace=replace)


__all__ = [
    "AGGREGATIONS",
    "CONVERTERS",
    "EPS",
    "PRM",
    "REWARDS",
    "CallablePRM",
    "LMJudgePRM",
    "PRMScore",
    "RewardError",
    "StepwisePRM",
    "aggregate",
    "bernoulli",
    "get_converter",
    "join_steps",
    "odds",
    "register_reward",
    "score_prefix",
    "score_prefix_now",
    "tempered",
]
