"""Generative programs a user would write with ppllm, each documented in its own module."""
