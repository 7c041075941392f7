"""LM backends behind one interface: `toy` (exact tables), `hf` (local transformers models)."""

from .base import LM, Chunk, ChunkDistribution, Context, NextToken, transform_logprobs
from .toy import ToyLM

__all__ = ["LM", "Chunk", "ChunkDistribution", "Context", "NextToken", "ToyLM", "transform_logprobs"]
