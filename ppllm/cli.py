"""The `ppllm` command: run recipes, the demo, the model zoo, and reports (docs/recipes.md).

    ppllm run inference/RECIPE.toml [--set key=value ...] [--out DIR] [--quiet] [--json]
    ppllm report DIR
    ppllm demo [...]
    ppllm models list | fetch NAME | train NAME [...]

A user's mistake in a recipe is reported as one line, `error: <field>: <message>`, on
stderr with exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import sys
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Recipe",
    "RecipeError",
    "load_recipe",
    "main",
    "prompt_variables",
    "run_prompt",
    "run_recipe",
    "run_seed",
    "write_report",
]

SECTIONS = ("model", "program", "reward", "kernel", "prompts", "run")

# kernel name -> (module, function); options are checked against the function's signature
KERNELS: dict[str, tuple[str, str]] = {
    "smc": ("ppllm.kernels.smc", "run"),
    "particle_filter": ("ppllm.kernels.particle_filter", "run"),
    "particle_gibbs": ("ppllm.kernels.particle_gibbs", "run"),
    "best_of_n": ("ppllm.kernels.baselines", "best_of_n"),
    "weighted_best_of_n": ("ppllm.kernels.baselines", "weighted_best_of_n"),
    "majority_vote": ("ppllm.kernels.baselines", "majority_vote"),
    "beam_search": ("ppllm.kernels.baselines", "beam_search"),
    "dvts": ("ppllm.kernels.baselines", "dvts"),
}

REWARDS = ("none", "exact-arith", "learned-arith", "lm-judge")
TOY_DEFAULTS = {"vocab": ["a", "b", "<eos>"], "order": 2, "seed": 3, "eos": "<eos>", "concentration": 1.0}
INJECTED = {"lm", "prm", "reward"}
PROMPT_KEYS = {"args", "answer", "id"}


class RecipeError(ValueError):
    """A mistake in a recipe: `field` names where (e.g. `kernel.n_particles`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# ---------------------------------------------------------------------- the recipe
@dataclass
class Prompt:
    """One prompt: a string for the program's prompt parameter, or arguments for it."""

    text: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    answer: Any = None
    id: str = ""

    def label(self) -> str:
        if self.text is not None:
            return self.text
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


@dataclass
class Recipe:
    """A validated recipe: every field checked, defaults filled in."""

    source: dict[str, Any]
    path: Path | None
    model: dict[str, Any]
    program: Callable[..., Any]
    program_path: str
    program_args: dict[str, Any]
    prompt_arg: str | None
    prompt_as: str
    chat: bool
    system: str | None
    reward: dict[str, Any]
    kernel_name: str
    kernel_fn: Callable[..., Any]
    kernel_options: dict[str, Any]
    prompts: list[Prompt]
    seed: int
    repeats: int
    out: str | None
    variables: list[str]


def parse_set(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """`--set kernel.n_particles=4` → (["kernel", "n_particles"], 4); values are TOML."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError("--set", f"expected key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word is a string
        out.append(([p.strip() for p in key.split(".")], value))
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[tuple[list[str], Any]]) -> None:
    for keys, value in overrides:
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise RecipeError(".".join(keys), f"{k!r} is not a table")
            node = nxt
        node[keys[-1]] = value


def load_recipe(path: str | Path | None, overrides: Sequence[str] = (), data: dict | None = None) -> Recipe:
    """Read, override and validate a recipe; raises RecipeError naming the field."""
    p = Path(path) if path is not None else None
    if data is None:
        if p is None:
            raise RecipeError("recipe", "no recipe given")
        if not p.is_file():
            raise RecipeError("recipe", f"no such file: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise RecipeError("recipe", f"not valid TOML: {e}") from None
    apply_overrides(data, parse_set(overrides))
    return validate(data, p)


def _table(data: dict, name: str, required: bool = True) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        if required:
            raise RecipeError(name, f"missing [{name}] section")
        return {}
    if not isinstance(value, dict):
        raise RecipeError(name, f"must be a table ([{name}]), got {type(value).__name__}")
    return dict(value)


def _typed(table: dict, section: str, key: str, kind: type | tuple, default: Any = ..., check=None) -> Any:
    name = f"{section}.{key}"
    if key not in table:
        if default is ...:
            raise RecipeError(name, "missing")
        return default
    v = table.pop(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
    if not ok:
        want = " or ".join(k.__name__ for k in kinds)
        raise RecipeError(name, f"must be {want}, got {type(v).__name__} {v!r}")
    if check is not None:
        problem = check(v)
        if problem:
            raise RecipeError(name, problem)
    return v


def _one_of(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}, got {v!r}"


def _call_spec(where: str, spec: dict[str, Any]) -> Callable[..., Any]:
    """`{ call = "module:function", ... }`: an argument computed by a function (given lm=)."""
    fn = spec["call"]
    if not isinstance(fn, str):
        raise RecipeError(f"{where}.call", f"must be 'module:function', got {fn!r}")
    obj = _import(fn, f"{where}.call")
    if not callable(obj):
        raise RecipeError(f"{where}.call", f"{fn} is not callable")
    return obj


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, got {v!r}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def validate(data: dict[str, Any], path: Path | None = None) -> Recipe:
    """Check every section of a parsed recipe (see docs/recipes.md for the schema)."""
    for key in data:
        if key not in SECTIONS:
            raise RecipeError(key, f"unknown section (expected one of: {', '.join(SECTIONS)})")
    base = path.parent if path is not None else Path.cwd()

    model = _table(data, "model")
    lm = _typed(model, "model", "lm", str)
    if lm == "toy":
        for key in model:
            if key not in TOY_DEFAULTS:
                raise RecipeError(f"model.{key}", f"unknown option for lm = \"toy\" (known: {', '.join(TOY_DEFAULTS)})")
        _typed(dict(model), "model", "vocab", list, None)
        _typed(dict(model), "model", "order", int, None, _positive)
        _typed(dict(model), "model", "seed", int, None, _non_negative)
        _typed(dict(model), "model", "concentration", (int, float), None, _positive)
        _typed(dict(model), "model", "eos", str, None)
    else:
        from . import zoo

        try:
            zoo.resolve(lm)
        except FileNotFoundError as e:
            raise RecipeError("model.lm", str(e)) from None
        if isinstance(model.get("dtype"), str) and model["dtype"] not in ("float32", "float16", "bfloat16", "float64"):
            raise RecipeError("model.dtype", f"unknown dtype {model['dtype']!r} (float32, float16, bfloat16, float64)")
    model_spec = {"lm": lm, **model}

    prog = _table(data, "program")
    program_path = _typed(prog, "program", "path", str)
    program = _import(program_path, "program.path")
    if not callable(program):
        raise RecipeError("program.path", f"{program_path} is not callable")
    program_args = _typed(prog, "program", "args", dict, {})
    prompt_arg = _typed(prog, "program", "prompt_arg", str, None)
    prompt_as = _typed(prog, "program", "prompt_as", str, None, _one_of("text", "context"))
    if prog:
        raise RecipeError(f"program.{next(iter(prog))}", "unknown key (known: path, args, prompt_arg, prompt_as)")
    for key, value in program_args.items():
        if isinstance(value, dict) and "call" in value:
            _call_spec(f"program.args.{key}", value)
    params = _signature(program)
    if params is not None:
        for key in program_args:
            if key not in params and not _has_var_kw(program):
                raise RecipeError(f"program.args.{key}", f"{program_path} takes no argument {key!r}")
        if prompt_arg is not None and prompt_arg not in params and not _has_var_kw(program):
            raise RecipeError("program.prompt_arg", f"{program_path} takes no argument {prompt_arg!r}")
        if prompt_arg is None:
            prompt_arg = next((k for k in ("prompt", "question", "text", "ctx") if k in params), None)
    if prompt_as is None:
        prompt_as = "context" if prompt_arg == "ctx" else "text"

    reward = _table(data, "reward", required=False)
    reward_name = _typed(reward, "reward", "name", str, "none")
    if reward_name not in REWARDS and ":" not in reward_name:
        raise RecipeError("reward.name", f"unknown reward {reward_name!r} (known: {', '.join(REWARDS)}, or module:factory)")
    if ":" in reward_name:
        _import(reward_name, "reward.name")
    reward_spec = {"name": reward_name, **reward}
    if reward_name == "none" and params is not None:
        needs = [k for k in ("prm", "reward") if k in params and params[k].default is inspect.Parameter.empty]
        if needs:
            raise RecipeError("reward.name", f"{program_path} needs a reward model ({needs[0]}); add [reward] name = ...")

    kernel = _table(data, "kernel")
    kernel_name = _typed(kernel, "kernel", "name", str)
    if kernel_name not in KERNELS:
        raise RecipeError("kernel.name", f"unknown kernel {kernel_name!r} (known: {', '.join(KERNELS)})")
    kernel_fn = _kernel(kernel_name)
    kparams = _signature(kernel_fn) or {}
    for key, value in kernel.items():
        if key in ("seed", "rng"):
            raise RecipeError(f"kernel.{key}", "set the seed in [run] seed")
        if key not in kparams and not _has_var_kw(kernel_fn):
            known = ", ".join(k for k in kparams if k not in ("program", "seed", "rng", "engine", "progress"))
            raise RecipeError(f"kernel.{key}", f"unknown option for {kernel_name} (known: {known})")
        default = kparams[key].default if key in kparams else inspect.Parameter.empty
        if callable(default) and not isinstance(default, type):
            kernel[key] = _callable_option(f"kernel.{key}", value)
            continue
        _check_like(f"kernel.{key}", value, default)
        if key == "resampler":
            from .resampling import RESAMPLERS

            if value not in RESAMPLERS:
                raise RecipeError("kernel.resampler", f"unknown resampler {value!r} (known: {', '.join(sorted(RESAMPLERS))})")
        if key in ("n_particles", "budget", "n", "n_iterations", "n_samples", "beam_width") and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise RecipeError(f"kernel.{key}", f"must be a positive integer, got {value!r}")
    for key, p in list(kparams.items())[1:]:
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            if key not in kernel and key not in ("seed", "rng"):
                raise RecipeError(f"kernel.{key}", f"missing (required by {kernel_name})")

    prompts_t = _table(data, "prompts")
    chat = _typed(prompts_t, "prompts", "chat", bool, False)
    system = _typed(prompts_t, "prompts", "system", str, None)
    prompts = _prompts(prompts_t, base)

    run = _table(data, "run", required=False)
    seed = _typed(run, "run", "seed", int, 0, _non_negative)
    repeats = _typed(run, "run", "repeats", int, 1, _positive)
    out = _typed(run, "run", "out", str, None)
    variables = _typed(run, "run", "variables", list, None)
    if variables is not None and not all(isinstance(v, str) and v.isidentifier() for v in variables):
        raise RecipeError("run.variables", "must be a list of attribute names")
    for reserved in ("text", "log_weight", "particle", "correct"):
        if variables is not None and reserved in variables:
            raise RecipeError("run.variables", f"{reserved!r} is reserved (every particle's text is always recorded)")
    if run:
        raise RecipeError(f"run.{next(iter(run))}", "unknown key (known: seed, repeats, out, variables)")
    return Recipe(
        source=data,
        path=path,
        model=model_spec,
        program=program,
        program_path=program_path,
        program_args=program_args,
        prompt_arg=prompt_arg,
        prompt_as=prompt_as,
        chat=chat,
        system=system,
        reward=reward_spec,
        kernel_name=kernel_name,
        kernel_fn=kernel_fn,
        kernel_options=kernel,
        prompts=prompts,
        seed=seed,
        repeats=repeats,
        out=out,
        variables=variables if variables is not None else ["answer"],
    )


def _prompts(table: dict, base: Path) -> list[Prompt]:
    items = _typed(table, "prompts", "items", list, None)
    file = _typed(table, "prompts", "file", str, None)
    limit = _typed(table, "prompts", "limit", int, None, _positive)
    if table:
        raise RecipeError(f"prompts.{next(iter(table))}", "unknown key (known: items, file, limit, chat, system)")
    if (items is None) == (file is None):
        raise RecipeError("prompts", "give exactly one of items = [...] or file = \"prompts.jsonl\"")
    where = "prompts.items"
    if file is not None:
        where = "prompts.file"
        fp = Path(file) if Path(file).is_absolute() else base / file
        if not fp.is_file():
            fp = Path(file)
        if not fp.is_file():
            raise RecipeError(where, f"no such file: {file}")
        items = []
        for n, line in enumerate(fp.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecipeError(where, f"{fp}:{n}: not JSON ({e.msg})") from None
    if not items:
        raise RecipeError(where, "no prompts")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(Prompt(text=item, id=str(i)))
        elif isinstance(item, dict):
            d = dict(item)
            args = d.pop("args", [])
            if not isinstance(args, list):
                raise RecipeError(f"{where}[{i}].args", "must be a list")
            text = d.pop("prompt", None)
            if text is not None and not isinstance(text, str):
                raise RecipeError(f"{where}[{i}].prompt", "must be a string")
            answer = d.pop("answer", None)
            pid = str(d.pop("id", i))
            out.append(Prompt(text=text, args=args, kwargs=d, answer=answer, id=pid))
        else:
            raise RecipeError(f"{where}[{i}]", f"must be a string or a table, got {type(item).__name__}")
    return out[:limit] if limit else out


def _callable_option(name: str, value: Any) -> Callable[[Any], Any]:
    """A function-valued option: "module:function", or an attribute name of the program."""
    if not isinstance(value, str):
        raise RecipeError(name, f"must be an attribute name or 'module:function', got {value!r}")
    if ":" in value:
        fn = _import(value, name)
        if not callable(fn):
            raise RecipeError(name, f"{value} is not callable")
        return fn
    if not value.isidentifier():
        raise RecipeError(name, f"must be an attribute name or 'module:function', got {value!r}")
    return _Attr(value)


@dataclass(frozen=True)
class _Attr:
    """`getattr(program, name)`, with a readable repr for configs."""

    name: str

    def __call__(self, program: Any) -> Any:
        return getattr(program, self.name)

    def __repr__(self) -> str:
        return self.name


def _check_like(name: str, value: Any, default: Any) -> None:
    """A kernel option must have the type of its default (ints may stand for floats)."""
    if default is inspect.Parameter.empty or default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise RecipeError(name, f"must be {type(default).__name__}, got {type(value).__name__} {value!r}")


def _import(spec: str, where: str) -> Any:
    """`package.module:Name.attr` → the object."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise RecipeError(where, f"expected 'module:Name', got {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # models/ lives next to the recipes, not inside ppllm
    try:
        obj: Any = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise RecipeError(where, f"cannot import {mod_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RecipeError(where, f"{mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _kernel(name: str) -> Callable[..., Any]:
    mod_name, fn = KERNELS[name]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError:
        raise RecipeError("kernel.name", f"kernel {name!r} is not available in this installation") from None
    if not hasattr(mod, fn):
        raise RecipeError("kernel.name", f"kernel {name!r} is not available ({mod_name} has no {fn})")
    return getattr(mod, fn)


def _signature(fn: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def _has_var_kw(fn: Any) -> bool:
    params = _signature(fn) or {}
    return any(p.kind is p.VAR_KEYWORD for p in params.values())


# ---------------------------------------------------------------------- building things
def build_lm(spec: dict[str, Any]) -> Any:
    opts = dict(spec)
    name = opts.pop("lm")
    if name == "toy":
        from .lm import ToyLM

        cfg = {**TOY_DEFAULTS, **opts}
        try:
            return ToyLM.random(
                [str(v) for v in cfg["vocab"]], order=cfg["order"], seed=cfg["seed"], eos=cfg["eos"],
                concentration=float(cfg["concentration"]),
            )
        except (KeyError, ValueError) as e:
            raise RecipeError("model", f"bad toy LM (vocab {cfg['vocab']}, eos {cfg['eos']!r}): {e}") from None
    try:
        from .lm.hf import HFLM
    except ModuleNotFoundError:
        raise RecipeError("model.lm", "the transformers backend (ppllm.lm.hf) is not available") from None
    if isinstance(opts.get("dtype"), str):
        import torch

        opts["dtype"] = getattr(torch, opts["dtype"])
    try:
        return HFLM.load(name, **opts)
    except FileNotFoundError as e:
        raise RecipeError("model.lm", str(e)) from None
    except (KeyError, ValueError) as e:
        raise RecipeError("model.lm", f"cannot load {name!r}: {e}") from None


def build_reward(spec: dict[str, Any], lm: Any) -> Any:
    opts = dict(spec)
    name = opts.pop("name")
    if name == "none":
        return None
    try:
        if name == "exact-arith":
            from .rewards import ExactArithVerifier

            return ExactArithVerifier(**opts)
        if name == "learned-arith":
            from .rewards import LearnedArithPRM

            return LearnedArithPRM.load(**opts)
        if name == "lm-judge":
            from .rewards import LMJudgePRM

            return LMJudgePRM.load(**opts)
        return _import(name, "reward.name")(**opts)
    except (TypeError, ValueError) as e:
        raise RecipeError("reward", f"bad options for {name}: {e}") from None
    except FileNotFoundError as e:
        raise RecipeError("reward", str(e)) from None


def build_program(recipe: Recipe, prompt: Prompt, lm: Any, reward: Any) -> Any:
    """Call the program factory: injected lm/prm, recipe args, then the prompt's own."""
    params = _signature(recipe.program) or {}
    inject = {"lm": lm, "prm": reward, "reward": reward}
    kwargs = {**recipe.program_args, **prompt.kwargs}
    for key, value in list(kwargs.items()):
        if isinstance(value, dict) and "call" in value:
            fn = _call_spec(f"program.args.{key}", value)
            opts = {k: v for k, v in value.items() if k != "call"}
            if "lm" in (_signature(fn) or {}):
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
        kwargs[recipe.prompt_arg] = lm.context(text) if recipe.prompt_as == "context" else text
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
    except (TypeError, ValueError) as e:
        raise RecipeError("program.args", f"cannot build {recipe.program_path} for prompt {prompt.id}: {e}") from None


def _variables(names: Sequence[str], answer: Any) -> dict[str, Callable[[Any], Any]]:
    out: dict[str, Callable[[Any], Any]] = {name: (lambda p, n=name: getattr(p, n, None)) for name in names}
    if answer is not None and "answer" in names:
        out["correct"] = lambda p: None if getattr(p, "answer", None) is None else _same(p.answer, answer)
    return out


def _json_safe(v: Any) -> Any:
    from .posterior import _json_value

    return _json_value(v)


def _same(a: Any, b: Any) -> bool:
    return str(a).strip() == str(b).strip()


# ---------------------------------------------------------------------- running
def run_seed(recipe: Recipe, prompt_index: int, repeat: int) -> int:
    """The seed of one run: distinct for every (prompt, repeat), fixed by [run] seed."""
    return int(np.random.SeedSequence([recipe.seed, prompt_index, repeat]).generate_state(1)[0] >> 1)


def run_prompt(recipe: Recipe, i: int, lm: Any, reward: Any, progress: bool = False, bar: Any = None) -> list[Any]:
    """The `repeats` independent runs of prompt i (one Posterior each)."""
    kparams = _signature(recipe.kernel_fn) or {}
    runs = []
    for r in range(recipe.repeats):
        program = build_program(recipe, recipe.prompts[i], lm, reward)
        opts = dict(recipe.kernel_options)
        if "progress" in kparams:
            opts["progress"] = progress
        try:
            post = recipe.kernel_fn(program, seed=run_seed(recipe, i, r), **opts)
        except ValueError as e:  # kernels reject bad option values (and combinations) this way
            raise RecipeError("kernel", f"{recipe.kernel_name}: {e}") from None
        if not hasattr(post, "log_weights"):
            raise RecipeError("kernel.name", f"{recipe.kernel_name} returned {type(post).__name__}, not a Posterior")
        runs.append(post)
        if bar is not None:
            bar.update(1)
    return runs


def prompt_variables(recipe: Recipe, i: int) -> dict[str, Callable[[Any], Any]]:
    """The variables recorded for prompt i: [run] variables, plus `correct` given an answer."""
    return _variables(recipe.variables, recipe.prompts[i].answer)


def run_recipe(
    recipe: Recipe, out: Path, progress: bool = True, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every prompt (× repeats) and write the results directory; return the headline."""
    from .posterior import to_arviz

    if not progress:
        _quiet_transformers()
    lm = build_lm(recipe.model)
    reward = build_reward(recipe.reward, lm)
    if log is not None:
        log(f"{recipe.kernel_name} on {len(recipe.prompts)} prompt(s) × {recipe.repeats} → {out}")
    out.mkdir(parents=True, exist_ok=True)
    _write_recipe(recipe, out)
    total = len(recipe.prompts) * recipe.repeats
    bar = _bar(progress, total, recipe.kernel_name)
    jsonl = (out / "particles.jsonl").open("w")
    try:
        for i, prompt in enumerate(recipe.prompts):
            variables = prompt_variables(recipe, i)
            runs = run_prompt(recipe, i, lm, reward, progress=progress and total == 1, bar=bar)
            for r, post in enumerate(runs):
                for row in post.records(variables):
                    jsonl.write(json.dumps({"prompt": i, "chain": r, **row}) + "\n")
            pdir = out / f"prompt-{i:03d}"
            pdir.mkdir(exist_ok=True)
            idata = to_arviz(runs, variables, seed=recipe.seed)
            idata["posterior"].attrs["prompt"] = prompt.label()
            idata["posterior"].attrs["prompt_id"] = prompt.id
            if prompt.answer is not None:
                idata["posterior"].attrs["reference_answer"] = json.dumps(prompt.answer)
            if all("answer" in p.extras for p in runs):
                selected = [_json_safe(p.extras["answer"]) for p in runs]
                idata["posterior"].attrs["selected_answers"] = json.dumps(selected)
            idata.to_netcdf(str(pdir / "posterior.nc"))
            chains = _chains_of(runs)
            if chains is not None:
                chains.to_arviz().to_netcdf(str(pdir / "chains.nc"))
    finally:
        jsonl.close()
        if bar is not None:
            bar.close()
    return write_report(out)


def _chains_of(runs: list[Any]) -> Any:
    """MCMC chains of the repeats, side by side: a kernel's `extras["chains"]` (a `Chains`),
    or particle Gibbs' sequence of reference answers (`extras["references"]`), one per sweep."""
    from .posterior import Chains

    given = [p.extras.get("chains") for p in runs]
    if all(isinstance(c, Chains) for c in given):
        return Chains(
            samples=[s for c in given for s in c.samples],
            stats={k: [row for c in given for row in np.asarray(c.stats[k]).tolist()] for k in given[0].stats},
            kernel=given[0].kernel,
            config=given[0].config,
        )
    refs = [p.extras.get("references") for p in runs]
    if all(isinstance(r, list) and r for r in refs):
        return Chains(samples=[[{"reference": _json_safe(x)} for x in r] for r in refs], kernel=runs[0].kernel)
    return None


def _quiet_transformers() -> None:
    """No weight-loading bars from transformers when the user asked for quiet output."""
    if "transformers" in sys.modules or importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _write_recipe(recipe: Recipe, out: Path) -> None:
    """The recipe as run, self-contained: overrides applied, the prompts written inline."""
    header = "# the recipe as run (overrides applied, prompts inline)\n"
    source = dict(recipe.source)
    prompts = {k: v for k, v in source.get("prompts", {}).items() if k in ("chat", "system")}
    prompts["items"] = [_prompt_item(p) for p in recipe.prompts]
    source["prompts"] = prompts
    body = _to_toml(source)
    (out / "recipe.toml").write_text(header + body)


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


def _to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for recipes: tables of scalars, lists and inline tables."""
    lines: list[str] = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            lines.append(f"{_key(k)} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "inf" if v == math.inf else "-inf" if v == -math.inf else "nan" if v != v else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


# ---------------------------------------------------------------------- reports
def write_report(out: str | Path) -> dict[str, Any]:
    """summary.md, results.json and the plots of a results directory, from its files alone."""
    from .plots import plot_answers, plot_diagnostics, plot_genealogy
    from .posterior import load_arviz, posteriors_from_arviz

    out = Path(out)
    pdirs = sorted(d for d in out.glob("prompt-*") if (d / "posterior.nc").is_file())
    if not pdirs:
        raise RecipeError("report", f"{out} holds no prompt-*/posterior.nc (is it a results directory?)")
    recipe_text = (out / "recipe.toml").read_text() if (out / "recipe.toml").is_file() else ""
    lines = ["# ppllm results", ""]
    if recipe_text:
        lines += ["Recipe (as run):", "", "```toml", recipe_text.strip(), "```", ""]
    rows = []
    budget_total: dict[str, float] = {}
    for d in pdirs:
        idata = load_arviz(str(d / "posterior.nc"))
        posts = posteriors_from_arviz(idata)
        attrs = idata["posterior"].attrs
        ref = json.loads(attrs["reference_answer"]) if "reference_answer" in attrs else None
        has_answer = "answer" in idata["particles"].data_vars
        fn = (lambda p: p.answer) if has_answer else str
        first = posts[0]
        weighted = _prediction(posts, fn)
        selected = json.loads(attrs["selected_answers"]) if "selected_answers" in attrs else None
        # a kernel that selects (best-of-N, beam search, ...) is judged by its selection,
        # a sampler by the weighted posterior's most probable answer (pooled over runs)
        pred = Counter(map(_hashable, selected)).most_common(1)[0][0] if selected else weighted
        correct = None if ref is None or pred is None else _same(pred, ref)
        for p in posts:
            for k, v in p.budget.items():
                budget_total[k] = budget_total.get(k, 0) + v
        row = {
            "prompt": str(attrs.get("prompt", "")),
            "id": str(attrs.get("prompt_id", d.name)),
            "dir": d.name,
            "prediction": pred,
            "weighted_prediction": weighted,
            "selected": selected,
            "reference": ref,
            "correct": correct,
            "log_Z": [p.log_Z for p in posts],
            "ess": [p.ess for p in posts],
            "n_particles": [p.n for p in posts],
            "budget": [p.budget for p in posts],
            "messages": [p.message for p in posts if p.message],
        }
        rows.append(row)
        plot_diagnostics(first, d / "diagnostics.png")
        plot_genealogy(first, d / "genealogy.png")
        plot_answers(_pooled(posts, fn), d / "answers.png", truth=ref)
        lines += _prompt_section(row, posts, fn)
    scored = [r["correct"] for r in rows if r["correct"] is not None]
    accuracy = sum(scored) / len(scored) if scored else None
    head = [f"- prompts: {len(rows)}"]
    if accuracy is not None:
        head.append(f"- accuracy: {accuracy:.3f} ({sum(scored)}/{len(scored)})")
    if budget_total:
        head.append("- budget (all runs): " + ", ".join(f"{k}={_fmt(v)}" for k, v in budget_total.items()))
    lines[2:2] = [*head, ""]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    result = {
        "out": str(out),
        "prompts": rows,
        "accuracy": accuracy,
        "budget": budget_total,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return result


def _hashable(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list | dict) else v


def _pooled(posts: list[Any], fn: Callable[[Any], Any]) -> dict[Any, float]:
    """The answer distribution averaged over independent runs (each run weighs equally)."""
    mass: dict[Any, float] = {}
    ok = [p for p in posts if p.ok]
    for p in ok:
        for k, v in p.distribution(fn).items():
            mass[k] = mass.get(k, 0.0) + v / len(ok)
    return dict(sorted(mass.items(), key=lambda kv: -kv[1]))


def _prediction(posts: list[Any], fn: Callable[[Any], Any]) -> Any:
    dist = {k: v for k, v in _pooled(posts, fn).items() if k is not None}
    return next(iter(dist), None)


def _prompt_section(row: dict[str, Any], posts: list[Any], fn: Callable[[Any], Any]) -> list[str]:
    lines = [f"## {row['dir']}: {row['prompt']!r}", ""]
    if row["reference"] is not None:
        mark = "correct" if row["correct"] else "wrong"
        lines.append(f"- prediction: `{row['prediction']!r}` (reference `{row['reference']!r}`: {mark})")
    else:
        lines.append(f"- prediction: `{row['prediction']!r}`")
    if row["selected"] is not None:
        lines.append(f"- selected by the kernel (per run): {', '.join(repr(x) for x in row['selected'])}")
    for c, p in enumerate(posts):
        steps = f", {len(p.steps)} steps, resampled {int(p.resampled.sum())}×" if p.steps else ""
        lines.append(
            f"- run {c}: {p.kernel}, N={p.n}, log Ẑ={p.log_Z:.4f}, ESS={p.ess:.2f}{steps}"
            + (f", budget: {', '.join(f'{k}={_fmt(v)}' for k, v in p.budget.items())}" if p.budget else "")
        )
        if p.message:
            lines.append(f"  - note: {p.message}")
    lines += ["", "| mass | answer |", "|---:|---|"]
    for k, v in list(_pooled(posts, fn).items())[:10]:
        lines.append(f"| {v:.4f} | `{k!r}` |")
    lines += ["", f"![diagnostics]({row['dir']}/diagnostics.png) ![genealogy]({row['dir']}/genealogy.png) "
              f"![answers]({row['dir']}/answers.png)", ""]
    return lines


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def _bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name} runs", unit="run", file=sys.stderr)


# ---------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.set or [])
    out = Path(args.out or recipe.out or Path("results") / Path(args.recipe).stem)
    quiet = args.quiet or args.json
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    result = run_recipe(recipe, out, progress=not quiet, log=log)
    if args.json:
        print(json.dumps(result, default=_json_default))
    elif not args.quiet:
        print((out / "summary.md").read_text().split("\nRecipe (as run)")[0].strip())
        print(f"results in {out}/ (summary.md, prompt-*/posterior.nc, particles.jsonl)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    result = write_report(args.dir)
    if args.json:
        print(json.dumps(result, default=_json_default))
    else:
        print(f"wrote {Path(args.dir) / 'summary.md'} and plots for {len(result['prompts'])} prompt(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return int(demo.main(args.rest) or 0)


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo

    if args.action == "list":
        models = zoo.list_models()
        if args.json:
            print(json.dumps(models, default=str))
        else:
            for m in models:
                where = m.get("path") if m.get("present") else f"missing: {m.get('how_to_get', '')}"
                print(f"{m.get('name', '?'):12s} {m.get('description', '')}\n{'':12s} {where}")
        return 0
    if not args.name:
        raise RecipeError("models", f"`ppllm models {args.action}` needs a model name")
    module = _zoo_module(args.name)
    if args.action == "fetch":
        if hasattr(module, "fetch"):
            print(module.fetch())
            return 0
        raise RecipeError("models", f"{args.name} is committed with ppllm; nothing to fetch")
    if args.name == "arith-prm":
        return int(importlib.import_module("ppllm.rewards.train_arith_prm").main(args.rest) or 0)
    if args.name == "tiny-arith":
        return int(module.main(["train", *args.rest]) or 0)  # its script has train / eval
    raise RecipeError("models", f"{args.name} is not trained here; use `ppllm models fetch {args.name}`")


def _zoo_module(name: str) -> Any:
    mod = {"tiny-arith": "tiny_arith", "smollm2": "smollm2", "arith-prm": "tiny_arith"}.get(name)
    if mod is None:
        raise RecipeError("models", f"unknown model {name!r} (known: tiny-arith, smollm2, arith-prm)")
    return importlib.import_module(f"ppllm.zoo.{mod}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppllm", description="Probabilistic inference over LM generation.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a recipe (inference/*.toml)")
    r.add_argument("recipe")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. kernel.n_particles=4")
    r.add_argument("--out", help="results directory (default: [run] out, else results/RECIPE)")
    r.add_argument("--quiet", action="store_true", help="no progress or summary")
    r.add_argument("--json", action="store_true", help="print one JSON object with the results")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="regenerate summary and plots of a results directory")
    rep.add_argument("dir")
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(fn=cmd_report)
    d = sub.add_parser("demo", help="the demo (see README); other options go to the demo")
    d.set_defaults(fn=cmd_demo, passthrough=True)
    m = sub.add_parser("models", help="embedded models: list | fetch NAME | train NAME")
    m.add_argument("action", choices=["list", "fetch", "train"])
    m.add_argument("name", nargs="?")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models, passthrough=True)  # `train NAME ...`: options go to the trainer
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ppllm` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `demo ...` and `models train NAME ...` hand every later option (--help too) to their script
    if argv[:1] == ["demo"]:
        argv, tail = argv[:1], argv[1:]
    elif argv[:2] == ["models", "train"] and len(argv) > 2:
        argv, tail = argv[:3], argv[3:]
    else:
        tail = []
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    rest = rest + tail
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return args.fn(args)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ppllm ... | head`
        sys.stderr.close()
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

