"""Runs: a recipe over its prompts, the results directory and its report, the demo.

`runs` sits on top of everything else; nothing below imports it.
"""

from .report import write_report
from .runner import prompt_variables, run_prompt, run_recipe, run_seed

__all__ = ["prompt_variables", "run_prompt", "run_recipe", "run_seed", "write_report"]
