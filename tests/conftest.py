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


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """tiny-arith's directory, or a random GPT-2 with its shape and tokenizer."""
    from ppllm.zoo import resolve

    try:
        return resolve("tiny-arith")
    except FileNotFoundError:
        from transformers import GPT2Config, GPT2LMHeadModel

        from ppllm.zoo.char_tokenizer import save_tokenizer

        out = tmp_path_factory.mktemp("tiny-random")
        tok = save_tokenizer(out)
        torch.manual_seed(0)
        # A large init makes the logits depend strongly on the context, as a trained model's do.
        cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=96, n_layer=4, n_head=4,
                         activation_function="gelu_pytorch_tanh", initializer_range=0.2,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
        GPT2LMHeadModel(cfg).save_pretrained(out)
        return out
