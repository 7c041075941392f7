"""Users' mistakes, across the Python API and the CLI: each gets its own specific message.

Every case asserts the message (not just that something raised): what was wrong and, where
there is one, the fix. CLI cases also assert one line on stderr and exit status 2, with no
traceback.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import ppllm
from ppllm.cli import main
from ppllm.kernels import best_of_n, particle_filter, particle_gibbs, smc
from ppllm.results import Chains, Posterior, load_arviz, posteriors_from_arviz, to_arviz
from ppllm.testing.toys import TOKEN_LM, NoRepeat

pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")


class Unscored(ppllm.Program):
    """Samples two tokens and records no prefix_score."""

    def __init__(self) -> None:
        self.ctx = TOKEN_LM.context("")
        self.n = 0

    async def step(self) -> None:
        await self.sample(TOKEN_LM.next_token(self.ctx))
        self.n += 1
        if self.n >= 2:
            self.finish()


# ---------------------------------------------------------------------- kernels
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: smc.run(NoRepeat(), 0, seed=0), "n_particles must be a positive integer, got 0"),
        (lambda: smc.run(NoRepeat(), 2.5, seed=0), "n_particles must be a positive integer, got 2.5"),
        (lambda: smc.run(NoRepeat(), 4, seed=0, resampler="bogus"), "unknown resampler 'bogus'"),
        (lambda: smc.run(NoRepeat(), 4, seed=0, ess_threshold=-1), "ess_threshold must be >= 0"),
        (lambda: particle_filter.run(NoRepeat(), 4, seed=0, weighting="bogus"),
         "weighting must be 'ratio' or 'puri', got 'bogus'"),
        (lambda: particle_filter.run(NoRepeat(), 4, seed=0, tau=0.0), "tau must be > 0, got 0.0"),
        (lambda: particle_filter.run(NoRepeat(), 4, seed=0, select="best"),
         "select must be 'argmax' or 'sample', got 'best'"),
        (lambda: particle_gibbs.run(NoRepeat(), 4, 0, seed=0), "n_iterations must be a positive integer"),
        (lambda: best_of_n.run(NoRepeat(), 0, seed=0), "must be a positive integer, got 0"),
    ],
)
def test_kernel_options_are_checked_before_any_work(call, message) -> None:
    with pytest.raises(ValueError, match=_escape(message)):
        call()


def test_argmax_selection_without_a_score_says_what_to_do() -> None:
    with pytest.raises(AttributeError, match='has no `prefix_score` to rank particles by.*select="sample"'):
        particle_filter.run(Unscored(), 4, seed=0, select="argmax")


@pytest.mark.parametrize("kernel", ["particle_filter", "particle_gibbs"])
def test_ratio_weighting_selects_by_weight_by_default(kernel) -> None:
    """The trap of the default `select="argmax"` with ratio weighting is gone."""
    if kernel == "particle_filter":
        post = particle_filter.run(Unscored(), 4, seed=0)
    else:
        post = particle_gibbs.run(Unscored(), 4, 2, seed=0)
    assert post.ok and post.config["select"] == "sample" and "answer" in post.extras


def test_particle_gibbs_losing_every_particle_returns_a_failed_posterior() -> None:
    class Dead(ppllm.Program):
        async def step(self) -> None:
            await self.observe(ppllm.Normal(0.0, 1.0), math.inf)
            self.finish()

    with pytest.warns(RuntimeWarning, match="all 4 particles have weight zero"):
        post = particle_gibbs.run(Dead(), 4, 2, seed=0)
    assert not post.ok and "weight zero" in post.message


# ---------------------------------------------------------------------- programs
def test_a_step_that_is_not_async_is_named() -> None:
    class Sync(ppllm.Program):
        def step(self) -> None:
            self.finish()

    with pytest.raises(ppllm.ProgramError, match=r"Sync.step must be a coroutine: write `async def step\(self\):`"):
        smc.run(Sync(), 2, seed=0)


def test_a_forgotten_await_gets_a_hint() -> None:
    class NoAwait(ppllm.Program):
        async def step(self) -> None:
            x = self.sample(ppllm.Normal(0.0, 1.0))
            self.y = x + 1
            self.finish()

    with pytest.raises(ppllm.ProgramError, match=r"'coroutine'.*without `await`\? write `x = await self.sample"):
        smc.run(NoAwait(), 2, seed=0)


def test_an_attribute_that_cannot_be_copied_is_named_with_the_fix() -> None:
    class Locked(ppllm.Program):
        def __init__(self) -> None:
            self.lock = threading.Lock()

        async def step(self) -> None:
            self.finish()

    with pytest.raises(TypeError, match=r"cannot copy Locked.lock \(lock: .*wrap what they share in ppllm.Shared"):
        smc.run(Locked(), 2, seed=0)


def test_observing_nan_names_the_particle_and_step() -> None:
    class NaNObs(ppllm.Program):
        async def step(self) -> None:
            await self.observe(ppllm.Normal(0.0, 1.0), math.nan)
            self.finish()

    with pytest.raises(ValueError, match="particle 0 at step 0"):
        smc.run(NaNObs(), 2, seed=0)


def test_observe_reads_python_floats_at_the_distribution_dtype() -> None:
    """A float64 distribution evaluates a Python float at float64, not torch's float32 default."""
    import torch.distributions as tdist

    d = tdist.Normal(torch.tensor(0.1, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    value = 3.123456789123  # float32 keeps ~7 digits of it

    class Obs(ppllm.Program):
        async def step(self) -> None:
            await self.observe(d, value)
            self.finish()

    post = smc.run(Obs(), 1, seed=0)
    exact = -0.5 * (value - 0.1) ** 2 - 0.5 * math.log(2 * math.pi)
    assert abs(post.log_Z - exact) < 1e-12
    # broken twin: the same value read at float32 is off by far more
    f32 = float(d.log_prob(torch.as_tensor(value)))
    assert abs(f32 - exact) > 1e-9


# ---------------------------------------------------------------------- LMs
def test_toy_lm_refuses_token_ids_outside_its_vocabulary() -> None:
    with pytest.raises(ValueError, match=r"token id 999 is outside the vocabulary of toy \(ids 0..2\)"):
        TOKEN_LM.decode([999])
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        TOKEN_LM.logprobs([(0, -1)])


def test_toy_lm_refuses_text_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="has a character not in the toy vocabulary"):
        TOKEN_LM.encode("xyz")


def test_hf_backend_refuses_bad_token_ids_and_paths(tmp_path) -> None:
    from ppllm import zoo
    from ppllm.lm.hf import HFLM

    lm = zoo.load_lm("tiny-arith")
    with pytest.raises(ValueError, match=f"token id {lm.vocab_size} is outside the vocabulary of tiny-arith"):
        lm.decode([lm.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.logprobs([(1, 2, lm.vocab_size + 5)])
    with pytest.raises(FileNotFoundError, match="no model at"):
        HFLM.load(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        HFLM.load(tmp_path / "empty")


def test_a_model_that_is_not_a_causal_lm_is_refused() -> None:
    """The arith-prm token classifier is a GPT-2 too: its config must not pass for a causal LM."""
    from ppllm import zoo
    from ppllm.lm.hf import HFLM

    with pytest.raises(ValueError, match="GPT2ForTokenClassification, which is not a causal LM"):
        HFLM.load(zoo.resolve("arith-prm"))


# ---------------------------------------------------------------------- results
def test_result_objects_check_their_input(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"log_weights has shape \(3,\) for 2 particles"):
        Posterior(["a", "b"], np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="log_weights contains NaN"):
        Posterior(["a"], np.array([math.nan]), 0.0)
    post = Posterior(["a", "b"], np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="variable name 'particle' is reserved"):
        to_arviz(post, {"particle": str})
    with pytest.raises(ValueError, match="to_arviz needs at least one posterior"):
        to_arviz([])
    with pytest.raises(FileNotFoundError, match="no results file at"):
        load_arviz(tmp_path / "missing.nc")
    chains = Chains([[1.0, 2.0]])
    with pytest.raises(ValueError, match="has no 'particles' group: it was not written by ppllm.results.to_arviz"):
        posteriors_from_arviz(chains.to_arviz())
    with pytest.raises(ValueError, match=r"no draws after burn_in=5 \(2 draws per chain\)"):
        chains.expectation(float, burn_in=5)
    with pytest.raises(ValueError, match="record no acceptance"):
        chains.acceptance_rate()


# ---------------------------------------------------------------------- the CLI
TOY = """[model]
lm = "toy"
vocab = ["a", "b", "c", "<eos>"]
order = 2
seed = 3

[program]
path = "ppllm_models.toy_text:ToyText"
args = {{ max_tokens = 3{args} }}

[kernel]
name = "{kernel}"
{options}

[prompts]
items = {items}

[run]
seed = 1
variables = {variables}
plots = 0
"""


def recipe(tmp_path: Path, *, kernel: str = "smc", options: str = "n_particles = 4", args: str = "",
           items: str = '["b", "ab"]', variables: str = '["answer"]', text: str | None = None) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text if text is not None else TOY.format(kernel=kernel, options=options, args=args,
                                                             items=items, variables=variables))
    return path


def one_line_error(capsys, argv: list[str], expected_rc: int = 2) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == expected_rc, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text": "[model\nlm = 1"}, "error: recipe: not valid TOML"),
        ({"text": TOY.format(kernel="smc", options="n_particles = 4", args="", items='["b"]',
                             variables='["answer"]') + "\n[extra]\nx = 1\n"}, "error: extra: unknown section"),
        ({"kernel": "nonesuch"}, "error: kernel.name: unknown kernel 'nonesuch' (known: "),
        ({"options": "n_particles = 0"}, "error: kernel.n_particles: must be a positive integer, got 0"),
        ({"options": "n_particles = 4\nbogus = 1"}, "error: kernel.bogus: unknown option for smc"),
        ({"options": 'n_particles = 4\nresampler = "x"'}, "error: kernel.resampler: unknown resampler 'x'"),
        ({"options": "n_particles = 4\nseed = 3"}, "error: kernel.seed: set the seed in [run] seed"),
        ({"args": ", nonesuch = 1"}, "error: program.args.nonesuch: ppllm_models.toy_text:ToyText takes no argument 'nonesuch'"),
        ({"items": "[]"}, "error: prompts.items: no prompts"),
        ({"items": '["b", ""]'}, "error: prompts.items[1]: empty prompt"),
        ({"items": '[{ prompt = "b", id = "x" }, { prompt = "a", id = "x" }]'},
         "error: prompts.items[1].id: duplicate prompt id 'x'"),
        ({"variables": '["text"]'}, "error: run.variables: 'text' is reserved"),
        ({"variables": '["not an identifier"]'}, "error: run.variables: must be attribute names"),
    ],
)
def test_recipe_mistakes_are_one_line(tmp_path, capsys, change, message) -> None:
    path = recipe(tmp_path, **change)
    err = one_line_error(capsys, ["run", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert err.startswith(message), err
    assert not (tmp_path / "o" / "record.jsonl").exists()  # nothing ran


def test_a_missing_recipe_file_is_one_line(tmp_path, capsys) -> None:
    err = one_line_error(capsys, ["run", str(tmp_path / "nope.toml")])
    assert err == f"error: recipe: no such file: {tmp_path / 'nope.toml'}"


def test_a_malformed_set_is_one_line(tmp_path, capsys) -> None:
    err = one_line_error(capsys, ["run", str(recipe(tmp_path)), "--set", "novalue"])
    assert err == "error: --set: expected key=value, got 'novalue'"


def test_a_variable_typo_is_named_not_recorded_as_nulls(tmp_path, capsys) -> None:
    err = one_line_error(capsys, ["run", str(recipe(tmp_path, variables='["answr"]')), "--out", str(tmp_path / "o"),
                                  "--quiet"])
    assert err.startswith("error: run.variables: 'answr' is not an attribute of the ToyText particles (they have: ")
    assert "answer" in err
    assert not (tmp_path / "o" / "record.jsonl").is_file() or not (tmp_path / "o" / "record.jsonl").read_text()


def test_an_answer_fn_typo_names_the_option(tmp_path, capsys) -> None:
    path = recipe(tmp_path, kernel="particle_filter", options='n_particles = 4\nanswer_fn = "answr"')
    err = one_line_error(capsys, ["run", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert err.startswith("error: kernel.answer_fn: ToyText has no attribute 'answr' (its particles have: ")


def test_a_program_argument_the_lm_rejects_is_one_line(tmp_path, capsys) -> None:
    for value in ("0.0", "-1.0"):
        path = recipe(tmp_path, args=f", temperature = {value}")
        err = one_line_error(capsys, ["run", str(path), "--out", str(tmp_path / f"o{value}"), "--quiet"])
        assert f"temperature must be > 0, got {value}" in err and "particle 0 at step 0" in err


def test_a_prompt_the_tokenizer_cannot_encode_fails_before_anything_runs(tmp_path, capsys) -> None:
    path = recipe(tmp_path, items='["b", "ab", "xyz"]')
    err = one_line_error(capsys, ["run", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert err.startswith("error: program.args: cannot build ppllm_models.toy_text:ToyText for prompt 2: ")
    assert "not in the toy vocabulary" in err
    assert not (tmp_path / "o" / "record.jsonl").is_file() or not (tmp_path / "o" / "record.jsonl").read_text()


def test_out_that_cannot_be_written_is_one_line(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = one_line_error(capsys, ["run", str(recipe(tmp_path)), "--out", str(blocker / "sub"), "--quiet"])
    assert err.startswith(f"error: --out: cannot write to {blocker / 'sub'}")


def test_report_on_a_directory_without_results_is_one_line(tmp_path, capsys) -> None:
    err = one_line_error(capsys, ["report", str(tmp_path)])
    assert err == f"error: report: {tmp_path} holds no prompt-*/posterior.nc (is it a results directory?)"


def test_an_unknown_reward_and_an_unimportable_program_are_named(tmp_path, capsys) -> None:
    text = TOY.format(kernel="smc", options="n_particles = 4", args="", items='["b"]', variables='["answer"]')
    bad_reward = text + '\n[reward]\nname = "nonesuch"\n'
    err = one_line_error(capsys, ["run", str(recipe(tmp_path, text=bad_reward)), "--quiet"])
    assert err.startswith("error: reward.name: unknown reward 'nonesuch'")
    bad_path = text.replace("ppllm_models.toy_text:ToyText", "ppllm_models.nonesuch:X")
    err = one_line_error(capsys, ["run", str(recipe(tmp_path, text=bad_path)), "--quiet"])
    assert err.startswith("error: program.path: cannot import 'ppllm_models.nonesuch'")


def test_debug_shows_the_traceback(tmp_path) -> None:
    path = recipe(tmp_path, options="n_particles = 0")
    with pytest.raises(ValueError, match="kernel.n_particles"):
        main(["--debug", "run", str(path), "--quiet"])


def _escape(text: str) -> str:
    import re

    return re.escape(text)


# ---------------------------------------------------------------------- quiet output
@pytest.mark.parametrize("name", ["toy_smc", "toy_pmmh", "arith_particle_filter", "smollm2_lipogram"])
def test_recipes_run_without_third_party_noise(name, tmp_path) -> None:
    """`--quiet` runs print nothing on stderr: no warnings, bars or notices (warnings shown)."""
    import os
    import subprocess
    import sys

    if name.startswith("smollm2"):
        from smollm2_fixture import require_smollm2

        require_smollm2()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "ppllm.cli", "run", str(root / "inference" / f"{name}.toml"), "--out",
         str(tmp_path / "o"), "--quiet", "--set", "prompts.limit=1", "--set", "run.repeats=1", "--set", "run.plots=1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]
