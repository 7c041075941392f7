"""The recipe schema: sections, their keys and types, as pydantic models.

A recipe is a TOML file with the sections `model`, `program`, `reward`, `kernel`,
`prompts` and `run` (docs/recipes.md). This module checks shapes and types; what depends on
other code — that a program can be imported and takes the given arguments, that a kernel
takes the given options — is checked by `recipes.validate`. Every mistake becomes a
`RecipeError` naming the field (`kernel.n_particles: must be a positive integer, got 0`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "SECTIONS",
    "AllocationSection",
    "HFModelSection",
    "ProgramSection",
    "PromptsSection",
    "RecipeError",
    "RunSection",
    "ServedModelSection",
    "ToyModelSection",
    "parse_section",
]

SECTIONS = ("model", "program", "reward", "kernel", "prompts", "run", "allocation")


class RecipeError(ValueError):
    """A mistake in a recipe: `field` names where (e.g. `kernel.n_particles`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple:  # pickled across processes (Ray actors) with both parts
        return (type(self), (self.field, self.reason))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ToyModelSection(_Section):
    """`lm = "toy"`: a random n-gram LM (`ToyLM.random`)."""

    lm: Literal["toy"]
    vocab: list[str] = Field(default_factory=lambda: ["a", "b", "<eos>"], min_length=1)
    order: int = Field(2, gt=0)
    seed: int = Field(3, ge=0)
    eos: str | None = "<eos>"
    concentration: float = Field(1.0, gt=0)
    # seconds each backend call waits: simulates a remote model's round trip (benchmarks)
    latency: float = Field(0.0, ge=0)


class HFModelSection(_Section):
    """A transformers causal LM: a registered name (tiny-arith, smollm2) or a local path."""

    lm: str
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    device: str | None = None
    kv_budget_tokens: int | None = Field(None, gt=0)
    max_batch_positions: int | None = Field(None, gt=0)
    gguf_file: str | None = None


class ServedModelSection(_Section):
    """An OpenAI-compatible server (`ppllm.lm.served`): its URL and a local tokenizer."""

    served: str
    tokenizer: str
    model: str | None = None
    logprobs: Literal["raw", "processed"] = "raw"
    max_in_flight: int = Field(16, gt=0)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(2, ge=0)
    api_key: str = "none"


class ProgramSection(_Section):
    path: str
    args: dict[str, Any] = Field(default_factory=dict)
    prompt_arg: str | None = None
    prompt_as: Literal["text", "context"] | None = None


class PromptsSection(_Section):
    items: list[Any] | None = None
    file: str | None = None
    limit: int | None = Field(None, gt=0)
    chat: bool = False
    system: str | None = None


class RunSection(_Section):
    seed: int = Field(0, ge=0)
    repeats: int = Field(1, gt=0)
    out: str | None = None
    variables: list[str] | None = None
    window: int | None = Field(None, gt=0)  # prompt-rounds run together, sharing batched forwards
    plots: int = Field(16, ge=0)  # per-prompt plots for this many prompts (`ppllm report --plots all`)
    # which prediction the headline accuracy uses; every one is reported beside it
    estimator: Literal["auto", "selected", "weighted", "majority"] = "auto"


class AllocationSection(BaseModel):
    """[allocation]: which prompts get each round's rollouts (`ppllm.runs.allocators`)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str
    rounds: int = Field(..., gt=0)  # allocation rounds (replaces [run] repeats)
    per_round: int = Field(..., gt=0)  # prompts picked per round


def parse_section(model: type[BaseModel], name: str, data: Any) -> Any:
    """Validate one section; the first problem becomes a RecipeError naming its field."""
    if not isinstance(data, dict):
        raise RecipeError(name, f"must be a table ([{name}]), got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in (name, *err["loc"]))
        raise RecipeError(loc, describe(err, model)) from None


def describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    """One pydantic error in the words of the rest of ppllm's messages."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key (known: {', '.join(model.model_fields)})"
    if kind == "missing":
        return "missing"
    if kind in ("greater_than", "greater_than_equal"):
        bound = ctx.get("gt", ctx.get("ge"))
        op = ">" if kind == "greater_than" else ">="
        if bound == 0 and op == ">" and isinstance(value, int):
            return f"must be a positive integer, got {value!r}"
        return f"must be {op} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}, got {value!r}"
    if kind == "too_short":
        return "must not be empty"
    names = {"int_type": "int", "string_type": "str", "bool_type": "bool", "float_type": "float",
             "list_type": "a list", "dict_type": "a table", "model_type": "a table"}
    if kind in names:
        return f"must be {names[kind]}, got {type(value).__name__} {value!r}"
    return err.get("msg", kind)
