"""Example ppllm programs, installed as the package `ppllm_models` (see models/README.md)."""
