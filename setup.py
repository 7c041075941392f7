"""Package list only (metadata lives in pyproject.toml).

The example programs in models/ install as `ppllm_models`, so users' scripts and recipes
import them from any directory (`from ppllm_models.math_reasoning import MathReasoning`)
without a top-level `models` package that would collide with their own.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ppllm", "ppllm.*"]), "ppllm_models"],
    package_dir={"ppllm_models": "models"},
)
