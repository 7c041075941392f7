"""Test-wide settings: single-threaded math, no hub access, deterministic warnings."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

# Property-based tests draw their examples from a fixed seed and keep no example database, so
# every CI run tries the same inputs.
from hypothesis import settings  # noqa: E402

settings.register_profile("ppllm", derandomize=True, database=None, deadline=None, max_examples=200)
settings.load_profile("ppllm")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in every test, restored after a test that changes it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
