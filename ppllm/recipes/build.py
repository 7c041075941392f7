"""Factories: the objects a validated recipe names — the LM backend, the reward model, programs.

Failures that only show when an object is built (a toy vocabulary without its EOS, weights
that are not a causal LM, a reward factory rejecting its options) become `RecipeError`s
naming the section, before any prompt runs.
"""

from __future__ import annotations

import inspect
from typing import Any

from .schema import RecipeError
from .validate import INJECTED, Prompt, Recipe, call_spec, import_object

__all__ = ["build_lm", "build_program", "build_reward"]


def build_lm(spec: dict[str, Any]) -> Any:
    """The LM backend of `[model]`: the toy n-gram LM or a zoo / local transformers model."""
    opts = dict(spec)
    name = opts.pop("lm")
    if name == "toy":
        from ..lm import ToyLM

        try:
            toy = ToyLM.random([str(v) for v in opts["vocab"]], order=opts["order"], seed=opts["seed"],
                               eos=opts["eos"], concentration=float(opts["concentration"]))
            toy.latency = float(opts.get("latency", 0.0))
            return toy
        except (KeyError, ValueError) as e:
            raise RecipeError("model", f"bad toy LM (vocab {opts['vocab']}, eos {opts['eos']!r}): {e}") from None
    from .. import zoo

    if name == "served":
        url, tokenizer = opts.pop("served"), opts.pop("tokenizer")
        return zoo.load_served(url, tokenizer, **opts)
    if isinstance(opts.get("dtype"), str):
        import torch

        opts["dtype"] = getattr(torch, opts["dtype"])
    try:
        return zoo.load_lm(name, **opts)
    except FileNotFoundError as e:
        raise RecipeError("model.lm", str(e)) from None
    except (KeyError, ValueError, TypeError) as e:
        raise RecipeError("model.lm", f"cannot load {name!r}: {e}") from None


def build_reward(spec: dict[str, Any], lm: Any) -> Any:
    """The reward model of `[reward]` (None for `name = "none"`)."""
    from ..registry import RegistryError
    from ..rewards import REWARDS

    opts = dict(spec)
    name = opts.pop("name")
    if name == "none":
        return None
    try:
        factory = import_object(name, "reward.name") if ":" in name else REWARDS.get(name)
        return factory(**opts)
    except RegistryError as e:
        raise RecipeError("reward.name", str(e)) from None
    except (TypeError, ValueError) as e:
        raise RecipeError("reward", f"bad options for {name}: {e}") from None
    except FileNotFoundError as e:
        raise RecipeError("reward", str(e)) from None


def build_program(recipe: Recipe, prompt: Prompt, lm: Any, reward: Any) -> Any:
    """Call the program factory: injected lm/prm, recipe args, then the prompt's own."""
    params = _signature(recipe.program)
    inject = {"lm": lm, "prm": reward, "reward": reward}
    kwargs = {**recipe.program_args, **prompt.kwargs}
    for key, value in list(kwargs.items()):
        if isinstance(value, dict) and "call" in value:
            fn = call_spec(f"program.args.{key}", value)
            opts = {k: v for k, v in value.items() if k != "call"}
            if "lm" in _signature(fn):
                opts["lm"] = lm
            try:
                kwargs[key] = fn(**opts)
            except (TypeError, ValueError) as e:
                raise RecipeError(f"program.args.{key}", f"{value['call']}: {e}") from None
    if prompt.text is not None:
        if recipe.prompt_arg is None:
            raise RecipeError("program.prompt_arg", f"{recipe.program_path} takes no prompt/question argument; set prompt_arg")
        text = prompt.text
        if recipe.chat:
            if not hasattr(lm, "chat"):
                raise RecipeError("prompts.chat", f"{recipe.model['lm']} has no chat template")
            try:
                text = lm.chat(text, system=recipe.system)
            except ValueError as e:
                raise RecipeError("prompts.chat", str(e)) from None
        try:
            kwargs[recipe.prompt_arg] = lm.context(text) if recipe.prompt_as == "context" else text
        except ValueError as e:
            raise RecipeError(f"prompts[{prompt.id}]", str(e)) from None
    has_var_pos = any(p.kind is p.VAR_POSITIONAL for p in params.values())
    positional: list[Any] = []
    for name, p in params.items():
        if p.kind is not p.POSITIONAL_OR_KEYWORD:
            continue
        if name in INJECTED:
            value = inject[name]
        elif name in kwargs:
            value = kwargs.pop(name)
        elif has_var_pos and prompt.args:
            raise RecipeError("program.args", f"{recipe.program_path} needs {name!r} before the prompt's args")
        else:
            continue
        if has_var_pos:
            positional.append(value)
        else:
            kwargs[name] = value
    try:
        return recipe.program(*positional, *prompt.args, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise RecipeError("program.args", f"cannot build {recipe.program_path} for prompt {prompt.id}: {e}") from None


def _signature(fn: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}
