"""Recipes: the TOML schema, its validation, the factories, and writing a recipe back.

A recipe names a model, a program, a reward, a kernel (from the `ppllm.kernels.KERNELS`
registry) with its options, the prompts and the run settings (docs/recipes.md).
`load_recipe` checks all of it before any model work; mistakes are `RecipeError`s naming
the field.
"""

from .build import build_lm, build_program, build_reward
from .schema import SECTIONS, RecipeError
from .validate import (
    Prompt,
    Recipe,
    apply_overrides,
    import_object,
    load_recipe,
    parse_set,
    validate,
)
from .write import dump_recipe

__all__ = [
    "SECTIONS",
    "Prompt",
    "Recipe",
    "RecipeError",
    "apply_overrides",
    "build_lm",
    "build_program",
    "build_reward",
    "dump_recipe",
    "import_object",
    "load_recipe",
    "parse_set",
    "validate",
]
