"""A recipe as run, written back as TOML (overrides applied, prompts inline), with tomli-w."""

from __future__ import annotations

from typing import Any

import tomli_w

from .validate import Prompt, Recipe

__all__ = ["dump_recipe"]

HEADER = "# the recipe as run (overrides applied, prompts inline)\n"


def dump_recipe(recipe: Recipe) -> str:
    """Self-contained TOML: the run needs no other file to be repeated."""
    source = {k: v for k, v in recipe.source.items()}
    prompts = {k: v for k, v in source.get("prompts", {}).items() if k in ("chat", "system")}
    prompts["items"] = [_prompt_item(p) for p in recipe.prompts]
    source["prompts"] = prompts
    return HEADER + tomli_w.dumps(_plain(source))


def _prompt_item(p: Prompt) -> Any:
    if p.text is not None and not p.args and not p.kwargs and p.answer is None:
        return p.text
    item: dict[str, Any] = {"id": p.id}
    if p.text is not None:
        item["prompt"] = p.text
    if p.args:
        item["args"] = p.args
    item.update(p.kwargs)
    if p.answer is not None:
        item["answer"] = p.answer
    return item


def _plain(value: Any) -> Any:
    """TOML has no null: drop None values; anything not TOML-native becomes its string."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value if v is not None]
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
