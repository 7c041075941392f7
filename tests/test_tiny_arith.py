"""The embedded `tiny-arith` model: its data, tokenizer, committed weights and GGUF export."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppllm.tasks.arith.data import (
    HELDOUT_FRACTION_DENOM,
    check_step,
    format_solution,
    heldout_problems,
    is_heldout,
    make_problem,
    parse_answer,
    parse_steps,
    problem_from_operands,
    training_problems,
)
from ppllm.zoo import MODELS, list_models, resolve
from ppllm.zoo.char_tokenizer import CHARS, EOS_TOKEN, build_tokenizer

QUESTION_RE = re.compile(r"^Q: \d{2}(\+\d{2})+=\n$")


@pytest.fixture(scope="module")
def model_dir():
    return resolve("tiny-arith")


@pytest.fixture(scope="module")
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


# --- data -------------------------------------------------------------------------------


def test_example_from_the_docs():
    problem = problem_from_operands([37, 48, 19])
    text = problem.question_text + format_solution(problem)
    assert text == "Q: 37+48+19=\n37+48=85\n85+19=104\nA: 104\n"
    assert problem.answer == 104


@pytest.mark.parametrize("n_operands", [2, 3, 4, 5])
def test_problem_format_and_steps(n_operands):
    rng = np.random.default_rng(7)
    for _ in range(50):
        problem = make_problem(rng, n_operands)
        assert QUESTION_RE.match(problem.question_text)
        assert problem.n_operands == n_operands
        assert all(10 <= x <= 99 for x in problem.operands)
        assert problem.answer == sum(problem.operands)
        solution = format_solution(problem)
        lines = solution.splitlines()
        assert solution.endswith("\n") and len(lines) == n_operands
        assert all(check_step(line) for line in lines[:-1])
        assert parse_steps(solution) == list(problem.steps)
        assert parse_answer(problem.question_text + solution) == problem.answer


def test_check_step():
    assert check_step("12+34=46")
    assert check_step(" 104+99=203\n")
    assert not check_step("12+34=47")
    assert not check_step("12+34=")
    assert not check_step("A: 46")
    assert not check_step("12-34=-22")


def test_parse_answer():
    assert parse_answer("12+34=46\nA: 46\n") == 46
    assert parse_answer("A: 7\nA: 8\n") == 7
    assert parse_answer("12+34=46\nA:") is None
    assert parse_answer("") is None


def test_generators_are_deterministic_and_seeded():
    assert heldout_problems(20, seed=3) == heldout_problems(20, seed=3)
    assert heldout_problems(20, seed=3) != heldout_problems(20, seed=4)
    assert training_problems(20, seed=3) == training_problems(20, seed=3)
    state = np.random.get_state()[1].copy()
    training_problems(5)
    assert np.array_equal(np.random.get_state()[1], state)  # global RNG untouched


def test_train_and_heldout_are_disjoint():
    held = heldout_problems(300)
    assert all(is_heldout(p) and 3 <= p.n_operands <= 5 for p in held)
    train = training_problems(5000, seed=0)
    assert not any(is_heldout(p) for p in train)
    assert not {p.question_text for p in held} & {p.question_text for p in train}
    # The split rule holds out about 1 question in HELDOUT_FRACTION_DENOM.
    rng = np.random.default_rng(0)
    frac = np.mean([is_heldout(make_problem(rng, 3)) for _ in range(5000)])
    assert abs(frac - 1 / HELDOUT_FRACTION_DENOM) < 0.02


# --- tokenizer --------------------------------------------------------------------------


def test_tokenizer_round_trip_one_token_per_char():
    tok = build_tokenizer()
    assert tok.convert_ids_to_tokens(0) == EOS_TOKEN
    assert tok.eos_token_id == tok.pad_token_id == 0
    for problem in training_problems(30, seed=1):
        text = problem.question_text + format_solution(problem)
        ids = tok(text)["input_ids"]
        assert len(ids) == len(text)
        assert tok.decode(ids) == text
    ids = tok(CHARS)["input_ids"]
    assert ids == list(range(1, len(CHARS) + 1))
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == CHARS


def test_committed_tokenizer_matches_builder(tokenizer):
    text = "Q: 37+48+19=\n37+48=85\n85+19=104\nA: 104\n"
    assert tokenizer(text)["input_ids"] == build_tokenizer()(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


# --- committed model ---------------------------------------------------------------------


def test_committed_model_loads(model, model_dir, tokenizer):
    assert (model_dir / "model.safetensors").stat().st_size <= 2 * 1024 * 1024
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    record = json.loads((model_dir / "training.json").read_text())
    assert 0.3 <= record["heldout_accuracy"]["accuracy"] <= 0.7
    ids = tokenizer("Q: 37+48+19=\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_committed_model_has_learned_the_task(model, tokenizer):
    """Held-out solutions are far likelier than under a uniform guess (log 25 nats/char)."""
    problems = heldout_problems(16, seed=99)
    nll = []
    with torch.no_grad():
        for problem in problems:
            q = tokenizer(problem.question_text)["input_ids"]
            s = tokenizer(format_solution(problem))["input_ids"] + [tokenizer.eos_token_id]
            logits = model(torch.tensor([q + s])).logits[0, len(q) - 1 : -1]
            logp = torch.log_softmax(logits, -1)[torch.arange(len(s)), torch.tensor(s)]
            nll.append(-logp.mean().item())
    assert np.mean(nll) < 0.5


def test_sampling_is_seeded(model, tokenizer):
    from ppllm.tasks.arith.train_lm import sample_solutions

    problems = heldout_problems(6, seed=5)
    a = sample_solutions(model, tokenizer, problems, seed=1, max_new_tokens=60)
    b = sample_solutions(model, tokenizer, problems, seed=1, max_new_tokens=60)
    assert a == b
    assert all(t.strip() for t in a)


def test_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from ppllm.tasks.arith.train_lm import train

    small = {"steps": 3, "batch_size": 4, "n_embd": 16, "n_layer": 1, "n_head": 2, "warmup": 1}
    for name in ("a", "b"):
        train(tmp_path / name, seed=5, log_every=0, evaluate=False, **small)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.float32)
    assert loaded.config.n_embd == 16
    assert AutoTokenizer.from_pretrained(tmp_path / "a")("Q: 1")["input_ids"] == [22, 15, 20, 2]


# --- GGUF --------------------------------------------------------------------------------


@pytest.mark.parametrize("f16", [False, True])
def test_gguf_round_trip(tmp_path, model, model_dir, tokenizer, f16):
    from ppllm.zoo.gguf_export import export_gguf

    path = export_gguf(model_dir, tmp_path / "tiny-arith.gguf", f16=f16)
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    ).eval()
    gguf_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    texts = ["Q: 37+48+19=\n37+48=85\n", "Q: 10+99+55+23+71=\n", "Q: 12+3"]
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        assert gguf_tok(text)["input_ids"] == ids[0].tolist()
        with torch.no_grad():
            diff = (model(ids).logits - loaded(ids).logits).abs().max().item()
        assert diff <= 1e-4
    assert gguf_tok.eos_token_id == tokenizer.eos_token_id
    assert gguf_tok.decode(tokenizer(texts[0])["input_ids"]) == texts[0]


# --- registry ----------------------------------------------------------------------------


def test_registry(tmp_path):
    assert set(MODELS) >= {"tiny-arith", "smollm2"}
    assert resolve("tiny-arith").name == "tiny-arith"
    assert resolve(tmp_path) == tmp_path
    rows = {row["name"]: row for row in list_models()}
    assert rows["tiny-arith"]["present"]
    with pytest.raises(FileNotFoundError):
        resolve(tmp_path / "missing")
    try:
        path = resolve("smollm2")
    except FileNotFoundError as err:
        assert "ppllm models fetch smollm2" in str(err)
        assert not rows["smollm2"]["present"]
    else:
        assert path.is_dir() and rows["smollm2"]["present"]
