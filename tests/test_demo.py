"""`ppllm demo` end to end on tiny-arith, and its fallback when SmolLM2 cannot be had."""

from __future__ import annotations

import re

import pytest
import torch

import ppllm.zoo
from ppllm.runs import demo
from ppllm.zoo.char_tokenizer import save_tokenizer


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A random GPT-2 with tiny-arith's tokenizer, used while tiny-arith's weights are absent."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny-stand-in")
    tok = save_tokenizer(out)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


@pytest.fixture
def tiny_arith(monkeypatch, stand_in):
    """Make `tiny-arith` resolvable: the committed weights if present, else the stand-in."""
    real = ppllm.zoo.resolve
    try:
        real("tiny-arith")
    except FileNotFoundError:
        monkeypatch.setattr(ppllm.zoo, "resolve", lambda name: stand_in if name == "tiny-arith" else real(name))


def test_demo_on_tiny_arith(tiny_arith, capsys):
    code = demo.main(["--model", "tiny-arith", "--particles", "4", "--max-tokens", "10", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "model tiny-arith" in out and "weighted posterior" in out
    assert "no particle contains '6': True" in out
    steps = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+(yes|no)\s+(\d+)\s+(-?[\d.]+)$", out, re.MULTILINE)
    assert 1 <= len(steps) <= 10
    log_z = float(re.search(r"log Ẑ = (-?[\d.]+)", out).group(1))
    assert log_z <= 0.0  # the probability that the constraint holds is at most one
    weights = [float(w) for w in re.findall(r"^\s+([01]\.\d{4})\s+'", out, re.MULTILINE)]
    assert weights and sum(weights) == pytest.approx(1.0, abs=1e-3)


def test_demo_falls_back_to_tiny_arith_when_smollm2_is_unavailable(tiny_arith, monkeypatch, capsys):
    from ppllm.zoo import smollm2

    def no_network(**kwargs):
        raise smollm2.DownloadError("no network in this test")

    monkeypatch.setattr(smollm2, "is_available", lambda: False)
    monkeypatch.setattr(smollm2, "fetch", no_network)
    code = demo.main(["--particles", "2", "--max-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SmolLM2 is unavailable (DownloadError: no network in this test); using tiny-arith" in out
    assert "model tiny-arith" in out


def test_demo_reports_a_missing_model(tmp_path, capsys):
    assert demo.main(["--model", str(tmp_path / "missing")]) == 1
    assert "cannot load a model" in capsys.readouterr().err
