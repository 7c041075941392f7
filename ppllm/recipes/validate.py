"""Reading and checking a recipe: TOML → overrides → a validated `Recipe`, before any model work.

`load_recipe(path, overrides)` parses the file, applies `--set key=value` overrides, checks
every section against the schema (`recipes.schema`) and against the code it names — the
program must import and take the given arguments, the kernel must exist in the registry and
take the given options (types checked with pydantic models built from its signature), the
reward must exist and take its options, the prompts must load — and raises `RecipeError`
naming the field on the first problem.

Programs are named as "module:Callable" (e.g. "ppllm_models.math_reasoning:MathReasoning")
or as a file path relative to the recipe, "models/math_reasoning.py:MathReasoning".
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model

from ..registry import RegistryError
from .schema import (
    SECTIONS,
    AllocationSection,
    HFModelSection,
    ProgramSection,
    PromptsSection,
    RecipeError,
    RunSection,
    ServedModelSection,
    ToyModelSection,
    describe,
    parse_section,
)

__all__ = [
    "Prompt",
    "attribute_names",
    "Recipe",
    "apply_overrides",
    "import_object",
    "load_recipe",
    "parse_set",
    "validate",
]

INJECTED = ("lm", "prm", "reward")  # program arguments the runner supplies itself
COUNTS = ("n_particles", "budget", "n_iterations", "beam_width", "n_moves", "n_chains", "n_draws",
          "n_iter", "iterations", "n_samples", "group_size", "window", "width", "segment_length", "max_depth",
          "step_width", "force_exit_tokens")
RESERVED_VARIABLES = ("text", "log_weight", "particle", "correct")
DISTRIBUTION_TABLES = {"priors", "proposal_dists"}  # kernel options that map names to distributions
NOT_OPTIONS = ("program", "seed", "rng", "engine", "progress")


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
    window: int | None = None
    plots: int = 16
    estimator: str = "auto"
    allocation: dict[str, Any] | None = None

    @property
    def rounds(self) -> int:
        """Rounds of the run: [allocation] rounds when allocating, else [run] repeats."""
        return int(self.allocation["rounds"]) if self.allocation else self.repeats


# ---------------------------------------------------------------------- reading
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
        except UnicodeDecodeError:
            raise RecipeError("recipe", f"{p} is not a text file") from None
    apply_overrides(data, parse_set(overrides))
    return validate(data, p)


# ---------------------------------------------------------------------- checking
def validate(data: dict[str, Any], path: Path | None = None) -> Recipe:
    """Check every section of a parsed recipe (see docs/recipes.md for the schema)."""
    for key in data:
        if key not in SECTIONS:
            raise RecipeError(key, f"unknown section (expected one of: {', '.join(SECTIONS)})")
    for name in ("model", "program", "kernel", "prompts"):
        if name not in data:
            raise RecipeError(name, f"missing [{name}] section")
    base = path.parent if path is not None else Path.cwd()
    model = _model(data["model"])
    prog = parse_section(ProgramSection, "program", data["program"])
    program = import_object(prog.path, "program.path", base)
    if not callable(program):
        raise RecipeError("program.path", f"{prog.path} is not callable")
    params = _signature(program)
    prompt_arg = _check_program_args(prog, program, params)
    prompt_as = prog.prompt_as or ("context" if prompt_arg == "ctx" else "text")
    reward = _reward(data.get("reward", {}), prog.path, params)
    kernel_name, kernel_fn, options = _kernel(data["kernel"], base)
    prompts_t = parse_section(PromptsSection, "prompts", data["prompts"])
    prompts = _prompts(prompts_t, base)
    run = parse_section(RunSection, "run", data.get("run", {}))
    variables = run.variables if run.variables is not None else ["answer"]
    for v in variables:
        if not v.isidentifier():
            raise RecipeError("run.variables", f"must be attribute names, got {v!r}")
        if v in RESERVED_VARIABLES:
            raise RecipeError("run.variables", f"{v!r} is reserved (every particle's text is always recorded)")
    allocation = _allocation(data.get("allocation"), variables, prompts)
    return Recipe(
        source=data, path=path, model=model, program=program, program_path=prog.path,
        program_args=dict(prog.args), prompt_arg=prompt_arg, prompt_as=prompt_as,
        chat=prompts_t.chat, system=prompts_t.system, reward=reward, kernel_name=kernel_name,
        kernel_fn=kernel_fn, kernel_options=options, prompts=prompts, seed=run.seed,
        repeats=run.repeats, out=run.out, variables=list(variables), window=run.window, plots=run.plots,
        estimator=run.estimator, allocation=allocation,
    )


def _allocation(table: Any, variables: list[str], prompts: list[Prompt]) -> dict[str, Any] | None:
    """[allocation]: an allocator by name with its options; rewards come from `correct`."""
    if table is None:
        return None
    from ..runs.allocators import make_allocator

    spec = parse_section(AllocationSection, "allocation", table)
    options = {k: v for k, v in table.items() if k not in ("name", "rounds", "per_round")}
    try:
        make_allocator(spec.name, **options)
    except ValueError as e:
        raise RecipeError("allocation", str(e)) from None
    if "answer" not in variables or any(p.answer is None for p in prompts):
        raise RecipeError("allocation", "allocation needs rewards: record the `answer` variable and give every "
                          "prompt a reference answer (each particle's reward is whether it is correct)")
    return {"name": spec.name, "rounds": spec.rounds, "per_round": spec.per_round, "options": options}


def _model(table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise RecipeError("model", f"must be a table ([model]), got {type(table).__name__}")
    if "served" in table:
        spec = parse_section(ServedModelSection, "model", table)
        if not spec.served.startswith(("http://", "https://")):
            raise RecipeError("model.served", f"must be an http(s) URL such as http://127.0.0.1:8000/v1, got {spec.served!r}")
        from .. import zoo

        try:
            zoo.resolve(spec.tokenizer)
        except FileNotFoundError as e:
            raise RecipeError("model.tokenizer", str(e)) from None
        return {"lm": "served", **spec.model_dump(exclude_none=True)}
    if "lm" not in table:
        raise RecipeError("model.lm", "missing (or give served = \"http://host:port/v1\")")
    if table["lm"] == "toy":
        return parse_section(ToyModelSection, "model", table).model_dump()
    from .. import zoo

    lm = table["lm"]
    if not isinstance(lm, str):
        raise RecipeError("model.lm", f"must be str, got {type(lm).__name__} {lm!r}")
    info = zoo.MODELS.get(lm)
    if info is not None and not info.causal_lm:
        raise RecipeError("model.lm", f"{lm} is not a causal LM ({info.description})")
    try:
        zoo.resolve(lm)
    except FileNotFoundError as e:
        raise RecipeError("model.lm", str(e)) from None
    return parse_section(HFModelSection, "model", table).model_dump(exclude_none=True)


def _check_program_args(prog: ProgramSection, program: Any, params: dict | None) -> str | None:
    for key, value in prog.args.items():
        if isinstance(value, dict) and "call" in value:
            call_spec(f"program.args.{key}", value)
    if params is None:
        return prog.prompt_arg
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in prog.args:
        if key not in params and not var_kw:
            raise RecipeError(f"program.args.{key}", f"{prog.path} takes no argument {key!r}")
        if key in INJECTED:
            raise RecipeError(f"program.args.{key}", f"{key!r} is supplied by the runner ([model] / [reward])")
    if prog.prompt_arg is not None:
        if prog.prompt_arg not in params and not var_kw:
            raise RecipeError("program.prompt_arg", f"{prog.path} takes no argument {prog.prompt_arg!r}")
        return prog.prompt_arg
    return next((k for k in ("prompt", "question", "text", "ctx") if k in params), None)


def _reward(table: Any, program_path: str, params: dict | None) -> dict[str, Any]:
    from ..rewards import REWARDS

    if not isinstance(table, dict):
        raise RecipeError("reward", f"must be a table ([reward]), got {type(table).__name__}")
    spec = dict(table)
    name = spec.get("name", "none")
    if not isinstance(name, str):
        raise RecipeError("reward.name", f"must be str, got {type(name).__name__} {name!r}")
    if name == "none":
        if len(spec) > 1:
            raise RecipeError(f"reward.{next(k for k in spec if k != 'name')}", "options given but no reward named")
        needs = [k for k in ("prm", "reward") if params and k in params and params[k].default is inspect.Parameter.empty]
        if needs:
            raise RecipeError("reward.name", f"{program_path} needs a reward model ({needs[0]}); add [reward] name = ...")
        return {"name": "none"}
    if ":" in name:
        factory = import_object(name, "reward.name")
    elif name in REWARDS:
        try:
            factory = REWARDS.get(name)
        except RegistryError as e:
            raise RecipeError("reward.name", str(e)) from None
    else:
        raise RecipeError("reward.name", f"unknown reward {name!r} (known: none, {', '.join(REWARDS)}, or module:factory)")
    fparams = _signature(factory) or {}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in fparams.values())
    for key in spec:
        if key != "name" and key not in fparams and not var_kw:
            known = ", ".join(k for k in fparams if k not in ("self", "cls")) or "none"
            raise RecipeError(f"reward.{key}", f"unknown option for {name} (known: {known})")
    return {"name": name, **{k: v for k, v in spec.items() if k != "name"}}


def _kernel(table: Any, base: Path) -> tuple[str, Callable[..., Any], dict[str, Any]]:
    from ..kernels import KERNELS

    if not isinstance(table, dict):
        raise RecipeError("kernel", f"must be a table ([kernel]), got {type(table).__name__}")
    options = dict(table)
    name = options.pop("name", None)
    if name is None:
        raise RecipeError("kernel.name", "missing")
    if not isinstance(name, str):
        raise RecipeError("kernel.name", f"must be str, got {type(name).__name__} {name!r}")
    if name not in KERNELS:
        raise RecipeError("kernel.name", f"unknown kernel {name!r} (known: {', '.join(KERNELS)})")
    try:
        fn = KERNELS.get(name)
    except RegistryError as e:
        raise RecipeError("kernel.name", str(e)) from None
    for key in ("seed", "rng"):
        if key in options:
            raise RecipeError(f"kernel.{key}", "set the seed in [run] seed")
    params = _signature(fn) or {}
    callables = {k for k, p in params.items()
                 if (callable(p.default) and not isinstance(p.default, type)) or k.endswith("_fn")}
    checked = _options_model(name, params, callables)
    plain = {k: v for k, v in options.items() if k not in callables}
    try:
        checked.model_validate(plain)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(k for k in params if k not in NOT_OPTIONS)
            raise RecipeError(f"kernel.{key}", f"unknown option for {name} (known: {known})") from None
        if err["type"] == "missing":
            raise RecipeError(f"kernel.{key}", f"missing (required by {name})") from None
        message = describe(err, checked)
        if key in COUNTS:
            message = f"must be a positive integer, got {err.get('input')!r}"
        raise RecipeError(f"kernel.{key}", message) from None
    if "resampler" in options:
        from ..resampling import RESAMPLERS

        if options["resampler"] not in RESAMPLERS:
            known = ", ".join(sorted(RESAMPLERS))
            raise RecipeError("kernel.resampler", f"unknown resampler {options['resampler']!r} (known: {known})")
    for key in callables & set(options):
        options[key] = callable_option(f"kernel.{key}", options[key], base)
    for key in DISTRIBUTION_TABLES & set(options):
        options[key] = distribution_table(f"kernel.{key}", options[key])
    check_kernel_options(name, fn, options)
    return name, fn, options


def check_kernel_options(name: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    """A kernel module's own `check_options(**options)` (values in range, combinations), if it
    has one: run here so a bad value fails before any model is loaded."""
    checker = getattr(sys.modules.get(getattr(fn, "__module__", "")), "check_options", None)
    if checker is None:
        return
    try:
        checker(**options)
    except ValueError as e:
        key = str(e).split(" ", 1)[0]
        raise RecipeError(f"kernel.{key}" if key in options else "kernel", f"{name}: {e}") from None


def _options_model(name: str, params: dict[str, inspect.Parameter], skip: set[str]) -> Any:
    """A pydantic model of a kernel's options, from its signature: the type of each default
    (ints may stand for floats), positive counts, and required arguments without defaults."""
    fields: dict[str, Any] = {}
    for key, p in list(params.items())[1:]:
        if key in NOT_OPTIONS or key in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if key in DISTRIBUTION_TABLES:
            fields[key] = (Any, ... if p.default is inspect.Parameter.empty else p.default)
            continue
        default = p.default
        if key == "resampler":
            fields[key] = (str | None, None)
        elif default is inspect.Parameter.empty:
            fields[key] = (int, Field(..., gt=0)) if key in COUNTS else (Any, ...)
        elif isinstance(default, bool):
            fields[key] = (bool, default)
        elif isinstance(default, int):
            fields[key] = (int, Field(default, gt=0) if key in COUNTS else default)
        elif isinstance(default, float):
            fields[key] = (float, default)
        elif isinstance(default, str):
            fields[key] = (str, default)
        else:
            fields[key] = (Any, default)
    config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{name}_options", __config__=config, **fields)


def _prompts(table: PromptsSection, base: Path) -> list[Prompt]:
    if (table.items is None) == (table.file is None):
        raise RecipeError("prompts", "give exactly one of items = [...] or file = \"prompts.jsonl\"")
    where, items = "prompts.items", table.items
    if table.file is not None:
        where = "prompts.file"
        fp = Path(table.file) if Path(table.file).is_absolute() else base / table.file
        if not fp.is_file():
            fp = Path(table.file)
        if not fp.is_file():
            raise RecipeError(where, f"no such file: {table.file}")
        items = []
        for n, line in enumerate(fp.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecipeError(where, f"{fp}:{n}: not JSON ({e.msg})") from None
    if not items:
        raise RecipeError(where, "no prompts")
    out, ids = [], set()
    for i, item in enumerate(items):
        if isinstance(item, str) or (isinstance(item, dict) and isinstance(item.get("prompt"), str)):
            text = item if isinstance(item, str) else item["prompt"]
            if not text.strip():
                raise RecipeError(f"{where}[{i}]", "empty prompt")
        if isinstance(item, str):
            prompt = Prompt(text=item, id=str(i))
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
            prompt = Prompt(text=text, args=args, kwargs=d, answer=answer, id=pid)
        else:
            raise RecipeError(f"{where}[{i}]", f"must be a string or a table, got {type(item).__name__}")
        if prompt.id in ids:
            raise RecipeError(f"{where}[{i}].id", f"duplicate prompt id {prompt.id!r}")
        ids.add(prompt.id)
        out.append(prompt)
    return out[: table.limit] if table.limit else out


# ---------------------------------------------------------------------- references
def import_object(spec: str, where: str, base: Path | None = None) -> Any:
    """"package.module:Name.attr", or "path/to/file.py:Name" relative to `base`, → the object."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise RecipeError(where, f"expected 'module:Name' or 'file.py:Name', got {spec!r}")
    try:
        if mod_name.endswith(".py"):
            obj: Any = _import_file(Path(mod_name) if base is None else base / mod_name, where)
        else:
            obj = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise RecipeError(where, f"cannot import {mod_name!r} ({e})") from None
    except SyntaxError as e:
        raise RecipeError(where, f"cannot import {mod_name!r}: syntax error at line {e.lineno}: {e.msg}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RecipeError(where, f"{mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _import_file(path: Path, where: str) -> Any:
    path = path.resolve()
    if not path.is_file():
        raise RecipeError(where, f"no such file: {path}")
    name = f"ppllm_recipe_{abs(hash(str(path)))}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def call_spec(where: str, spec: dict[str, Any]) -> Callable[..., Any]:
    """`{ call = "module:function", ... }`: an argument computed by a function (given lm=)."""
    fn = spec["call"]
    if not isinstance(fn, str):
        raise RecipeError(f"{where}.call", f"must be 'module:function', got {fn!r}")
    obj = import_object(fn, f"{where}.call")
    if not callable(obj):
        raise RecipeError(f"{where}.call", f"{fn} is not callable")
    return obj


def attribute_names(obj: Any) -> list[str]:
    """The public data attributes and properties of an object (not its methods), for messages."""
    cls = type(obj)
    names = set(getattr(obj, "__dict__", {})) | {k for k in dir(cls) if isinstance(getattr(cls, k, None), property)}
    return sorted(k for k in names if not k.startswith("_"))


@dataclass(frozen=True)
class Attr:
    """`getattr(program, name)`, with a readable repr for configs; a missing attribute is the
    recipe's mistake, reported against the option that named it."""

    name: str
    where: str = ""

    def __call__(self, program: Any) -> Any:
        try:
            return getattr(program, self.name)
        except AttributeError:
            message = (f"{type(program).__name__} has no attribute {self.name!r} "
                       f"(its particles have: {', '.join(attribute_names(program)) or 'none'})")
            if self.where:
                raise RecipeError(self.where, message) from None
            raise AttributeError(message) from None

    def __repr__(self) -> str:
        return self.name


def callable_option(name: str, value: Any, base: Path | None = None) -> Callable[[Any], Any]:
    """A function-valued option: "module:function", or an attribute name of the program."""
    if not isinstance(value, str):
        raise RecipeError(name, f"must be an attribute name or 'module:function', got {value!r}")
    if ":" in value:
        fn = import_object(value, name, base)
        if not callable(fn):
            raise RecipeError(name, f"{value} is not callable")
        return fn
    if not value.isidentifier():
        raise RecipeError(name, f"must be an attribute name or 'module:function', got {value!r}")
    return Attr(value, name)


def distribution_table(where: str, table: Any) -> dict[str, Any]:
    """{name = "Uniform(0.5, 2.0)", ...} → pyro distributions (float64 parameters)."""
    if not isinstance(table, dict) or not table:
        raise RecipeError(where, 'must be a table of distributions, e.g. { temperature = "Uniform(0.5, 2.0)" }')
    return {k: parse_distribution(f"{where}.{k}", v) for k, v in table.items()}


def parse_distribution(where: str, spec: Any) -> Any:
    """"Normal(0, 1)" → pyro.distributions.Normal(0., 1.) with float64 tensors."""
    import ast
    import re

    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*", spec) if isinstance(spec, str) else None
    if m is None:
        raise RecipeError(where, f'must be a distribution like "Normal(0.0, 1.0)", got {spec!r}')
    import pyro.distributions as pdist
    import torch

    cls = getattr(pdist, m.group(1), None)
    if not isinstance(cls, type):
        raise RecipeError(where, f"pyro.distributions has no distribution {m.group(1)!r}")
    try:
        args = ast.literal_eval(f"({m.group(2)},)") if m.group(2).strip() else ()
        return cls(*[torch.tensor(float(a), dtype=torch.float64) for a in args])
    except (ValueError, TypeError, SyntaxError) as e:
        raise RecipeError(where, f"cannot build {spec!r}: {e}") from None


def _signature(fn: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
