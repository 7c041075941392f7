"""LM backends behind one interface: `toy` (exact tables), `hf` (local transformers models).

`HFLM` is imported on first use, so `import ppllm.lm` stays free of torch and transformers.
"""

from typing import Any

from .base import LM, Chunk, ChunkDistribution, Context, NextToken, transform_logprobs
from .toy import ToyLM

__all__ = [
    "HFLM",
    "LM",
    "Chunk",
    "ChunkDistribution",
    "Context",
    "NextToken",
    "ToyLM",
    "transform_logprobs",
]


def __getattr__(name: str) -> Any:
    if name == "HFLM":
        from .hf import HFLM

        return HFLM
    raise AttributeError(f"module 'ppllm.lm' has no attribute {name!r}")
